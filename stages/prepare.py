"""Stage ``prepare``: render or read a ground-truth data set and write it as a Parquet store.

``params.yaml`` section ``prepare``: ``dataset`` (a name of ``gmgcore.data.DATASETS``),
``path`` (the file or folder of a real data set; none for procedural ones), ``options``
(further dataset options, e.g. ``split`` for SmallNORB), ``fraction`` and ``seed`` (a uniform
subset without replacement, rows kept in dataset order), ``row_group_size`` (rows per Parquet
row group) and ``chunk_size`` (images rendered and written at a time: bounds memory).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydantic import Field, field_validator

from gmgcore.data import DATASETS, GroundTruthData, get_dataset
from stages.params import StageConfig
from stages.progress import task_progress
from stages.store import write_store_chunks

__all__ = ["PrepareConfig", "run", "subset_indices"]

OptionValue = str | int | float | bool | list[int]
T = TypeVar("T")


class PrepareConfig(StageConfig):
    """Which data set to store, which subset, and how to lay it out in Parquet."""

    dataset: str = "dsprites_procedural"
    path: str | None = None
    options: dict[str, OptionValue] = Field(default_factory=dict)
    fraction: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int = 0
    row_group_size: int = Field(default=4096, ge=1)
    chunk_size: int = Field(default=16384, ge=1)

    @field_validator("dataset")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in DATASETS:
            raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
        return name


def subset_indices(num_images: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted dataset indices int64 ``[round(fraction·N)]`` drawn without replacement.

    ``fraction = 1`` keeps every index; otherwise ``default_rng(seed).choice`` draws them.
    """
    n = min(num_images, max(1, round(fraction * num_images)))
    if n == num_images:
        return np.arange(num_images, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_images, size=n, replace=False)).astype(np.int64)


def _prefetch(items: Iterator[T]) -> Iterator[T]:
    """Produce the next item in a worker thread while the caller consumes the current one."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(next, items, None)
        while True:
            item = future.result()
            if item is None:
                return
            future = pool.submit(next, items, None)
            yield item


def build_dataset(cfg: PrepareConfig) -> GroundTruthData:
    """The ground-truth data set named by ``cfg`` (``path`` merged into its options)."""
    options: dict[str, Any] = dict(cfg.options)
    if cfg.path is not None:
        options["path"] = cfg.path
    return get_dataset(cfg.dataset, **options)


def run(cfg: PrepareConfig, out: Path) -> dict[str, Any]:
    """Write the store to ``out`` (atomically) and return its manifest."""
    data = build_dataset(cfg)
    index = subset_indices(data.num_images, cfg.fraction, cfg.seed)
    extra = {
        "subset": {
            "fraction": cfg.fraction,
            "seed": cfg.seed,
            "source_images": data.num_images,
        },
        "factor_values": [np.asarray(v).tolist() for v in data.factor_values],
    }
    with task_progress(f"prepare {data.name}", total=len(index)) as advance:
        return write_store_chunks(
            out,
            _prefetch(data.iter_chunks(index, cfg.chunk_size)),
            factor_names=data.factor_names,
            factor_sizes=data.factor_sizes,
            observation_shape=data.observation_shape,
            dataset=data.name,
            options=data.options,
            row_group_size=cfg.row_group_size,
            source="procedural" if cfg.path is None else str(Path(cfg.path).resolve()),
            extra=extra,
            progress=advance,
        )
