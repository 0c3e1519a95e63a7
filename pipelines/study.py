"""Named studies: a grid of experiments with budget profiles, run by the sweep flow, and their
results table (mean ± std over seeds).

A study file (``studies/disentanglement.yaml``) holds ``name``, ``axes`` (applied to every
experiment), ``grid`` (a list of sub-grids, each crossed with ``axes``) and ``profiles``
(``profile -> {section.key: value}``, the budget every experiment of that profile runs with).
:func:`study_experiments` expands it into named experiments; a run may select a part of the
grid, and an experiment keeps its name (``<name>-<profile>-<index>``) whichever part is
selected, so a study can be run in pieces, or resumed after a kill, and still form one table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.grid import Experiment, GridError, check_name, expand_grid, read_entries

__all__ = [
    "Study",
    "load_study",
    "select_experiments",
    "study_experiments",
    "study_grid",
    "study_name",
    "study_table",
    "table_markdown",
]

# Metrics shown in the Markdown table, in this order, when present.
TABLE_METRICS = (
    "dci.disentanglement", "dci.completeness", "dci.informativeness_test", "mig.mig", "sap.sap",
    "modularity_explicitness.modularity", "modularity_explicitness.explicitness_test",
)
UNSET = "-"  # a key an experiment's sub-grid does not set (e.g. the costs of an unregularized run)


@dataclass(frozen=True)
class Study:
    """A parsed study file."""

    name: str
    axes: Mapping[str, Any]
    grid: Sequence[Mapping[str, Any]]
    profiles: Mapping[str, Mapping[str, Any]]
    path: Path
    seed: str = "train.seed"  # the key results are averaged over

    def varied_keys(self) -> list[str]:
        """Every key the grid varies or sets, in order of first appearance (tied keys split)."""
        keys = [k.strip() for sub in (self.axes, *self.grid) for key in sub
                for k in key.split(",")]
        return list(dict.fromkeys(keys))


def load_study(path: Path) -> Study:
    """Read and check a study file; errors name the file and the entry."""
    data = read_entries(path, "study", {"name", "grid", "profiles"}, {"axes", "seed"})
    name = data["name"]
    if not isinstance(name, str):
        raise GridError(f"{path}: 'name' must be a string")
    check_name(name)
    axes = data.get("axes") or {}
    grid = data["grid"]
    grid = [grid] if isinstance(grid, dict) else grid
    if not isinstance(axes, dict) or not isinstance(grid, list) or not all(
        isinstance(g, dict) and g for g in grid
    ):
        raise GridError(f"{path}: 'axes' is a mapping and 'grid' a list of non-empty mappings")
    profiles = data["profiles"]
    if not isinstance(profiles, dict) or not profiles or not all(
        isinstance(p, dict) for p in profiles.values()
    ):
        raise GridError(f"{path}: 'profiles' maps a profile name to section.key: value pairs")
    for profile, values in profiles.items():
        check_name(str(profile))
        for key, value in values.items():
            if isinstance(value, list):
                raise GridError(f"{path}: profiles.{profile}.{key}: a profile fixes one value")
    seed = data.get("seed", "train.seed")
    study = Study(name=name, axes=axes, grid=grid, profiles=profiles, path=path, seed=seed)
    if seed not in study.varied_keys():
        raise GridError(f"{path}: seed key {seed!r} is not an axis of the study")
    return study


def study_grid(study: Study, profile: str) -> list[dict[str, Any]]:
    """The sweep grid of ``study`` under ``profile``: each sub-grid with the axes and the
    profile's fixed values."""
    if profile not in study.profiles:
        raise GridError(
            f"{study.path}: unknown profile {profile!r} (profiles: {', '.join(study.profiles)})"
        )
    fixed = dict(study.profiles[profile])
    overlap = sorted(set(fixed) & ({*study.axes} | {k for g in study.grid for k in g}))
    if overlap:
        raise GridError(f"{study.path}: profile {profile!r} also sets grid keys {overlap}")
    return [{**study.axes, **sub, **fixed} for sub in study.grid]


def study_name(study: Study, profile: str) -> str:
    """The sweep name, and prefix of every experiment name: ``<name>-<profile>``."""
    return f"{study.name}-{profile}"


def study_experiments(study: Study, profile: str) -> list[Experiment]:
    """Every experiment of ``study`` under ``profile``, named ``<name>-<profile>-<index>``."""
    return expand_grid(study_grid(study, profile), study_name(study, profile))


def select_experiments(
    experiments: Sequence[Experiment], where: Mapping[str, Sequence[Any]]
) -> list[Experiment]:
    """The experiments whose value of every ``where`` key is one of the listed values.

    An experiment that does not set a key matches any value of it: the unregularized baseline
    belongs to every target and cost. A key no experiment sets is an error (a misspelled key
    would otherwise select everything or nothing).
    """
    known = {k for e in experiments for k, _ in e.params}
    unknown = sorted(set(where) - known)
    if unknown:
        raise GridError(f"--where keys {unknown} are not axes of the study ({sorted(known)})")
    chosen = []
    for experiment in experiments:
        params = experiment.as_dict()
        if all(k not in params or _matches(params[k], values) for k, values in where.items()):
            chosen.append(experiment)
    return chosen


def _matches(value: Any, allowed: Sequence[Any]) -> bool:
    return any(value == a or str(value) == str(a) for a in allowed)


def study_table(
    study: Study, experiments: Sequence[Experiment], results: pd.DataFrame
) -> pd.DataFrame:
    """Mean, std and count over seeds, per configuration, of every numeric metric.

    ``experiments`` are the study's (:func:`study_experiments`) and ``results`` the finished
    ones (:func:`pipelines.results.collect_results`, one row per experiment, matched by name).
    A configuration is a value of every study key but the seed; a key that an experiment's
    sub-grid does not set shows as ``-``. Columns: the keys, ``seeds`` (finished runs), then
    ``<metric>.mean`` and ``<metric>.std`` (sample std; NaN for one run). Rows keep grid order.
    """
    by_name = {e.name: e.as_dict() for e in experiments}
    done = results[results["experiment"].isin(by_name)]
    if done.empty:
        raise ValueError("no finished experiments of this study: run it first")
    keys = [k for k in study.varied_keys() if k != study.seed]
    order = {name: i for i, name in enumerate(by_name)}
    config = pd.DataFrame.from_records(
        [{k: str(by_name[n].get(k, UNSET)) for k in keys} | {"_order": order[n]}
         for n in done["experiment"]], index=done.index)
    metrics = [m for m in results.attrs.get("metrics", [])
               if m in done and pd.api.types.is_numeric_dtype(done[m])]
    frame = pd.concat([config, done[metrics]], axis=1)
    grouped = frame.groupby(keys, sort=False, dropna=False)
    table = grouped["_order"].min().to_frame()
    table["seeds"] = grouped["_order"].size()
    for metric in metrics:
        table[f"{metric}.mean"] = grouped[metric].mean()
        table[f"{metric}.std"] = grouped[metric].std(ddof=1)
    table = table.sort_values("_order").drop(columns="_order").reset_index()
    table.attrs["keys"], table.attrs["metrics"] = keys, metrics
    return table


_SHORT = {
    "dsprites_procedural": "dSprites (proc.)", "shapes3d_procedural": "Shapes3D (proc.)",
    "beta_vae": "β-VAE", "beta_tcvae": "β-TCVAE", "none": "none", "dst": "DST", "gmg": "GMG",
    "cosine": "cos", "scaled_sqeuclidean": "ScL2²", "sqeuclidean": "L2²",
}
_METRIC_LABEL = {
    "dci.disentanglement": "DCI-D", "dci.completeness": "DCI-C",
    "dci.informativeness_test": "DCI-I (test)", "mig.mig": "MIG", "sap.sap": "SAP",
    "modularity_explicitness.modularity": "Modularity",
    "modularity_explicitness.explicitness_test": "Explicitness (test)",
}


def table_markdown(table: pd.DataFrame) -> str:
    """The study table as Markdown: one row per configuration, ``mean ± std`` cells."""
    keys = table.attrs["keys"]
    metrics = [m for m in TABLE_METRICS if f"{m}.mean" in table.columns]
    head = [*(k.rpartition(".")[2] for k in keys), "seeds", *(_METRIC_LABEL[m] for m in metrics)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in table.iterrows():
        cells = [_SHORT.get(row[k], row[k]) for k in keys] + [str(int(row["seeds"]))]
        for m in metrics:
            mean, std = row[f"{m}.mean"], row[f"{m}.std"]
            cells.append(f"{mean:.3f}" + ("" if pd.isna(std) else f" ± {std:.3f}"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
