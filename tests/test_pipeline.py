"""The pipeline end to end: the CLI stage by stage, bad params, and ``dvc repro`` twice."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from pipeline_utils import copy_project, env, gmg, tiny_params

STAGES = ["prepare", "train", "embed", "evaluate", "report"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """Run every stage through the CLI on a tiny data set; return the work dir."""
    work = tmp_path_factory.mktemp("cli")
    tiny_params(work / "params.yaml")
    for stage in STAGES:
        extra = ["--device", "cpu"] if stage in ("train", "embed", "evaluate") else []
        result = gmg(stage, *extra, cwd=work)
        assert result.returncode == 0, f"{stage} failed:\n{result.stderr}"
    return work


def test_cli_writes_every_artifact(cli_run):
    for rel in [
        "data/dataset/images.parquet",
        "data/dataset/manifest.json",
        "models/model.pt",
        "plots/train_log.csv",
        "metrics/train.json",
        "data/embeddings.parquet",
        "metrics/metrics.json",
        "metrics/dci_importance.parquet",
    ]:
        assert (cli_run / rel).is_file(), rel
    metrics = json.loads((cli_run / "metrics/metrics.json").read_text())
    for key in ("dci.disentanglement", "dci.completeness", "mig.mig"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert any(p.suffix == ".png" for p in (cli_run / "reports").iterdir())


def test_cli_bad_params_exit_2_and_touch_nothing(cli_run):
    params = cli_run / "params.yaml"
    good = params.read_text()
    before = (cli_run / "metrics/metrics.json").read_bytes()
    try:
        params.write_text(good.replace("num_train:", "num_trian:"))
        result = gmg("evaluate", cwd=cli_run)
        assert result.returncode == 2
        assert "evaluate.num_trian" in result.stderr and "params.yaml" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        params.write_text(good)
    assert (cli_run / "metrics/metrics.json").read_bytes() == before


def test_cli_override_with_wrong_type_exits_2(cli_run):
    result = gmg("train", "--set", "train.steps=many", cwd=cli_run)
    assert result.returncode == 2 and "train.steps" in result.stderr


def test_cli_runtime_error_is_one_line(cli_run):
    result = gmg("embed", "--model", "missing.pt", cwd=cli_run)
    assert result.returncode == 1
    assert "missing.pt" in result.stderr and "Traceback" not in result.stderr


def _dvc(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, env=env(), capture_output=True, text=True
    )


def _ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([\w-]+)'", output))


@pytest.mark.slow
def test_dvc_repro_twice_then_only_evaluate(tmp_path):
    project = copy_project(tmp_path / "project")
    tiny_params(project / "params.yaml")
    first = _dvc("repro", cwd=project)
    assert first.returncode == 0, first.stdout + first.stderr
    assert _ran(first.stdout) == {*STAGES, "toy"}

    second = _dvc("repro", cwd=project)
    assert second.returncode == 0 and _ran(second.stdout) == set(), second.stdout
    assert _dvc("status", cwd=project).stdout.strip().endswith("up to date.")

    text = (project / "params.yaml").read_text()
    (project / "params.yaml").write_text(text.replace("num_bins: 20", "num_bins: 10"))
    third = _dvc("repro", cwd=project)
    assert third.returncode == 0, third.stdout + third.stderr
    # report reruns only if the metrics it shows changed
    ran = _ran(third.stdout)
    assert "evaluate" in ran and ran <= {"evaluate", "report"}, third.stdout

    # A misspelled key fails the stage with the key named; the outputs stay as they were.
    model = (project / "models/model.pt").read_bytes()
    (project / "params.yaml").write_text(text.replace("  lr:", "  lrr:"))
    bad = _dvc("repro", cwd=project)
    assert bad.returncode != 0 and "train.lrr" in bad.stdout + bad.stderr
    assert (project / "models/model.pt").read_bytes() == model
