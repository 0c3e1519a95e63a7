"""Named studies: the repository's study file, selection, the results table, and the study
flow end to end on the tiny DVC project of conftest.py."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from pipelines.cli import register
from pipelines.grid import GridError, check_keys_exist
from pipelines.study import (
    load_study,
    select_experiments,
    study_experiments,
    study_table,
    table_markdown,
)

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "studies" / "disentanglement.yaml"


def cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


@pytest.mark.parametrize("profile", ["cpu", "paper"])
def test_repository_study_covers_the_issue_grid(profile):
    study = load_study(STUDY)
    experiments = study_experiments(study, profile)
    # 2 data sets x 2 objectives x 3 seeds x (none + {dst, gmg} x 2 targets x 3 costs)
    assert len(experiments) == 2 * 2 * 3 * (1 + 2 * 2 * 3)
    check_keys_exist(REPO, experiments)  # every key exists in params.yaml
    params = [e.as_dict() for e in experiments]
    assert {p["train.seed"] for p in params} == {0, 1, 2}
    assert all(p["train.cost_x"] == p["train.cost_y"] for p in params if "train.cost_x" in p)
    plain = [p for p in params if p["train.regularizer"] == "none"]
    assert len(plain) == 12 and not any("train.target" in p for p in plain)
    assert all(e.name.startswith(f"study-{profile}-") for e in experiments)
    assert len({e.name for e in experiments}) == len(experiments)


def test_selection_keeps_names_and_rejects_unknown_keys():
    study = load_study(STUDY)
    everything = study_experiments(study, "cpu")
    chosen = select_experiments(everything, {"train.seed": [0], "train.regularizer": ["gmg"],
                                             "prepare.dataset": ["shapes3d_procedural"]})
    assert len(chosen) == 2 * 2 * 3  # 2 objectives x 2 targets x 3 costs
    names = {e.name: e for e in everything}
    assert all(names[e.name] == e for e in chosen)  # same name, same params as in the full grid
    decoder = select_experiments(everything, {"train.target": ["decoder"],
                                              "train.cost_x": ["cosine"]})
    plain = [e for e in decoder if e.as_dict()["train.regularizer"] == "none"]
    assert len(plain) == 12 and len(decoder) == 12 + 2 * 2 * 3 * 2  # + {dst, gmg} x seeds x ...
    with pytest.raises(GridError, match="train.sede"):
        select_experiments(everything, {"train.sede": [0]})


def test_bad_study_files_name_the_problem(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("name: s\ngrid: [{train.seed: [0, 1]}]\n"
                   "profiles: {cpu: {train.steps: [1, 2]}}\n")
    with pytest.raises(GridError, match="profiles.cpu.train.steps"):
        load_study(bad)
    bad.write_text("name: s\ngrid: [{train.seed: [0]}]\nprofiles: {cpu: {train.seed: 1}}\n")
    with pytest.raises(GridError, match="also sets grid keys"):
        study_experiments(load_study(bad), "cpu")
    with pytest.raises(GridError, match="unknown profile 'gpu'"):
        study_experiments(load_study(bad), "gpu")
    bad.write_text("name: s\ngrid: [{train.lr: [0.1]}]\nprofiles: {cpu: {}}\n")
    with pytest.raises(GridError, match="seed key 'train.seed'"):
        load_study(bad)


def test_table_averages_over_seeds_and_marks_unset_keys(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: s\naxes: {train.seed: [0, 1, 2]}\n"
        "grid:\n  - {train.regularizer: none}\n"
        "  - {train.regularizer: gmg, train.target: [decoder, encoder]}\n"
        "profiles: {cpu: {}}\n")
    study = load_study(path)
    experiments = study_experiments(study, "cpu")
    assert len(experiments) == 9
    rng = {e.name: float(i) for i, e in enumerate(experiments)}
    skipped = experiments[-1].name  # one run not finished: its configuration has 2 seeds
    results = pd.DataFrame({
        "experiment": [n for n in rng if n != skipped] + ["other-000"],
        "score": [v for n, v in rng.items() if n != skipped] + [99.0],
    })
    results.attrs["metrics"] = ["score"]
    table = study_table(study, experiments, results)
    assert list(table["train.regularizer"]) == ["none", "gmg", "gmg"]
    assert list(table["train.target"]) == ["-", "decoder", "encoder"]
    assert list(table["seeds"]) == [3, 3, 2]
    by_target = table.set_index("train.target")
    values = {e.name: e.as_dict() for e in experiments}
    for target in ("decoder", "encoder"):
        runs = [rng[n] for n, p in values.items() if p.get("train.target") == target
                and n != skipped]
        assert by_target.loc[target, "score.mean"] == pytest.approx(sum(runs) / len(runs))
        assert by_target.loc[target, "score.std"] == pytest.approx(pd.Series(runs).std())
    markdown = table_markdown(table)
    assert markdown.splitlines()[0].startswith("| regularizer | target | seeds |")
    with pytest.raises(ValueError, match="no finished experiments"):
        study_table(study, experiments, results.iloc[-1:])


def test_study_flow_runs_two_experiments_then_resumes_without_rerunning(
    prefect_isolated, tiny_project, tmp_path
):
    repo = tiny_project(reproduce=True)
    (repo / "study.yaml").write_text(
        "name: tiny\nseed: embed.add\naxes: {embed.add: [100, 300]}\n"
        "grid: [{train.add: 20}]\n"
        "profiles: {quick: {evaluate.add: 2000}, broken: {train.fail: true}}\n")
    table = tmp_path / "out" / "table"
    args = ["study", "--root", str(repo), "--study", "study.yaml", "--profile", "quick",
            "--workers", "2", "--table", str(table)]
    first = CliRunner().invoke(cli(), args, env={"COLUMNS": "250"})
    assert first.exit_code == 0, first.output
    assert "2 of 2 experiments selected" in first.output
    assert "tiny-quick-000" in first.output and "tiny-quick-001" in first.output
    df = pd.read_parquet(table.with_suffix(".parquet"))
    assert len(df) == 1 and int(df.loc[0, "seeds"]) == 2
    values = [1 + 20 + 100 + 2000, 1 + 20 + 300 + 2000]  # prepare + train + embed + evaluate
    assert df.loc[0, "value.mean"] == pytest.approx(sum(values) / 2)
    assert df.loc[0, "value.std"] == pytest.approx(pd.Series(values).std())
    assert "2 experiments `tiny-quick-*`" in table.with_suffix(".md").read_text()

    again = CliRunner().invoke(cli(), args, env={"COLUMNS": "250"})
    assert again.exit_code == 0, again.output
    assert "succeeded" not in again.output  # both exist: nothing reruns, the table is rebuilt
    assert pd.read_parquet(table.with_suffix(".parquet")).equals(df)

    bad = CliRunner().invoke(cli(), [*args, "--where", "embed.ad=100"])
    assert bad.exit_code == 2 and "embed.ad" in bad.output

    # A failing experiment is reported and the command exits 1; nothing is tabled for it.
    broken = [*args[:6], "broken", "--retries", "0", "--where", "embed.add=100",
              "--table", str(tmp_path / "broken")]
    failed = CliRunner().invoke(cli(), broken, env={"COLUMNS": "250"})
    assert failed.exit_code == 1, failed.output
    assert "1 of 1 experiments failed: tiny-broken-000" in failed.output
