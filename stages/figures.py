"""Report figures as PNG bytes: traversals, reconstructions, training curves, DCI importance.

Figures are drawn on ``matplotlib.figure.Figure`` (the Agg canvas, no pyplot and no global
backend), under Matplotlib's default style whatever the user's matplotlibrc says, and saved
without the "Software" metadata: the same inputs give the same PNG bytes, so DVC sees no
spurious change. Images are uint8 ``[..., H, W]`` (grey) or ``[..., H, W, 3]`` (colour).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

__all__ = [
    "DPI",
    "Margins",
    "TRAVERSAL_MARGINS",
    "RECONSTRUCTION_MARGINS",
    "mosaic",
    "png_bytes",
    "traversal_figure",
    "reconstruction_figure",
    "training_curves_figure",
    "importance_figure",
]

DPI = 100
_PAD = 2
_PAD_VALUE = 150
_STYLE = {"font.size": 10, "axes.titlesize": 11, "figure.titlesize": 12}


class Margins(NamedTuple):
    """Space around an image grid, in inches (at ``DPI``, 1 inch = 100 pixels)."""

    left: float
    right: float
    bottom: float
    top: float


#: Image grids are drawn 1:1 (tiles under 64 px are enlarged by an integer factor) inside these
#: margins, so a figure is ``margins + mosaic`` pixels and every tile keeps its exact pixels.
TRAVERSAL_MARGINS = Margins(left=1.7, right=0.2, bottom=0.65, top=0.75)
RECONSTRUCTION_MARGINS = Margins(left=1.3, right=0.2, bottom=0.2, top=0.55)


def png_bytes(draw: Callable[[], Figure]) -> bytes:
    """Run ``draw`` under the default style and return its figure as PNG bytes (no metadata)."""
    with mpl.rc_context():
        mpl.rcdefaults()
        mpl.rcParams.update(_STYLE)
        fig = draw()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def mosaic(grid: np.ndarray, pad: int = _PAD, value: int = _PAD_VALUE) -> np.ndarray:
    """Tile ``grid`` ``[rows, cols, H, W(, C)]`` into one image with ``pad``-pixel grey gutters."""
    grid = np.asarray(grid)
    if grid.ndim not in (4, 5):
        raise ValueError(f"mosaic expects [rows, cols, H, W(, C)], got shape {grid.shape}")
    rows, cols, h, w = grid.shape[:4]
    out = np.full(
        (pad + rows * (h + pad), pad + cols * (w + pad), *grid.shape[4:]), value, dtype=np.uint8
    )
    for r in range(rows):
        for c in range(cols):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            out[y : y + h, x : x + w] = grid[r, c]
    return out


def _enlarge(grid: np.ndarray) -> np.ndarray:
    """Repeat pixels of ``grid`` ``[rows, cols, H, W(, C)]`` so tiles are at least 64 px."""
    zoom = max(1, math.ceil(64 / grid.shape[2]))
    return grid.repeat(zoom, axis=2).repeat(zoom, axis=3) if zoom > 1 else grid


def _grid_figure(grid: np.ndarray, margins: Margins) -> tuple[Figure, object, tuple[float, ...]]:
    """Figure showing the mosaic of ``grid`` 1:1 (one screen pixel per pixel) inside ``margins``.

    Returns the figure, its image axes and the figure size in inches.
    """
    image = mosaic(grid)
    img_w, img_h = image.shape[1] / DPI, image.shape[0] / DPI
    size = (margins.left + img_w + margins.right, margins.bottom + img_h + margins.top)
    fig = Figure(figsize=size, dpi=DPI)
    ax = fig.add_axes(
        (margins.left / size[0], margins.bottom / size[1], img_w / size[0], img_h / size[1])
    )
    rgb = np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image
    ax.imshow(rgb, interpolation="nearest", aspect="auto")
    for side in ax.spines.values():
        side.set_visible(False)
    ax.tick_params(length=0)
    return fig, ax, size


def _centres(n: int, size: int, pad: int = _PAD) -> list[float]:
    return [pad + i * (size + pad) + size / 2 - 0.5 for i in range(n)]


def traversal_figure(
    grid: np.ndarray,
    row_labels: Sequence[str],
    values: Sequence[float],
    title: str,
    dimmed: Sequence[bool] | None = None,
) -> bytes:
    """Traversal grid ``[rows, cols, H, W(, C)]``: one row per latent, one column per value.

    ``row_labels`` name each row (latent id and KL); ``dimmed`` rows get grey labels.
    """
    rows, cols = grid.shape[:2]
    if len(row_labels) != rows or len(values) != cols:
        raise ValueError(
            f"traversal: {rows}x{cols} grid, {len(row_labels)} labels, {len(values)} values"
        )
    grid = _enlarge(np.asarray(grid))
    h, w = grid.shape[2:4]

    def draw() -> Figure:
        fig, ax, size = _grid_figure(grid, TRAVERSAL_MARGINS)
        ax.set_yticks(_centres(rows, h), list(row_labels))
        for tick, dim in zip(ax.get_yticklabels(), dimmed or [False] * rows, strict=True):
            tick.set_color("0.6" if dim else "black")
        ax.set_xticks(_centres(cols, w), [f"{v:+.2g}" for v in values])
        ax.set_xlabel("value of the varied latent (prior σ units)")
        fig.suptitle(title, y=1 - 0.15 / size[1], va="top")
        return fig

    return png_bytes(draw)


def reconstruction_figure(originals: np.ndarray, recons: np.ndarray, per_row: int = 10) -> bytes:
    """Inputs over their reconstructions, ``per_row`` pairs per band; both ``[n, H, W(, C)]``."""
    if originals.shape != recons.shape or len(originals) == 0:
        raise ValueError(f"reconstructions: shapes {originals.shape} and {recons.shape} differ")
    n = len(originals)
    cols = min(per_row, n)
    bands = math.ceil(n / cols)
    blank = np.full((bands * cols - n, *originals.shape[1:]), _PAD_VALUE, dtype=np.uint8)
    pair = [
        np.concatenate([a, blank]).reshape(bands, cols, *a.shape[1:]) for a in (originals, recons)
    ]
    grid = _enlarge(np.stack(pair, axis=1).reshape(2 * bands, cols, *originals.shape[1:]))

    def draw() -> Figure:
        fig, ax, size = _grid_figure(grid, RECONSTRUCTION_MARGINS)
        ax.set_yticks(_centres(2 * bands, grid.shape[2]), ["input", "reconstruction"] * bands)
        ax.set_xticks([])
        fig.suptitle("Reconstructions: decoder mean at z = μ(x)", y=1 - 0.12 / size[1], va="top")
        return fig

    return png_bytes(draw)


def _ema(y: np.ndarray, span: int) -> np.ndarray:
    return pd.Series(y).ewm(span=span, adjust=True).mean().to_numpy()


def training_curves_figure(
    log: pd.DataFrame, x: str = "step", title: str = "Training curves"
) -> bytes:
    """One panel per logged column of ``log`` against ``x``; noisy curves get an EMA overlay."""
    terms = [c for c in log.columns if c != x]
    if x not in log.columns or not terms:
        raise ValueError(f"training log needs a '{x}' column and at least one term")
    ncols = min(3, len(terms))
    nrows = math.ceil(len(terms) / ncols)

    def draw() -> Figure:
        fig = Figure(figsize=(4.2 * ncols, 2.9 * nrows + 0.4), dpi=DPI, layout="constrained")
        axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
        for ax, term in zip(axes, terms, strict=False):
            part = log[[x, term]].apply(pd.to_numeric, errors="coerce").dropna()
            xs, ys = part[x].to_numpy(), part[term].to_numpy()
            if len(ys) > 50:
                ax.plot(xs, ys, lw=0.8, alpha=0.35, color="C0", label="logged")
                ax.plot(xs, _ema(ys, max(5, len(ys) // 25)), lw=1.6, color="C0", label="EMA")
                ax.legend(loc="best", fontsize=8, frameon=False)
            else:
                ax.plot(xs, ys, lw=1.4, marker="o" if len(ys) < 20 else None, ms=3, color="C0")
            if len(ys) and ys.min() > 0 and ys.max() / ys.min() > 100:
                ax.set_yscale("log")
            ax.set_title(term)
            ax.set_xlabel(x)
            ax.set_ylabel(term)
            ax.grid(alpha=0.3)
        for ax in axes[len(terms) :]:
            ax.set_visible(False)
        fig.suptitle(title)
        return fig

    return png_bytes(draw)


def importance_figure(
    matrix: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], title: str
) -> bytes:
    """Heatmap of ``matrix`` ``[codes, factors]`` with the value written in every cell."""
    matrix = np.asarray(matrix, dtype=np.float64)
    rows, cols = matrix.shape
    if len(row_labels) != rows or len(col_labels) != cols:
        raise ValueError(
            f"importance: {matrix.shape} matrix, {len(row_labels)}x{len(col_labels)} labels"
        )
    vmax = float(np.nanmax(matrix)) if np.isfinite(matrix).any() and np.nanmax(matrix) > 0 else 1.0

    def draw() -> Figure:
        fig = Figure(figsize=(2.6 + 0.95 * cols, 1.6 + 0.36 * rows), dpi=DPI, layout="constrained")
        ax = fig.subplots()
        im = ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=vmax, aspect="auto")
        ax.set_xticks(range(cols), list(col_labels), rotation=30, ha="right")
        ax.set_yticks(range(rows), list(row_labels))
        ax.set_xlabel("ground-truth factor")
        ax.set_ylabel("latent code")
        if rows * cols <= 400:
            for (r, c), v in np.ndenumerate(matrix):
                colour = "white" if v > 0.6 * vmax else "black"
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=8, color=colour)
        fig.colorbar(im, ax=ax, label="importance", shrink=0.9)
        ax.set_title(title)
        return fig

    return png_bytes(draw)
