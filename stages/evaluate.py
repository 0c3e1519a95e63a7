"""Stage ``evaluate``: disentanglement metrics of the embeddings (and of the model, for the
sampling-based scores).

Codes are the encoder means ``mu_*`` of the embed stage's table. Train and test rows are drawn
with the seed: ``split="iid"`` draws each split independently with replacement (as
disentanglement_lib draws i.i.d. factors; with every image embedded this is the same
distribution), ``split="disjoint"`` takes disjoint random rows. FactorVAE and BetaVAE rebuild
the ground truth from the store manifest and call the model's encoder. Each metric uses its own
random stream spawned from ``seed``, so selecting metrics does not change the others' values.

Outputs: a flat JSON mapping ``"<metric>.<score>" -> float`` (keys sorted, nothing
run-dependent) and the DCI importance matrix as Parquet (index ``code`` = ``z0..``, one column
per scored factor; no rows when DCI is not selected).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field

from gmgcore import metrics as gm
from gmgcore.models import images_to_tensor
from stages.atomic import atomic_path, write_json
from stages.modelio import load_model
from stages.params import StageConfig
from stages.progress import task_progress
from stages.store import open_store

__all__ = ["EvaluateConfig", "run", "METRICS"]

log = logging.getLogger(__name__)

MetricName = Literal["dci", "mig", "sap", "modularity_explicitness", "factor_vae", "beta_vae"]
METRICS: tuple[str, ...] = MetricName.__args__  # type: ignore[attr-defined]
SAMPLING = ("factor_vae", "beta_vae")


class EvaluateConfig(StageConfig):
    """Which metrics, their sample sizes, the DCI backend and the seed."""

    metrics: list[MetricName] = Field(
        default_factory=lambda: ["dci", "mig", "sap", "modularity_explicitness"], min_length=1
    )
    num_train: int = Field(10000, ge=2)
    num_test: int = Field(5000, ge=1)
    split: Literal["iid", "disjoint"] = "iid"
    seed: int = 0
    dci_backend: gm.DCIBackend = "exact"
    dci_n_jobs: int = Field(1, ge=1)
    num_bins: int = Field(20, ge=1)
    sap_continuous: bool = False
    sampling_batch_size: int = Field(64, ge=2)
    sampling_num_train: int = Field(10000, ge=1)
    sampling_num_eval: int = Field(5000, ge=1)
    factor_vae_num_variance: int = Field(10000, ge=2)
    factor_vae_prune_threshold: float = Field(0.05, ge=0.0)
    encode_batch_size: int = Field(1024, ge=1)


def read_embeddings(path: Path, factor_names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Codes ``mu`` ``[n, d]`` float64 and factors ``[n, k]`` int64 from the embed table."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: embeddings not found (run the embed stage first)")
    frame = pd.read_parquet(path)
    mu_cols = sorted((c for c in frame.columns if c.startswith("mu_")), key=lambda c: int(c[3:]))
    if not mu_cols:
        raise ValueError(f"{path}: no mu_* columns")
    missing = [name for name in factor_names if name not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing factor columns {missing}")
    codes = frame[mu_cols].to_numpy(np.float64)
    factors = frame[list(factor_names)].to_numpy(np.int64)
    return codes, factors


def split_rows(n: int, cfg: EvaluateConfig, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Row indices of the train and test splits (see the module docstring)."""
    if cfg.split == "iid":
        return rng.integers(0, n, size=cfg.num_train), rng.integers(0, n, size=cfg.num_test)
    if cfg.num_train + cfg.num_test > n:
        raise ValueError(
            f"evaluate.split='disjoint' needs num_train + num_test = "
            f"{cfg.num_train + cfg.num_test} rows, the embeddings have {n}"
        )
    perm = rng.permutation(n)
    return perm[: cfg.num_train], perm[cfg.num_train : cfg.num_train + cfg.num_test]


def make_encoder(model: torch.nn.Module, device: str) -> gm.Encoder:
    """uint8 images → encoder means ``[b, d]`` float64 (numpy), without gradients."""

    @torch.inference_mode()
    def encode(images: np.ndarray) -> np.ndarray:
        mu, _ = model.encode(images_to_tensor(images, device))
        return mu.double().cpu().numpy()

    return encode


def ground_truth(manifest: Mapping[str, Any]) -> gm.GroundTruthData:
    """Rebuild the store's data set: ``get_dataset(manifest["dataset"], **manifest["options"])``."""
    from gmgcore.data import get_dataset

    return get_dataset(manifest["dataset"], **dict(manifest.get("options") or {}))


def _sampling_metric(name: str, cfg: EvaluateConfig, encode, data, rng) -> gm.MetricResult:
    chunk = max(1, cfg.encode_batch_size // cfg.sampling_batch_size)
    total = cfg.sampling_num_train + cfg.sampling_num_eval
    sizes = dict(
        batch_size=cfg.sampling_batch_size,
        num_train=cfg.sampling_num_train,
        num_eval=cfg.sampling_num_eval,
        chunk=chunk,
    )
    with task_progress(name, total=total) as advance:
        if name == "factor_vae":
            return gm.factor_vae_score(
                encode,
                data,
                rng,
                num_variance_estimate=cfg.factor_vae_num_variance,
                prune_threshold=cfg.factor_vae_prune_threshold,
                progress=advance,
                **sizes,
            )
        return gm.beta_vae_score(encode, data, rng, progress=advance, **sizes)


def _split_metric(name: str, cfg: EvaluateConfig, z_tr, y_tr, z_te, y_te) -> gm.MetricResult:
    if name == "dci":
        return gm.dci(
            z_tr, y_tr, z_te, y_te, backend=cfg.dci_backend, seed=cfg.seed, n_jobs=cfg.dci_n_jobs
        )
    if name == "mig":
        return gm.mig(z_tr, y_tr, num_bins=cfg.num_bins)
    if name == "sap":
        return gm.sap(z_tr, y_tr, z_te, y_te, continuous=cfg.sap_continuous)
    return gm.modularity_explicitness(z_tr, y_tr, z_te, y_te, num_bins=cfg.num_bins)


def _importance_frame(result: gm.DCIResult | None, factor_names: tuple[str, ...]) -> pd.DataFrame:
    if result is None:
        return pd.DataFrame(index=pd.Index([], name="code", dtype=str), dtype=np.float64)
    names = [factor_names[j] for j in result.factor_indices]
    index = pd.Index([f"z{i}" for i in range(result.importance.shape[0])], name="code")
    return pd.DataFrame(result.importance, index=index, columns=names)


def run(
    cfg: EvaluateConfig,
    embeddings: Path,
    data: Path,
    model: Path,
    metrics_out: Path,
    importance_out: Path,
    device: str = "cpu",
) -> dict[str, float]:
    """Compute ``cfg.metrics``; write the metrics JSON and the importance Parquet; return scores."""
    store = open_store(Path(data))
    factor_names = tuple(store.factor_names)
    codes, factors = read_embeddings(Path(embeddings), factor_names)
    streams = dict(
        zip(METRICS + ("split",), np.random.SeedSequence(cfg.seed).spawn(7), strict=True)
    )
    train, test = split_rows(len(codes), cfg, np.random.default_rng(streams["split"]))
    split = (codes[train], factors[train], codes[test], factors[test])
    encode = data_set = None
    scores: dict[str, float] = {}
    dci_result = None
    for name in dict.fromkeys(cfg.metrics):
        log.info("evaluate: computing %s", name)
        if name in SAMPLING:
            if encode is None:
                encode = make_encoder(load_model(Path(model), device=device), device)
                data_set = ground_truth(store.manifest)
            rng = np.random.default_rng(streams[name])
            result = _sampling_metric(name, cfg, encode, data_set, rng)
        else:
            with task_progress(name, total=1) as advance:
                result = _split_metric(name, cfg, *split)
                advance(1)
        if name == "dci":
            dci_result = result
        scores.update({f"{name}.{key}": float(value) for key, value in result.items()})
    write_json(Path(metrics_out), scores)
    with atomic_path(Path(importance_out)) as tmp:
        _importance_frame(dci_result, factor_names).to_parquet(tmp)
    return dict(sorted(scores.items()))
