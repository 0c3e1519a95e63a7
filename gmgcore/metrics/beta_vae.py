"""BetaVAE score (Higgins et al. 2017, "beta-VAE: learning basic visual concepts with a
constrained variational framework", Sec. 3), following disentanglement_lib's
``beta_vae.py`` (the scikit-learn variant).

Differences from disentanglement_lib: draws come from a ``numpy.random.Generator``; points are
generated ``chunk`` at a time to encode larger batches; single-valued factors are never chosen
as the fixed factor.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from gmgcore.metrics.results import BetaVAEResult
from gmgcore.metrics.sampling import (
    Encoder,
    GroundTruthData,
    Progress,
    encode_factors,
    varying_factors,
)

__all__ = ["beta_vae_score", "beta_vae_features"]


def beta_vae_features(
    encode: Encoder,
    data: GroundTruthData,
    rng: np.random.Generator,
    num_points: int,
    *,
    batch_size: int = 64,
    factors_kept: tuple[int, ...] | None = None,
    chunk: int = 16,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    r"""Features ``[num_points, n_codes]`` and labels ``[num_points]`` for the BetaVAE classifier.

    One point: choose a factor ``k`` among ``factors_kept`` uniformly, draw two batches of
    ``batch_size`` factor vectors that share factor ``k`` row by row, and take
    :math:`\frac{1}{B} \sum_b |z(x_b) - z(x'_b)|`. The label is the position of ``k`` in
    ``factors_kept`` (all factors when ``None``).
    """
    kept = tuple(range(len(data.factor_sizes))) if factors_kept is None else factors_kept
    n_factors = len(data.factor_sizes)
    features, labels = [], []
    for start in range(0, num_points, chunk):
        m = min(chunk, num_points - start)
        which = rng.integers(len(kept), size=m)
        fixed = np.asarray(kept)[which]
        first = data.sample_factors(m * batch_size, rng).reshape(m, batch_size, n_factors)
        second = data.sample_factors(m * batch_size, rng).reshape(m, batch_size, n_factors)
        rows = np.arange(m)
        second[rows, :, fixed] = first[rows, :, fixed]
        pair = np.concatenate([first, second]).reshape(2 * m * batch_size, n_factors)
        codes = encode_factors(encode, data, pair).reshape(2, m, batch_size, -1)
        features.append(np.mean(np.abs(codes[0] - codes[1]), axis=1))
        labels.append(which)
        if progress is not None:
            progress(m)
    return np.concatenate(features), np.concatenate(labels)


def beta_vae_score(
    encode: Encoder,
    data: GroundTruthData,
    rng: np.random.Generator,
    *,
    batch_size: int = 64,
    num_train: int = 10000,
    num_eval: int = 5000,
    chunk: int = 16,
    progress: Progress | None = None,
) -> BetaVAEResult:
    """BetaVAE score: accuracy of a linear classifier that predicts the fixed factor.

    ``LogisticRegression()`` (scikit-learn defaults, seeded from ``rng``) is fitted on
    ``num_train`` points of :func:`beta_vae_features` and scored on them and on ``num_eval``
    fresh points. ``encode`` maps uint8 images to codes ``[b, n_codes]``.
    """
    kept = varying_factors(data)
    opts = dict(batch_size=batch_size, factors_kept=kept, chunk=chunk, progress=progress)
    x_train, y_train = beta_vae_features(encode, data, rng, num_train, **opts)
    if np.unique(y_train).size < 2:
        raise ValueError(f"num_train={num_train} points drew a single factor; use more points")
    model = LogisticRegression(random_state=int(rng.integers(2**31 - 1)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x_train, y_train)
    x_eval, y_eval = beta_vae_features(encode, data, rng, num_eval, **opts)
    return BetaVAEResult(
        train_accuracy=float(np.mean(model.predict(x_train) == y_train)),
        eval_accuracy=float(np.mean(model.predict(x_eval) == y_eval)),
        factor_indices=kept,
    )
