"""DST and GMG: ε convention against POT, invariances, bounds, envelope gradient, robustness."""

from __future__ import annotations

import math
import warnings

import ot
import pytest
import torch

from gmgcore import costs, gap, gromov

F64 = torch.float64
TIGHT = {"tol": 1e-10, "max_iter": 20000, "max_inner": 20000, "inner_iterations": 10}


def _cloud(n: int = 24, d: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _orthogonal(d: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))[0]


def test_distortion_is_the_half_mean_squared_cost_difference() -> None:
    x, y = _cloud(6), _cloud(6, d=5, seed=2)
    C_x, C_y = costs.pairwise_cost(x, "sqeuclidean"), costs.pairwise_cost(y, "cosine")
    explicit = sum(0.5 * (C_x[i, j] - C_y[i, j]) ** 2 for i in range(6) for j in range(6)) / 36
    torch.testing.assert_close(gap.distortion(x, y, "sqeuclidean", "cosine"), explicit)


def test_epsilon_convention_matches_pot() -> None:
    """The gap's ε (½ convention, ε0·mean·mean) gives POT's coupling for POT's ε = 2ε."""
    x, y = _cloud(20, 2), torch.tanh(3 * _cloud(20, 3, seed=3))
    eps0 = 0.5
    res = gap.gromov_monge_gap(x, y, "scaled_sqeuclidean", "sqeuclidean", eps0, **TIGHT)
    C_x = costs.pairwise_cost(x, "scaled_sqeuclidean")
    C_y = costs.pairwise_cost(y, "sqeuclidean")
    torch.testing.assert_close(res.epsilon, eps0 * C_x.mean() * C_y.mean())
    torch.testing.assert_close(gap.solver_epsilon(res.epsilon), 2 * res.epsilon)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        T, log = ot.gromov.entropic_gromov_wasserstein(
            C_x.numpy(), C_y.numpy(), epsilon=float(2 * res.epsilon), tol=1e-8, max_iter=20000,
            stopThr=1e-9, numItermax=20000, log=True,
        )
    assert res.converged and not res.identity_won
    assert float((res.coupling - torch.from_numpy(T)).abs().sum()) <= 1e-4
    assert abs(float(res.gw) - 0.5 * log["gw_dist"]) <= 1e-4 * 0.5 * log["gw_dist"]
    torch.testing.assert_close(res.value, res.distortion - res.gw)


@pytest.mark.parametrize("eps0", [0.1, 0.01])
@pytest.mark.parametrize(("cost", "scale"), [
    ("sqeuclidean", 1.0), ("scaled_sqeuclidean", 2.5), ("cosine", 3.0),
])
def test_isometries_have_a_zero_gap_up_to_the_entropic_bias(
    cost: str, scale: float, eps0: float
) -> None:
    """Orthogonal maps (L2²), scaled orthogonal maps (ScL2², Cos): DST = 0 and
    -ε log n ≤ GMG ≤ 0, the bound being the entropic objective at the map's own coupling."""
    x = _cloud(24) - 0.3
    y = scale * x @ _orthogonal(3) + (0.7 if cost != "cosine" else 0.0)
    res = gap.gromov_monge_gap(x, y, cost, cost, eps0, **TIGHT)
    bias = float(res.epsilon) * math.log(24)
    assert float(res.distortion) < 1e-20
    assert -bias - 1e-12 <= float(res.value) <= 1e-12
    assert torch.isfinite(res.value)


@pytest.mark.parametrize("eps0", [0.1, 0.01])
def test_a_tearing_map_has_a_clear_positive_gap(eps0: float) -> None:
    """``T(x_i) = x_{i+5}`` tears every neighbourhood but maps the sample onto itself, so the
    minimal distortion is ~0 and GMG ≈ DST."""
    x = _cloud(24)
    res = gap.gromov_monge_gap(x, x.roll(5, 0), "sqeuclidean", "sqeuclidean", eps0, **TIGHT)
    assert float(res.distortion) > 0.05
    assert float(res.value) > 0.5 * float(res.distortion)
    assert float(res.value) > float(res.epsilon) * math.log(24)


@pytest.mark.parametrize("eps0", [0.3, 0.03])
@pytest.mark.parametrize("cost", costs.COST_NAMES)
def test_estimate_stays_between_minus_eps_log_n_and_dst(cost: str, eps0: float) -> None:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(16, 4, generator=g, dtype=F64)
    y = torch.tanh(x @ torch.randn(4, 6, generator=g, dtype=F64)) + 0.1 * torch.randn(
        16, 6, generator=g, dtype=F64)
    res = gap.gromov_monge_gap(x, y, cost, cost, eps0, max_iter=200, max_inner=200)
    bound = float(res.epsilon) * math.log(16)
    assert -bound - 1e-12 <= float(res.value) <= float(res.distortion) + 1e-12
    torch.testing.assert_close(res.gw, 0.5 * gromov.quadratic_cost(
        costs.pairwise_cost(x, cost)[None], costs.pairwise_cost(y, cost)[None],
        res.coupling[None])[0])


def test_envelope_gradient_matches_finite_differences() -> None:
    """d/dy [DST − E(P*(y))] at fixed ε equals the autograd gradient of ``value`` (P̄ detached)."""
    x, y0 = _cloud(12, 2), _cloud(12, 3, seed=4)
    C_x = costs.pairwise_cost(x, "sqeuclidean")
    eps = gap.gap_epsilon(C_x, costs.pairwise_cost(y0, "sqeuclidean"), 0.1)

    def run(y: torch.Tensor) -> gap.GapResult:
        C_y = costs.pairwise_cost(y, "sqeuclidean")
        return gap.gromov_monge_gap_from_costs(C_x, C_y, eps, tol=1e-13, max_iter=50000,
                                               max_inner=50000)

    y = y0.clone().requires_grad_(True)
    res = run(y)
    assert res.converged and not res.identity_won
    (grad,) = torch.autograd.grad(res.value, y)
    h = 1e-5
    for seed in range(3):
        d = torch.randn(y0.shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
        lo, hi = run(y0 - h * d), run(y0 + h * d)
        fd = ((hi.distortion - hi.gw_entropic) - (lo.distortion - lo.gw_entropic)) / (2 * h)
        torch.testing.assert_close((grad * d).sum(), fd.detach(), rtol=1e-5, atol=1e-9)


def test_gradient_reaches_the_map_only() -> None:
    x = _cloud(10).requires_grad_(True)
    y = (_cloud(10, seed=5) * 2).requires_grad_(True)
    res = gap.gromov_monge_gap(x, y, "sqeuclidean", "cosine", 0.1)
    res.value.backward()
    assert x.grad is None and y.grad is not None and torch.isfinite(y.grad).all()


def test_batched_costs_equal_separate_problems() -> None:
    xs = [_cloud(12, seed=s) for s in range(3)]
    ys = [torch.sin(3 * x) for x in xs]
    C_x = torch.stack([costs.pairwise_cost(x, "sqeuclidean") for x in xs])
    C_y = torch.stack([costs.pairwise_cost(y, "cosine") for y in ys])
    eps = gap.gap_epsilon(C_x, C_y, 0.3)
    batch = gap.gromov_monge_gap_from_costs(C_x, C_y, eps, **TIGHT)
    assert batch.value.shape == (3,) and batch.converged
    for b in range(3):
        one = gap.gromov_monge_gap_from_costs(C_x[b], C_y[b], eps[b], **TIGHT)
        torch.testing.assert_close(batch.value[b], one.value, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("eps0", [1e-3, 0.1])
def test_default_budget_in_fp32_is_finite_on_image_batches(eps0: float) -> None:
    """The training setting: fp32, n = 64, latent → 12288-dim images, default fixed budget."""
    g = torch.Generator().manual_seed(6)
    z = torch.randn(64, 10, generator=g).requires_grad_(True)
    images = torch.sigmoid(torch.tanh(z @ torch.randn(10, 32, generator=g)) @ torch.randn(
        32, 64 * 64 * 3, generator=g) / 8).reshape(64, 64, 64, 3)
    for cost in ("scaled_sqeuclidean", "cosine"):
        res = gap.gromov_monge_gap(z, images, cost, cost, eps0)
        assert res.value.dtype == torch.float32 and torch.isfinite(res.value)
        # 20 outer steps of 5 iterations, plus at most one block per step after a fold
        assert res.iterations <= 20 and res.inner_iterations <= 2 * 100
        (grad,) = torch.autograd.grad(res.value, images)
        assert torch.isfinite(grad).all()
        torch.testing.assert_close(res.coupling.sum(1), torch.full((64,), 1 / 64), rtol=1e-4,
                                   atol=0)


def test_degenerate_maps_give_finite_zero_gaps() -> None:
    x = _cloud(8)
    for y in (torch.zeros(8, 3, dtype=F64), x[:1].expand(8, 3)):
        res = gap.gromov_monge_gap(x, y, "sqeuclidean", "sqeuclidean", 0.1)
        assert torch.isfinite(res.value) and abs(float(res.value)) < 1e-12
    with pytest.raises(ValueError, match="init"):
        gap.gromov_monge_gap(x, x, "cosine", "cosine", 0.1, init="random")  # type: ignore[arg-type]


def test_identity_init_and_blend_are_valid_starts() -> None:
    """Centred inner products make the product coupling stationary (zero linearisation); a
    blend toward I/n escapes it, and the result never falls below the identity candidate."""
    x = _cloud(16) - 0.5
    y = torch.sin(2 * x)
    stuck = gap.gromov_monge_gap(x, y, "inner_product", "inner_product", 0.05, center=True)
    assert stuck.iterations == 1 and stuck.identity_won
    for init in ("identity", 0.01):
        res = gap.gromov_monge_gap(x, y, "inner_product", "inner_product", 0.05, center=True,
                                   init=init, max_iter=500, max_inner=500)
        assert float(res.gw_entropic) <= float(stuck.gw_entropic) + 1e-12


@pytest.mark.parametrize("shape", [(7, 7), (3, 6, 6)])
def test_envelope_value_gradients_match_autograd_of_the_expression(shape: tuple) -> None:
    g = torch.Generator().manual_seed(0)
    C_x, C_y = (torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
                for _ in range(2))
    P = torch.rand(shape, generator=g, dtype=torch.float64)
    weights = torch.randn(shape[:-2], generator=g, dtype=torch.float64)
    value = gap._EnvelopeValue.apply(C_x, C_y, P)
    expr = (gromov.linearization(C_x, C_y, P) * P).sum((-1, -2)) - (C_x * C_y).mean((-1, -2))
    torch.testing.assert_close(value, expr, rtol=1e-12, atol=1e-12)
    got = torch.autograd.grad((value * weights).sum(), (C_x, C_y))
    ref = torch.autograd.grad((expr * weights).sum(), (C_x, C_y))
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
