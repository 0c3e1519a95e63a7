"""FactorVAE score (Kim & Mnih 2018, "Disentangling by factorising", Sec. 4), following
disentanglement_lib's ``factor_vae.py`` with two of its indexing bugs fixed.

Deliberate differences from disentanglement_lib:

- the vote goes to the code that has the smallest normalized variance *among the active codes*
  (disentanglement_lib takes ``argmin`` over the pruned vector and uses it as an index into the
  full code vector, so when any code is pruned the votes land on the wrong codes; the
  relabelling is consistent, so the accuracies are the same, but the vote matrix is not);
- ``num_active_dims`` counts the active codes (disentanglement_lib reports the total number of
  codes);
- a code with zero global variance is never active, whatever the threshold (with threshold 0,
  disentanglement_lib would divide 0 by 0 and ``argmin`` would pick the NaN);
- single-valued factors are never chosen as the fixed factor.

Random draws come from a ``numpy.random.Generator``, so the numbers are not the same draws as
disentanglement_lib's ``RandomState``; votes are generated ``chunk`` at a time to encode larger
batches.
"""

from __future__ import annotations

import numpy as np

from gmgcore.metrics.results import FactorVAEResult
from gmgcore.metrics.sampling import (
    Encoder,
    GroundTruthData,
    Progress,
    encode_factors,
    varying_factors,
)

__all__ = ["factor_vae_score", "global_variances", "active_codes"]


def global_variances(
    encode: Encoder, data: GroundTruthData, rng: np.random.Generator, num: int, chunk: int = 1024
) -> np.ndarray:
    """Variance (ddof 1) of each code over ``num`` random observations, ``[n_codes]``."""
    if num < 2:
        raise ValueError(f"num_variance_estimate must be >= 2, got {num}")
    codes = [
        encode_factors(encode, data, data.sample_factors(min(chunk, num - start), rng))
        for start in range(0, num, chunk)
    ]
    return np.var(np.concatenate(codes), axis=0, ddof=1)


def active_codes(variances: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean mask ``[n_codes]``: standard deviation >= ``threshold`` and variance > 0."""
    return (np.sqrt(variances) >= threshold) & (variances > 0)


def _votes(
    encode: Encoder,
    data: GroundTruthData,
    rng: np.random.Generator,
    num_points: int,
    batch_size: int,
    variances: np.ndarray,
    active: np.ndarray,
    factors_kept: tuple[int, ...],
    chunk: int,
    progress: Progress | None,
) -> np.ndarray:
    """Vote counts ``[n_kept_factors, n_codes]`` of ``num_points`` fixed-factor batches."""
    n_factors = len(data.factor_sizes)
    active_idx = np.flatnonzero(active)
    votes = np.zeros((len(factors_kept), variances.size), dtype=np.int64)
    for start in range(0, num_points, chunk):
        m = min(chunk, num_points - start)
        which = rng.integers(len(factors_kept), size=m)
        fixed = np.asarray(factors_kept)[which]
        factors = data.sample_factors(m * batch_size, rng).reshape(m, batch_size, n_factors)
        rows = np.arange(m)
        factors[rows, :, fixed] = factors[rows, 0, fixed][:, None]
        codes = encode_factors(encode, data, factors.reshape(m * batch_size, n_factors))
        local = np.var(codes.reshape(m, batch_size, -1), axis=1, ddof=1)
        best = active_idx[np.argmin(local[:, active_idx] / variances[active_idx], axis=1)]
        np.add.at(votes, (which, best), 1)
        if progress is not None:
            progress(m)
    return votes


def _accuracy(votes: np.ndarray, classifier: np.ndarray) -> float:
    total = votes.sum()
    return float(votes[classifier, np.arange(votes.shape[1])].sum() / total) if total else 0.0


def factor_vae_score(
    encode: Encoder,
    data: GroundTruthData,
    rng: np.random.Generator,
    *,
    batch_size: int = 64,
    num_train: int = 10000,
    num_eval: int = 5000,
    num_variance_estimate: int = 10000,
    prune_threshold: float = 0.05,
    chunk: int = 16,
    progress: Progress | None = None,
) -> FactorVAEResult:
    r"""FactorVAE score: accuracy of a majority-vote classifier from codes to fixed factors.

    One vote: choose a factor ``k`` uniformly, draw ``batch_size`` factor vectors with factor
    ``k`` held at one value, encode them, and vote for
    :math:`\arg\min_{i \in A} \mathrm{Var}_\mathrm{batch}(z_i) / \mathrm{Var}_\mathrm{global}(z_i)`
    over the active codes ``A`` (global std >= ``prune_threshold``; 0.05 in disentanglement_lib's
    study). The classifier maps each code to the factor with most votes; the score is the share
    of votes it gets right on ``num_train`` training votes and ``num_eval`` fresh votes. With no
    active code both accuracies are 0. ``encode`` maps uint8 images to codes ``[b, n_codes]``.
    """
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 for a variance, got {batch_size}")
    kept = varying_factors(data)
    variances = global_variances(encode, data, rng, num_variance_estimate, chunk * batch_size)
    active = active_codes(variances, prune_threshold)
    if not active.any():
        empty = np.zeros((len(kept), variances.size), dtype=np.int64)
        return FactorVAEResult(0.0, 0.0, 0, votes_train=empty, factor_indices=kept)
    args = (batch_size, variances, active, kept, chunk, progress)
    train = _votes(encode, data, rng, num_train, *args)
    classifier = np.argmax(train, axis=0)
    evaluation = _votes(encode, data, rng, num_eval, *args)
    return FactorVAEResult(
        train_accuracy=_accuracy(train, classifier),
        eval_accuracy=_accuracy(evaluation, classifier),
        num_active_dims=int(active.sum()),
        votes_train=train,
        factor_indices=kept,
    )
