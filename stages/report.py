"""Report stage: what the model learned, on one page.

Reads the data store, the trained model, the training log, the metrics and the DCI importance
matrix and writes into the report folder (replaced atomically as a whole):

- ``traversals.png``: one row per latent, sorted by KL to the prior, each varying one latent
  over ``±traversal_range`` prior standard deviations around the code of a reference image;
- ``reconstructions.png``, ``training_curves.png``, ``dci_importance.png``;
- ``metrics.md`` (the metrics table), ``report.md`` (everything, figures linked);
- ``metrics_records.json`` and ``latent_kl.json``: lists of records for ``dvc plots``, so
  metrics and per-latent KL can be compared across experiments;
- ``index.html`` when ``html`` is true: one self-contained page (figures embedded).

The training log, metrics and importance files are optional: a missing one skips its part with
a note in the report. PNG bytes are deterministic for the same inputs on the same device.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from pydantic import Field

from stages import figures
from stages.atomic import atomic_dir
from stages.html_report import render_html
from stages.modelio import load_model
from stages.params import StageConfig
from stages.progress import task_progress
from stages.report_content import (
    LatentRow,
    Provenance,
    ReportContent,
    ReportFigure,
    dvc_lock_entries,
    flatten,
    git_commit,
    metrics_markdown,
    report_markdown,
)
from stages.report_latents import kl_order, latent_stats, reconstruct, traverse
from stages.store import open_store

__all__ = ["ReportConfig", "run", "ACTIVE_VARIANCE"]

logger = logging.getLogger(__name__)

#: A latent is active when Var_x(mu_j(x)) exceeds this (Burda et al., ICLR 2016, sec. 5.2).
ACTIVE_VARIANCE = 0.01


class ReportConfig(StageConfig):
    """``report`` section of params.yaml."""

    traversal_range: float = Field(2.0, gt=0, description="traversal spans ±range prior σ")
    traversal_steps: int = Field(9, ge=2, le=25, description="images per traversal row")
    n_recon: int = Field(10, ge=1, le=50, description="images in the reconstruction grid")
    n_kl: int = Field(1024, ge=1, description="images used for per-latent KL and activity")
    batch_size: int = Field(256, ge=1)
    seed: int = Field(0, ge=0, description="picks the images shown")
    html: bool = True


def _resolve_device(device: str | None) -> str:
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _read_metrics(path: Path, notes: list[str]) -> dict[str, Any]:
    if not path.is_file():
        notes.append(f"Metrics not shown: {path} not found.")
        return {}
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object of metric name -> value")
    return flatten(raw)


def _read_log(path: Path, notes: list[str]) -> pd.DataFrame | None:
    if not path.is_file():
        notes.append(f"Training curves not shown: {path} not found.")
        return None
    frame = pd.read_csv(path)
    if "step" not in frame.columns:
        raise ValueError(
            f"{path}: training log has no 'step' column (columns: {list(frame.columns)})"
        )
    if frame.empty or len(frame.columns) < 2:
        notes.append(f"Training curves not shown: {path} has no logged rows or terms.")
        return None
    return frame


def _read_importance(path: Path, notes: list[str]) -> pd.DataFrame | None:
    if not path.is_file():
        notes.append(f"DCI importance not shown: {path} not found.")
        return None
    frame = pd.read_parquet(path)
    if isinstance(frame.index, pd.RangeIndex):
        labels = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
        if labels:
            frame = frame.set_index(labels[0])
    frame = frame.apply(pd.to_numeric, errors="coerce")
    if frame.empty:
        notes.append(f"DCI importance not shown: {path} is empty.")
        return None
    return frame


def _pick_images(store, cfg: ReportConfig) -> tuple[np.ndarray, np.ndarray]:
    """Distinct random indices (seeded) and their images; index 0 is the traversal reference."""
    n = len(store)
    if n == 0:
        raise ValueError("report: the data store holds no images")
    rng = np.random.default_rng(cfg.seed)
    chosen = rng.choice(n, size=min(n, max(cfg.n_kl, cfg.n_recon)), replace=False)
    order = np.argsort(chosen)
    loaded = np.asarray(store.images(chosen[order]))
    images = np.empty_like(loaded)
    images[order] = loaded
    return chosen, images


def _latent_figures(cfg, store, model, device, notes) -> tuple[list[ReportFigure], list[LatentRow]]:
    shape = tuple(store.observation_shape)
    if len(shape) not in (2, 3):
        notes.append(
            f"Traversals and reconstructions not shown: observations {shape} are not images."
        )
        return [], []
    chosen, images = _pick_images(store, cfg)
    stats = latent_stats(model, images[: cfg.n_kl], device, cfg.batch_size)
    order = kl_order(stats.kl)
    active = stats.mu_std**2 > ACTIVE_VARIANCE
    rows = [
        LatentRow(int(j), float(stats.kl[j]), float(stats.mu_std[j]), bool(active[j]))
        for j in order
    ]
    labels = [f"z{r.latent}  KL {r.kl:.2f}" for r in rows]
    values = np.linspace(-cfg.traversal_range, cfg.traversal_range, cfg.traversal_steps)
    grid = traverse(model, stats.mu[0], order, values, len(shape) == 3, device, cfg.batch_size)
    title = f"Latent traversals around image #{int(chosen[0])} (rows sorted by KL)"
    caption = (
        f"Each row decodes the posterior mean of image #{int(chosen[0])} with one latent set to "
        f"values from -{cfg.traversal_range:g} to +{cfg.traversal_range:g} prior standard "
        f"deviations. KL to the prior is averaged over {min(len(images), cfg.n_kl)} images; "
        f"grey labels mark inactive latents (Var[μ] ≤ {ACTIVE_VARIANCE})."
    )
    trav_png = figures.traversal_figure(
        grid, labels, values, title, dimmed=[not r.active for r in rows]
    )
    recon = images[: cfg.n_recon]
    recon_png = figures.reconstruction_figure(
        recon, reconstruct(model, recon, device, cfg.batch_size)
    )
    recon_caption = f"Top: {len(recon)} random inputs; below each, the decoder mean at z = μ(x)."
    return [
        ReportFigure("traversals.png", "Latent traversals", caption, trav_png),
        ReportFigure("reconstructions.png", "Reconstructions", recon_caption, recon_png),
    ], rows


def _importance_figure(frame: pd.DataFrame, rows: list[LatentRow]) -> ReportFigure:
    kl = {f"z{r.latent}": r.kl for r in rows}
    codes = [str(c) for c in frame.index]
    if rows and set(codes) == set(kl):
        codes = [f"z{r.latent}" for r in rows]
        frame = frame.set_axis([str(c) for c in frame.index], axis=0).loc[codes]
    labels = [f"{c}  KL {kl[c]:.2f}" if c in kl else c for c in codes]
    png = figures.importance_figure(
        frame.to_numpy(),
        labels,
        [str(c) for c in frame.columns],
        "DCI importance: latent code × factor",
    )
    caption = (
        "Importance of each latent code (rows, in traversal order) for predicting each factor "
        "(columns) in the DCI probe (Eastwood & Williams, ICLR 2018). A disentangled code has one "
        "dominant cell per row and per column."
    )
    return ReportFigure("dci_importance.png", "DCI importance", caption, png)


def _metric_records(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"metric": k, "value": float(v)}
        for k, v in sorted(metrics.items())
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    ]


def _summary(store, model, path_model: Path, rows: list[LatentRow]) -> tuple[str, ...]:
    manifest = store.manifest
    options = manifest.get("options") or {}
    dataset = manifest.get("dataset", "unknown")
    described = f"{dataset} {json.dumps(options, sort_keys=True)}" if options else dataset
    lines = [
        f"data: {described}; {len(store)} images "
        f"of shape {tuple(store.observation_shape)}; factors {', '.join(store.factor_names)}",
    ]
    config = getattr(model, "config", None)
    if isinstance(config, dict):
        keys = ("architecture", "latent_dim", "likelihood")
        lines.append(
            f"model: {path_model} (" + ", ".join(f"{k} {config.get(k)}" for k in keys) + ")"
        )
    if rows:
        active = sum(r.active for r in rows)
        total = sum(r.kl for r in rows)
        lines.append(
            f"latents: {active} of {len(rows)} active (Var[μ] > {ACTIVE_VARIANCE}); "
            f"total KL to the prior {total:.2f} nats"
        )
    return tuple(lines)


def _read_params(params_file: Path | None, notes: list[str]) -> dict[str, Any] | None:
    if params_file is None:
        return None
    if not Path(params_file).is_file():
        notes.append(f"Params not shown: {params_file} not found.")
        return None
    data = yaml.safe_load(Path(params_file).read_text())
    return data if isinstance(data, dict) else None


def run(
    cfg: ReportConfig,
    data: Path,
    model: Path,
    log: Path,
    metrics: Path,
    importance: Path,
    out: Path,
    device: str | None = None,
    params_file: Path | None = None,
) -> None:
    """Write the report files into ``out`` (see the module docstring)."""
    data, model, log, metrics, importance, out = map(
        Path, (data, model, log, metrics, importance, out)
    )
    device = _resolve_device(device)
    notes: list[str] = []
    with task_progress("report", total=4) as advance:
        store = open_store(data)
        vae = load_model(model, device=device)
        advance()
        figs, rows = _latent_figures(cfg, store, vae, device, notes)
        advance()
        frame = _read_log(log, notes)
        if frame is not None:
            figs.append(
                ReportFigure(
                    "training_curves.png",
                    "Training curves",
                    f"Every term logged in {log} against the optimisation step.",
                    figures.training_curves_figure(frame, title=f"Training curves ({log.name})"),
                )
            )
        importance_frame = _read_importance(importance, notes)
        if importance_frame is not None:
            figs.append(_importance_figure(importance_frame, rows))
        advance()
        metric_values = _read_metrics(metrics, notes)
        params = _read_params(params_file, notes)
        root = Path.cwd()
        content = ReportContent(
            title=f"gmg report: {store.manifest.get('dataset', data.name)}",
            summary=_summary(store, vae, model, rows),
            metrics=metric_values,
            figures=tuple(figs),
            latents=tuple(rows),
            notes=tuple(notes),
            params=params,
            provenance=Provenance(
                commit=git_commit(root),
                lock_entries=dvc_lock_entries(
                    root / "dvc.lock", [data, model, log, metrics, importance], root
                ),
                lock_file="dvc.lock",
            ),
        )
        for note in content.notes:
            logger.warning(note)
        _write(out, content, cfg.html)
        advance()


def _write(out: Path, content: ReportContent, html: bool) -> None:
    with atomic_dir(out) as tmp:
        tmp.chmod(0o755)  # mkdtemp makes it private; the report is meant to be shared
        for fig in content.figures:
            (tmp / fig.name).write_bytes(fig.png)
        (tmp / "metrics.md").write_text(metrics_markdown(content.metrics), encoding="utf-8")
        (tmp / "report.md").write_text(report_markdown(content), encoding="utf-8")
        records = json.dumps(_metric_records(dict(content.metrics)), indent=1)
        (tmp / "metrics_records.json").write_text(records + "\n")
        kl = [
            {"latent": f"z{r.latent}", "kl": r.kl}
            for r in sorted(content.latents, key=lambda r: r.latent)
        ]
        (tmp / "latent_kl.json").write_text(json.dumps(kl, indent=1) + "\n")
        if html:
            (tmp / "index.html").write_text(render_html(content), encoding="utf-8")
