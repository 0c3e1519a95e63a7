"""Prefect flows over DVC, on the tiny four-stage project of conftest.py.

The flow tests share one temporary Prefect server (``prefect_isolated``); the grid, override
and results-table tests need neither Prefect nor DVC runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import typer
import yaml
from typer.testing import CliRunner

from pipelines.cli import register
from pipelines.dvctools import StageStatus, pipeline_stages, repro_status
from pipelines.grid import (
    GridError,
    check_keys_exist,
    expand_grid,
    format_value,
    load_grid_file,
    parse_grid_options,
)
from pipelines.results import results_frame, write_results

ADDS = {"prepare": 1, "train": 10, "embed": 100, "evaluate": 1000}  # tiny_params() defaults


def dvc(repo: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, check=True,
                          capture_output=True, text=True)
    return proc.stdout


def dvc_status(repo: Path) -> dict:
    return json.loads(dvc(repo, "status", "--json"))


def set_param(repo: Path, section: str, key: str, value: object) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[section][key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def metric(repo: Path) -> int:
    return json.loads((repo / "metrics" / "metrics.json").read_text())["value"]


def cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


# --- grids and overrides -------------------------------------------------------------------


def test_grid_is_product_of_each_mapping_and_union_without_duplicates():
    grid = [
        {"train.regularizer": ["gmg", "dst"], "train.cost": ["sqeuclidean", "cosine"],
         "train.seed": [0, 1, 2]},
        {"train.regularizer": "none", "train.seed": [0, 1, 2]},
        {"train.seed": [2, 1], "train.regularizer": ["none"]},  # same points, other key order
    ]
    experiments = expand_grid(grid, "sw")
    assert len(experiments) == 2 * 2 * 3 + 3
    assert [e.name for e in experiments[:2]] == ["sw-000", "sw-001"]
    assert len({e.name for e in experiments}) == len(experiments)
    assert experiments[0].as_dict() == {"train.regularizer": "gmg", "train.cost": "sqeuclidean",
                                        "train.seed": 0}
    assert experiments[-1].overrides() == ["train.regularizer=none", "train.seed=2"]


def test_grid_keys_joined_by_commas_move_together():
    grid = {"train.cost_x,train.cost_y": [["cosine", "cosine"], ["sqeuclidean", "sqeuclidean"]],
            "train.seed": [0, 1]}
    points = [e.as_dict() for e in expand_grid(grid, "c")]
    assert len(points) == 4
    assert all(p["train.cost_x"] == p["train.cost_y"] for p in points)
    with pytest.raises(GridError, match="list of 2 values"):
        expand_grid({"train.cost_x,train.cost_y": ["cosine"]}, "c")


def test_grid_options_file_and_errors(tmp_path: Path):
    assert parse_grid_options(["train.lr=1e-3,0.1", "prepare.dataset=dsprites_procedural"]) == {
        "train.lr": ["1e-3", 0.1], "prepare.dataset": ["dsprites_procedural"]}
    # YAML 1.1 reads 1e-3 as text; the grid hands DVC the float the stages expect.
    assert expand_grid({"train.lr": "1e-3"}, "s")[0].params == (("train.lr", 0.001),)
    path = tmp_path / "grid.yaml"
    path.write_text("name: costs\ngrid:\n  - {train.cost: [cosine, sqeuclidean]}\n")
    assert load_grid_file(path) == ([{"train.cost": ["cosine", "sqeuclidean"]}], "costs")
    for bad in (["lr=1"], ["train.lr"], ["train.lr="]):
        with pytest.raises(GridError, match="train.lr|lr"):
            parse_grid_options(bad)
    with pytest.raises(GridError, match="empty list"):
        expand_grid({"train.lr": []}, "s")
    with pytest.raises(GridError, match="sweep name"):
        expand_grid({"train.lr": [1]}, "bad/name")
    path.write_text("grid: {train.lr: [1]}\nworkers: 3\n")
    with pytest.raises(GridError, match="unknown entries"):
        load_grid_file(path)


def test_grid_keys_must_exist_in_the_params_files(tmp_path: Path):
    (tmp_path / "params.yaml").write_text("train: {model: {latent_dim: 10}, seed: 0}\n")
    (tmp_path / "more.yaml").write_text("extra: {k: 1}\n")
    check_keys_exist(tmp_path, expand_grid(
        {"train.seed": [1], "train.model.latent_dim": [5], "more.yaml:extra.k": [2]}, "s"))
    with pytest.raises(GridError, match="train.sed, train.model.depth"):
        check_keys_exist(tmp_path, expand_grid(
            {"train.sed": [1], "train.model.depth": [2], "train.seed": [3]}, "s"))


def test_example_grid_file_uses_this_projects_params():
    root = Path(__file__).resolve().parents[1]
    if not (root / "params.yaml").is_file():
        pytest.skip("params.yaml is not in this checkout")
    grid, name = load_grid_file(root / "pipelines" / "grids" / "regularizers.yaml")
    check_keys_exist(root, expand_grid(grid, name))


@pytest.mark.parametrize("value", [
    0, -3, 1.5, 1e-3, True, False, None, "gmg", "dsprites_procedural", "a b", "a,b", "x=y",
    "true", "007", "null", "inf", "ünï", "it's", 'say "hi"', "back\\slash", "end\\", "",
    [1, "a b", None], {"lr": 0.1, "name": "x y"},
])
def test_format_value_round_trips_through_dvc_set_param(tmp_path: Path, value: object):
    from dvc.utils.hydra import apply_overrides  # what `dvc exp run --set-param` applies

    params = tmp_path / "params.yaml"
    params.write_text("train: {value: 0}\n")
    apply_overrides(params, [f"train.value={format_value(value)}"])
    assert yaml.safe_load(params.read_text())["train"]["value"] == value


def test_format_value_refuses_what_dvc_would_change():
    with pytest.raises(GridError, match="cannot be passed"):
        format_value("${other.key}")  # DVC would resolve the interpolation


# --- DVC helpers ---------------------------------------------------------------------------


def test_repro_status_reads_dvc_messages():
    ran = "Running stage 'train':\n> python steps.py train\nUpdating lock file 'dvc.lock'"
    assert repro_status("train", ran) is StageStatus.RAN
    assert repro_status("train", "Stage 'train' didn't change, skipping") is StageStatus.SKIPPED
    cached = "Stage 'train' is cached - skipping run, checking out outputs"
    assert repro_status("train", cached) is StageStatus.RESTORED
    assert repro_status("embed", ran) is StageStatus.SKIPPED  # another stage's line


def test_pipeline_stages_follow_the_dag_not_the_file_order(tiny_project):
    repo = tiny_project()
    assert next(iter(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])) == "evaluate"
    assert pipeline_stages(repo) == ["prepare", "train", "embed", "evaluate"]


# --- results table -------------------------------------------------------------------------


def _exp(name: str, params: dict, metrics: dict) -> dict:
    data = {"timestamp": "2025-01-01T00:00:00",
            "params": {f: {"data": d} for f, d in params.items()},
            "metrics": {f: {"data": d} for f, d in metrics.items()}}
    return {"name": name, "executor": None,
            "revs": [{"rev": f"{name}-sha", "name": name, "data": data, "error": None}]}


def test_results_table_one_row_per_experiment_with_params_and_metrics(tmp_path: Path):
    shown = [
        {"rev": "workspace", "name": None, "data": {}, "experiments": None},
        {"rev": "abc", "name": "main", "data": {}, "experiments": [
            _exp("b", {"params.yaml": {"train": {"reg": "gmg", "lr": 0.1}},
                       "extra.yaml": {"k": [1, 2]}},
                 {"metrics/metrics.json": {"dci": {"d": 0.5}, "loss": 1.0},
                  "metrics/train.json": {"loss": 2.0, "train.reg": 3}}),
            _exp("a", {"params.yaml": {"train": {"reg": "none", "lr": 0.1}}},
                 {"metrics/metrics.json": {"dci": {"d": 0.25}, "loss": 4.0}}),
        ]},
    ]
    df = results_frame(shown)
    assert df["experiment"].tolist() == ["a", "b"]
    assert df.attrs["params"] == ["train.reg", "train.lr", "extra.yaml:k"]
    # "loss" is in two files and "train.reg" is also a param, so those carry their file.
    assert df.attrs["metrics"] == ["dci.d", "metrics/metrics.json:loss",
                                   "metrics/train.json:loss", "metrics/train.json:train.reg"]
    assert df.loc[1, "dci.d"] == 0.5 and pd.isna(df.loc[0, "metrics/train.json:loss"])
    assert df.loc[1, "extra.yaml:k"] == "[1, 2]"
    for suffix in (".parquet", ".csv"):
        write_results(df, tmp_path / f"r{suffix}")
    back = pd.read_parquet(tmp_path / "r.parquet")
    assert back["train.reg"].tolist() == ["none", "gmg"]
    assert pd.read_csv(tmp_path / "r.csv")["dci.d"].tolist() == [0.25, 0.5]


# --- pipeline flow -------------------------------------------------------------------------


def test_pipeline_flow_runs_then_skips_then_reruns_only_evaluate(prefect_isolated, tiny_project):
    from pipelines.pipeline import pipeline

    repo = tiny_project()
    assert pipeline(root=str(repo)) == dict.fromkeys(["prepare", "train", "embed", "evaluate"],
                                                     "ran")
    assert metric(repo) == sum(ADDS.values())
    assert dvc_status(repo) == {}

    result = CliRunner().invoke(cli(), ["run", "--root", str(repo)])
    assert result.exit_code == 0, result.output
    assert result.output.count("skipped") == 4 and "ran" not in result.output

    set_param(repo, "evaluate", "add", 5000)
    assert pipeline(root=str(repo)) == {"prepare": "skipped", "train": "skipped",
                                        "embed": "skipped", "evaluate": "ran"}
    assert metric(repo) == sum(ADDS.values()) - 1000 + 5000
    assert dvc_status(repo) == {}
    assert "didn't change" in dvc(repo, "repro")  # plain `dvc repro` agrees: nothing to run


def test_pipeline_flow_stops_at_a_failing_stage(prefect_isolated, tiny_project):
    from pipelines.pipeline import PipelineFailed, pipeline

    repo = tiny_project()
    set_param(repo, "train", "fail", True)
    with pytest.raises(PipelineFailed) as info:
        pipeline(root=str(repo))
    message = str(info.value)
    assert "stage 'train' failed" in message and "failing on purpose" in message
    assert "prepare ran" in message and "embed not started" in message
    assert not (repo / "data" / "embedded.json").exists()


def test_serve_refuses_to_run_without_a_prefect_server(tmp_path: Path):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pipelines.schedule import NoServerError, serve_pipeline

    with (temporary_settings(restore_defaults={PREFECT_API_URL}),
          pytest.raises(NoServerError, match="prefect server start")):
        serve_pipeline(tmp_path, "0 3 * * *")


# --- sweep flow ----------------------------------------------------------------------------


def _sweep(repo: Path, grid, name: str, retries: int = 1) -> list[dict]:
    from pipelines.sweep import dask_task_runner, sweep

    runner = dask_task_runner(workers=2)
    return sweep.with_options(task_runner=runner)(
        grid=grid, root=str(repo), name=name, retries=retries)


def test_sweep_runs_four_isolated_experiments_on_two_dask_workers(
    prefect_isolated, tiny_project, tmp_path
):
    repo = tiny_project(reproduce=True)
    before = {f: (repo / f).read_text() for f in ("params.yaml", "dvc.lock")}
    (repo / "notes.txt").write_text("uncommitted file, carried into every experiment\n")
    grid = {"train.add": [20, 30], "evaluate.add": [2000, 3000]}
    outcomes = _sweep(repo, grid, "grid")

    assert [o["status"] for o in outcomes] == ["succeeded"] * 4
    result = CliRunner().invoke(
        cli(), ["results", "--root", str(repo), "--sweep", "grid-",
                "--output", str(tmp_path / "results.parquet")])
    assert result.exit_code == 0, result.output
    assert "4 experiments" in result.output
    df = pd.read_parquet(tmp_path / "results.parquet")
    assert sorted(df["experiment"]) == ["grid-000", "grid-001", "grid-002", "grid-003"]
    for _, row in df.iterrows():  # each experiment's metric comes from its own params
        expected = ADDS["prepare"] + row["train.add"] + ADDS["embed"] + row["evaluate.add"]
        assert row["value"] == expected
    assert sorted(zip(df["train.add"], df["evaluate.add"], strict=True)) == [
        (20, 2000), (20, 3000), (30, 2000), (30, 3000)]
    exp_rev = outcomes[0]["rev"]
    files = subprocess.run(["git", "show", "--name-only", "--format=", exp_rev], cwd=repo,
                           capture_output=True, text=True, check=True).stdout.split()
    assert "notes.txt" in files and "params.yaml" in files
    # The repository's own workspace is untouched and no clone is left behind.
    assert {f: (repo / f).read_text() for f in before} == before
    assert dvc_status(repo) == {}
    assert not (repo / ".dvc" / "tmp" / "gmg-sweeps").exists()


def test_sweep_retries_a_failing_experiment_and_finishes_the_others(
    prefect_isolated, tiny_project, tmp_path, monkeypatch
):
    repo = tiny_project(reproduce=True)
    fail_log = tmp_path / "failures.log"
    monkeypatch.setenv("TINY_FAIL_LOG", str(fail_log))
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text("name: mixed\ngrid:\n  - {train.fail: true}\n  - {evaluate.add: 7}\n")
    result = CliRunner().invoke(
        cli(), ["sweep", "--root", str(repo), "--grid", str(grid_file), "--retries", "1"],
        env={"COLUMNS": "250"})

    assert result.exit_code == 1, result.output
    assert "1 of 2 experiments failed: mixed-000" in result.output
    rows = {line.split()[1]: line for line in result.output.splitlines()
            if line.startswith("│ mixed-")}
    assert "failed" in rows["mixed-000"] and "failed to reproduce 'train'" in rows["mixed-000"]
    assert " 2 " in rows["mixed-000"]  # attempts
    assert "succeeded" in rows["mixed-001"]
    assert fail_log.read_text().splitlines() == ["train", "train"]  # first try + one retry
    exp_show = dvc(repo, "exp", "show", "--csv")
    assert "mixed-001" in exp_show and "mixed-000" not in exp_show


def test_sweep_command_rejects_unknown_keys_before_running(tmp_path: Path):
    (tmp_path / "params.yaml").write_text("train: {seed: 0}\n")
    result = CliRunner().invoke(
        cli(), ["sweep", "--root", str(tmp_path), "--vary", "train.sede=1,2"])
    assert result.exit_code == 2
    assert "train.sede" in result.output


@pytest.mark.slow
def test_sweep_on_remote_workers_goes_through_git_and_dvc_remotes(
    prefect_isolated, tiny_project, tmp_path
):
    """Remote mode: workers clone a git remote and exchange outputs through a DVC remote."""
    repo = tiny_project(reproduce=True)
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    subprocess.run(["git", "remote", "add", "origin", str(remote)], cwd=repo, check=True)
    dvc(repo, "remote", "add", "-d", "storage", str(tmp_path / "dvc-storage"))
    subprocess.run(["git", "commit", "-q", "-am", "remotes"], cwd=repo, check=True)
    subprocess.run(["git", "push", "-q", "origin", "main"], cwd=repo, check=True)
    dvc(repo, "push", "-q")

    from pipelines.sweep import dask_task_runner, sweep

    outcomes = sweep.with_options(task_runner=dask_task_runner(workers=2))(
        grid={"train.add": [50]}, root=str(repo), name="far", git_remote="origin")
    assert [o["status"] for o in outcomes] == ["succeeded"]
    from pipelines.results import collect_results

    assert collect_results(repo, prefix="far-")["value"].tolist() == [1 + 50 + 100 + 1000]
    assert not (repo / ".dvc" / "tmp" / "gmg-sweeps").exists()
    # The experiment's new outputs reached the DVC remote and were pulled into the cache.
    dvc(repo, "exp", "apply", "far-000")
    assert json.loads((repo / "models" / "model.json").read_text())["value"] == 1 + 50
