"""FactorVAE and BetaVAE scores on a tiny ground truth whose images store their factors.

The oracles are disentanglement_lib's (identity ~ 1, zeros ~ 0) plus the fixed pruned-index
vote and the single-valued factor.
"""

from __future__ import annotations

import numpy as np
import pytest

from gmgcore.metrics import ConstantFactorWarning, beta_vae_score, factor_vae_score


class PixelFactors:
    """Images ``[n, 4, 4]`` whose first pixels hold the factor classes (an identity renderer)."""

    def __init__(self, factor_sizes: tuple[int, ...]) -> None:
        self.factor_sizes = factor_sizes
        self.observation_shape = (4, 4)

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.stack([rng.integers(0, s, size=n) for s in self.factor_sizes], axis=1)

    def images(self, classes: np.ndarray) -> np.ndarray:
        out = np.zeros((classes.shape[0], 16), dtype=np.uint8)
        out[:, : classes.shape[1]] = classes
        return out.reshape(-1, 4, 4)


def identity_encoder(k: int):
    return lambda images: images.reshape(images.shape[0], -1)[:, :k].astype(np.float64)


SIZES = (4, 5, 3)
SMALL = dict(batch_size=5, num_train=600, num_eval=300, num_variance_estimate=500)


def test_factor_vae_identity_is_near_one() -> None:
    data = PixelFactors(SIZES)
    result = factor_vae_score(identity_encoder(3), data, np.random.default_rng(0), **SMALL)
    assert result["train_accuracy"] > 0.9 and result["eval_accuracy"] > 0.9
    assert result["num_active_dims"] == 3


def test_factor_vae_zeros_score_zero() -> None:
    def encode(images):
        return np.zeros((images.shape[0], 3))

    result = factor_vae_score(encode, PixelFactors(SIZES), np.random.default_rng(0), **SMALL)
    assert dict(result) == {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}


def test_factor_vae_votes_land_on_the_unpruned_code() -> None:
    # Code 0 is constant (pruned), codes 1..3 copy the factors. disentanglement_lib would
    # vote for code j for factor j (an index into the pruned vector); the fix votes j + 1.
    data = PixelFactors(SIZES)
    ident = identity_encoder(3)

    def encode(images):
        codes = ident(images)
        return np.concatenate([np.full((codes.shape[0], 1), 7.0), codes], axis=1)

    result = factor_vae_score(encode, data, np.random.default_rng(1), **SMALL)
    assert result["num_active_dims"] == 3
    assert not result.votes_train[:, 0].any()
    assert (np.argmax(result.votes_train, axis=1) == np.array([1, 2, 3])).all()
    assert result["eval_accuracy"] > 0.9


def test_factor_vae_is_reproducible_and_ignores_code_order() -> None:
    # A small smooth perturbation of the identity avoids exact ties between variance ratios,
    # which argmin would break by code order.
    data = PixelFactors(SIZES)
    ident = identity_encoder(3)

    def encode(images):
        z = ident(images)
        return z + 0.05 * np.sin(z @ np.array([[1.0, 2.0, 3.0], [0.7, 0.1, 1.3], [2.1, 1.1, 0.3]]))

    def reversed_codes(images):
        return encode(images)[:, ::-1]

    a = factor_vae_score(encode, data, np.random.default_rng(5), **SMALL)
    b = factor_vae_score(encode, data, np.random.default_rng(5), **SMALL)
    c = factor_vae_score(reversed_codes, data, np.random.default_rng(5), **SMALL)
    assert dict(a) == dict(b) == dict(c)
    np.testing.assert_array_equal(c.votes_train, a.votes_train[:, ::-1])


def test_single_valued_factor_is_never_fixed() -> None:
    data = PixelFactors((4, 1, 3))
    with pytest.warns(ConstantFactorWarning, match="factor 1"):
        result = factor_vae_score(identity_encoder(3), data, np.random.default_rng(2), **SMALL)
    assert result.factor_indices == (0, 2) and result.votes_train.shape == (2, 3)
    assert result["eval_accuracy"] > 0.9


BETA = dict(batch_size=5, num_train=400, num_eval=200)


def test_beta_vae_identity_is_near_one_and_zeros_near_chance() -> None:
    data = PixelFactors(SIZES)
    good = beta_vae_score(identity_encoder(3), data, np.random.default_rng(0), **BETA)
    assert good["train_accuracy"] > 0.9 and good["eval_accuracy"] > 0.9

    def zeros(images):
        return np.zeros((images.shape[0], 3))

    bad = beta_vae_score(zeros, data, np.random.default_rng(0), **BETA)
    assert bad["eval_accuracy"] < 0.5


def test_encoder_returning_nan_is_an_error() -> None:
    def encode(images):
        return np.full((images.shape[0], 2), np.nan)

    with pytest.raises(ValueError, match="encoder returned NaN"):
        beta_vae_score(encode, PixelFactors(SIZES), np.random.default_rng(0), **BETA)
