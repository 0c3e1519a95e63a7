"""Validation of metric inputs and the handling of degenerate factors.

Every metric takes codes ``[n, n_codes]`` (real, finite) and factors ``[n, n_factors]``
(integer class indices). The checks here turn malformed input into a ``ValueError`` that names
the offending array, and drop factors that take a single value: such a factor has zero entropy,
so MIG divides by zero and the classifiers of DCI and SAP cannot be fitted.
disentanglement_lib avoids them by listing only multi-valued factors (its ``dsprites_full``
leaves out ``color``); here they are dropped with a :class:`ConstantFactorWarning`.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = [
    "ConstantFactorWarning",
    "check_codes",
    "check_factors",
    "check_split",
    "informative_factors",
]


class ConstantFactorWarning(UserWarning):
    """A factor takes a single value and is left out of a metric."""


def check_codes(name: str, codes: np.ndarray) -> np.ndarray:
    """Return ``codes`` as float64 ``[n, n_codes]``; raise if not 2-D, empty or not finite."""
    arr = np.asarray(codes)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array [n, n_codes], got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name}: empty array of shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name}: expected real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if np.isnan(arr).any():
        raise ValueError(f"{name}: contains NaN (first at row {np.argwhere(np.isnan(arr))[0, 0]})")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains an infinite value")
    return arr


def check_factors(name: str, factors: np.ndarray) -> np.ndarray:
    """Return ``factors`` as int64 ``[n, n_factors]``; raise if not 2-D integer classes."""
    arr = np.asarray(factors)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array [n, n_factors], got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name}: empty array of shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        raise ValueError(f"{name}: expected integer class indices, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def check_split(
    codes_train: np.ndarray,
    factors_train: np.ndarray,
    codes_test: np.ndarray | None = None,
    factors_test: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Check a train (and optional test) split for types and matching shapes.

    Returns float64 codes and int64 factors; the names in error messages are the argument
    names (``codes_train`` and so on), or ``codes``/``factors`` when there is no test split.
    """
    has_test = codes_test is not None or factors_test is not None
    suffix = "_train" if has_test else ""
    z_tr = check_codes(f"codes{suffix}", codes_train)
    y_tr = check_factors(f"factors{suffix}", factors_train)
    _check_rows(f"codes{suffix}", z_tr, f"factors{suffix}", y_tr)
    if not has_test:
        return z_tr, y_tr, None, None
    if codes_test is None or factors_test is None:
        raise ValueError("codes_test and factors_test must be given together")
    z_te = check_codes("codes_test", codes_test)
    y_te = check_factors("factors_test", factors_test)
    _check_rows("codes_test", z_te, "factors_test", y_te)
    if z_te.shape[1] != z_tr.shape[1]:
        raise ValueError(
            f"codes_test has {z_te.shape[1]} codes but codes_train has {z_tr.shape[1]}"
        )
    if y_te.shape[1] != y_tr.shape[1]:
        raise ValueError(
            f"factors_test has {y_te.shape[1]} factors but factors_train has {y_tr.shape[1]}"
        )
    return z_tr, y_tr, z_te, y_te


def _check_rows(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{name_a} has {a.shape[0]} rows but {name_b} has {b.shape[0]}")


def informative_factors(factors: np.ndarray, name: str = "factors") -> tuple[int, ...]:
    """Indices of the columns of ``factors`` ``[n, n_factors]`` with at least two values.

    Each constant column is reported with a :class:`ConstantFactorWarning`; if no column is
    left, a ``ValueError`` names the array.
    """
    keep = []
    for j in range(factors.shape[1]):
        values = np.unique(factors[:, j])
        if values.size > 1:
            keep.append(j)
        else:
            warnings.warn(
                f"{name}: factor {j} takes the single value {values[0]} and is dropped "
                "(disentanglement_lib scores only factors with two or more values)",
                ConstantFactorWarning,
                stacklevel=3,
            )
    if not keep:
        raise ValueError(f"{name}: every factor takes a single value; nothing can be scored")
    return tuple(keep)
