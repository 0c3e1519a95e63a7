"""The content of a report (figures, metrics, latents, params, provenance) and its Markdown.

``ReportContent`` is what the report stage gathers; ``report_markdown`` and
``stages.html_report.render_html`` lay the same content out as Markdown (figures linked as
files) and as one self-contained HTML page (figures embedded).
"""

from __future__ import annotations

import math
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ReportFigure",
    "LatentRow",
    "LockEntry",
    "Provenance",
    "ReportContent",
    "flatten",
    "format_value",
    "markdown_table",
    "metrics_markdown",
    "report_markdown",
    "git_commit",
    "dvc_lock_entries",
]


@dataclass(frozen=True)
class ReportFigure:
    """One PNG figure: ``name`` is its file name in the report folder."""

    name: str
    title: str
    caption: str
    png: bytes


@dataclass(frozen=True)
class LatentRow:
    """One latent: id, mean KL to the prior (nats), std of mu over the data, active or not."""

    latent: int
    kl: float
    mu_std: float
    active: bool


@dataclass(frozen=True)
class LockEntry:
    """An input as recorded in ``dvc.lock``: path, md5, size in bytes, stage that wrote it."""

    path: str
    md5: str
    size: int | None
    stage: str


@dataclass(frozen=True)
class Provenance:
    commit: str | None
    lock_entries: tuple[LockEntry, ...] = ()
    lock_file: str | None = None


@dataclass(frozen=True)
class ReportContent:
    title: str
    summary: tuple[str, ...]
    metrics: Mapping[str, Any]
    figures: tuple[ReportFigure, ...]
    latents: tuple[LatentRow, ...]
    notes: tuple[str, ...]
    params: Mapping[str, Any] | None
    provenance: Provenance = field(default_factory=lambda: Provenance(commit=None))


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping → flat ``{"a.b": value}`` (insertion order kept)."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def format_value(value: Any) -> str:
    """Numbers with 4 significant digits, other values as text (lists as YAML flow)."""
    if isinstance(value, bool) or value is None:
        return str(value).lower() if isinstance(value, bool) else "null"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, list | tuple):
        return yaml.safe_dump(list(value), default_flow_style=True).strip()
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    """A GitHub Markdown table; ``align`` holds one of 'l'/'r' per column (default left)."""
    align = align or "l" * len(header)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = [header, rule, *rows]
    return "\n".join("| " + " | ".join(_cell(str(c)) for c in line) + " |" for line in lines) + "\n"


def metrics_markdown(metrics: Mapping[str, Any]) -> str:
    """Metrics as a two-column table sorted by name; empty mapping → a one-line note."""
    if not metrics:
        return "_No metrics available._\n"
    rows = [(name, format_value(metrics[name])) for name in sorted(metrics)]
    return markdown_table(("metric", "value"), rows, "lr")


def _latent_table(latents: Sequence[LatentRow]) -> str:
    rows = [
        (f"z{r.latent}", f"{r.kl:.3f}", f"{r.mu_std:.3f}", "yes" if r.active else "no")
        for r in latents
    ]
    return markdown_table(("latent", "KL (nats)", "std of μ", "active"), rows, "lrrl")


def report_markdown(content: ReportContent) -> str:
    """The whole report as Markdown; figures are linked by file name (same folder)."""
    parts = [f"# {content.title}\n\n", *(f"- {line}\n" for line in content.summary), "\n"]
    parts += ["## Metrics\n\n", metrics_markdown(content.metrics), "\n"]
    for fig in content.figures:
        parts += [f"## {fig.title}\n\n", f"![{fig.title}]({fig.name})\n\n", f"{fig.caption}\n\n"]
    if content.latents:
        parts += ["## Latents (sorted by KL)\n\n", _latent_table(content.latents), "\n"]
    if content.notes:
        parts += ["## Notes\n\n", *(f"- {note}\n" for note in content.notes), "\n"]
    if content.params is not None:
        rows = [(k, format_value(v)) for k, v in flatten(content.params).items()]
        parts += ["## Params\n\n", markdown_table(("param", "value"), rows), "\n"]
    parts += ["## Provenance\n\n", *_provenance_lines(content.provenance)]
    return "".join(parts)


def _provenance_lines(prov: Provenance) -> list[str]:
    lines = [f"- git commit: `{prov.commit}`\n" if prov.commit else "- git commit: unknown\n"]
    if prov.lock_entries:
        rows = [
            (e.path, e.md5, "" if e.size is None else str(e.size), e.stage)
            for e in prov.lock_entries
        ]
        lines += ["\n", markdown_table(("input", "md5", "bytes", "stage"), rows, "llrl")]
    else:
        lines.append("- dvc.lock: no entries for the inputs\n")
    return lines


def git_commit(root: Path) -> str | None:
    """``git rev-parse HEAD`` in ``root``; None without git, outside a repository, or no commit."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None


def _relative(path: Path, root: Path) -> str:
    path = Path(os.path.normpath(path if path.is_absolute() else root / path))
    try:
        return path.relative_to(Path(os.path.normpath(root.absolute()))).as_posix()
    except ValueError:
        return path.as_posix()


def dvc_lock_entries(lock_file: Path, paths: Sequence[Path], root: Path) -> tuple[LockEntry, ...]:
    """Hashes of ``paths`` recorded in ``lock_file`` (an output entry preferred over a dependency).

    Paths are matched relative to ``root`` (the folder holding ``dvc.yaml``). A missing or
    unreadable lock file gives no entries.
    """
    try:
        lock = yaml.safe_load(lock_file.read_text())
    except (OSError, yaml.YAMLError):
        return ()
    stages = lock.get("stages") if isinstance(lock, dict) else None
    if not isinstance(stages, dict):
        return ()
    found: dict[str, LockEntry] = {}
    for kind in ("outs", "deps"):
        for stage, body in stages.items():
            for item in (body or {}).get(kind) or []:
                p = os.path.normpath(str(item.get("path", "")))
                md5 = item.get("md5") or item.get("checksum") or item.get("etag")
                if p and md5 and p not in found:
                    size = item.get("size")
                    size = int(size) if size is not None else None
                    label = stage if kind == "outs" else f"{stage} (dependency)"
                    found[p] = LockEntry(p, str(md5), size, label)
    wanted = [_relative(Path(p), root) for p in paths]
    return tuple(found[w] for w in wanted if w in found)
