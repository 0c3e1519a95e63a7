"""DCI: disentanglement_lib's importance-matrix oracles, a scipy reference, end-to-end checks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import entropy as scipy_entropy

from gmgcore.metrics import ConstantFactorWarning, completeness, dci, disentanglement

LN2_OVER_LN10 = np.log(2) / np.log(10)


def _reference_d(r: np.ndarray) -> float:
    """disentanglement_lib's formula written with scipy's entropy (normalizing its input)."""
    per_code = 1.0 - scipy_entropy(r.T + 1e-11, base=r.shape[1])
    w = np.ones_like(r) if r.sum() == 0 else r
    return float(np.sum(per_code * w.sum(axis=1) / w.sum()))


@pytest.mark.parametrize(
    ("r", "d", "c"),
    [
        (np.diag(5.0 * np.ones(5)), 1.0, 1.0),
        (np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), 1.0, 1.0),
        (np.zeros((10, 10)), 0.0, 0.0),
        (np.vstack([np.diag(5.0 * np.ones(5))] * 2), 1.0, 1.0 - LN2_OVER_LN10),
        (np.hstack([np.diag(5.0 * np.ones(5))] * 2), 1.0 - LN2_OVER_LN10, 1.0),
    ],
    ids=["diagonal", "empty-code", "zero", "codes-stacked", "factors-stacked"],
)
def test_importance_matrix_oracles(r: np.ndarray, d: float, c: float) -> None:
    assert disentanglement(r) == pytest.approx(d, abs=1e-9)
    assert completeness(r) == pytest.approx(c, abs=1e-9)


def test_formulas_match_scipy_reference_on_random_matrices() -> None:
    rng = np.random.default_rng(0)
    for shape in [(10, 5), (3, 7), (6, 6)]:
        r = rng.uniform(size=shape) ** 3
        assert disentanglement(r) == pytest.approx(_reference_d(r), abs=1e-12)
        assert completeness(r) == pytest.approx(_reference_d(r.T), abs=1e-12)


def test_single_factor_or_single_code_give_one() -> None:
    assert disentanglement(np.array([[0.2], [0.8]])) == 1.0
    assert completeness(np.array([[0.3, 0.7]])) == 1.0
    assert completeness(np.array([[0.2], [0.8]])) < 1.0


def _factors(n: int, sizes: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, s, size=n) for s in sizes], axis=1)


SIZES = (2, 3, 2)


def test_identity_representation_scores_near_one() -> None:
    y_tr, y_te = _factors(200, SIZES, 0), _factors(100, SIZES, 1)
    result = dci(y_tr.astype(float), y_tr, y_te.astype(float), y_te)
    assert 0.9 <= result["disentanglement"] <= 1.0
    assert 0.9 <= result["completeness"] <= 1.0
    assert result["informativeness_test"] == pytest.approx(1.0)
    assert result.importance.shape == (3, 3)
    np.testing.assert_allclose(result.importance.sum(axis=0), 1.0)


def test_zero_codes_score_zero() -> None:
    y_tr, y_te = _factors(200, SIZES, 0), _factors(100, SIZES, 1)
    result = dci(np.zeros((200, 3)), y_tr, np.zeros((100, 3)), y_te)
    assert result["disentanglement"] == 0.0 and result["completeness"] == 0.0
    assert not result.importance.any()


def test_duplicated_latents_lower_completeness() -> None:
    y_tr, y_te = _factors(200, SIZES, 0), _factors(100, SIZES, 1)
    z_tr, z_te = y_tr.astype(float), y_te.astype(float)
    single = dci(z_tr, y_tr, z_te, y_te)
    double = dci(np.hstack([z_tr, z_tr]), y_tr, np.hstack([z_te, z_te]), y_te, seed=3)
    assert double["completeness"] < single["completeness"] - 0.1


def test_constant_code_gets_zero_importance_and_permutation_moves_rows() -> None:
    # Trees break ties between equally good splits by feature order, so a permutation of the
    # codes moves the rows of R up to small differences, not exactly.
    rng = np.random.default_rng(2)
    y_tr, y_te = _factors(200, SIZES, 0), _factors(100, SIZES, 1)
    mix = rng.normal(size=(3, 4))
    z_tr = y_tr @ mix + 0.3 * rng.normal(size=(200, 4))
    z_te = y_te @ mix + 0.3 * rng.normal(size=(100, 4))
    z_tr[:, 2], z_te[:, 2] = 1.5, 1.5
    base = dci(z_tr, y_tr, z_te, y_te)
    assert not base.importance[2].any()
    perm = np.array([3, 0, 2, 1])
    moved = dci(z_tr[:, perm], y_tr, z_te[:, perm], y_te)
    np.testing.assert_allclose(moved.importance, base.importance[perm], atol=0.02)
    for key in base:
        assert moved[key] == pytest.approx(base[key], abs=0.02)


def test_constant_factor_is_dropped_with_warning() -> None:
    y_tr, y_te = _factors(100, (2, 1, 3), 0), _factors(50, (2, 1, 3), 1)
    with pytest.warns(ConstantFactorWarning, match="factors_train: factor 1"):
        result = dci(y_tr.astype(float), y_tr, y_te.astype(float), y_te)
    assert result.factor_indices == (0, 2)
    assert result.importance.shape == (3, 2)


def test_one_code_and_one_factor() -> None:
    y_tr, y_te = _factors(100, (3,), 0), _factors(50, (3,), 1)
    result = dci(y_tr.astype(float), y_tr, y_te.astype(float), y_te)
    assert result["disentanglement"] == 1.0 and result["completeness"] == 1.0


def test_nan_codes_raise_naming_the_array() -> None:
    y = _factors(20, SIZES, 0)
    z = np.zeros((20, 3))
    bad = z.copy()
    bad[5, 1] = np.nan
    with pytest.raises(ValueError, match="codes_test: contains NaN"):
        dci(z, y, bad, y)


def test_unknown_backend_is_rejected() -> None:
    y = _factors(20, SIZES, 0)
    with pytest.raises(ValueError, match="unknown DCI backend 'xgb'"):
        dci(y.astype(float), y, y.astype(float), y, backend="xgb")  # type: ignore[arg-type]


FAST_BOUND = 0.02  # |D - D_exact| and |C - C_exact|, documented in docs/metrics.md


def _small_codes(kind: str) -> tuple[np.ndarray, ...]:
    """600 / 200 samples of 5 codes for factors of sizes (2, 3, 2, 6): a noisy near-diagonal
    mix, or a rotation; the last code is near-constant (a collapsed dimension)."""
    rng = np.random.default_rng(5)
    sizes = (*SIZES, 6)
    y_tr, y_te = _factors(600, sizes, 0), _factors(200, sizes, 1)
    if kind == "rotated":
        mix, noise = np.linalg.qr(rng.normal(size=(5, 5)))[0][:4], 0.1
    else:
        mix, noise = np.eye(4, 5) + 0.2 * rng.normal(size=(4, 5)), 0.5
    mix[:, 4] = 0.0
    z_tr = y_tr @ mix + noise * rng.normal(size=(600, 5)) * [1, 1, 1, 1, 1e-3]
    z_te = y_te @ mix + noise * rng.normal(size=(200, 5)) * [1, 1, 1, 1, 1e-3]
    return z_tr, y_tr, z_te, y_te


@pytest.mark.parametrize("kind", ["noisy", "rotated"])
def test_fast_backend_agrees_with_exact(kind: str) -> None:
    split = _small_codes(kind)
    exact = dci(*split, backend="exact")
    fast = dci(*split, backend="fast")
    assert fast["disentanglement"] == pytest.approx(exact["disentanglement"], abs=FAST_BOUND)
    assert fast["completeness"] == pytest.approx(exact["completeness"], abs=FAST_BOUND)
    for key in ("informativeness_train", "informativeness_test"):
        assert fast[key] == pytest.approx(exact[key], abs=0.02)
    np.testing.assert_allclose(fast.importance, exact.importance, atol=0.03)
    np.testing.assert_allclose(fast.importance.sum(axis=0), 1.0)


def test_fast_backend_keeps_the_oracles() -> None:
    y_tr, y_te = _factors(600, SIZES, 0), _factors(200, SIZES, 1)
    ident = dci(y_tr.astype(float), y_tr, y_te.astype(float), y_te, backend="fast")
    assert ident["disentanglement"] > 0.9 and ident["completeness"] > 0.9
    assert ident["informativeness_test"] == 1.0
    zero = dci(np.zeros((600, 3)), y_tr, np.zeros((200, 3)), y_te, backend="fast")
    exact_zero = dci(np.zeros((600, 3)), y_tr, np.zeros((200, 3)), y_te)
    assert zero["disentanglement"] == 0.0 and not zero.importance.any()
    assert dict(zero) == dict(exact_zero)
    z = np.hstack([y_tr.astype(float), np.full((600, 1), 2.0)])
    z_te = np.hstack([y_te.astype(float), np.full((200, 1), 2.0)])
    assert not dci(z, y_tr, z_te, y_te, backend="fast").importance[3].any()


def test_fast_backend_is_deterministic_across_thread_counts() -> None:
    split = _small_codes("rotated")
    one = dci(*split, backend="fast", seed=3, n_jobs=1)
    two = dci(*split, backend="fast", seed=3, n_jobs=2)
    assert dict(one) == dict(two)
    np.testing.assert_array_equal(one.importance, two.importance)


def test_fast_backend_breaks_ties_between_duplicated_codes_at_random() -> None:
    # Every split on code 0 is tied with the same split on its copy: scikit-learn gives the
    # tie to a random code, so the importance is shared, not all on the first copy.
    y_tr, y_te = _factors(400, (4,), 0), _factors(100, (4,), 1)
    rng = np.random.default_rng(0)
    z = y_tr + rng.normal(size=(400, 1))
    result = dci(np.hstack([z, z]), y_tr, np.hstack([z[:100], z[:100]]), y_te, backend="fast")
    assert result.importance[:, 0] == pytest.approx([0.5, 0.5], abs=0.15)
