"""Discretization, mutual information and MIG: closed forms, sklearn reference, oracles."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import mutual_info_score

from gmgcore.metrics import (
    ConstantFactorWarning,
    entropy,
    histogram_discretize,
    mig,
    mig_from_mutual_info,
    mutual_info_matrix,
    mutual_information,
)


def test_histogram_bins_are_equal_width_over_the_column_range() -> None:
    # 0, 0.05, ..., 1: the value 0.05 b lies on the left edge of bin b + 1 (numpy's edges).
    col = np.linspace(0.0, 1.0, 21)
    labels = histogram_discretize(np.stack([col, 3.0 * col - 7.0], axis=1), num_bins=20)
    expected = np.minimum(np.arange(21) + 1, 20)
    np.testing.assert_array_equal(labels[:, 0], expected)
    np.testing.assert_array_equal(labels[:, 1], expected)  # affine maps keep the bins


def test_constant_code_falls_in_one_bin() -> None:
    labels = histogram_discretize(np.full((50, 1), 3.3), num_bins=20)
    assert np.unique(labels).size == 1


def test_mutual_information_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 7, size=500)
    b = (a + rng.integers(0, 3, size=500)) % 5
    assert mutual_information(a, b) == pytest.approx(mutual_info_score(a, b), abs=1e-12)
    assert entropy(a) == pytest.approx(mutual_info_score(a, a), abs=1e-12)


def test_entropy_of_uniform_classes_is_log_k() -> None:
    assert entropy(np.repeat(np.arange(4), 25)) == pytest.approx(np.log(4), abs=1e-12)
    assert entropy(np.zeros(10, dtype=int)) == 0.0


def test_mutual_info_matrix_entries() -> None:
    rng = np.random.default_rng(1)
    codes = rng.integers(1, 21, size=(300, 3))
    factors = rng.integers(0, 4, size=(300, 2))
    m = mutual_info_matrix(codes, factors)
    for i in range(3):
        for j in range(2):
            assert m[i, j] == pytest.approx(mutual_info_score(factors[:, j], codes[:, i]), 1e-12)


def _grid_factors(sizes: tuple[int, ...], n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, s, size=n) for s in sizes], axis=1)


def _identity_mig(factors: np.ndarray) -> float:
    """MIG of the identity code from sklearn: code j recovers v_j, the runner-up is another v_i."""
    k = factors.shape[1]
    mi = np.array(
        [[mutual_info_score(factors[:, j], factors[:, i]) for j in range(k)] for i in range(k)]
    )
    gaps = [(mi[j, j] - max(mi[i, j] for i in range(k) if i != j)) / mi[j, j] for j in range(k)]
    return float(np.mean(gaps))


def test_mig_identity_is_one_and_zeros_are_zero() -> None:
    factors = _grid_factors((5, 4, 6), 3000)
    score = mig(factors.astype(float), factors)["mig"]
    assert score == pytest.approx(_identity_mig(factors), abs=1e-12)
    assert 0.99 < score <= 1.0
    assert mig(np.zeros((3000, 3)), factors)["mig"] == 0.0


def test_mig_duplicated_latents_give_no_gap() -> None:
    factors = _grid_factors((5, 4, 6), 3000)
    codes = np.concatenate([factors, factors], axis=1).astype(float)
    assert mig(codes, factors)["mig"] == pytest.approx(0.0, abs=1e-12)


def test_mig_noise_is_near_zero() -> None:
    factors = _grid_factors((5, 4), 3000)
    codes = np.random.default_rng(3).normal(size=(3000, 4))
    assert 0.0 <= mig(codes, factors)["mig"] < 0.02


def test_mig_is_invariant_to_code_permutation_and_scaling() -> None:
    rng = np.random.default_rng(4)
    factors = _grid_factors((5, 4, 6), 2000)
    codes = factors @ rng.normal(size=(3, 5)) + 0.5 * rng.normal(size=(2000, 5))
    base = mig(codes, factors)
    perm = rng.permutation(5)
    moved = mig(-2.0 * codes[:, perm] + 1.0, factors)
    assert moved["mig"] == pytest.approx(base["mig"], abs=1e-12)
    np.testing.assert_allclose(moved.mutual_info, base.mutual_info[perm], atol=1e-12)


def test_mig_formula_on_a_known_matrix() -> None:
    m = np.array([[0.9, 0.1], [0.3, 0.5], [0.0, 0.2]])
    h = np.array([1.0, 2.0])
    assert mig_from_mutual_info(m, h) == pytest.approx(((0.9 - 0.3) / 1 + (0.5 - 0.2) / 2) / 2)


def test_mig_single_code_uses_zero_runner_up() -> None:
    factors = _grid_factors((5,), 500)
    assert mig(factors.astype(float), factors)["mig"] == pytest.approx(1.0, abs=1e-12)


def test_mig_drops_constant_factor_with_warning() -> None:
    factors = _grid_factors((5, 1, 4), 1000)
    with pytest.warns(ConstantFactorWarning, match="factor 1"):
        result = mig(factors[:, [0, 2]].astype(float), factors)
    assert result.factor_indices == (0, 2)
    assert result["mig"] == pytest.approx(_identity_mig(factors[:, [0, 2]]), abs=1e-12)


def test_mig_all_constant_factors_raise() -> None:
    with pytest.warns(ConstantFactorWarning), pytest.raises(ValueError, match="every factor"):
        mig(np.random.default_rng(0).normal(size=(10, 2)), np.zeros((10, 2), dtype=int))


@pytest.mark.parametrize(
    ("codes", "factors", "message"),
    [
        (np.array([[0.0, np.nan]] * 4), np.zeros((4, 1), int), "codes: contains NaN"),
        (np.array([[0.0, np.inf]] * 4), np.zeros((4, 1), int), "codes: contains an infinite"),
        (np.zeros(4), np.zeros((4, 1), int), "codes: expected a 2-D"),
        (np.zeros((4, 2)), np.zeros((4, 1)), "factors: expected integer"),
        (np.zeros((4, 2)), np.zeros((5, 1), int), "codes has 4 rows but factors has 5"),
    ],
)
def test_mig_bad_input_names_the_array(
    codes: np.ndarray, factors: np.ndarray, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        mig(codes, factors)
