"""The solver's compiled CPU loops against the generic code that the torch backend runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gmgcore import costs, gromov, gromov_cpu


def _problem(B: int, n: int, m: int, dtype: np.dtype, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    S = (3.0 * rng.standard_normal((B, n, m))).astype(dtype)
    g = rng.standard_normal((B, 1, m)).astype(dtype)
    v = np.exp(0.3 * rng.standard_normal((B, m, 1))).astype(dtype)
    x = rng.random((B, n, m)).astype(dtype)
    return {"S": S, "g": g, "v": v, "x": x / x.sum(axis=(-1, -2), keepdims=True)}


def _floor(dtype: np.dtype) -> float:
    return math.log(float(np.finfo(dtype).tiny)) + 50.0


def _rtol(dtype: np.dtype) -> float:
    return 1e-5 if dtype == np.float32 else 1e-12


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("B", "n", "m"), [(1, 64, 64), (2, 7, 13)])
def test_kernel_matches_the_generic_code(dtype: np.dtype, B: int, n: int, m: int) -> None:
    a = _problem(B, n, m, dtype)
    a["S"][0, 1, 2] = -1e4  # clamped entry
    K = gromov._kernel(a["S"], a["g"], _floor(dtype), np, np.empty_like(a["S"]))
    ref = gromov._kernel(torch.from_numpy(a["S"]), torch.from_numpy(a["g"]), _floor(dtype), torch)
    np.testing.assert_allclose(K, ref.numpy(), rtol=_rtol(dtype), atol=0)
    assert K[0, 1, 2] == np.exp(dtype(_floor(dtype)))


def test_kernel_rows_with_nan_or_inf_are_not_finite() -> None:
    a = _problem(1, 5, 6, np.float64)
    a["S"][0, 1, 3], a["S"][0, 2, 0], a["S"][0, 3, 4] = np.nan, np.inf, -np.inf
    K = gromov._kernel(a["S"], a["g"], _floor(np.float64), np)
    assert not np.isfinite(K[0, 1]).any() and not np.isfinite(K[0, 2]).any()
    assert np.isfinite(K[0, [0, 3, 4]]).all() and K[0, 3, 4] > 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("count", [1, 5])
@pytest.mark.parametrize(("B", "n", "m"), [(1, 64, 64), (2, 7, 13)])
@pytest.mark.parametrize(("omega", "fresh"), [(1.0, True), (1.6, True), (1.6, False)])
def test_sinkhorn_block_matches_the_generic_code(dtype: np.dtype, count: int, B: int, n: int,
                                                 m: int, omega: float, fresh: bool) -> None:
    a = _problem(B, n, m, dtype, seed=count)
    u = np.random.default_rng(count).uniform(0.5, 2.0, (B, n, 1)).astype(dtype)
    K = gromov._kernel(a["S"], a["g"], _floor(dtype), np)
    got = gromov._sinkhorn_block(K, u, a["v"], count, 1 / n, 1 / m, omega, fresh, np)
    ref = gromov._sinkhorn_block(torch.from_numpy(K), torch.from_numpy(u),
                                 torch.from_numpy(a["v"]), count, 1 / n, 1 / m, omega, fresh,
                                 torch)
    for x, y in zip(got[:3], ref[:3], strict=True):
        assert x.shape == tuple(y.shape) and x.dtype == dtype
        np.testing.assert_allclose(x, y.numpy(), rtol=50 * _rtol(dtype), atol=0)
    assert got[3] == pytest.approx(ref[3], rel=50 * _rtol(dtype))
    assert got[4] == pytest.approx(ref[4], rel=50 * _rtol(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_over_relaxed_sinkhorn_reaches_the_plain_fixed_point_faster(dtype: np.dtype) -> None:
    """ω = 1.6 against plain Sinkhorn on a kernel whose plain rate is slow: the same scalings
    (up to the tolerance), in fewer iterations."""
    a = _problem(1, 40, 30, dtype, seed=4)
    K = gromov._kernel(4.0 * a["S"], a["g"], _floor(dtype), np)
    ones_u, v0 = np.ones((1, 40, 1), dtype), a["v"]

    def solve(omega: float) -> tuple[np.ndarray, int]:
        u, v, fresh, done = ones_u, v0, True, 0
        while done < 10000:
            u, v, err, *_ = gromov._sinkhorn_block(K, u, v, 5, 1 / 40, 1 / 30, omega, fresh, np)
            fresh, done = False, done + 5
            if err[0] < (1e-5 if dtype == np.float32 else 1e-12):
                break
        return u * K * v.swapaxes(-1, -2), done

    plain, n_plain = solve(1.0)
    relaxed, n_relaxed = solve(1.6)
    assert n_relaxed < 0.7 * n_plain
    assert np.abs(plain - relaxed).sum() < (1e-4 if dtype == np.float32 else 1e-10)


def test_relaxation_takes_youngs_factor_after_plain_blocks_and_falls_back_on_growth() -> None:
    # plain block, rate ρ = 0.81 per iteration → ω = 2 / (1 + √0.19)
    omega, failed = gromov_cpu.relaxation(1.0, 0.81**5, 1.0, 5, False, 1.8)
    assert omega == pytest.approx(2 / (1 + math.sqrt(0.19))) and not failed
    assert gromov_cpu.relaxation(1.0, 0.999**5, 1.0, 5, False, 1.8) == (1.8, False)  # capped
    assert gromov_cpu.relaxation(1.0, 0.1**5, 1.0, 5, False, 1.8) == (1.0, False)  # fast: plain
    assert gromov_cpu.relaxation(1.5, 2.0, 1.0, 5, False, 1.8) == (1.0, True)  # error grew
    assert gromov_cpu.relaxation(1.5, 0.5, 1.0, 5, False, 1.8) == (1.5, False)  # kept
    assert gromov_cpu.relaxation(1.0, 0.5, 1.0, 5, True, 1.8) == (1.0, True)  # failed: plain
    assert gromov_cpu.relaxation(1.0, 0.5, math.inf, 5, False, 1.8) == (1.0, False)  # no rate


def test_sinkhorn_block_reports_non_finite_scalings() -> None:
    a = _problem(1, 4, 4, np.float64)
    K = gromov._kernel(a["S"], a["g"], _floor(np.float64), np)
    K[0, 2] = 0.0  # an empty row: its scaling is p / 0 = inf
    u = np.ones((1, 4, 1))
    _, _, _, lo, hi = gromov._sinkhorn_block(K, u, a["v"], 3, 0.25, 0.25, 1.0, True, np)
    assert math.isnan(lo) and math.isnan(hi)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_finish_step_matches_the_generic_code(dtype: np.dtype) -> None:
    a = _problem(2, 9, 11, dtype)
    K = gromov._kernel(a["S"], a["g"], _floor(dtype), np)
    u, v, *_ = gromov._sinkhorn_block(K, np.ones((2, 9, 1), dtype), a["v"], 3, 1 / 9, 1 / 11,
                                      1.0, True, np)
    got = gromov._finish_step(K.copy(), u, v, a["x"], a["g"], np)
    t = [torch.from_numpy(z.copy()) for z in (K, u, v, a["x"], a["g"])]
    ref = gromov._finish_step(*t, torch)
    for x, y in zip(got, ref, strict=True):
        np.testing.assert_allclose(x, y.numpy(), rtol=10 * _rtol(dtype), atol=1e-7 * float(
            np.abs(x).max()))
    assert got[0].max() == 0.0  # the potential's gauge


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixed_budget_solve_agrees_across_backends(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(64, 10, generator=g), torch.randn(64, 30, generator=g)
    C_x, C_y = (torch.cdist(t, t).square().to(dtype) for t in (x, y))
    C_x, C_y = C_x / C_x.mean(), C_y / C_y.mean()
    budget = {"tol": 1e-5, "max_iter": 20, "inner_iterations": 5, "max_inner": 5}
    a = gromov.solve(C_x, C_y, 0.2, backend="numpy", **budget)
    b = gromov.solve(C_x, C_y, 0.2, backend="torch", **budget)
    assert (a.iterations, a.inner_iterations) == (b.iterations, b.inner_iterations)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    assert float((a.coupling - b.coupling).abs().sum()) < tol
    assert float(a.cost) == pytest.approx(float(b.cost), rel=tol)


def test_exp_matches_numpy_within_two_ulp() -> None:
    x = np.concatenate([-np.logspace(-12, np.log10(658.0), 20001), [0.0, -0.5 * math.log(2)]])
    got = np.array([gromov_cpu._exp_nonpositive(t) for t in x[::7]])
    ref = np.exp(x[::7])
    assert np.all(np.abs(got - ref) <= 2 * np.spacing(ref))
    loop = x.copy()  # the vectorised loop the kernel uses, NaN kept
    loop[5] = np.nan
    gromov_cpu._exp_in_place(loop)
    ref = np.exp(x)
    assert np.isnan(loop[5])
    keep = np.arange(x.size) != 5
    assert np.all(np.abs(loop - ref)[keep] <= 2 * np.spacing(ref)[keep])


def test_float32_exp_within_one_ulp_of_exact() -> None:
    # float32 kernels take exp in float32 arithmetic, from the fp32 clamp (-37.3) down to -87
    x = np.concatenate([-np.logspace(-8, np.log10(87.0), 20001), [0.0, -0.5 * math.log(2)]])
    x32 = x.astype(np.float32)
    got = x32.copy()
    gromov_cpu._exp_in_place(got)
    exact = np.exp(x32.astype(np.float64))
    assert got.dtype == np.float32
    assert np.all(np.abs(got - exact) <= np.spacing(exact.astype(np.float32)))


def test_small_solve_matches_lapack_and_reports_singular_systems() -> None:
    rng = np.random.default_rng(0)
    G = rng.standard_normal((5, 5))
    x, ok = gromov_cpu._solve_small(G, np.ones(5))
    assert ok
    np.testing.assert_allclose(x, np.linalg.solve(G, np.ones(5)), rtol=1e-12)
    assert not gromov_cpu._solve_small(np.ones((3, 3)) - np.eye(3) * 0.0, np.ones(3))[1]


def _count_compiled_loops(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that gains an entry whenever a solve runs the compiled loop."""
    calls: list[int] = []
    compiled = gromov_cpu.solve_single
    monkeypatch.setattr(gromov_cpu, "solve_single", lambda *a: calls.append(1) or compiled(*a))
    return calls


def _points(n: int, d_x: int, m: int, d_y: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d_x, generator=g, dtype=torch.float64),
            torch.randn(m, d_y, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("low_x", "low_y"), [(False, False), (True, False), (False, True),
                                              (True, True)])
@pytest.mark.parametrize("eps", [0.5, 0.1])
def test_compiled_fixed_budget_loop_follows_the_generic_iterates(
    dtype: torch.dtype, low_x: bool, low_y: bool, eps: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_compiled_loops(monkeypatch)
    x, y = _points(48, 4, 40, 6, seed=1)
    C_x, C_y = (costs.pairwise_cost(t, "scaled_sqeuclidean").to(dtype) for t in (x, y))
    fx = tuple(t.to(dtype) for t in costs.pairwise_cost_factors(x, "scaled_sqeuclidean"))
    fy = tuple(t.to(dtype) for t in costs.pairwise_cost_factors(y, "scaled_sqeuclidean"))
    budget = {"tol": 1e-7, "max_iter": 40, "inner_iterations": 5, "max_inner": 5,
              "factors_x": fx if low_x else None, "factors_y": fy if low_y else None}
    a = gromov.solve(C_x, C_y, eps, backend="numpy", **budget)
    b = gromov.solve(C_x, C_y, eps, backend="torch", **budget)
    assert calls == [1]
    assert (a.iterations, a.inner_iterations) == (b.iterations, b.inner_iterations)
    # fp32: the backends round differently (sweeps against BLAS products), and 40 steps of this
    # unconverged budget, Anderson-extrapolated from a change of 1e-2, amplify it: 4e-7 to 3.4e-5
    # apart across these cases (2e-7 after one step)
    tol = 1e-4 if dtype == torch.float32 else 1e-11
    assert float((a.coupling - b.coupling).abs().sum()) < tol
    assert bool(a.converged) == bool(b.converged)
    # the end of the solve (rounding, cost, entropic cost) is compiled too
    assert float(a.cost) == pytest.approx(float(b.cost), rel=100 * tol)
    assert float(a.entropic_cost) == pytest.approx(float(b.entropic_cost), rel=100 * tol)
    assert float(a.coupling.sum(1).sub(1 / 48).abs().max()) < (1e-6 if tol > 1e-8 else 1e-15)


@pytest.mark.parametrize("low_rank", [True, False])
@pytest.mark.parametrize("n", [128, 256, 320])  # 320: C_yᵀ read as a transposed view
def test_a_large_problem_runs_compiled_only_with_a_low_rank_side(
    n: int, low_rank: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dense products inside the compiled loop slow its sweeps from n = 128 on (docs/gw.md), so
    there only a problem with a cost in low-rank form runs compiled (up to n = 256); both paths
    reach the torch backend's iterates."""
    calls = _count_compiled_loops(monkeypatch)
    x, y = _points(n, 10, n, 30, seed=3)
    C_x, C_y = (costs.pairwise_cost(t, "scaled_sqeuclidean") for t in (x, y))
    eps = 2 * 0.1 * float(C_x.mean() * C_y.mean())
    fx = costs.pairwise_cost_factors(x, "scaled_sqeuclidean") if low_rank else None
    a = gromov.solve(C_x, C_y, eps, tol=1e-8, factors_x=fx, backend="numpy")
    b = gromov.solve(C_x, C_y, eps, tol=1e-8, factors_x=fx, backend="torch")
    assert calls == ([1] if low_rank else [])
    assert (a.iterations, a.inner_iterations) == (b.iterations, b.inner_iterations)
    assert float((a.coupling - b.coupling).abs().sum()) < 1e-10
    assert float(a.cost) == pytest.approx(float(b.cost), rel=1e-9)


def test_compiled_loop_folds_like_the_generic_loop() -> None:
    """fp32 near-isometry at a small ε, from the product coupling given as ``init`` (the first
    step then starts from g = 0; the default start balances its kernel and does not fold here):
    the scalings pass fp32's fold limit, and one outer step gets the extra block (105 Sinkhorn
    iterations in 20 steps). A batch of two copies runs the generic loop; a single problem runs
    the compiled one."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 10, generator=g)
    rotation = torch.linalg.qr(torch.randn(10, 10, generator=g))[0]
    y = x @ rotation + 0.05 * torch.randn(64, 10, generator=g)
    C_x, C_y = (costs.pairwise_cost(t, "scaled_sqeuclidean") for t in (x, y))
    eps = 2 * 0.03 * float(C_x.abs().mean() * C_y.abs().mean())
    budget = {"tol": 1e-5, "max_iter": 20, "inner_iterations": 5, "max_inner": 5}
    init = torch.full((64, 64), 1 / 64**2)
    one = gromov.solve(C_x, C_y, eps, init, **budget)
    two = gromov.solve(torch.stack([C_x, C_x]), torch.stack([C_y, C_y]), eps,
                       torch.stack([init, init]), **budget)
    assert one.inner_iterations == two.inner_iterations == 105
    assert one.iterations == two.iterations == 20
    assert float((one.coupling - two.coupling[0]).abs().sum()) < 1e-4


def _near_isometry(n: int, eps0: float, dtype: torch.dtype, seed: int
                   ) -> tuple[torch.Tensor, torch.Tensor, float]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g, dtype=torch.float64)
    rotation = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64))[0]
    y = x @ rotation + 0.05 * torch.randn(n, 10, generator=g, dtype=torch.float64)
    C_x, C_y = (costs.pairwise_cost(t, "scaled_sqeuclidean").to(dtype) for t in (x, y))
    return C_x, C_y, 2 * eps0 * float(C_x.mean() * C_y.mean())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_newton_step_matches_the_generic_code(dtype: np.dtype) -> None:
    rng = np.random.default_rng(4)
    K = np.exp(-3.0 * rng.random((9, 7))).astype(dtype)
    u, v = rng.random((1, 9, 1)).astype(dtype) + 0.5, rng.random((1, 7, 1)).astype(dtype) + 0.5
    p, q = dtype(1 / 9), dtype(1 / 7)
    ref = gromov._newton_step(K[None], K.T[None], u, v, 1 / 9, 1 / 7, np)
    got = gromov_cpu._newton_step(K, u.reshape(9), v.reshape(7), p, q,
                                  gromov._newton_damping(np.dtype(dtype)))
    assert got[3]
    rtol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(got[0], ref[0].reshape(9), rtol=rtol)
    np.testing.assert_allclose(got[1], ref[1].reshape(7), rtol=rtol)
    assert float(got[2]) == pytest.approx(float(ref[2][0]), rel=rtol)


@pytest.mark.parametrize("eps0", [0.01, 0.001])
def test_compiled_loop_takes_the_generic_newton_steps(
    eps0: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At a small ε Sinkhorn is too slow and both loops switch to Newton steps: in fp64 the
    compiled loop (a single problem) repeats the torch backend's counts and coupling. In fp32
    the Newton steps' acceptance sits at rounding level, so counts differ between any two
    backends (numpy and torch too); the couplings still agree."""
    newton = []
    generic = gromov._newton_step
    monkeypatch.setattr(gromov, "_newton_step", lambda *a: newton.append(1) or generic(*a))
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        C_x, C_y, eps = _near_isometry(48, eps0, dtype, seed=0)
        budget = {"tol": 1e-6, "max_iter": 300}
        b = gromov.solve(C_x, C_y, eps, backend="torch", **budget)
        a = gromov.solve(C_x, C_y, eps, backend="numpy", **budget)
        assert newton, "the torch backend took no Newton step"
        assert bool(a.converged) and bool(b.converged)
        if dtype == torch.float64:
            assert (a.iterations, a.inner_iterations) == (b.iterations, b.inner_iterations)
        assert float((a.coupling - b.coupling).abs().sum()) < tol
        newton.clear()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("low_rank", [False, True])
def test_round_and_score_matches_the_generic_code(dtype: np.dtype, low_rank: bool) -> None:
    """The compiled end of a solve against the generic one; ``C_y`` is made non-symmetric,
    which both use as given."""
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((9, 3)), rng.standard_normal((7, 4))
    C_x, C_y = (costs.pairwise_cost(torch.from_numpy(t), "scaled_sqeuclidean").numpy()
                .astype(dtype)[None] for t in (x, y))
    C_y = C_y + (0.1 * rng.random((1, 7, 7))).astype(dtype)
    fx = tuple(f.numpy().astype(dtype)[None] for f in costs.pairwise_cost_factors(
        torch.from_numpy(x), "scaled_sqeuclidean")) if low_rank else None
    P = rng.random((1, 9, 7)).astype(dtype) / 63  # marginals off by up to 50 %
    # the whole end compiled (the compiled loop), and compiled rounding and cost around a numpy
    # cross term (the generic loop on one CPU problem), against the torch backend's code
    none = np.zeros((1, 1), dtype)
    Ax, BxT = (fx[0][0], np.ascontiguousarray(fx[1][0].T)) if low_rank else (none, none)
    operands = (C_x[0], C_y[0], np.ascontiguousarray(C_y[0].T), Ax, BxT, none, none, low_rank,
                False)
    got_P, got_cost = gromov_cpu.round_and_score(P, *operands)
    np_P, np_cost = gromov._round_and_score(C_x, C_y, P, fx, None, np)
    ref_P, ref_cost = (t.numpy() for t in gromov._round_and_score(
        torch.from_numpy(C_x), torch.from_numpy(C_y), torch.from_numpy(P),
        None if fx is None else tuple(torch.from_numpy(f) for f in fx), None, torch))
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(ref_P, gromov.round_to_coupling(torch.from_numpy(P), 9, 7), rtol=0)
    for P_, cost in ((got_P, got_cost), (np_P, np_cost[0])):
        np.testing.assert_allclose(P_, ref_P, rtol=rtol)
        np.testing.assert_allclose(cost, ref_cost[0], rtol=rtol)
    kl = (ref_P * np.log(ref_P)).sum() + math.log(63)  # a difference of terms near log 63
    for value in (gromov._kl(np_P, np), gromov._kl(torch.from_numpy(ref_P), torch).numpy()):
        np.testing.assert_allclose(value, kl, rtol=0, atol=rtol * math.log(63))


def test_all_finite_finds_nan_and_inf() -> None:
    a = np.ones((5, 7), np.float32)
    assert gromov_cpu.all_finite(a)
    for bad in (np.nan, np.inf, -np.inf):
        b = a.copy()
        b[3, 6] = bad
        assert not gromov_cpu.all_finite(b)


def _marginal_error(K: np.ndarray, u: np.ndarray, v: np.ndarray) -> float:
    """L1 error of both marginals of ``diag(u) K diag(v)`` (uniform targets), in float64."""
    n, m = K.shape
    u, v = u.astype(np.float64), v.astype(np.float64)
    return float(np.abs(u * (K @ v) - 1 / n).sum() + np.abs(v * (K.T @ u) - 1 / m).sum())


def test_fp32_newton_step_near_convergence_still_converges() -> None:
    """Near the solution a Newton step's line search compares dual values that differ by about
    the squared marginal error, far below fp32's rounding of a sum of n·m terms. The compiled
    step sums them in float64, so it keeps its quadratic convergence in fp32; summed in fp32
    it rejected good steps at random and stalled (2,007 Newton steps instead of 41 on an
    n = 96 problem)."""
    n = 96
    for seed in range(8):
        rng = np.random.default_rng(seed)
        K = np.exp(-8.0 * rng.random((n, n)))
        u, v = np.ones(n), np.ones(n)
        for _ in range(5000):  # the fp64 solution
            u = (1 / n) / (K @ v)
            v = (1 / n) / (K.T @ u)
        u32 = (u * np.exp(2e-5 * rng.standard_normal(n))).astype(np.float32)
        v32 = v.astype(np.float32)
        K32, p = K.astype(np.float32), np.float32(1 / n)

        before = _marginal_error(K, u32, v32)
        u2, v2, _, ok = gromov_cpu._newton_step(K32, u32, v32, p, p,
                                                gromov._newton_damping(np.dtype(np.float32)))
        assert ok
        after = _marginal_error(K, u2, v2)
        assert after < 0.1 * before, (seed, before, after)

