"""Training step cost: each objective with and without each regularizer, side by side.

Prints, per configuration, the median step time (ms), steps/s, the ratio to the same objective
without regularizer, and the peak memory (CUDA: max allocated; CPU: peak resident set size of
the process while the configuration ran, sampled every 5 ms, an upper bound shared with what
ran before). Then the data-loading and logging share of a step for the default pipeline
configuration (β-VAE + GMG on the decoder, cosine costs): the time to draw one batch from the
Parquet store and convert it, and the progress/log callback, against the full step.

Configurations run interleaved in rounds so that machine-load drift hits all of them alike.

    .venv/bin/python bench/bench_train.py            # batch 64, 4 rounds × 6 steps
    .venv/bin/python bench/bench_train.py --quick    # 2 rounds × 3 steps, fewer configurations

All configurations start from the weights of a short β-VAE run (``--pretrain``), so that the
GW solver sees reconstructions that differ (at initialisation they are all ≈ 0.5).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from gmgcore.models import images_to_tensor
from gmgcore.objectives import ObjectiveSpec
from gmgcore.regularizers import RegularizerSpec
from gmgcore.training import TrainSpec, build_seeded, pick_device, train
from stages.allocator import keep_freed_memory

MODEL = {"architecture": "dlib_conv", "observation_shape": [64, 64], "latent_dim": 10}
OBJECTIVES = {
    "beta_vae": ObjectiveSpec("beta_vae", beta=4.0),
    "beta_tcvae": ObjectiveSpec("beta_tcvae", beta=6.0, dataset_size=737_280),
    "beta_vae+hfs": ObjectiveSpec("beta_vae", beta=1.0, hfs=1.0),
    "factorvae": ObjectiveSpec("factorvae", gamma=10.0),
    "decoder_free": ObjectiveSpec("decoder_free", beta=1.0),
}
REGULARIZERS = {
    "none": RegularizerSpec(),
    "gmg-dec-cos": RegularizerSpec("gmg", "decoder", "cosine", "cosine"),
    "gmg-dec-cos-5x30": RegularizerSpec(
        "gmg", "decoder", "cosine", "cosine",
        gap_options={"max_iter": 5, "inner_iterations": 10, "max_inner": 30},
    ),
    "gmg-dec-sq": RegularizerSpec("gmg", "decoder", "scaled_sqeuclidean", "scaled_sqeuclidean"),
    "dst-dec-cos": RegularizerSpec("dst", "decoder", "cosine", "cosine"),
    "jacobian-dec": RegularizerSpec("jacobian", "decoder"),
    "gmg-enc-cos": RegularizerSpec("gmg", "encoder", "cosine", "cosine"),
}
ITERATIONS: dict[int, list[float]] = {}  # GW outer iterations seen, per regularizer spec
QUICK_REGULARIZERS = ("none", "gmg-dec-cos", "dst-dec-cos", "jacobian-dec", "gmg-enc-cos")


def _images(n: int) -> tuple[np.ndarray, np.ndarray, object]:
    from gmgcore.data import get_dataset

    data = get_dataset("dsprites_procedural")
    factors = data.sample_factors(n, np.random.default_rng(0))
    return data.images(factors), factors, data


def _rss() -> int:
    """Resident set size of this process in bytes (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident set size while the context is open, sampled by a thread."""

    def __init__(self) -> None:
        self.peak, self._stop = 0, threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.005)

    def __enter__(self) -> PeakRSS:
        self.peak = _rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _pretrained(store, steps: int, batch: int, device) -> dict:
    """Weights after ``steps`` of β-VAE: GMG's solver works harder once the decoder's outputs
    differ (at initialisation every reconstruction is ≈ 0.5 and the cosine costs are flat)."""
    model = build_seeded(MODEL, 0)
    if steps:
        train(model, lambda s: (im for im, _ in store.batches(batch, 1, start_step=s)),
              OBJECTIVES["beta_vae"], REGULARIZERS["none"], TrainSpec(steps=steps, lr=5e-4),
              device=device)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _step_times(store, objective, regularizer, steps, batch, device, weights) -> list[tuple]:
    """(wall s, process CPU s) of each step but the first (warm-up)."""
    stamps: list[tuple[float, float]] = []
    model = build_seeded(MODEL, 0)
    model.load_state_dict(weights)

    def batches(start: int):
        return (images for images, _ in store.batches(batch, 0, start_step=start))

    def on_step(step: int, terms: dict) -> None:
        stamps.append((time.perf_counter(), time.process_time()))
        ITERATIONS.setdefault(id(regularizer), []).append(terms.get("solver_iterations", 0.0))

    train(model, batches, objective, regularizer, TrainSpec(steps=steps + 1, lr=1e-4),
          device=device, on_step=on_step)
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(stamps, stamps[1:], strict=False)]


def _configs(quick: bool, objectives: str | None, regularizers: str | None) -> list:
    regs = QUICK_REGULARIZERS if quick else tuple(REGULARIZERS)
    objs = ("beta_vae", "beta_tcvae", "factorvae") if quick else tuple(OBJECTIVES)
    if objectives:
        objs = tuple(objectives.split(","))
    if regularizers:
        regs = ("none", *(r for r in regularizers.split(",") if r != "none"))
    for flag, names, known in (("--objectives", objs, OBJECTIVES),
                               ("--regularizers", regs, REGULARIZERS)):
        unknown = [name for name in names if name not in known]
        if unknown:
            raise SystemExit(f"{flag}: unknown {unknown}; choose from {list(known)}")
    out = []
    for o in objs:
        for r in regs:
            if o == "decoder_free" and "dec" in r:
                continue
            out.append((o, r))
    return out


def _data_share(store, batch: int, steps: int, step_ms: float, device) -> None:
    it = store.batches(batch, 0, start_step=0)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        images, _ = next(it)
        images_to_tensor(images, device)
        times.append(time.perf_counter() - t)
    from stages.progress import task_progress

    os.environ["GMG_PROGRESS"] = "1"  # render the bar (to stderr) as a terminal run would
    call = []
    with task_progress("bench", total=steps) as advance:
        for _ in range(steps):
            t = time.perf_counter()
            advance(1, loss=1.0, reconstruction=1.0, kl=1.0, gmg=1.0)
            call.append(time.perf_counter() - t)
    load_ms, cb_ms = 1e3 * statistics.median(times), 1e3 * statistics.median(call)
    print(f"\ndata loading per step (store batch + images_to_tensor): {load_ms:.2f} ms "
          f"= {100 * load_ms / step_ms:.1f}% of the default step ({step_ms:.1f} ms)")
    print(f"progress/log callback per step: {cb_ms:.3f} ms = {100 * cb_ms / step_ms:.2f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--objectives", help=f"comma-separated subset of {list(OBJECTIVES)}")
    parser.add_argument("--regularizers", help=f"comma-separated subset of {list(REGULARIZERS)}")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round")
    parser.add_argument("--pretrain", type=int, default=None,
                        help="β-VAE steps before timing (default 300, --quick 100)")
    parser.add_argument("--glibc-malloc", action="store_true",
                        help="keep glibc's allocator defaults (the pipeline keeps freed memory)")
    args = parser.parse_args()
    kept = False if args.glibc_malloc else keep_freed_memory()
    print(f"allocator: keep freed memory (stages/allocator.py): {kept}")
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    rounds, steps = (2, 3) if args.quick else (4, 6)
    rounds, steps = args.rounds or rounds, args.steps or steps
    from stages.store import open_store, write_store

    images, factors, data = _images(2048)
    with tempfile.TemporaryDirectory() as tmp:
        write_store(Path(tmp), images, factors, data.factor_names, data.factor_sizes,
                    data.name, data.options, 256)
        store = open_store(Path(tmp))
        pretrain = args.pretrain if args.pretrain is not None else (100 if args.quick else 300)
        weights = _pretrained(store, pretrain, args.batch, device)
        configs = _configs(args.quick, args.objectives, args.regularizers)
        times: dict[tuple[str, str], list[tuple[float, float]]] = {c: [] for c in configs}
        peaks: dict[tuple[str, str], float] = dict.fromkeys(configs, 0.0)
        for _ in range(rounds):
            for obj, reg in configs:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                with PeakRSS() as rss:
                    times[(obj, reg)] += _step_times(store, OBJECTIVES[obj], REGULARIZERS[reg],
                                                     steps, args.batch, device, weights)
                peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
                        else rss.peak)
                peaks[(obj, reg)] = max(peaks[(obj, reg)], peak / 2**20)
        print(f"device {device}, batch {args.batch}, {torch.get_num_threads()} threads, "
              f"{pretrain} β-VAE steps first, {rounds} rounds × {steps} timed steps")
        print("wall: median and minimum wall-clock ms per step; CPU: median process CPU ms per "
              "step; the minimum is the least disturbed by other load on the machine")
        print(f"{'objective':<14}{'regularizer':<18}{'wall':>8}{'steps/s':>8}{'× none':>7}"
              f"{'min':>8}{'× none':>7}{'CPU':>8}{'× none':>7}{'peak MiB':>9}{'GW its':>7}")

        def stat(key: tuple[str, str], i: int, fn=statistics.median) -> float:
            return 1e3 * fn(t[i] for t in times[key])

        for obj, reg in configs:
            wall, low, cpu = stat((obj, reg), 0), stat((obj, reg), 0, min), stat((obj, reg), 1)
            base = (obj, "none")
            print(f"{obj:<14}{reg:<18}{wall:8.1f}{1e3 / wall:8.2f}{wall / stat(base, 0):7.2f}"
                  f"{low:8.1f}{low / stat(base, 0, min):7.2f}{cpu:8.1f}{cpu / stat(base, 1):7.2f}"
                  f"{peaks[(obj, reg)]:9.0f}"
                  f"{statistics.mean(ITERATIONS[id(REGULARIZERS[reg])]):7.1f}")
        if ("beta_vae", "gmg-dec-cos") in times:
            default_ms = stat(("beta_vae", "gmg-dec-cos"), 0)
            _data_share(store, args.batch, 3 * steps, default_ms, device)


if __name__ == "__main__":
    main()
