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
    "gmg-dec-sq": RegularizerSpec("gmg", "decoder", "scaled_sqeuclidean", "scaled_sqeuclidean"),
    "dst-dec-cos": RegularizerSpec("dst", "decoder", "cosine", "cosine"),
    "jacobian-dec": RegularizerSpec("jacobian", "decoder"),
    "gmg-enc-cos": RegularizerSpec("gmg", "encoder", "cosine", "cosine"),
}
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


def _step_times(store, objective, regularizer, steps: int, batch: int, device) -> list[float]:
    stamps: list[float] = []
    model = build_seeded(MODEL, 0)

    def batches(start: int):
        return (images for images, _ in store.batches(batch, 0, start_step=start))

    train(model, batches, objective, regularizer, TrainSpec(steps=steps + 1, lr=1e-4),
          device=device, on_step=lambda s, t: stamps.append(time.perf_counter()))
    return list(np.diff(stamps))  # drops step 1 (warm-up)


def _configs(quick: bool) -> list[tuple[str, str]]:
    regs = QUICK_REGULARIZERS if quick else tuple(REGULARIZERS)
    objs = ("beta_vae", "beta_tcvae", "factorvae") if quick else tuple(OBJECTIVES)
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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    rounds, steps = (2, 3) if args.quick else (4, 6)
    from stages.store import open_store, write_store

    images, factors, data = _images(2048)
    with tempfile.TemporaryDirectory() as tmp:
        write_store(Path(tmp), images, factors, data.factor_names, data.factor_sizes,
                    data.name, data.options, 256)
        store = open_store(Path(tmp))
        configs = _configs(args.quick)
        times: dict[tuple[str, str], list[float]] = {c: [] for c in configs}
        peaks: dict[tuple[str, str], float] = dict.fromkeys(configs, 0.0)
        for _ in range(rounds):
            for obj, reg in configs:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                with PeakRSS() as rss:
                    times[(obj, reg)] += _step_times(store, OBJECTIVES[obj], REGULARIZERS[reg],
                                                     steps, args.batch, device)
                peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
                        else rss.peak)
                peaks[(obj, reg)] = max(peaks[(obj, reg)], peak / 2**20)
        print(f"device {device}, batch {args.batch}, {torch.get_num_threads()} threads, "
              f"{rounds} rounds × {steps} timed steps, median step time")
        print(f"{'objective':<14}{'regularizer':<14}{'ms/step':>9}{'steps/s':>9}"
              f"{'× none':>8}{'peak MiB':>10}")
        for obj, reg in configs:
            ms = 1e3 * statistics.median(times[(obj, reg)])
            base = 1e3 * statistics.median(times[(obj, "none")])
            print(f"{obj:<14}{reg:<14}{ms:9.1f}{1e3 / ms:9.2f}{ms / base:8.2f}"
                  f"{peaks[(obj, reg)]:10.0f}")
        default_ms = 1e3 * statistics.median(times[("beta_vae", "gmg-dec-cos")])
        _data_share(store, args.batch, 3 * steps, default_ms, device)


if __name__ == "__main__":
    main()
