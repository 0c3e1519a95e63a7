"""Discrete information measures shared by MIG and modularity.

Codes are discretized per column into equal-width histogram bins (disentanglement_lib's
``_histogram_discretize``), factors are used as given (class indices, no binning). Mutual
information and entropy use the natural logarithm, so values are in nats, as
``sklearn.metrics.mutual_info_score`` which disentanglement_lib calls.
"""

from __future__ import annotations

import numpy as np

__all__ = ["histogram_discretize", "mutual_information", "entropy", "mutual_info_matrix"]


def histogram_discretize(codes: np.ndarray, num_bins: int = 20) -> np.ndarray:
    """Bin each column of ``codes`` ``[n, n_codes]`` into ``num_bins`` equal-width bins.

    The bins of column ``i`` split ``[min z_i, max z_i]`` into ``num_bins`` intervals (numpy's
    ``histogram`` edges); a value gets the label ``b`` in ``1..num_bins`` of the interval that
    holds it (``np.digitize`` against the left edges). A constant column falls into a single
    bin. Returns int64 labels ``[n, n_codes]``.
    """
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    codes = np.asarray(codes, dtype=np.float64)
    labels = np.empty(codes.shape, dtype=np.int64)
    for i in range(codes.shape[1]):
        edges = np.histogram_bin_edges(codes[:, i], bins=num_bins)
        labels[:, i] = np.digitize(codes[:, i], edges[:-1])
    return labels


def _relabel(labels: np.ndarray) -> tuple[np.ndarray, int]:
    values, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(-1), values.size


def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    r"""Mutual information of two discrete label vectors ``[n]``, in nats.

    .. math:: I(a; b) = \sum_{u, v} \frac{n_{uv}}{n} \log \frac{n \, n_{uv}}{n_u \, n_v}

    over the contingency counts ``n_uv``; clipped at 0 against round-off, so two independent
    or constant vectors give exactly 0.
    """
    a_idx, na = _relabel(np.asarray(a))
    b_idx, nb = _relabel(np.asarray(b))
    n = a_idx.size
    joint = np.bincount(a_idx * nb + b_idx, minlength=na * nb).reshape(na, nb)
    return _mi_from_joint(joint, n)


def _mi_from_joint(joint: np.ndarray, n: int) -> float:
    row = joint.sum(axis=1)
    col = joint.sum(axis=0)
    u, v = np.nonzero(joint)
    n_uv = joint[u, v].astype(np.float64)
    # Integer products are exact in float64 for n < 2**26, so equal counts give log(1) = 0.
    ratio = (n * n_uv) / (row[u].astype(np.float64) * col[v].astype(np.float64))
    return max(float(np.sum(n_uv / n * np.log(ratio))), 0.0)


def entropy(labels: np.ndarray) -> float:
    r"""Entropy of a discrete label vector ``[n]`` in nats: :math:`H = -\sum_u p_u \log p_u`."""
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    p = counts / counts.sum()
    return max(float(-np.sum(p * np.log(p))), 0.0)


def mutual_info_matrix(code_labels: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """``m[i, j] = I(code_labels[:, i]; factors[:, j])`` in nats, shape ``[n_codes, n_factors]``.

    ``code_labels`` ``[n, n_codes]`` are discretized codes, ``factors`` ``[n, n_factors]`` class
    indices.
    """
    n = code_labels.shape[0]
    codes = [_relabel(code_labels[:, i]) for i in range(code_labels.shape[1])]
    facts = [_relabel(factors[:, j]) for j in range(factors.shape[1])]
    m = np.zeros((len(codes), len(facts)))
    for i, (a_idx, na) in enumerate(codes):
        for j, (b_idx, nb) in enumerate(facts):
            joint = np.bincount(a_idx * nb + b_idx, minlength=na * nb).reshape(na, nb)
            m[i, j] = _mi_from_joint(joint, n)
    return m
