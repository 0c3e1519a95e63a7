"""Benchmark: ``gmgcore.gromov.solve`` and the GMG on an accelerator (the torch backend).

On the decoder matrices of ``bench_gw.py`` (latent cost in low-rank form, as the gap passes
it), for n ∈ {64, 128, 256, 512} and ε0 ∈ {0.1, 0.01}: the device's time per solve in fp64
(tol 1e-6) and fp32 (tol 1e-4), synchronised, median over repeats; the outer / Sinkhorn
counts; and the L1 distance of the coupling to this solver's CPU fp64 coupling at tol 1e-9.
ε0 is read as the gap reads it (POT's ε = 2 · ε0 · mean · mean; ``bench_gw.py --convention
gap``).
Then B problems of n = 64 in one batched call against B single calls, and GMG forward +
backward (costs, solve, envelope gradient) at batch 64 with the default fixed budget.

Usage: ``python bench/bench_gw_device.py [--device cuda] [--sizes N ...] [--repeats R]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from bench_gw import COST, decoder_batch, gmg_forward_backward

from gmgcore import costs, gromov


def timed(fn: Callable[..., Any], repeats: int, device: torch.device) -> tuple[float, Any]:
    """Median wall time in ms of ``fn()`` over ``repeats`` calls after one warm-up, with the
    device synchronised around each call; returns it with the last output."""
    out = fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = fn()
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times), out


def solves(sizes: list[int], repeats: int, device: torch.device) -> None:
    print(f"\n== solve on {torch.cuda.get_device_name(device)} (torch backend; "
          "L1 = distance to the CPU fp64 coupling at tol 1e-9) ==")
    print(f"{'n':>4} {'eps0':>5} | {'fp64 tol 1e-6':>13} {'outer/inner':>11} {'L1':>8} | "
          f"{'fp32 tol 1e-4':>13} {'outer/inner':>11} {'L1':>8}")
    for n in sizes:
        z, images = decoder_batch(n, seed=n)
        C_x, C_y = costs.pairwise_cost(z, COST), costs.pairwise_cost(images, COST)
        factors = costs.pairwise_cost_factors(z, COST)
        for eps0 in (0.1, 0.01):
            eps = 2 * eps0 * float(C_x.mean() * C_y.mean())
            ref = gromov.solve(C_x, C_y, eps, tol=1e-9, max_iter=20000, factors_x=factors)
            cells = []
            for dtype, tol in ((torch.float64, 1e-6), (torch.float32, 1e-4)):
                Cx, Cy = C_x.to(device, dtype), C_y.to(device, dtype)
                fx = tuple(t.to(device, dtype) for t in factors)
                t, res = timed(lambda Cx=Cx, Cy=Cy, fx=fx, tol=tol, eps=eps: gromov.solve(
                    Cx, Cy, eps, tol=tol, max_iter=20000, factors_x=fx), repeats, device)
                l1 = float((res.coupling.double().cpu() - ref.coupling).abs().sum())
                cells.append(f"{t:>11.1f}ms {res.iterations:>5}/{res.inner_iterations:<5} "
                             f"{l1:>8.1e}")
            print(f"{n:>4} {eps0:>5} | {cells[0]} | {cells[1]}", flush=True)


def batched(B: int, repeats: int, device: torch.device) -> None:
    print(f"\n== {B} problems of n = 64, eps0 = 0.1, fp32, tol 1e-4: one batched call "
          "against single calls ==")
    pairs = [decoder_batch(64, seed=s) for s in range(B)]
    C_x = torch.stack([costs.pairwise_cost(z, COST) for z, _ in pairs]).to(device, torch.float32)
    C_y = torch.stack([costs.pairwise_cost(x, COST) for _, x in pairs]).to(device, torch.float32)
    eps = 2 * 0.1 * (C_x.mean((1, 2)) * C_y.mean((1, 2)))
    t_batch, res = timed(lambda: gromov.solve(C_x, C_y, eps, tol=1e-4, max_iter=20000),
                         repeats, device)
    t_loop, _ = timed(lambda: [gromov.solve(C_x[b], C_y[b], eps[b], tol=1e-4, max_iter=20000)
                               for b in range(B)], max(1, repeats // 3), device)
    print(f"batched {t_batch:.1f} ms ({res.iterations} outer, converged "
          f"{int(res.converged.sum())}/{B}); {B} single calls {t_loop:.1f} ms "
          f"({t_loop / t_batch:.1f}x)", flush=True)


def gmg_step(repeats: int, device: torch.device) -> None:
    print("\n== GMG forward + backward at batch 64 (decoder setting, default fixed budget) ==")
    z, images = decoder_batch(64, seed=64)
    z, images = z.to(device, torch.float32), images.to(device, torch.float32)
    for cost in ("scaled_sqeuclidean", "cosine"):
        t, (res, _) = timed(lambda cost=cost: gmg_forward_backward(z, images, cost, 0.1),
                            repeats, device)
        print(f"{cost:>18}: {t:.2f} ms, {res.iterations} outer / {res.inner_iterations} "
              f"inner, value {float(res.value.detach()):+.4e}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise SystemExit(f"needs a CUDA device; got --device {args.device}")
    print(f"torch {torch.__version__}, device {torch.cuda.get_device_name(device)}")
    solves(args.sizes, args.repeats, device)
    batched(args.batch, args.repeats, device)
    gmg_step(args.repeats, device)


if __name__ == "__main__":
    main()
