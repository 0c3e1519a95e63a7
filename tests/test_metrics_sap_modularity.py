"""SAP, modularity and explicitness: closed forms, oracles, invariances, degenerate cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import mutual_info_score

from gmgcore.metrics import (
    ConstantFactorWarning,
    modularity_explicitness,
    modularity_from_mutual_info,
    sap,
    sap_from_scores,
)


def _factors(n: int, sizes: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, s, size=n) for s in sizes], axis=1)


SIZES = (3, 5, 4)


@pytest.fixture(scope="module")
def split() -> tuple[np.ndarray, np.ndarray]:
    return _factors(1000, SIZES, 0), _factors(500, SIZES, 1)


def test_sap_continuous_is_the_gap_of_squared_correlations(split) -> None:
    y_tr, y_te = split
    rng = np.random.default_rng(3)
    z_tr = y_tr @ rng.normal(size=(3, 4)) + rng.normal(size=(1000, 4))
    result = sap(z_tr, y_tr, z_tr[:500], y_te, continuous=True)
    corr = np.corrcoef(z_tr.T, y_tr.T)[:4, 4:] ** 2
    np.testing.assert_allclose(result.score_matrix, corr, atol=1e-12)
    top = np.sort(corr, axis=0)
    assert result["sap"] == pytest.approx(np.mean(top[-1] - top[-2]), abs=1e-12)


def test_sap_oracles_identity_zeros_duplicates(split) -> None:
    y_tr, y_te = split
    z_tr, z_te = y_tr.astype(float), y_te.astype(float)
    assert 0.9 <= sap(z_tr, y_tr, z_te, y_te, continuous=True)["sap"] <= 1.0
    assert sap(np.zeros((1000, 3)), y_tr, np.zeros((500, 3)), y_te)["sap"] == 0.0
    assert sap(np.zeros((1000, 3)), y_tr, np.zeros((500, 3)), y_te, True)["sap"] == 0.0
    dup = sap(np.hstack([z_tr, z_tr]), y_tr, np.hstack([z_te, z_te]), y_te, continuous=True)
    assert dup["sap"] == pytest.approx(0.0, abs=1e-12)


def test_sap_discrete_identity_beats_noise_and_constant_code_scores_zero(split) -> None:
    y_tr, y_te = split
    z_tr, z_te = y_tr.astype(float), y_te.astype(float)
    z_tr[:, 1], z_te[:, 1] = 2.0, 2.0
    result = sap(z_tr, y_tr, z_te, y_te)
    assert not result.score_matrix[1].any()
    noise = np.random.default_rng(4).normal(size=(1500, 3))
    assert result["sap"] > sap(noise[:1000], y_tr, noise[1000:], y_te)["sap"] + 0.1
    perm = sap(z_tr[:, [2, 0, 1]], y_tr, z_te[:, [2, 0, 1]], y_te)
    np.testing.assert_allclose(perm.score_matrix, result.score_matrix[[2, 0, 1]])


def test_sap_one_code_and_known_matrix() -> None:
    assert sap_from_scores(np.array([[0.7, 0.2]])) == pytest.approx(0.45)
    s = np.array([[0.9, 0.1], [0.4, 0.6], [0.5, 0.0]])
    assert sap_from_scores(s) == pytest.approx(((0.9 - 0.5) + (0.6 - 0.1)) / 2)


def test_sap_drops_constant_factor(split) -> None:
    y_tr, y_te = split
    y_tr, y_te = y_tr.copy(), y_te.copy()
    y_tr[:, 0] = 2
    with pytest.warns(ConstantFactorWarning, match="factor 0"):
        result = sap(y_tr.astype(float), y_tr, y_te.astype(float), y_te, continuous=True)
    assert result.factor_indices == (1, 2) and result.score_matrix.shape == (3, 2)


@pytest.mark.parametrize(
    ("m", "expected"),
    [
        (np.eye(3), 1.0),
        (np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), 2.0 / 3.0),
        (np.zeros((4, 3)), 0.0),
        (np.array([[1.0, 1.0]]), 0.0),
        (np.array([[2.0, 1.0, 0.0]]), 1.0 - 1.0 / (4.0 * 2.0)),
        (np.array([[0.5], [0.0]]), 0.5),
    ],
    ids=["diagonal", "empty-code", "zero", "two-equal", "closed-form", "one-factor"],
)
def test_modularity_from_mutual_info(m: np.ndarray, expected: float) -> None:
    assert modularity_from_mutual_info(m) == pytest.approx(expected, abs=1e-12)


def test_modularity_explicitness_identity_and_reference_mi(split) -> None:
    y_tr, y_te = split
    result = modularity_explicitness(y_tr.astype(float), y_tr, y_te.astype(float), y_te)
    assert result["explicitness_train"] > 0.95 and result["explicitness_test"] > 0.95
    m = np.array([[mutual_info_score(y_tr[:, j], y_tr[:, i]) for j in range(3)] for i in range(3)])
    np.testing.assert_allclose(result.mutual_info, m, atol=1e-12)
    assert result["modularity"] == pytest.approx(modularity_from_mutual_info(m), abs=1e-12)
    assert result["modularity"] > 0.99


def test_constant_codes_give_zero_modularity_and_chance_explicitness(split) -> None:
    y_tr, y_te = split
    result = modularity_explicitness(np.ones((1000, 2)), y_tr, np.ones((500, 2)), y_te)
    assert result["modularity"] == 0.0
    assert result["explicitness_train"] == pytest.approx(0.5)
    assert result["explicitness_test"] == pytest.approx(0.5)


def test_explicitness_is_invariant_to_code_permutation_and_scale(split) -> None:
    y_tr, y_te = split
    rng = np.random.default_rng(6)
    mix = rng.normal(size=(3, 4))
    z_tr = y_tr @ mix + rng.normal(size=(1000, 4))
    z_te = y_te @ mix + rng.normal(size=(500, 4))
    base = modularity_explicitness(z_tr, y_tr, z_te, y_te)
    perm, scale = np.array([1, 3, 0, 2]), np.array([2.0, -0.5, 3.0, 1.0])
    moved = modularity_explicitness(z_tr[:, perm] * scale, y_tr, z_te[:, perm] * scale, y_te)
    for key in base:
        assert moved[key] == pytest.approx(base[key], abs=1e-6)


def test_explicitness_with_a_class_missing_from_the_test_split(split) -> None:
    y_tr, y_te = split
    keep = y_te[:, 1] != 4
    z_tr, z_te = y_tr.astype(float), y_te[keep].astype(float)
    result = modularity_explicitness(z_tr, y_tr, z_te, y_te[keep])
    assert 0.9 < result["explicitness_test"] <= 1.0
