"""Benchmark the data path: procedural rendering, Parquet write/read, training-batch loading.

Each phase runs in its own process (so its peak resident memory is its own) and is compared
with a simple reference measured side by side in that process:

- render_dsprites: the full 737,280 procedural dSprites in dataset order, against a
  brute-force renderer that tests every pixel centre of the 64×64 grid (same shapes);
- render_shapes3d: all 480,000 procedural 3D-shapes images (cold geometry cache timed apart),
  against ray casting every image from scratch;
- prepare: ``stages.prepare.run`` of the full procedural dSprites (render + write in chunks);
  target: peak memory ≤ 4 GiB;
- read: opening the store and loading the image column into one array, against
  ``pq.read_table`` followed by ``combine_chunks``;
- batches: ``ImageStore.batches(64)`` turned into float32 tensors in [0, 1], against taking
  the rows from the (combined) Arrow image column per batch; target ≥ 20,000 images/s.

Usage: ``python bench/bench_data.py [--quick] [--workdir DIR]`` (``--quick``: a tenth of the
data and fewer batches). Prints one line per phase, then a summary against the targets.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GIB = 1024**3


def _peak_rss() -> int:
    """Peak resident memory of this process in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _naive_dsprites(classes: np.ndarray) -> np.ndarray:
    """Reference: inside-test at every pixel centre (same geometry as the fast renderer)."""
    from gmgcore.data.dsprites_procedural import ELLIPSE_AXES, HEART, SQUARE_HALF_SIDE

    n = len(classes)
    scale = (0.5 + 0.1 * classes[:, 2])[:, None, None]
    theta = (2 * np.pi * classes[:, 3] / 39)[:, None, None]
    cx = (16 + 32 * classes[:, 4] / 31)[:, None, None]
    cy = (16 + 32 * classes[:, 5] / 31)[:, None, None]
    grid = np.arange(64) + 0.5
    dx, dy = grid[None, None, :] - cx, grid[None, :, None] - cy
    u = dx * np.cos(theta) - dy * np.sin(theta)
    v = dx * np.sin(theta) + dy * np.cos(theta)
    square = (np.abs(u) < SQUARE_HALF_SIDE * scale) & (np.abs(v) < SQUARE_HALF_SIDE * scale)
    ellipse = (u / (ELLIPSE_AXES[0] * scale)) ** 2 + (v / (ELLIPSE_AXES[1] * scale)) ** 2 < 1
    a, b, v0 = (x * scale for x in HEART["diamond"])
    u1, v1, ru, rv = (x * scale for x in HEART["lobes"])
    heart = np.abs(u) / a + np.abs(v - v0) / b < 1
    for sign in (1, -1):
        heart |= ((u - sign * u1) / ru) ** 2 + ((v - v1) / rv) ** 2 < 1
    shape = classes[:, 1][:, None, None]
    inside = np.where(shape == 0, square, np.where(shape == 1, ellipse, heart))
    return inside.astype(np.uint8).reshape(n, 64, 64) * 255


def phase_render_dsprites(fraction: float) -> dict:
    from gmgcore.data import get_dataset

    data = get_dataset("dsprites_procedural")
    count = int(data.num_images * fraction)
    start = time.perf_counter()
    for _ in data.iter_chunks(np.arange(count), chunk_size=16384):
        pass
    seconds = time.perf_counter() - start
    sample = data.sample_factors(2048, np.random.default_rng(0))
    t0 = time.perf_counter()
    fast = data.images(sample)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow = _naive_dsprites(sample)
    t_slow = time.perf_counter() - t0
    agree = float((fast == slow).all(axis=(1, 2)).mean())
    return {"images": count, "seconds": seconds, "images_per_s": count / seconds,
            "full_dataset_s": seconds * data.num_images / count,
            "speedup_vs_bruteforce": t_slow / t_fast, "identical_to_bruteforce": agree,
            "peak_rss_gib": _peak_rss() / GIB}  # fmt: skip


def phase_render_shapes3d(fraction: float) -> dict:
    from gmgcore.data.shapes3d_procedural import Shapes3DProcedural

    data = Shapes3DProcedural()
    t0 = time.perf_counter()
    for orientation in range(15):
        for scale in range(8):
            data.geometry_weights(orientation, scale)
    cold = time.perf_counter() - t0
    count = int(data.num_images * fraction)
    index = np.arange(count) if fraction >= 1 else np.sort(
        np.random.default_rng(0).choice(data.num_images, count, replace=False))  # fmt: skip
    t0 = time.perf_counter()
    for _ in data.iter_chunks(index, chunk_size=8192):
        pass
    seconds = time.perf_counter() - t0
    random = data.sample_factors(5000, np.random.default_rng(1))
    t0 = time.perf_counter()
    data.images(random)
    random_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for row in random[:8]:  # reference: a fresh renderer (no cache) per image
        Shapes3DProcedural().images(row[None])
    per_image_uncached = (time.perf_counter() - t0) / 8
    return {"images": count, "seconds": seconds, "images_per_s": count / seconds,
            "full_dataset_s": cold + seconds * data.num_images / count, "cold_cache_s": cold,
            "random_5000_s": random_s,
            "speedup_vs_uncached": per_image_uncached / (random_s / 5000),
            "peak_rss_gib": _peak_rss() / GIB}  # fmt: skip


def phase_prepare(fraction: float, workdir: Path) -> dict:
    from stages.prepare import PrepareConfig, run

    cfg = PrepareConfig(dataset="dsprites_procedural", fraction=fraction)
    t0 = time.perf_counter()
    manifest = run(cfg, workdir / "store")
    seconds = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in (workdir / "store").iterdir())
    return {"images": manifest["num_images"], "seconds": seconds,
            "images_per_s": manifest["num_images"] / seconds, "store_mib": size / 2**20,
            "peak_rss_gib": _peak_rss() / GIB}  # fmt: skip


def phase_read(workdir: Path) -> dict:
    import pyarrow.parquet as pq

    from stages.store import IMAGES_FILE, open_store

    t0 = time.perf_counter()
    images = open_store(workdir / "store").all_images()
    seconds = time.perf_counter() - t0
    gib = images.nbytes / GIB
    peak = _peak_rss() / GIB  # before the reference, which holds two more copies
    del images
    t0 = time.perf_counter()
    column = pq.read_table(workdir / "store" / IMAGES_FILE, columns=["image"]).column(0)
    reference = np.frombuffer(column.combine_chunks().buffers()[1], np.uint8)
    ref_seconds = time.perf_counter() - t0
    del column, reference
    return {"gib": gib, "seconds": seconds, "gib_per_s": gib / seconds,
            "speedup_vs_read_table": ref_seconds / seconds, "peak_rss_gib": peak}  # fmt: skip


def phase_batches(workdir: Path, steps: int) -> dict:
    import pyarrow.parquet as pq
    import torch

    from stages.store import IMAGES_FILE, open_store

    torch.set_num_threads(1)  # one loader thread, as in a data-loading worker
    store = open_store(workdir / "store")
    store.all_images()
    stream = store.batches(64, seed=0)
    next(stream)  # first use draws the epoch permutation
    times = np.empty(steps)
    t0 = time.perf_counter()
    for step in range(steps):
        t_step = time.perf_counter()
        images, _ = next(stream)
        x = images.unsqueeze(1).float().div_(255.0)
        times[step] = time.perf_counter() - t_step
    rate = steps * 64 / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(steps):
        next(stream)
    rate_u8 = steps * 64 / (time.perf_counter() - t0)
    peak = _peak_rss() / GIB
    column = pq.read_table(workdir / "store" / IMAGES_FILE, columns=["image"]).column(0)
    column = column.combine_chunks()  # one chunk: take() on a chunked column concatenates
    ref_steps = max(steps // 10, 20)
    t0 = time.perf_counter()
    for step in range(ref_steps):
        rows = store.batch_indices(64, 0, step)
        taken = column.take(rows)
        pixels = np.frombuffer(taken.buffers()[1], np.uint8, count=64 * 4096)
        x = torch.from_numpy(pixels.reshape(64, 1, 64, 64).copy()).float().div_(255.0)
    ref_rate = ref_steps * 64 / (time.perf_counter() - t0)
    assert x.dtype == torch.float32
    return {"batch": 64, "images_per_s": rate, "median_batch_images_per_s": 64 / np.median(times),
            "uint8_images_per_s": rate_u8, "speedup_vs_arrow_take": rate / ref_rate,
            "peak_rss_gib": peak}  # fmt: skip


def _run_phase(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         check=False, cwd=ROOT)  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"phase {args[1]} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the data")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder for the store")
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    fraction = 0.1 if args.quick else 1.0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_data_"))
    if args.phase:
        phases = {
            "render_dsprites": lambda: phase_render_dsprites(fraction),
            "render_shapes3d": lambda: phase_render_shapes3d(fraction),
            "prepare": lambda: phase_prepare(fraction, workdir),
            "read": lambda: phase_read(workdir),
            "batches": lambda: phase_batches(workdir, 2000 if args.quick else 10000),
        }
        print(json.dumps(phases[args.phase]()))
        return
    common = ["--workdir", str(workdir)] + (["--quick"] if args.quick else [])
    results = {}
    try:
        for phase in ("render_dsprites", "render_shapes3d", "prepare", "read", "batches"):
            results[phase] = _run_phase(["--phase", phase, *common])
            shown = ", ".join(f"{k} {v:.4g}" for k, v in results[phase].items())
            print(f"{phase:16s} {shown}", flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\ntargets (ratio > 1 means the target is met):")
    full_dsprites = results["render_dsprites"]["full_dataset_s"]
    print(
        f"  full dSprites render   {full_dsprites:7.1f} s  (≤ 60 s: ratio {60 / full_dsprites:.2f})"
    )
    peak = max(results["render_dsprites"]["peak_rss_gib"], results["prepare"]["peak_rss_gib"])
    print(f"  peak memory render+write {peak:5.2f} GiB (≤ 4 GiB: ratio {4 / peak:.2f})")
    rate = results["batches"]["images_per_s"]
    print(f"  batch-64 float loading {rate:9.0f} img/s (≥ 20000: ratio {rate / 20000:.2f})")


if __name__ == "__main__":
    main()
