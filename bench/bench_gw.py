"""Benchmark: ``gmgcore.gromov.solve`` against POT, and GMG against a β-VAE training step.

Part 1, in one process on the same matrices, init (product) and tolerance: this solver vs
``ot.gromov.entropic_gromov_wasserstein`` (numpy, fp64) for n ∈ {64, 128, 256, 512} and
ε0 ∈ {0.1, 0.01}, and vs POT's autograd path (``entropic_gromov_wasserstein2`` on torch tensors,
backward unrolled through every iteration) against solve + envelope backward. The matrices are
the decoder setting of the GMG paper: ``C_x`` on latents z ~ N(0, I_10), ``C_y`` on the decoded
64×64×3 images of a randomly initialised disentanglement_lib decoder (``gmgcore.models``), both
``scaled_sqeuclidean``. ``--convention`` sets what ε0 means. ``pot`` (default): POT's ε is
``ε0 · mean(C_x) · mean(C_y)``, the setting of the reference figures this bench is compared
with (POT about 55 ms at n = 64, ε0 = 0.1). ``gap``: POT's ε is ``2 · ε0 · mean(C_x) · mean(C_y)``,
what :func:`gmgcore.gap.gromov_monge_gap` passes for its ε0 (its GW has the ½ convention), so
ε0 = 0.1 there is ε0 = 0.2 in the ``pot`` convention, a more regularised and easier problem.
Tolerance ``tol`` means L1 coupling change and L1 marginal error for this solver, and
``tol / n`` (Frobenius change) and ``tol / sqrt(n)`` (L2 marginal error) for POT, the same
accuracy in POT's norms. Both are compared with a reference (this solver, fp64, tol 1e-9); each
configuration of this solver (fp64 dense; fp64 and fp32 with the latent cost in low-rank form, as
the gap passes it) uses the loosest tolerance (in half decades from ``tol``) whose errors are no
larger than POT's ("equal accuracy"). POT and the three configurations are timed in turn, one
call each per round in a rotating order, and each ratio is the median of the per-round ratios
(the machine's speed drifts too much for back-to-back blocks of repeats).

Part 2: one β-VAE training step at batch 64 (dlib_conv encoder/decoder, Bernoulli + KL, Adam)
with and without λ·GMG on the decoder (z → sigmoid(logits), default fixed budget), steps
interleaved, medians; and GMG forward + backward alone.

Usage: ``.venv/bin/python bench/bench_gw.py [--quick] [--threads N] [--repeats R]
[--sizes N ...] [--eps0 E ...] [--convention pot|gap] [--pause S] [--warm]
[--parts solver autograd step]``.
Part 2 always takes ε0 as :func:`gmgcore.gap.gromov_monge_gap` does. On a
machine shared with other jobs use ``--threads 1``: with 2 threads on busy cores, OpenMP/BLAS
contention slows every small kernel several-fold (measured 10× on the n = 512 solve).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import ot
import torch
from threadpoolctl import threadpool_limits

from gmgcore import costs, gap, gromov
from gmgcore.models import build_model, images_to_tensor
from stages.allocator import keep_freed_memory

COST = "scaled_sqeuclidean"


def timed(fn: Callable[..., Any], repeats: int, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """Median wall time in ms of ``fn(*args, **kwargs)`` over ``repeats`` calls after one
    warm-up; returns it with the last output."""
    out = fn(*args, **kwargs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times), out


def decoder_batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = build_model({"architecture": "dlib_conv", "observation_shape": [64, 64, 3]})
    with torch.no_grad():
        z = torch.randn(n, 10)
        return z.double(), torch.sigmoid(model.decode(z)).double()


def pot_epsilon(C_x: torch.Tensor, C_y: torch.Tensor, eps0: float, convention: str) -> float:
    """POT's ε for ``eps0`` in the bench's ``convention`` (``pot`` or ``gap``, see the module
    docstring); ``gap`` is exactly what :func:`gmgcore.gap.gromov_monge_gap` passes."""
    if convention == "gap":
        return float(gap.solver_epsilon(gap.gap_epsilon(C_x, C_y, eps0)))
    return eps0 * float(C_x.mean() * C_y.mean())


def pot_solve(C_x: torch.Tensor, C_y: torch.Tensor, eps: float, tol: float) -> tuple:
    n = C_x.shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        T, log = ot.gromov.entropic_gromov_wasserstein(
            C_x.numpy(), C_y.numpy(), epsilon=eps, tol=tol / n, stopThr=tol / math.sqrt(n),
            max_iter=1000, numItermax=1000, log=True,
        )
    return torch.from_numpy(T), float(log["gw_dist"])


def errors(P: torch.Tensor, cost: float, ref: gromov.GWResult) -> tuple[float, float]:
    """L1 distance of the coupling to the reference and signed relative cost difference."""
    return float((P.double() - ref.coupling).abs().sum()), float(cost) / float(ref.cost) - 1


def fmt(err: tuple[float, float]) -> str:
    return f"{err[0]:.1e}/{err[1]:+.0e}"


def at_equal_accuracy(C_x: torch.Tensor, C_y: torch.Tensor, eps: float, tol: float,
                      e_pot: tuple[float, float], ref: gromov.GWResult,
                      **kwargs: Any) -> tuple[float, gromov.GWResult, tuple[float, float], bool]:
    """The loosest tolerance in tol, tol/√10, tol/10, ... (half decades, 9 at most) at which
    this solver's coupling and cost errors are no larger than POT's; returns it, the result, the
    errors and whether POT's accuracy was reached (if not: the tightest tolerance tried that
    converged, or ``tol``). The search gives up at a tolerance the solver does not converge to
    within 1000 outer steps: fp32 stalls near its rounding floor (about 3e-6 in L1 at n = 64)
    and would run its whole budget at every tighter tolerance."""
    last = None
    for k in range(9):
        ours_tol = tol / 10 ** (k / 2)
        res = gromov.solve(C_x, C_y, eps, tol=ours_tol, max_iter=1000, **kwargs)
        err = errors(res.coupling, res.cost, ref)
        if err[0] <= e_pot[0] and abs(err[1]) <= abs(e_pot[1]):
            return ours_tol, res, err, True
        if not bool(res.converged):
            break
        last = ours_tol, res, err, False
    return last or (ours_tol, res, err, False)


def round_robin(fns: dict[str, Callable[[], Any]], rounds: int, pause: float = 0.0,
                warm: bool = False) -> dict[str, tuple[float, float]]:
    """Each function once per round (callers have run each once already: no warm-up), in an
    order rotated by one place every round; returns per name the median time in ms and the
    median over rounds of the first function's time divided by this one's. With ``pause`` > 0
    each call starts that many seconds after the previous one ended: OpenBLAS's worker threads
    spin for about 0.1 s after a multi-threaded product (2^28 cycles), and without a pause a
    call that follows POT's or the dense solve's products shares the second core with them.
    With ``warm`` each timed call directly follows an untimed call of the same function, after
    the pause: a solve repeated in a loop. A call that follows an idle pause or another
    method's call pays for cold caches, and that cost does not scale with the solve: on this
    machine 0.24 → 0.9 ms for a solve at n = 96, against 10.4 → 11.2 ms for POT's at n = 128.

    The machine's speed drifts by up to 2× between minutes; calls in turn expose all functions
    to the same drift, where back-to-back blocks of repeats do not. Whichever call follows
    POT's runs with cold caches (about 20 % slower for this solver at n = 64–96), so the order
    rotates and every function takes every place equally often."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            time.sleep(pause)
            if warm:
                fns[name]()
            start = time.perf_counter()
            fns[name]()
            times[name].append(1e3 * (time.perf_counter() - start))
    first = times[names[0]]
    return {name: (statistics.median(t),
                   statistics.median(a / b for a, b in zip(first, t, strict=True)))
            for name, t in times.items()}


def solver_vs_pot(sizes: list[int], repeats: int, tol: float,
                  eps0s: tuple[float, ...] = (0.1, 0.01), convention: str = "pot",
                  pause: float = 0.0, warm: bool = False) -> None:
    """POT at ``tol``, and three configurations of this solver on the same matrices, each at
    equal accuracy (see :func:`at_equal_accuracy`): fp64 dense, fp64 with the latent side in
    low-rank form (as :func:`gmgcore.gap.gromov_monge_gap` passes it), and fp32 with the latent
    side in low-rank form. A configuration that cannot reach POT's accuracy is marked ``!`` and
    timed at its last tolerance. The four are timed in :func:`round_robin`; each "x POT" is the
    median of the per-round ratios, and "best" is the fastest configuration at equal accuracy."""
    print(f"\n== solver vs POT (ε0 in the {convention} convention; POT tol {tol:g}; err = L1 "
          "coupling / signed rel. cost vs a reference: this solver, fp64, tol 1e-9; "
          "! = POT's accuracy not reached) ==")
    names = ("fp64", "fp64+lowrank", "fp32+lowrank")
    print(f"{'n':>4} {'eps0':>5} | {'POT fp64':>9} {'err':>14} | "
          + " | ".join(f"{name:>12} {'tol':>6} {'x POT':>7} {'err':>14}" for name in names)
          + f" | {'best':>12} {'x POT':>6} | outer/inner (fp64+lowrank, ref)")
    for n in sizes:
        z, images = decoder_batch(n, seed=n)
        C_x, C_y = costs.pairwise_cost(z, COST), costs.pairwise_cost(images, COST)
        factors = costs.pairwise_cost_factors(z, COST)
        configs = {
            "fp64": (C_x, C_y, {}),
            "fp64+lowrank": (C_x, C_y, {"factors_x": factors}),
            "fp32+lowrank": (C_x.float(), C_y.float(),
                             {"factors_x": tuple(t.float() for t in factors)}),
        }
        for eps0 in eps0s:
            eps = pot_epsilon(C_x, C_y, eps0, convention)
            ref = gromov.solve(C_x, C_y, eps, tol=1e-9, max_iter=20000, factors_x=factors)
            T, gw_pot = pot_solve(C_x, C_y, eps, tol)
            e_pot = errors(T, gw_pot, ref)
            found = {name: at_equal_accuracy(a, b, eps, tol, e_pot, ref, **kw)
                     for name, (a, b, kw) in configs.items()}
            fns = {"pot": functools.partial(pot_solve, C_x, C_y, eps, tol)}
            for name, (a, b, kw) in configs.items():
                fns[name] = functools.partial(gromov.solve, a, b, eps, tol=found[name][0],
                                              max_iter=1000, **kw)
            t = round_robin(fns, 4 * repeats if n <= 128 else 4 * max(1, repeats // 3), pause,
                            warm)
            cells = []
            for name in names:
                ours_tol, _, err, reached = found[name]
                cells.append(f"{t[name][0]:>10.1f}ms {ours_tol:>6.0e} {t[name][1]:>6.1f}"
                             f"{' ' if reached else '!'} {fmt(err):>14}")
            best = max((name for name in names if found[name][3]), key=lambda k: t[k][1],
                       default=None)
            lr = found["fp64+lowrank"][1]
            print(f"{n:>4} {eps0:>5} | {t['pot'][0]:>7.1f}ms {fmt(e_pot):>14} | "
                  + " | ".join(cells)
                  + f" | {best or '-':>12} {t[best][1] if best else math.nan:>6.1f} | "
                  f"{lr.iterations}/{lr.inner_iterations}, {ref.iterations}"
                  f"{'' if bool(ref.converged) else ' (not converged)'}", flush=True)


def pot_grad(C_x: torch.Tensor, C_y0: torch.Tensor, eps: float, tol: float) -> torch.Tensor:
    """Gradient of POT's entropic GW value w.r.t. C_y, by autograd through the whole solver."""
    n = C_x.shape[0]
    C_y = C_y0.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        val = ot.gromov.entropic_gromov_wasserstein2(
            C_x, C_y, epsilon=eps, tol=tol / n, stopThr=tol / math.sqrt(n), max_iter=1000,
            numItermax=1000)
    return torch.autograd.grad(val, C_y)[0]


def envelope_grad(C_x: torch.Tensor, C_y0: torch.Tensor, eps: float, tol: float) -> torch.Tensor:
    """Gradient of Q(P) w.r.t. C_y at the solver's coupling, P detached (envelope theorem)."""
    C_y = C_y0.clone().requires_grad_(True)
    res = gromov.solve(C_x, C_y, eps, tol=tol, max_iter=1000)
    value = gromov.quadratic_cost(C_x[None], C_y[None], res.coupling[None])[0]
    return torch.autograd.grad(value, C_y)[0]


def autograd_vs_envelope(sizes: list[int], repeats: int, tol: float,
                         convention: str = "pot") -> None:
    print("\n== gradient w.r.t. C_y: POT egw2 unrolled autograd vs solve + envelope backward ==")
    print(f"{'n':>4} {'eps0':>5} | {'POT egw2 f+b':>12} | {'ours f+b':>9} {'x POT':>6} | "
          "rel. grad diff")
    for n in sizes:
        z, images = decoder_batch(n, seed=n)
        C_x, C_y0 = costs.pairwise_cost(z, COST), costs.pairwise_cost(images, COST)
        for eps0 in (0.1, 0.01):
            eps = pot_epsilon(C_x, C_y0, eps0, convention)
            t_pot, g_pot = timed(pot_grad, max(1, repeats // 3), C_x, C_y0, eps, tol)
            t_us, g_us = timed(envelope_grad, repeats, C_x, C_y0, eps, tol)
            diff = float((g_pot - g_us).norm() / g_us.norm())
            print(f"{n:>4} {eps0:>5} | {t_pot:>10.1f}ms | {t_us:>7.1f}ms {t_pot / t_us:>6.1f} | "
                  f"{diff:.2f}", flush=True)


def gmg_forward_backward(z: torch.Tensor, xhat: torch.Tensor, cost: str, eps0: float,
                         **budget: float) -> tuple[gap.GapResult, torch.Tensor]:
    """Costs, solve, value and backward to the decoded images (the GMG part of a step)."""
    y = xhat.clone().requires_grad_(True)
    res = gap.gromov_monge_gap(z, y, cost, cost, eps0, center=cost == "cosine", **budget)
    res.value.backward()
    return res, y.grad


def vae_step_overhead(repeats: int, eps0s: tuple[float, ...] = (0.1, 0.01)) -> None:
    print("\n== β-VAE training step at batch 64 (dlib_conv, 64×64×3), GMG on the decoder ==")
    torch.manual_seed(0)
    model = build_model({"architecture": "dlib_conv", "observation_shape": [64, 64, 3]})
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(64, 64, 64, 3, generator=g) < 0.3).to(torch.uint8) * 255
    x = images_to_tensor(images)

    def step(cost: str | None, eps0: float) -> float:
        start = time.perf_counter()
        out = model(x)
        recon = torch.nn.functional.binary_cross_entropy_with_logits(
            out.logits, x, reduction="sum") / 64
        kl = 0.5 * (out.mu.square() + out.logvar.exp() - 1 - out.logvar).sum() / 64
        loss = recon + 4.0 * kl
        if cost is not None:
            res = gap.gromov_monge_gap(out.z, torch.sigmoid(out.logits), cost, cost, eps0,
                                       center=cost == "cosine")
            loss = loss + 100.0 * res.value
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return 1e3 * (time.perf_counter() - start)

    configs = [(cost, eps0) for cost in ("scaled_sqeuclidean", "cosine") for eps0 in eps0s]
    for _ in range(3):
        step(None, 0.1)
        for cost, eps0 in configs:
            step(cost, eps0)
    # Round robin: every round times one plain step and one step of each configuration, so
    # that the machine's drifting speed affects them all alike (its step time wanders by
    # ±20 % from minute to minute).
    times: dict = {None: [], **{c: [] for c in configs}}
    for _ in range(repeats * 2):
        times[None].append(step(None, 0.1))
        for cost, eps0 in configs:
            times[cost, eps0].append(step(cost, eps0))
    b = statistics.median(times[None])
    for cost, eps0 in configs:
        w = statistics.median(times[cost, eps0])
        pairs = list(zip(times[cost, eps0], times[None], strict=True))
        paired = statistics.median(x / y for x, y in pairs)
        extra = statistics.median(x - y for x, y in pairs)
        with torch.no_grad():
            out = model(x)
        z, xhat = out.z.detach(), torch.sigmoid(out.logits).detach()

        t_gmg, (res, grad) = timed(gmg_forward_backward, repeats * 2, z, xhat, cost, eps0)
        ref, ref_grad = gmg_forward_backward(z.double(), xhat.double(), cost, eps0,
                                             tol=1e-9, max_iter=20000, max_inner=20000)
        value, ref_value = float(res.value.detach()), float(ref.value.detach())
        dv = abs(value - ref_value) / max(abs(ref_value), 1e-12)
        dg = float((grad.double() - ref_grad).norm() / ref_grad.norm().clamp(min=1e-30))
        print(f"{cost:>18} eps0={eps0:<5}: step {b:6.1f} ms, with GMG {w:6.1f} ms "
              f"(+{100 * (w / b - 1):5.1f} %; median paired ratio +{100 * (paired - 1):5.1f} %, "
              f"median paired difference {extra:+.2f} ms); "
              f"GMG fwd+bwd alone {t_gmg:5.1f} ms ({100 * t_gmg / b:4.1f} % of a step); default "
              f"budget: {res.iterations} outer / {res.inner_iterations} inner, converged="
              f"{res.converged}, value {value:+.3e} (rel. err {dv:.1e} vs "
              f"converged fp64), grad rel. err {dg:.1e}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n ∈ {64, 128}, fewer repeats")
    parser.add_argument("--threads", type=int, default=2, help="torch / BLAS threads")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--sizes", type=int, nargs="+", help="n of part 1 (default by --quick)")
    parser.add_argument("--eps0", type=float, nargs="+", default=[0.1, 0.01])
    parser.add_argument("--pause", type=float, default=0.0,
                        help="seconds between timed calls of part 1 (see round_robin)")
    parser.add_argument("--warm", action="store_true",
                        help="part 1: an untimed call of the same function right before each "
                             "timed one (see round_robin)")
    parser.add_argument("--convention", choices=["pot", "gap"], default="pot",
                        help="ε0 of the solver and autograd parts: POT's ε = ε0·mean·mean "
                             "(pot) or twice that (gap, what gromov_monge_gap passes)")
    parser.add_argument("--parts", nargs="+", choices=["solver", "autograd", "step"],
                        default=["solver", "autograd", "step"])
    parser.add_argument("--glibc-malloc", action="store_true",
                        help="keep glibc's allocator defaults (the pipeline keeps freed memory)")
    args = parser.parse_args()
    kept = False if args.glibc_malloc else keep_freed_memory()
    print(f"allocator: keep freed memory (stages/allocator.py): {kept}")
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)  # numpy's BLAS, used by the solver and by POT
    repeats = args.repeats or (3 if args.quick else 7)
    sizes = args.sizes or ([64, 128] if args.quick else [64, 128, 256, 512])
    print(f"torch {torch.__version__}, POT {ot.__version__}, threads {args.threads}, "
          f"load average {os.getloadavg()[0]:.1f} (start)")
    if "solver" in args.parts:
        solver_vs_pot(sizes, repeats, args.tol, tuple(args.eps0), args.convention, args.pause,
                      args.warm)
    if "autograd" in args.parts:
        autograd_vs_envelope([64] if args.quick else [64, 128], repeats, args.tol,
                             args.convention)
    if "step" in args.parts:
        vae_step_overhead(repeats, tuple(args.eps0))
    print(f"\nload average {os.getloadavg()[0]:.1f} (end)")


if __name__ == "__main__":
    main()
