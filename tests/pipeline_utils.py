"""Helpers for the end-to-end tests: tiny params derived from the repository's params.yaml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]

TINY: dict[str, dict[str, Any]] = {
    "prepare": {"fraction": 0.002, "seed": 0},
    "train": {"steps": 12, "batch_size": 16, "checkpoint_every": 5, "log_every": 2},
    "embed": {"num_samples": 0, "batch_size": 256},
    "evaluate": {
        "metrics": ["dci", "mig", "sap", "modularity_explicitness"],
        "num_train": 600,
        "num_test": 300,
        "dci_backend": "fast",
    },
    "report": {"n_kl": 128, "n_recon": 4, "traversal_steps": 5},
    "toy": {"steps": 4, "batch_size": 32, "reg_batch_size": 16, "hidden": 8, "eval_size": 64,
            "eval_gmg_batches": 1, "knn": 5, "epsilon": 0.05},
}


def tiny_params(path: Path) -> Path:
    """Write the repository's params.yaml with the TINY sizes applied to ``path``."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def env() -> dict[str, str]:
    out = dict(os.environ)
    out.update(
        DVC_NO_ANALYTICS="1",
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONPATH=str(REPO),
        GIT_AUTHOR_NAME="gmg tests",
        GIT_AUTHOR_EMAIL="tests@gmg.invalid",
        GIT_COMMITTER_NAME="gmg tests",
        GIT_COMMITTER_EMAIL="tests@gmg.invalid",
        GMG_PROGRESS="0",
    )
    out["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{out.get('PATH', '')}"
    return out


def gmg(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the ``gmg`` CLI in ``cwd`` as a user would (a fresh interpreter)."""
    return subprocess.run(
        [sys.executable, "-m", "gmg", *args], cwd=cwd, env=env(), capture_output=True, text=True
    )


def copy_project(dest: Path) -> Path:
    """Copy the tracked and untracked-but-not-ignored files of the repo into a fresh git repo."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    for rel in listed:
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    # numba's compile cache (ignored by git): its index is keyed on each source file's mtime
    # and size, which copy2 keeps, so the copy's stages load the compiled solver loops instead
    # of compiling them again in every fresh project
    for cached in REPO.glob("gmgcore/__pycache__/*.nb[ic]"):
        (dest / "gmgcore/__pycache__").mkdir(parents=True, exist_ok=True)
        shutil.copy2(cached, dest / "gmgcore/__pycache__" / cached.name)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dest, env=env(), check=True, capture_output=True)
    return dest
