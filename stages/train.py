"""Train stage: a VAE (+ geometry regularizer) on the image store → model, log, metrics.

Outputs: ``models/model.pt`` ({"model_config", "state_dict"}), ``plots/train_log.csv`` (column
``step`` then one per logged term), ``metrics/train.json`` (each term averaged over the last
``METRIC_ROWS`` log rows). Checkpoints live in ``checkpoints/<hash>/checkpoint.pt``, the hash
covering this config and the store's content hash, so a rerun after a kill resumes and a
changed config or data set starts afresh.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator

from gmgcore.costs import COST_NAMES
from gmgcore.objectives import ObjectiveSpec
from gmgcore.regularizers import RegularizerSpec
from gmgcore.training import NonFiniteLossError, TrainSpec, build_seeded, train
from stages.atomic import atomic_path, write_json, write_text
from stages.modelio import save_model
from stages.params import StageConfig
from stages.progress import task_progress
from stages.store import open_store

__all__ = ["ModelConfig", "TrainConfig", "config_hash", "run"]

logger = logging.getLogger(__name__)

METRIC_ROWS = 5
_PROGRESS_TERMS = ("loss", "reconstruction", "kl", "tc", "hfs", "gmg", "dst", "jacobian")


class ModelConfig(StageConfig):
    architecture: Literal["dlib_conv", "hfs_conv", "mlp"] = "dlib_conv"
    latent_dim: int = Field(10, ge=1)
    likelihood: Literal["bernoulli", "gaussian"] = "bernoulli"
    hidden: list[int] = Field(default_factory=lambda: [256, 256])


class TrainConfig(StageConfig):
    """``hfs``: False/True or a weight; ``beta``: KL weight (β-VAE, decoder-free) or TC weight
    (β-TCVAE); ``gamma``: FactorVAE TC weight; ``cost_x`` / ``cost_y``: costs on the data /
    latent space; ``weight``: λ; ``epsilon0``: ε0 of the GMG solver; ``gap_options``: extra
    arguments of ``gmgcore.gap.gromov_monge_gap``."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    objective: Literal["beta_vae", "beta_tcvae", "factorvae", "decoder_free"] = "beta_vae"
    hfs: bool | float = False
    hfs_support_samples: int | None = 100
    beta: float = 1.0
    gamma: float = 10.0
    regularizer: Literal["none", "gmg", "dst", "jacobian"] = "none"
    target: Literal["encoder", "decoder", "both"] = "decoder"
    cost_x: str = "cosine"
    cost_y: str = "cosine"
    weight: float = 1.0
    epsilon0: float = Field(0.1, gt=0)
    gap_options: dict[str, Any] = Field(default_factory=dict)
    jacobian_mixup: float = 0.2
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(1e-4, gt=0)
    seed: int = 0
    checkpoint_every: int = Field(500, ge=1)
    log_every: int = Field(10, ge=1)

    @field_validator("cost_x", "cost_y")
    @classmethod
    def _known_cost(cls, value: str) -> str:
        if value not in COST_NAMES:
            raise ValueError(f"unknown cost {value!r}, expected one of {COST_NAMES}")
        return value

    def objective_spec(self, dataset_size: int) -> ObjectiveSpec:
        hfs = float(self.hfs) if not isinstance(self.hfs, bool) else (1.0 if self.hfs else 0.0)
        return ObjectiveSpec(
            name=self.objective, beta=self.beta, gamma=self.gamma, hfs=hfs,
            hfs_support_samples=self.hfs_support_samples, likelihood=self.model.likelihood,
            dataset_size=dataset_size,
        )

    def regularizer_spec(self) -> RegularizerSpec:
        return RegularizerSpec(
            kind=self.regularizer, target=self.target, cost_x=self.cost_x, cost_y=self.cost_y,
            epsilon0=self.epsilon0, weight=self.weight, gap_options=dict(self.gap_options),
            jacobian_mixup=self.jacobian_mixup,
        )

    def train_spec(self) -> TrainSpec:
        return TrainSpec(
            steps=self.steps, lr=self.lr, seed=self.seed,
            checkpoint_every=self.checkpoint_every, log_every=self.log_every,
        )


def config_hash(cfg: TrainConfig, data_hash: str) -> str:
    """16 hex digits of SHA-256 over the config (JSON, sorted keys) and the data's hash."""
    blob = json.dumps({"train": cfg.model_dump(mode="json"), "data": data_hash}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _csv(rows: list[dict[str, float]]) -> str:
    columns = ["step"] + [k for k in dict.fromkeys(k for r in rows for k in r) if k != "step"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        cells = [str(int(r["step"]))] + [format(r[c], ".8g") if c in r else "" for c in columns[1:]]
        writer.writerow(cells)
    return buf.getvalue()


def _final_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    last = rows[-METRIC_ROWS:]
    names = dict.fromkeys(k for r in last for k in r if k != "step")
    return {k: sum(r[k] for r in last if k in r) / sum(k in r for r in last) for k in names}


def run(
    cfg: TrainConfig,
    data: Path,
    out: Path,
    log: Path,
    metrics: Path,
    checkpoints: Path,
    device: str | None = None,
) -> dict[str, float]:
    """Train on the store at ``data``; write ``out``, ``log``, ``metrics``; return the metrics."""
    store = open_store(data)
    data_hash = str(store.manifest.get("content_hash", ""))
    key = config_hash(cfg, data_hash)
    ckpt_dir = Path(checkpoints) / key
    ckpt_file = ckpt_dir / "checkpoint.pt"
    model_config = {**cfg.model.model_dump(), "observation_shape": list(store.observation_shape)}
    model = build_seeded(model_config, cfg.seed)
    resume = None
    if ckpt_file.is_file():
        resume = torch.load(ckpt_file, map_location="cpu", weights_only=True)
        logger.info("%s: resuming from step %d", ckpt_file, resume["step"])
    else:
        record = {"train": cfg.model_dump(mode="json"), "data_content_hash": data_hash}
        write_json(ckpt_dir / "config.json", record)

    def save_checkpoint(state: dict[str, Any]) -> None:
        with atomic_path(ckpt_file) as tmp:
            torch.save(state, tmp)

    def batches(start: int):
        return (images for images, _ in store.batches(cfg.batch_size, cfg.seed, start_step=start))

    with task_progress("train", total=cfg.steps) as advance:
        if resume is not None:
            advance(int(resume["step"]))

        def on_step(step: int, terms: dict[str, float]) -> None:
            advance(1, **{k: v for k, v in terms.items() if k.split("_")[0] in _PROGRESS_TERMS})

        try:
            result = train(
                model, batches, cfg.objective_spec(len(store)), cfg.regularizer_spec(),
                cfg.train_spec(), device=device, resume=resume, on_step=on_step,
                on_checkpoint=save_checkpoint,
            )
        except NonFiniteLossError as err:
            err.args = (f"{err.args[0]} ({ckpt_file})",)
            raise
    save_model(out, result.model.cpu())
    write_text(log, _csv(result.rows))
    final = _final_metrics(result.rows)
    write_json(metrics, final)
    return final
