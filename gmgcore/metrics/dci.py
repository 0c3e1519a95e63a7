"""DCI: disentanglement, completeness, informativeness (Eastwood & Williams 2018, "A framework
for the quantitative evaluation of disentangled representations", Sec. 2), in
disentanglement_lib's form: gradient-boosted trees give the importance matrix, informativeness is
the prediction *accuracy*.

Two backends fit the per-factor classifiers (:mod:`gmgcore.metrics.boosting`): ``"exact"`` is
scikit-learn's ``GradientBoostingClassifier`` with default settings, as disentanglement_lib;
``"fast"`` runs the same algorithm compiled with numba (:mod:`gmgcore.metrics.trees`), about 20
times faster at 10,000 samples on two cores (its deviation from ``"exact"`` is measured in
docs/metrics.md).
"""

from __future__ import annotations

import numpy as np

from gmgcore.metrics.boosting import DCIBackend, importance_matrix
from gmgcore.metrics.inputs import check_split, informative_factors
from gmgcore.metrics.results import DCIResult

__all__ = ["dci", "disentanglement", "completeness", "DCIBackend"]

_EPS = 1e-11  # added to every importance before the entropies, as disentanglement_lib


def _one_minus_entropy(rows: np.ndarray) -> np.ndarray:
    r"""``1 - H_b(p_r)`` per row of ``rows`` ``[m, b]`` with ``p_r = (rows_r + eps) / sum``.

    The entropy has base ``b`` (the row length), so the result lies in [0, 1]; with ``b = 1``
    there is nothing to spread over and the result is 1.
    """
    if rows.shape[1] == 1:
        return np.ones(rows.shape[0])
    p = rows + _EPS
    p = p / p.sum(axis=1, keepdims=True)
    return 1.0 - (-np.sum(p * np.log(p), axis=1) / np.log(rows.shape[1]))


def disentanglement(importance: np.ndarray) -> float:
    r"""Importance-weighted disentanglement of ``R`` ``[n_codes, n_factors]``.

    .. math::
        D = \sum_i \rho_i \bigl(1 - H_K(P_{i\cdot})\bigr), \quad
        P_{ij} = R_{ij} / \textstyle\sum_k R_{ik}, \quad
        \rho_i = \textstyle\sum_j R_{ij} / \sum_{ij} R_{ij}

    (Eastwood & Williams 2018, Eqs. 1-2). An all-zero ``R`` gives 0, as in disentanglement_lib
    (which reaches it through uniform rows and uniform weights).
    """
    importance = np.abs(np.asarray(importance, dtype=np.float64))
    total = importance.sum()
    if total == 0:
        return 0.0
    per_code = _one_minus_entropy(importance)
    return float(np.sum(per_code * importance.sum(axis=1) / total))


def completeness(importance: np.ndarray) -> float:
    r"""Importance-weighted completeness of ``R`` ``[n_codes, n_factors]``.

    .. math::
        C = \sum_j \tilde\rho_j \bigl(1 - H_L(\tilde P_{\cdot j})\bigr), \quad
        \tilde P_{ij} = R_{ij} / \textstyle\sum_l R_{lj}, \quad
        \tilde\rho_j = \textstyle\sum_i R_{ij} / \sum_{ij} R_{ij}

    (Eastwood & Williams 2018, Eq. 3, weighted as disentanglement_lib). An all-zero ``R``
    gives 0.
    """
    return disentanglement(np.asarray(importance).T)


def dci(
    codes_train: np.ndarray,
    factors_train: np.ndarray,
    codes_test: np.ndarray,
    factors_test: np.ndarray,
    *,
    backend: DCIBackend = "exact",
    seed: int = 0,
    n_jobs: int = 1,
) -> DCIResult:
    """DCI scores of codes ``[n, n_codes]`` for factors ``[n, n_factors]`` (class indices).

    For each factor a boosted-tree classifier is fitted on all codes of the training split;
    its absolute feature importances form column ``j`` of ``R`` ``[n_codes, n_factors]``
    (each column sums to 1, or is 0 when no split was possible). ``informativeness_train`` and
    ``informativeness_test`` are mean accuracies over factors. ``seed`` fixes the trees'
    tie-breaking (disentanglement_lib leaves it unseeded). ``n_jobs`` threads fit the factors
    in parallel (``"exact"``) or grow the classes' trees of a boosting round in parallel
    (``"fast"``); the results do not depend on it.
    Factors with a single value in ``factors_train`` are dropped with a warning.
    """
    z_tr, y_tr, z_te, y_te = check_split(codes_train, factors_train, codes_test, factors_test)
    keep = informative_factors(y_tr, "factors_train")
    fit = importance_matrix(
        z_tr, y_tr[:, keep], z_te, y_te[:, keep], backend=backend, seed=seed, n_jobs=n_jobs
    )
    return DCIResult(
        disentanglement=disentanglement(fit.importance),
        completeness=completeness(fit.importance),
        informativeness_train=float(np.mean(fit.accuracy_train)),
        informativeness_test=float(np.mean(fit.accuracy_test)),
        importance=fit.importance,
        accuracy_train=fit.accuracy_train,
        accuracy_test=fit.accuracy_test,
        factor_indices=keep,
    )
