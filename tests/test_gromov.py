"""Entropic GW solver: POT agreement, closed forms, marginals, robustness, backends."""

from __future__ import annotations

import math
import warnings

import numpy as np
import ot
import pytest
import torch

from gmgcore import costs, gromov, gromov_cpu

F64 = torch.float64


def _clouds(n: int, m: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared-distance matrices of two unrelated clouds (2-D and 3-D), scaled to mean 1."""
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, 2, generator=g, dtype=F64)
    b = torch.randn(m, 3, generator=g, dtype=F64)
    scaled = "scaled_sqeuclidean"
    return costs.pairwise_cost(a, scaled), costs.pairwise_cost(b, scaled)


def _pot(C_x: torch.Tensor, C_y: torch.Tensor, eps: float, init: torch.Tensor | None) -> tuple:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        T, log = ot.gromov.entropic_gromov_wasserstein(
            C_x.numpy(), C_y.numpy(), loss_fun="square_loss", epsilon=eps,
            G0=None if init is None else init.numpy(), tol=1e-8, max_iter=20000,
            stopThr=1e-9, numItermax=20000, log=True,
        )
    return torch.from_numpy(T), float(log["gw_dist"])


def _blend(n: int, m: int, weight: float) -> torch.Tensor:
    P = torch.full((n, m), 1.0 / (n * m), dtype=F64)
    k = min(n, m)
    P[:k, :k] += weight * (torch.eye(k, dtype=F64) / n - 1.0 / (n * m))
    return P / P.sum(1, keepdim=True) / n  # rows exact; columns exact when n == m


@pytest.mark.parametrize(("n", "m", "eps", "init"), [
    (20, 20, 1.0, None), (20, 20, 0.5, 0.5), (16, 24, 0.5, None),
])
def test_matches_pot(n: int, m: int, eps: float, init: float | None) -> None:
    C_x, C_y = _clouds(n, m)
    P0 = None if init is None else _blend(n, m, init)
    T, gw_dist = _pot(C_x, C_y, eps, P0)
    res = gromov.solve(C_x, C_y, eps, P0, tol=1e-10, max_iter=20000, max_inner=20000)
    assert bool(res.converged)
    assert float((res.coupling - T).abs().sum()) <= 1e-4
    assert abs(float(res.cost) - gw_dist) <= 1e-4 * abs(gw_dist)


def test_costs_against_the_explicit_four_index_sum() -> None:
    C_x, C_y = _clouds(7, 5, seed=1)
    res = gromov.solve(C_x, C_y, 0.3, tol=1e-10)
    P = res.coupling
    L = (C_x[:, None, :, None] - C_y[None, :, None, :]) ** 2  # [i, j, k, l]
    quad = torch.einsum("ijkl,ij,kl->", L, P, P)
    kl = (P * torch.log(P * 35)).sum()
    torch.testing.assert_close(res.cost, quad)
    torch.testing.assert_close(res.entropic_cost, quad + 0.3 * kl)


@pytest.mark.parametrize(("low_x", "low_y"), [(False, False), (True, False), (False, True),
                                             (True, True)])
def test_the_cross_term_from_the_reduced_form_matches_the_full_linearisation(
    low_x: bool, low_y: bool
) -> None:
    """``⟨C_x P C_yᵀ, P⟩`` computed as ``⟨T, A_xᵀ P A_y⟩`` equals the sum over the full
    ``[n, m]`` linearisation, with either side, both or neither in low-rank form."""
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(9, 3, generator=g, dtype=F64), torch.randn(7, 4, generator=g, dtype=F64)
    C_x, C_y = (costs.pairwise_cost(t, "sqeuclidean")[None] for t in (x, y))
    fx = tuple(f[None] for f in costs.pairwise_cost_factors(x, "sqeuclidean")) if low_x else None
    fy = tuple(f[None] for f in costs.pairwise_cost_factors(y, "sqeuclidean")) if low_y else None
    P = torch.rand(1, 9, 7, generator=g, dtype=F64) / 63
    full = (C_x @ P @ C_y.mT * P).sum(dim=(-1, -2))
    torch.testing.assert_close(gromov.cross_term(C_x, C_y, P, fx, fy), full)
    got = gromov.cross_term(C_x.numpy(), C_y.numpy(), P.numpy(),
                            None if fx is None else tuple(f.numpy() for f in fx),
                            None if fy is None else tuple(f.numpy() for f in fy))
    np.testing.assert_allclose(got, full.numpy(), rtol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_the_entropic_cost_of_a_batch_uses_each_problems_epsilon(backend: str) -> None:
    """``entropic_cost`` (computed on first access) is ``cost + ε KL(P || pqᵀ)`` per problem."""
    clouds = [_clouds(7, 5, seed=s) for s in (2, 3)]
    C_x, C_y = (torch.stack([c[k] for c in clouds]) for k in (0, 1))
    eps = torch.tensor([0.3, 0.5], dtype=F64)
    res = gromov.solve(C_x, C_y, eps, tol=1e-10, backend=backend)
    kl = (res.coupling * torch.log(res.coupling * 35)).sum(dim=(-1, -2))
    torch.testing.assert_close(res.epsilon, eps)
    torch.testing.assert_close(res.entropic_cost, res.cost + eps * kl)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_isometric_permuted_copy_gives_zero_and_the_permutation(backend: str) -> None:
    n = 24
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, generator=g, dtype=F64)
    Q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=F64))
    perm = torch.randperm(n, generator=g)
    C_x = costs.pairwise_cost(x, "sqeuclidean")
    C_y = costs.pairwise_cost((x @ Q + 1.0)[perm], "sqeuclidean")
    eps = 2 * 0.01 * float(C_x.mean() * C_y.mean())  # ε0 = 0.01 in the gap's convention
    res = gromov.solve(C_x, C_y, eps, tol=1e-8, max_iter=2000, backend=backend)
    assert bool(res.converged)
    # entropic bias: Q(P) + eps KL(P) <= the objective at the permutation = eps log n
    assert 0 <= float(res.cost) <= eps * math.log(n)
    assert torch.equal(res.coupling.argmax(1), torch.argsort(perm))
    assert float(res.coupling.max(1).values.min()) > 0.5 / n  # a sharp, permutation-like plan


@pytest.mark.parametrize("max_iter", [1, 3, 500])
def test_coupling_marginals_are_exact_even_without_convergence(max_iter: int) -> None:
    C_x, C_y = _clouds(12, 9, seed=2)
    res = gromov.solve(C_x, C_y, 0.05, tol=1e-9, max_iter=max_iter, inner_iterations=2,
                       max_inner=2)
    P = res.coupling
    assert (P >= 0).all()
    torch.testing.assert_close(P.sum(1), torch.full((12,), 1 / 12, dtype=F64), rtol=0, atol=1e-15)
    torch.testing.assert_close(P.sum(0), torch.full((9,), 1 / 9, dtype=F64), rtol=0, atol=1e-15)
    if max_iter == 1:
        assert not bool(res.converged) and res.iterations == 1


def test_batched_solve_equals_separate_solves() -> None:
    pairs = [_clouds(10, 10, seed=s) for s in range(3)]
    C_x = torch.stack([p[0] for p in pairs])
    C_y = torch.stack([p[1] for p in pairs])
    eps = torch.tensor([0.3, 0.2, 0.1], dtype=F64)
    batch = gromov.solve(C_x, C_y, eps, tol=1e-11, max_iter=5000)
    assert batch.coupling.shape == (3, 10, 10) and batch.converged.all()
    for b in range(3):
        one = gromov.solve(C_x[b], C_y[b], float(eps[b]), tol=1e-11, max_iter=5000)
        torch.testing.assert_close(batch.coupling[b], one.coupling, rtol=0, atol=1e-9)
        torch.testing.assert_close(batch.cost[b], one.cost, rtol=1e-8, atol=0)


def test_swapping_the_spaces_transposes_the_coupling() -> None:
    C_x, C_y = _clouds(11, 8, seed=3)
    a = gromov.solve(C_x, C_y, 0.2, tol=1e-11, max_iter=5000)
    b = gromov.solve(C_y, C_x, 0.2, tol=1e-11, max_iter=5000)
    torch.testing.assert_close(a.coupling, b.coupling.T, rtol=0, atol=1e-9)


def test_backends_and_low_rank_factors_agree() -> None:
    g = torch.Generator().manual_seed(4)
    z = torch.randn(30, 2, generator=g, dtype=F64)
    y = torch.rand(30, 5, generator=g, dtype=F64)
    C_x = costs.pairwise_cost(z, "scaled_sqeuclidean")
    C_y = costs.pairwise_cost(y, "cosine")
    ref = gromov.solve(C_x, C_y, 0.1, tol=1e-10, max_iter=5000, backend="numpy")
    for kwargs in (
        {"backend": "torch"},
        {"factors_x": costs.pairwise_cost_factors(z, "scaled_sqeuclidean")},
        {"factors_x": costs.pairwise_cost_factors(z, "scaled_sqeuclidean"),
         "factors_y": costs.pairwise_cost_factors(y, "cosine")},
    ):
        res = gromov.solve(C_x, C_y, 0.1, tol=1e-10, max_iter=5000, **kwargs)
        torch.testing.assert_close(res.coupling, ref.coupling, rtol=0, atol=1e-8)


def test_fp32_small_epsilon_stays_finite_where_pot_fails() -> None:
    """ε0 = 1e-3 in fp32: POT's scaling-domain Sinkhorn underflows (its coupling loses its mass);
    the log-stabilised solver returns a valid coupling and reports non-convergence honestly."""
    g = torch.Generator().manual_seed(5)
    C_x = costs.pairwise_cost(torch.randn(64, 10, generator=g), "sqeuclidean")
    C_y = costs.pairwise_cost(torch.rand(64, 300, generator=g), "sqeuclidean")
    eps = 2e-3 * float(C_x.mean() * C_y.mean())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        T = ot.gromov.entropic_gromov_wasserstein(C_x.numpy(), C_y.numpy(), epsilon=eps,
                                                  max_iter=5, numItermax=50)
    assert not (np.isfinite(T).all() and abs(T.sum() - 1) < 1e-3)  # the hazard is real here
    res = gromov.solve(C_x, C_y, eps, max_iter=10, inner_iterations=10, max_inner=50)
    assert res.coupling.dtype == torch.float32
    assert torch.isfinite(res.coupling).all() and torch.isfinite(res.cost)
    torch.testing.assert_close(res.coupling.sum(1), torch.full((64,), 1 / 64), rtol=1e-5, atol=0)
    assert isinstance(res.converged, torch.Tensor) and res.converged.dtype == torch.bool


def test_fp32_kernel_wider_than_the_exponent_range_matches_fp64() -> None:
    """ε0 = 0.003: the first log-kernel spans ~350 units, beyond fp32's exp range; the clamped
    kernel must be re-stabilised (not balanced on its clamped entries) and match fp64."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(32, 10, generator=g, dtype=F64)
    y = torch.sigmoid(torch.tanh(z @ torch.randn(10, 16, generator=g, dtype=F64))
                      @ torch.randn(16, 300, generator=g, dtype=F64) / 4)
    C_x = costs.pairwise_cost(z, "scaled_sqeuclidean")
    C_y = costs.pairwise_cost(y, "scaled_sqeuclidean")
    r64 = gromov.solve(C_x, C_y, 0.006, tol=1e-5, max_iter=5000)
    r32 = gromov.solve(C_x.float(), C_y.float(), 0.006, tol=1e-4, max_iter=5000)
    assert bool(r64.converged) and bool(r32.converged)
    assert float((r32.coupling.double() - r64.coupling).abs().sum()) < 1e-2
    assert abs(float(r32.cost) / float(r64.cost) - 1) < 1e-3


def test_a_fold_at_the_end_of_a_fixed_budget_gets_one_more_block() -> None:
    """fp32, 5 Sinkhorn iterations: one column sits 30 units below every row's peak, so its
    scaling must reach ~e^30, beyond fp32's fold limit (~e^18.7). The fold at the end of the
    block restarts the scalings. One more block must follow, so the outer step does not end on
    a half-iteration with a large marginal error (what training with ScL2² costs hit)."""
    rng = np.random.default_rng(0)
    S = (0.1 * rng.normal(size=(1, 8, 8))).astype(np.float32)
    S[:, :, 0] -= 30.0
    g = np.zeros((1, 1, 8), np.float32)
    floor = math.log(float(np.finfo(np.float32).tiny)) + 50.0
    K, u, v, g2, err, done, finite, _ = gromov._inner_solve(S, g, floor, 1e-5, 5, 5, 1 / 8, 1 / 8,
                                                            1.0, np)
    assert finite and done == 10
    assert float(g2[0, 0, 0]) > 20  # the column's offset moved into the potential
    P = u * K * v.swapaxes(-1, -2)
    assert float(np.abs(P.sum(axis=-2) - 1 / 8).sum()) < 1e-4
    assert float(np.abs(P.sum(axis=-1) - 1 / 8).sum()) < 1e-4


def test_invalid_inputs_raise() -> None:
    C_x, C_y = _clouds(5, 5)
    bad = C_x.clone()
    bad[0, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        gromov.solve(bad, C_y, 0.1)
    with pytest.raises(ValueError, match="epsilon"):
        gromov.solve(C_x, C_y, 0.0)
    with pytest.raises(ValueError, match="init"):
        gromov.solve(C_x, C_y, 0.1, init=torch.eye(5, dtype=F64))
    with pytest.raises(ValueError, match="square"):
        gromov.solve(C_x[:, :4], C_y, 0.1)
    for dtype in (torch.float16, torch.bfloat16, torch.int64):
        with pytest.raises(ValueError, match="float32 or float64"):
            gromov.solve(C_x.to(dtype), C_y.to(dtype), 0.1)
    # a batch of two runs the generic loop, a single problem (batched or not) the compiled one
    for batch in (1, 2):
        C_xb, C_yb, badb = (t.expand(batch, 5, 5) for t in (C_x, C_y, bad))
        with pytest.raises(ValueError, match="NaN or inf"):
            gromov.solve(C_xb, badb, 0.1)
        for eps in (float("nan"), -1.0, torch.tensor(float("inf"))):
            with pytest.raises(ValueError, match="epsilon"):
                gromov.solve(C_xb, C_yb, eps)
        with pytest.raises(ValueError, match="init"):
            gromov.solve(C_xb, C_yb, 0.1, init=torch.eye(5, dtype=F64).expand(batch, 5, 5))


@pytest.mark.parametrize("batch", [None, 1, 2])
def test_inputs_that_require_grad_give_results_without_a_graph(batch: int | None) -> None:
    """No gradient flows through the solver (the gap differentiates the closed form instead):
    a single problem (the compiled call) and a batch (the generic loop) alike."""
    C_x, C_y = _clouds(8, 6, seed=4)
    if batch is not None:
        C_x, C_y = C_x.expand(batch, 8, 8), C_y.expand(batch, 6, 6)
    C_x, C_y = C_x.clone().requires_grad_(True), C_y.clone().requires_grad_(True)
    eps = torch.tensor(0.2, dtype=F64, requires_grad=True)
    res = gromov.solve(C_x, C_y, eps, init=torch.full(C_x.shape[:-1] + (6,), 1 / 48, dtype=F64,
                                                      requires_grad=True))
    for t in (res.coupling, res.cost, res.entropic_cost, res.epsilon, res.marginal_error):
        assert not t.requires_grad and t.grad_fn is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    C_x, C_y = _clouds(32, 32)
    cpu = gromov.solve(C_x, C_y, 0.1, tol=1e-10, max_iter=5000)
    for dtype, atol in ((F64, 1e-8), (torch.float32, 1e-3)):
        gpu = gromov.solve(C_x.to("cuda", dtype), C_y.to("cuda", dtype), 0.1, tol=1e-10,
                           max_iter=5000)
        torch.testing.assert_close(gpu.coupling.cpu().double(), cpu.coupling, rtol=0, atol=atol)


def test_anderson_and_buffers_keep_the_fixed_point_and_the_inputs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Anderson extrapolation (with its ring of past steps wrapping around) reaches plain PGD's
    fixed point, and the solver's in-place buffers never write into the caller's tensors."""
    C_x, C_y = _clouds(24, 20, seed=6)
    saved = (C_x.clone(), C_y.clone())
    accelerated = gromov.solve(C_x, C_y, 0.05, tol=1e-11, max_iter=5000)
    assert torch.equal(C_x, saved[0]) and torch.equal(C_y, saved[1])
    monkeypatch.setattr(gromov, "_ANDERSON_MEMORY", 0)
    plain = gromov.solve(C_x, C_y, 0.05, tol=1e-11, max_iter=5000)
    assert bool(accelerated.converged) and bool(plain.converged)
    torch.testing.assert_close(accelerated.coupling, plain.coupling, rtol=0, atol=1e-8)


@pytest.mark.parametrize(("n", "backend"), [(60, "numpy"), (140, "torch")])  # compiled, generic
@pytest.mark.parametrize("eps0", [0.1, 0.03])
def test_anderson_on_the_reduced_linearisation_keeps_the_fixed_point_in_fewer_steps(
    n: int, backend: str, eps0: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``C_x`` in low-rank form the extrapolation acts on ``B_xᵀ P C_yᵀ`` (``[r, m]``), not on
    the coupling: it reaches plain PGD's fixed point, in fewer outer steps."""
    g = torch.Generator().manual_seed(n)
    x, y = torch.randn(n, 5, generator=g, dtype=F64), torch.randn(n - 4, 12, generator=g,
                                                                   dtype=F64)
    C_x, C_y = (costs.pairwise_cost(t, "scaled_sqeuclidean") for t in (x, y))
    fx = costs.pairwise_cost_factors(x, "scaled_sqeuclidean")
    eps = 2 * eps0 * float(C_x.mean() * C_y.mean())
    budget = {"tol": 1e-10, "max_iter": 5000, "factors_x": fx, "backend": backend}
    accelerated = gromov.solve(C_x, C_y, eps, **budget)
    monkeypatch.setattr(gromov, "_ANDERSON_MEMORY", 0)
    plain = gromov.solve(C_x, C_y, eps, **budget)
    assert bool(accelerated.converged) and bool(plain.converged)
    torch.testing.assert_close(accelerated.coupling, plain.coupling, rtol=0, atol=1e-8)
    assert accelerated.iterations < plain.iterations, (accelerated.iterations, plain.iterations)


@pytest.mark.parametrize(("n", "eps0"), [(50, 0.1), (50, 0.01), (140, 0.03)])
def test_over_relaxed_sinkhorn_keeps_the_solution(
    n: int, eps0: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over-relaxation changes how each Sinkhorn solve gets to its fixed point, not the fixed
    point: the solve reaches plain Sinkhorn's coupling (compiled loop at n = 50, generic at
    n = 140)."""
    C_x, C_y = _clouds(n, n - 5, seed=n)
    eps = 2 * eps0 * float(C_x.mean() * C_y.mean())
    relaxed = gromov.solve(C_x, C_y, eps, tol=1e-10, max_iter=5000)
    monkeypatch.setattr(gromov, "_OMEGA_MAX", 1.0)
    plain = gromov.solve(C_x, C_y, eps, tol=1e-10, max_iter=5000)
    assert bool(relaxed.converged) and bool(plain.converged)
    torch.testing.assert_close(relaxed.coupling, plain.coupling, rtol=0, atol=1e-8)
    assert float(relaxed.cost) == pytest.approx(float(plain.cost), rel=1e-8)


@pytest.mark.parametrize(("n", "m"), [(9, 9), (6, 10), (10, 6), (7, 1)])
def test_the_product_start_balances_a_rank_one_kernel(n: int, m: int) -> None:
    """The first step's kernel from the product coupling is ``exp(a bᵀ + g)``; with
    :func:`gromov.product_start`'s ``g`` (max 0) every row and every column of ``a bᵀ + g`` has
    its maximum on the monotone coupling's support, so after the row shift each column peaks at
    exactly 0. Ties and negative entries included; numpy, torch and the compiled loop's version
    agree."""
    rng = np.random.default_rng(n * m)
    a = np.round(rng.normal(size=(2, n)) * 3, 1)  # ties in a and b
    b = np.round(rng.normal(size=(2, m)) * 3, 1)
    b[:, -1] = b[:, 0]
    g = gromov.product_start(a, b, np, np.float64)
    assert g.shape == (2, 1, m) and np.all(g.max(axis=-1) == 0)
    L = a[:, :, None] * b[:, None, :] + g
    np.testing.assert_allclose((L - L.max(axis=2, keepdims=True)).max(axis=1), 0, atol=1e-12)
    torch_g = gromov.product_start(torch.from_numpy(a), torch.from_numpy(b), torch, F64)
    np.testing.assert_allclose(torch_g.numpy(), g, rtol=0, atol=1e-12)
    # the compiled version reads a and b as row sums of diagonal costs (C_x in low-rank form)
    none = np.zeros((1, 1))
    for k in range(2):
        compiled = gromov_cpu._product_start(
            none, np.diag(b[k] * m), np.diag(a[k] * n), np.eye(n), none, none, True, False)[0]
        np.testing.assert_allclose(compiled[0], g[k], rtol=0, atol=1e-12)


@pytest.mark.parametrize(("low_x", "low_y"), [(False, False), (True, False), (False, True),
                                              (True, True)])
def test_the_first_linearisation_from_the_product_coupling_is_its_rank_one_form(
        low_x: bool, low_y: bool) -> None:
    """At ``p qᵀ`` the reduced linearisation is an outer product of matrix-vector sums: equal to
    :func:`gromov._reduce` of the product coupling for every factor form, in numpy, torch and
    the compiled loop; ``a`` and ``b`` are the row sums over n and m."""
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(9, 3, generator=g, dtype=F64), torch.randn(7, 4, generator=g, dtype=F64)
    C_x, C_y = (costs.pairwise_cost(t, "scaled_sqeuclidean") for t in (x, y))
    fx = costs.pairwise_cost_factors(x, "scaled_sqeuclidean") if low_x else None
    fy = costs.pairwise_cost_factors(y, "scaled_sqeuclidean") if low_y else None
    x0 = torch.full((1, 9, 7), 1 / 63, dtype=F64)
    batch = (C_x[None], C_y[None], None if fx is None else (fx[0][None], fx[1][None]),
             None if fy is None else (fy[0][None], fy[1][None]))
    expected = gromov._reduce(batch[0], batch[1], x0, batch[2], batch[3])
    for xp, conv in ((np, lambda t: t.numpy()), (torch, lambda t: t)):
        args = [None if t is None else (tuple(map(conv, t)) if isinstance(t, tuple) else conv(t))
                for t in batch]
        a, b, T = gromov._product_linearisation(*args, xp)
        np.testing.assert_allclose(np.asarray(T), expected.numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(np.asarray(a), C_x.sum(1)[None].numpy() / 9, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(b), C_y.sum(1)[None].numpy() / 7, rtol=1e-12)
    none = np.zeros((1, 1))
    Ax, Bx = (none, none) if fx is None else (fx[0].numpy(), fx[1].numpy())
    Ay, By = (none, none) if fy is None else (fy[0].numpy(), fy[1].numpy())
    _, T = gromov_cpu._product_start(C_x.numpy(), C_y.numpy(), Ax,
                                     np.ascontiguousarray(Bx.T), By,
                                     np.ascontiguousarray(Ay.T), low_x, low_y)
    np.testing.assert_allclose(T, expected[0].numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_product_start_avoids_the_first_steps_folds(dtype: torch.dtype) -> None:
    """Clouds whose costs have heavy tails, at ε0 = 0.03: the first step's rank-one gain spans
    hundreds of ε, so from ``g = 0`` (the product coupling passed as ``init``) Sinkhorn needs
    hundreds of iterations and, in fp32, folds. From the default start it needs a few blocks
    and reaches the same one-step coupling."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 2, generator=g, dtype=F64), torch.randn(64, 5, generator=g, dtype=F64)
    C_x, C_y = (costs.pairwise_cost(t, "scaled_sqeuclidean").to(dtype) for t in (x, y ** 3))
    eps = 0.03 * float(C_x.mean() * C_y.mean())
    init = torch.full((64, 64), 1 / 64**2, dtype=dtype)
    tol = 1e-6 if dtype == torch.float32 else 1e-8
    for backend in ("numpy", "torch"):  # compiled loop, generic loop
        start = gromov.solve(C_x, C_y, eps, tol=tol, max_iter=1, backend=backend)
        zero = gromov.solve(C_x, C_y, eps, init, tol=tol, max_iter=1, backend=backend)
        assert start.inner_iterations <= 20 and zero.inner_iterations >= 150
        assert float(start.marginal_error) <= tol
        diff = float((start.coupling - zero.coupling).abs().sum())
        assert diff < 100 * tol, diff
