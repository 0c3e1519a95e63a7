"""Shared fixtures: Prefect isolation and a tiny DVC project factory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

QUIET_TOOLS = {
    "DVC_NO_ANALYTICS": "1",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "gmg tests",
    "GIT_AUTHOR_EMAIL": "tests@gmg.invalid",
    "GIT_COMMITTER_NAME": "gmg tests",
    "GIT_COMMITTER_EMAIL": "tests@gmg.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}

# Four chained stages, listed out of DAG order on purpose. Each adds its params' `add` to the
# upstream value, so the final metric `value` = prepare.add + train.add + embed.add +
# evaluate.add tells which params an experiment ran with. `work` burns that many CPU seconds;
# `fail: true` makes the stage exit 1 (appending a line to $TINY_FAIL_LOG if set).
TINY_STEPS = '''\
import json, os, sys, time
from pathlib import Path

import yaml

UPSTREAM = {"train": "data/prepared.json", "embed": "models/model.json",
            "evaluate": "data/embedded.json"}
OUTPUT = {"prepare": "data/prepared.json", "train": "models/model.json",
          "embed": "data/embedded.json", "evaluate": "metrics/metrics.json"}

stage = sys.argv[1]
cfg = yaml.safe_load(Path("params.yaml").read_text())[stage]
end, x = time.process_time() + cfg.get("work", 0.0), 0
while time.process_time() < end:
    x += sum(i * i for i in range(20000))
if cfg.get("fail", False):
    if os.environ.get("TINY_FAIL_LOG"):
        with open(os.environ["TINY_FAIL_LOG"], "a") as log:
            log.write(stage + "\\n")
    sys.exit(f"{stage}: failing on purpose")
up = UPSTREAM.get(stage)
value = (json.loads(Path(up).read_text())["value"] if up else 0) + cfg["add"]
Path(OUTPUT[stage]).parent.mkdir(parents=True, exist_ok=True)
Path(OUTPUT[stage]).write_text(json.dumps({"value": value}))
'''

TINY_DVC_YAML = """\
stages:
  evaluate:
    cmd: python steps.py evaluate
    deps: [steps.py, data/embedded.json]
    params: [evaluate]
    metrics: [{metrics/metrics.json: {cache: false}}]
  prepare:
    cmd: python steps.py prepare
    deps: [steps.py]
    params: [prepare]
    outs: [data/prepared.json]
  train:
    cmd: python steps.py train
    deps: [steps.py, data/prepared.json]
    params: [train]
    outs: [models/model.json]
  embed:
    cmd: python steps.py embed
    deps: [steps.py, models/model.json]
    params: [embed]
    outs: [data/embedded.json]
"""


def tiny_params(work: float = 0.0) -> str:
    return (
        f"prepare: {{add: 1, work: {work}}}\n"
        f"train: {{add: 10, work: {work}, fail: false}}\n"
        f"embed: {{add: 100, work: {work}}}\n"
        f"evaluate: {{add: 1000, work: {work}}}\n"
    )


def _run(argv: list[str], cwd: Path) -> None:
    env = {**os.environ, **QUIET_TOOLS, **GIT_IDENTITY}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    subprocess.run(argv, cwd=cwd, env=env, check=True, capture_output=True, text=True)


def make_tiny_project(path: Path, work: float = 0.0, reproduce: bool = False) -> Path:
    """Create a git + DVC repository with the four tiny stages at ``path`` and commit it.

    With ``reproduce`` the pipeline is run once and ``dvc.lock`` committed, so experiments
    start from an up-to-date baseline.
    """
    path.mkdir(parents=True)
    (path / "steps.py").write_text(TINY_STEPS)
    (path / "dvc.yaml").write_text(TINY_DVC_YAML)
    (path / "params.yaml").write_text(tiny_params(work))
    _run(["git", "init", "-q", "-b", "main"], path)
    _run([sys.executable, "-m", "dvc", "init", "-q"], path)
    (path / ".dvc" / "config").write_text("[core]\n    analytics = false\n"
                                          "    check_update = false\n")
    _run(["git", "add", "-A"], path)
    _run(["git", "commit", "-q", "-m", "tiny pipeline"], path)
    if reproduce:
        _run([sys.executable, "-m", "dvc", "repro", "-q"], path)
        _run(["git", "add", "-A"], path)
        _run(["git", "commit", "-q", "-m", "reproduce"], path)
    return path


@pytest.fixture(scope="session", autouse=True)
def _quiet_tools(tmp_path_factory: pytest.TempPathFactory):
    """No analytics from DVC or Prefect, and DVC's global state kept in a temp folder."""
    dvc_state = tmp_path_factory.mktemp("dvc-global")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in QUIET_TOOLS.items():
            mp.setenv(key, value)
        mp.setenv("DVC_GLOBAL_CONFIG_DIR", str(dvc_state / "config"))
        mp.setenv("DVC_SITE_CACHE_DIR", str(dvc_state / "site"))
        yield


@pytest.fixture(scope="session")
def prefect_isolated(tmp_path_factory: pytest.TempPathFactory):
    """A temporary Prefect server and DB, with PREFECT_HOME and result storage in temp folders.

    ``prefect_test_harness`` alone isolates only the database; results and cache records would
    otherwise land in (and be read back from) ``~/.prefect/storage``.
    """
    home = tmp_path_factory.mktemp("prefect-home")
    storage = tmp_path_factory.mktemp("prefect-storage")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFECT_HOME", str(home))
        mp.setenv("PREFECT_LOCAL_STORAGE_PATH", str(storage))
        # Importing prefect.main configures Prefect's logging; do it here, on the real stderr,
        # not inside a CliRunner whose captured stream is closed after the command.
        import prefect.main  # noqa: F401
        from prefect.settings import PREFECT_HOME, PREFECT_LOCAL_STORAGE_PATH, temporary_settings
        from prefect.testing.utilities import prefect_test_harness

        with (
            temporary_settings({PREFECT_HOME: home, PREFECT_LOCAL_STORAGE_PATH: storage}),
            prefect_test_harness(server_startup_timeout=120),
        ):
            yield storage


@pytest.fixture
def tiny_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Factory: ``tiny_project(name, work=0.0, reproduce=False)`` -> repository path.

    Sets a git identity (and ignores system git config) for the test, so DVC can commit
    experiments on a machine without one.
    """
    for key, value in GIT_IDENTITY.items():
        monkeypatch.setenv(key, value)

    def make(name: str = "repo", work: float = 0.0, reproduce: bool = False) -> Path:
        return make_tiny_project(tmp_path / name, work=work, reproduce=reproduce)

    return make
