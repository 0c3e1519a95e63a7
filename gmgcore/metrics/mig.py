"""Mutual Information Gap (Chen, Li, Grosse, Duvenaud 2018, "Isolating sources of
disentanglement in VAEs", Eq. 6), in disentanglement_lib's discrete form.
"""

from __future__ import annotations

import numpy as np

from gmgcore.metrics.information import entropy, histogram_discretize, mutual_info_matrix
from gmgcore.metrics.inputs import check_split, informative_factors
from gmgcore.metrics.results import MIGResult

__all__ = ["mig", "mig_from_mutual_info"]


def mig_from_mutual_info(mutual_info: np.ndarray, factor_entropy: np.ndarray) -> float:
    r"""MIG from ``m[i, j] = I(z_i; v_j)`` ``[n_codes, n_factors]`` and ``H(v_j)`` ``[n_factors]``.

    .. math:: \mathrm{MIG} = \frac{1}{K} \sum_j \frac{m_{(1) j} - m_{(2) j}}{H(v_j)}

    where :math:`m_{(1) j} \ge m_{(2) j}` are the two largest entries of column ``j``. With a
    single code the runner-up is taken as 0 (disentanglement_lib raises an IndexError).
    """
    top = np.sort(mutual_info, axis=0)[::-1]
    second = top[1] if top.shape[0] > 1 else np.zeros(top.shape[1])
    return float(np.mean((top[0] - second) / factor_entropy))


def mig(codes: np.ndarray, factors: np.ndarray, num_bins: int = 20) -> MIGResult:
    """Mutual Information Gap of codes ``[n, n_codes]`` with respect to factors ``[n, n_factors]``.

    Each code is discretized into ``num_bins`` equal-width histogram bins (20 in
    disentanglement_lib's study configs), mutual information and entropies are in nats with
    factors taken as class indices (no binning), and the gap is normalized by the factor
    entropy. Factors with a single value are dropped with a warning; a constant code has zero
    mutual information with every factor.
    """
    z, y, _, _ = check_split(codes, factors)
    keep = informative_factors(y, "factors")
    y = y[:, keep]
    m = mutual_info_matrix(histogram_discretize(z, num_bins), y)
    h = np.array([entropy(y[:, j]) for j in range(y.shape[1])])
    return MIGResult(
        mig=mig_from_mutual_info(m, h), mutual_info=m, factor_entropy=h, factor_indices=keep
    )
