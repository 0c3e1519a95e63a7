"""What the sampling-based scores (FactorVAE, BetaVAE) need: a ground-truth data set they can
draw factors from and render, and an encoder from images to codes.

The protocol matches ``gmgcore.data.get_dataset``'s objects; any class with these members
works (the tests use a tiny one of their own).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Protocol

import numpy as np

from gmgcore.metrics.inputs import ConstantFactorWarning

__all__ = ["GroundTruthData", "Encoder", "Progress", "varying_factors", "encode_factors"]

Encoder = Callable[[np.ndarray], np.ndarray]
"""Maps uint8 images ``[b, 64, 64(, 3)]`` to codes ``[b, n_codes]`` (the encoder means)."""

Progress = Callable[[int], None]
"""Called with the number of points (votes or features) just completed."""


class GroundTruthData(Protocol):
    """A data set with known discrete factors, sampled uniformly over the factor grid."""

    @property
    def factor_sizes(self) -> tuple[int, ...]: ...

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Draw ``n`` factor vectors, int64 ``[n, n_factors]``, uniformly and independently."""
        ...

    def images(self, classes: np.ndarray) -> np.ndarray:
        """Render factor classes ``[n, n_factors]`` to uint8 images ``[n, 64, 64(, 3)]``."""
        ...


def varying_factors(data: GroundTruthData) -> tuple[int, ...]:
    """Indices of factors with two or more values; a single-valued one is dropped with a warning.

    A factor with one value cannot be held fixed in a way that differs from letting it vary,
    so it would only add votes that no code can explain.
    """
    keep = tuple(j for j, size in enumerate(data.factor_sizes) if size > 1)
    for j, size in enumerate(data.factor_sizes):
        if size <= 1:
            warnings.warn(
                f"data set factor {j} has a single value and is not sampled",
                ConstantFactorWarning,
                stacklevel=3,
            )
    if not keep:
        raise ValueError("data set: every factor has a single value; nothing can be scored")
    return keep


def encode_factors(encode: Encoder, data: GroundTruthData, factors: np.ndarray) -> np.ndarray:
    """Render factors ``[m, n_factors]`` and encode them; returns float64 codes ``[m, n_codes]``.

    Raises a ``ValueError`` if the encoder returns a non-finite value or the wrong row count.
    """
    codes = np.asarray(encode(data.images(factors)), dtype=np.float64)
    if codes.ndim != 2 or codes.shape[0] != factors.shape[0]:
        raise ValueError(
            f"encoder returned shape {codes.shape} for {factors.shape[0]} images; "
            "expected [n_images, n_codes]"
        )
    if not np.isfinite(codes).all():
        raise ValueError("encoder returned NaN or infinite codes")
    return codes
