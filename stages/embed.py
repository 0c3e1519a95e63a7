"""Stage ``embed``: encode the data store (or a seeded sample of it) with the trained model.

Writes one Parquet table, one row per encoded image: ``mu_0..mu_{d-1}`` and
``logvar_0..logvar_{d-1}`` (float32, the encoder's Gaussian parameters), then one int64 column
per factor (the store's factor names, class indices). Rows follow increasing store index.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import Field

from gmgcore.models import images_to_tensor
from stages.atomic import atomic_path
from stages.modelio import load_model
from stages.params import StageConfig
from stages.progress import task_progress
from stages.store import open_store

__all__ = ["EmbedConfig", "run", "select_indices"]


class EmbedConfig(StageConfig):
    """``num_samples``: images to encode, 0 = all; ``seed`` picks them; ``batch_size``."""

    num_samples: int = Field(0, ge=0)
    seed: int = 0
    batch_size: int = Field(256, ge=1)


def select_indices(num_images: int, num_samples: int, seed: int) -> np.ndarray:
    """Sorted store indices: all of them, or ``num_samples`` distinct ones drawn with ``seed``."""
    if num_samples == 0 or num_samples == num_images:
        return np.arange(num_images, dtype=np.int64)
    if num_samples > num_images:
        raise ValueError(
            f"embed.num_samples={num_samples} exceeds the {num_images} images in the data store"
        )
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_images, size=num_samples, replace=False)).astype(np.int64)


@torch.inference_mode()
def _encode(model, store, indices: np.ndarray, batch_size: int, device: str):
    mus, logvars = [], []
    with task_progress("embed", total=len(indices)) as advance:
        for start in range(0, len(indices), batch_size):
            batch = indices[start : start + batch_size]
            mu, logvar = model.encode(images_to_tensor(store.images(batch), device))
            mus.append(mu.float().cpu().numpy())
            logvars.append(logvar.float().cpu().numpy())
            advance(len(batch))
    return np.concatenate(mus), np.concatenate(logvars)


def embeddings_table(
    mu: np.ndarray,
    logvar: np.ndarray,
    factors: np.ndarray,
    factor_names: tuple[str, ...],
    factor_sizes: tuple[int, ...],
) -> pa.Table:
    """Table with ``mu_i``, ``logvar_i`` ``[n]`` float32 columns then one int64 per factor."""
    columns: dict[str, np.ndarray] = {}
    columns.update({f"mu_{i}": mu[:, i].astype(np.float32) for i in range(mu.shape[1])})
    columns.update({f"logvar_{i}": logvar[:, i].astype(np.float32) for i in range(mu.shape[1])})
    columns.update({name: factors[:, j].astype(np.int64) for j, name in enumerate(factor_names)})
    meta = {"factor_names": list(factor_names), "factor_sizes": [int(s) for s in factor_sizes]}
    return pa.table(columns).replace_schema_metadata({"gmg": json.dumps(meta)})


def run(cfg: EmbedConfig, data: Path, model: Path, out: Path, device: str = "cpu") -> None:
    """Encode the store at ``data`` with the model file ``model`` into the Parquet file ``out``."""
    store = open_store(Path(data))
    indices = select_indices(len(store), cfg.num_samples, cfg.seed)
    vae = load_model(Path(model), device=device)
    mu, logvar = _encode(vae, store, indices, cfg.batch_size, device)
    if not (np.isfinite(mu).all() and np.isfinite(logvar).all()):
        raise ValueError(f"{model}: the encoder produced NaN or infinite codes")
    factors = np.asarray(store.factors())[indices]
    table = embeddings_table(
        mu, logvar, factors, tuple(store.factor_names), tuple(store.factor_sizes)
    )
    with atomic_path(Path(out)) as tmp:
        pq.write_table(table, tmp)
