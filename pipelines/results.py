"""Experiment results as a table: one row per DVC experiment, with its params and metrics.

The source is ``dvc exp show --json``, so the table lists exactly what ``dvc exp show`` lists
(experiments of the current commit, or of every commit with ``all_commits``), whether a sweep,
``dvc exp run`` or the DVC queue made them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.dvctools import dvc_argv, run_command
from stages.atomic import atomic_path

__all__ = [
    "INFO_COLUMNS",
    "collect_results",
    "experiment_rows",
    "results_frame",
    "varying_params",
    "write_results",
]

INFO_COLUMNS = ("experiment", "rev", "baseline", "created", "state")
PARAMS_FILE = "params.yaml"


def collect_results(
    root: Path, all_commits: bool = False, prefix: str | None = None
) -> pd.DataFrame:
    """Read ``dvc exp show --json`` in ``root`` into a DataFrame (one row per experiment).

    Columns: :data:`INFO_COLUMNS`, then params as ``section.key`` (``file:section.key`` for
    params files other than ``params.yaml``), then metrics under their own keys (prefixed
    with ``file:`` when two files or a param share a key). ``df.attrs["params"]`` and
    ``df.attrs["metrics"]`` name the two groups. ``prefix`` keeps experiments whose name starts
    with it (a sweep name).
    """
    args = ["exp", "show", "--json", *(["--all-commits"] if all_commits else [])]
    output = run_command(dvc_argv(*args), cwd=root, what="dvc exp show").output
    return results_frame(json.loads(output.strip() or "[]"), prefix=prefix)


def results_frame(shown: list[dict[str, Any]], prefix: str | None = None) -> pd.DataFrame:
    """The table of :func:`collect_results` from parsed ``dvc exp show --json`` output."""
    rows = [row for row in experiment_rows(shown)
            if prefix is None or str(row["info"]["experiment"]).startswith(prefix)]
    return _frame(rows)


def experiment_rows(shown: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Yield ``{"info", "params", "metrics"}`` per experiment of parsed ``dvc exp show`` JSON."""
    for base in shown:
        if base.get("rev") == "workspace":
            continue
        baseline = base.get("name") or str(base.get("rev", ""))[:10]
        for exp_range in base.get("experiments") or []:
            revs = exp_range.get("revs") or []
            if not revs:
                continue
            rev = revs[0]
            data = rev.get("data") or {}
            executor = exp_range.get("executor") or {}
            yield {
                "info": {
                    "experiment": exp_range.get("name") or rev.get("name") or rev.get("rev"),
                    "rev": rev.get("rev"),
                    "baseline": baseline,
                    "created": data.get("timestamp"),
                    "state": executor.get("state") or ("error" if rev.get("error") else "done"),
                },
                "params": _by_file(data.get("params")),
                "metrics": _by_file(data.get("metrics")),
            }


def _by_file(files: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """``{file: {"data": nested}}`` -> ``{file: {dotted.key: value}}``."""
    out: dict[str, dict[str, Any]] = {}
    for file, entry in (files or {}).items():
        out[file] = dict(_flatten((entry or {}).get("data") or {}))
    return out


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{name}.")
        else:
            yield name, value


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    param_cols: dict[tuple[str, str], str] = {}
    for row in rows:
        for file, values in row["params"].items():
            for key in values:
                param_cols.setdefault((file, key), key if file == PARAMS_FILE else f"{file}:{key}")
    metric_keys: dict[str, set[str]] = {}
    for row in rows:
        for file, values in row["metrics"].items():
            for key in values:
                metric_keys.setdefault(key, set()).add(file)
    taken = set(param_cols.values()) | set(INFO_COLUMNS)
    metric_cols: dict[tuple[str, str], str] = {}
    for row in rows:
        for file, values in row["metrics"].items():
            for key in values:
                shared = len(metric_keys[key]) > 1 or key in taken
                metric_cols.setdefault((file, key), f"{file}:{key}" if shared else key)
    records = []
    for row in rows:
        record = dict(row["info"])
        for group, columns in (("params", param_cols), ("metrics", metric_cols)):
            for (file, key), column in columns.items():
                record[column] = row[group].get(file, {}).get(key)
        records.append(record)
    columns = [*INFO_COLUMNS, *param_cols.values(), *metric_cols.values()]
    df = pd.DataFrame.from_records(records, columns=columns)
    df = df.apply(_uniform_column).sort_values("experiment", kind="stable", ignore_index=True)
    df.attrs["params"] = list(param_cols.values())
    df.attrs["metrics"] = list(metric_cols.values())
    return df


def _uniform_column(column: pd.Series) -> pd.Series:
    """Lists become JSON text and mixed-type columns become text, so Parquet can store them."""
    values = column.dropna()
    if values.map(lambda v: isinstance(v, list | dict)).any():
        column = column.map(lambda v: v if v is None else json.dumps(v))
        values = column.dropna()
    kinds = {"bool" if isinstance(v, bool) else "num" if isinstance(v, int | float) else "str"
             for v in values}
    if len(kinds) > 1:
        return column.map(lambda v: v if v is None else str(v))
    return column


def varying_params(df: pd.DataFrame) -> list[str]:
    """Param columns whose value is not the same in every row."""
    return [c for c in df.attrs.get("params", []) if df[c].astype(str).nunique(dropna=False) > 1]


def write_results(df: pd.DataFrame, path: Path) -> None:
    """Write the table as Parquet (``.parquet``) or CSV (``.csv``)."""
    suffix = path.suffix.lower()
    if suffix not in {".parquet", ".csv"}:
        raise ValueError(f"{path}: results are written as .parquet or .csv")
    with atomic_path(path) as tmp:
        if suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)
