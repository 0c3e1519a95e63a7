"""Time the metric suite and compare the fast DCI backend with the exact one, side by side.

Codes: 10 codes x 5 factors with dSprites' factor sizes (3, 6, 40, 32, 32), 10,000 train and
5,000 test samples (``--quick``: 2,000 / 1,000). ``--kind`` picks the synthetic representation:

- ``mixed``: factors scaled to [0, 1], mixed nearly diagonally into 5 codes plus 5 noise-mixed
  codes, Gaussian noise 0.3 (a mediocre model);
- ``clean``: nearly axis-aligned, noise 0.02 (a well-disentangled model);
- ``noisy``: axis-aligned, noise 1.0 (little information);
- ``rotated``: a random rotation of the factors, noise 0.05 (informative but entangled);
- ``collapsed``: shape, scale and orientation on one code each (noise 0.1), both positions
  summed into a fourth code, the other six codes collapsed to near-constant values (noise
  0.001 around 0: a partially collapsed posterior).

The sampling-based scores run on an identity-like ground truth (images store their factors)
with a fixed linear encoder, so their times are the metrics' own cost without a renderer or a
network. Run::

    .venv/bin/python bench/bench_metrics.py [--quick] [--kind mixed] [--n-jobs 1] [--fast-jobs 2]
    .venv/bin/python bench/bench_metrics.py --embeddings data/embeddings.parquet  # a real model
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gmgcore import metrics  # noqa: E402

SIZES = (3, 6, 40, 32, 32)
KINDS = ("mixed", "clean", "noisy", "rotated", "collapsed")


def synthetic(n: int, seed: int, kind: str = "mixed", n_codes: int = 10):
    """Codes ``[n, n_codes]`` and factors ``[n, 5]`` (dSprites' sizes) of a synthetic model."""
    rng = np.random.default_rng(seed)
    k = len(SIZES)
    factors = np.stack([rng.integers(0, s, size=n) for s in SIZES], axis=1)
    mix_rng = np.random.default_rng(123)
    if kind == "mixed":
        mix = 0.15 * mix_rng.normal(size=(k, n_codes))
        mix[np.arange(k), np.arange(k)] += 1.0
        mix[np.arange(k), k + np.arange(k) % (n_codes - k)] += 0.5 * mix_rng.uniform(-1, 1, k)
        noise = 0.3
    elif kind == "clean":
        mix, noise = np.eye(k, n_codes) + 0.05 * mix_rng.normal(size=(k, n_codes)), 0.02
    elif kind == "noisy":
        mix, noise = np.eye(k, n_codes) + 0.15 * mix_rng.normal(size=(k, n_codes)), 1.0
    elif kind == "rotated":
        q, _ = np.linalg.qr(mix_rng.normal(size=(n_codes, n_codes)))
        mix, noise = q[:k], 0.05
    elif kind == "collapsed":
        mix = np.zeros((k, n_codes))
        mix[[0, 1, 2, 3, 4], [0, 1, 2, 3, 3]] = 1.0
        noise = np.where(np.arange(n_codes) < 4, 0.1, 0.001)
    else:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    codes = (factors / (np.array(SIZES) - 1)) @ mix + noise * rng.normal(size=(n, n_codes))
    return codes, factors


class PixelFactors:
    """Ground truth whose 'images' ``[n, 4, 4]`` hold the factor classes in their first pixels."""

    factor_sizes = SIZES

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.stack([rng.integers(0, s, size=n) for s in SIZES], axis=1)

    def images(self, classes: np.ndarray) -> np.ndarray:
        out = np.zeros((classes.shape[0], 16), dtype=np.uint8)
        out[:, : classes.shape[1]] = classes
        return out.reshape(-1, 4, 4)


def linear_encoder(n_codes: int = 10):
    mix = np.eye(len(SIZES), n_codes) + 0.15 * np.random.default_rng(123).normal(
        size=(len(SIZES), n_codes)
    )
    noise = np.random.default_rng(9)

    def encode(images: np.ndarray) -> np.ndarray:
        u = images.reshape(len(images), -1)[:, : len(SIZES)] / (np.array(SIZES) - 1)
        return u @ mix + 0.3 * noise.normal(size=(len(images), n_codes))

    return encode


def timed(fn):
    """Result, wall seconds and CPU seconds of this process (all its threads)."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 / 1,000 samples")
    parser.add_argument("--kind", choices=KINDS, default="mixed")
    parser.add_argument("--n-jobs", type=int, default=1,
                        help="factors the exact DCI fits in parallel (1: as disentanglement_lib)")
    parser.add_argument("--fast-jobs", type=int, default=2,
                        help="threads of the fast DCI (the classes of a round in parallel)")
    parser.add_argument("--no-exact", action="store_true", help="skip the slow exact DCI")
    parser.add_argument("--no-sampling", action="store_true", help="skip FactorVAE/BetaVAE")
    parser.add_argument("--embeddings", type=Path, help="codes of a trained model instead: an "
                        "embed-stage Parquet file (mu_* columns + factor columns)")
    args = parser.parse_args()
    n_train, n_test = (2000, 1000) if args.quick else (10000, 5000)
    if args.embeddings is not None:
        z_tr, y_tr, z_te, y_te = embedded(args.embeddings, n_train, n_test)
        args.no_sampling = True  # the sampling scores need the model, not its codes
        print(f"codes of {args.embeddings}, {n_train}/{n_test} samples")
    else:
        z_tr, y_tr = synthetic(n_train, 0, args.kind)
        z_te, y_te = synthetic(n_test, 1, args.kind)
        print(f"{args.kind} codes, {n_train}/{n_test} samples, 10 codes x factor sizes {SIZES}")
    split = (z_tr, y_tr, z_te, y_te)
    rows = [
        ("mig", lambda: metrics.mig(z_tr, y_tr)),
        ("sap", lambda: metrics.sap(*split)),
        ("modularity_explicitness", lambda: metrics.modularity_explicitness(*split)),
        ("dci[fast]", lambda: metrics.dci(*split, backend="fast", n_jobs=args.fast_jobs)),
    ]
    if not args.no_exact:
        rows.append(("dci[exact]", lambda: metrics.dci(*split, n_jobs=args.n_jobs)))
    if not args.no_sampling:
        scale = 10 if args.quick else 1
        sizes = dict(num_train=10000 // scale, num_eval=5000 // scale)
        enc, data = linear_encoder(), PixelFactors()
        rows += [
            ("factor_vae", lambda: metrics.factor_vae_score(enc, data, _rng(), **sizes)),
            ("beta_vae", lambda: metrics.beta_vae_score(enc, data, _rng(), **sizes)),
        ]
    results = {}
    print(f"{'metric':26s} {'wall':>8s}   {'cpu':>8s}")
    for name, fn in rows:
        result, seconds, cpu = timed(fn)
        results[name] = (result, seconds, cpu)
        values = "  ".join(f"{k} {v:.4f}" for k, v in result.items())
        print(f"{name:26s} {seconds:8.2f} s {cpu:8.2f} s   {values}")
    if "dci[exact]" in results:
        (fast, t_fast, c_fast), (exact, t_exact, c_exact) = (
            results["dci[fast]"],
            results["dci[exact]"],
        )
        print(
            f"\nDCI fast ({args.fast_jobs} jobs) vs exact ({args.n_jobs} job(s)): "
            f"{t_exact / t_fast:.1f}x faster (wall), "
            f"{c_exact / c_fast:.1f}x less CPU; "
            f"|dD| {abs(fast['disentanglement'] - exact['disentanglement']):.4f}  "
            f"|dC| {abs(fast['completeness'] - exact['completeness']):.4f}  "
            f"|dI_test| {abs(fast['informativeness_test'] - exact['informativeness_test']):.4f}  "
            f"max |dR| {np.abs(fast.importance - exact.importance).max():.4f}"
        )
        worst = max(abs(fast[k] - exact[k]) for k in ("disentanglement", "completeness"))
        print(f"target |dD|, |dC| <= 0.02: {'met' if worst <= 0.02 else 'MISSED'}; "
              f"target >= 20x (wall): {'met' if t_exact >= 20 * t_fast else 'MISSED'}")


def embedded(path: Path, n_train: int, n_test: int):
    """Train and test codes and factors from an embed table (seeded split, constant factors
    dropped as disentanglement_lib does)."""
    frame = pd.read_parquet(path)
    mu = sorted((c for c in frame.columns if c.startswith("mu_")), key=lambda c: int(c[3:]))
    names = [c for c in frame.columns if not c.startswith(("mu_", "logvar_"))]
    if len(frame) < n_train + n_test:
        raise SystemExit(f"{path}: {len(frame)} rows, fewer than {n_train} + {n_test}")
    rows = np.random.default_rng(0).permutation(len(frame))
    codes, factors = frame[mu].to_numpy(np.float64), frame[names].to_numpy(np.int64)
    factors = factors[:, [j for j in range(factors.shape[1]) if len(set(factors[:, j])) > 1]]
    tr, te = rows[:n_train], rows[n_train:n_train + n_test]
    return codes[tr], factors[tr], codes[te], factors[te]


def _rng() -> np.random.Generator:
    return np.random.default_rng(0)


if __name__ == "__main__":
    main()
