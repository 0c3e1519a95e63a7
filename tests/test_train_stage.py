"""The train stage end to end on a tiny store: outputs, resume after a kill, config hashing."""

from __future__ import annotations

import contextlib
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from pydantic import ValidationError

import stages.train as train_stage
from stages.modelio import load_model
from stages.params import ParamsError, load_section
from stages.store import open_store, write_store
from stages.train import TrainConfig, config_hash, run

BASE = {
    "model": {"architecture": "mlp", "latent_dim": 3, "hidden": [16]},
    "objective": "beta_tcvae",
    "hfs": True,
    "regularizer": "gmg",
    "gap_options": {"max_iter": 3, "inner_iterations": 10, "max_inner": 20},
    "target": "decoder",
    "steps": 6,
    "batch_size": 8,
    "lr": 1e-3,
    "checkpoint_every": 2,
    "log_every": 2,
}


def _store(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    n = 48
    factors = np.stack([rng.integers(0, 4, n), rng.integers(0, 4, n)], axis=1).astype(np.int64)
    images = np.zeros((n, 64, 64), np.uint8)
    for img, (r, c) in zip(images, factors, strict=True):
        img[8 + 10 * r : 20 + 10 * r, 8 + 10 * c : 20 + 10 * c] = 255
    write_store(path, images, factors, ("row", "col"), (4, 4), "squares", {"seed": seed}, 16)
    return path


def _run(tmp: Path, data: Path, cfg: TrainConfig, name: str) -> dict[str, float]:
    return run(
        cfg,
        data,
        tmp / name / "model.pt",
        tmp / name / "log.csv",
        tmp / name / "train.json",
        tmp / "ckpt" / name,
    )


def test_run_writes_model_log_metrics_and_checkpoint(tmp_path: Path) -> None:
    data = _store(tmp_path / "store")
    cfg = TrainConfig.model_validate(BASE)
    metrics = _run(tmp_path, data, cfg, "a")
    model = load_model(tmp_path / "a" / "model.pt")
    assert model.latent_dim == 3 and not model.training
    with open(tmp_path / "a" / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["step"] for r in rows] == ["2", "4", "6"]
    assert list(rows[0])[:2] == ["step", "loss"]
    assert {
        "reconstruction",
        "kl",
        "mi",
        "tc",
        "dim_kl",
        "hfs",
        "gmg",
        "dst",
        "gw",
        "solver_iterations",
    } <= set(rows[0])
    assert json.loads((tmp_path / "a" / "train.json").read_text()) == metrics
    assert metrics["loss"] == pytest.approx(np.mean([float(r["loss"]) for r in rows]), rel=1e-6)
    key = config_hash(cfg, open_store(data).manifest["content_hash"])
    state = torch.load(tmp_path / "ckpt" / "a" / key / "checkpoint.pt", weights_only=True)
    assert state["step"] == 6


class _Killed(Exception):
    pass


@contextlib.contextmanager
def _progress_killing_at(step: int):
    done = 0

    def advance(n: int = 1, **fields: float) -> None:
        nonlocal done
        done += n
        if done == step:
            raise _Killed

    yield advance


def test_rerun_after_kill_resumes_to_identical_outputs(tmp_path: Path, monkeypatch) -> None:
    data = _store(tmp_path / "store")
    cfg = TrainConfig.model_validate(BASE)
    _run(tmp_path, data, cfg, "full")
    with monkeypatch.context() as m:
        m.setattr(train_stage, "task_progress", lambda *a, **k: _progress_killing_at(5))
        with pytest.raises(_Killed):
            _run(tmp_path, data, cfg, "killed")
    assert not (tmp_path / "killed" / "model.pt").exists()
    _run(tmp_path, data, cfg, "killed")
    full = torch.load(tmp_path / "full" / "model.pt", weights_only=True)["state_dict"]
    resumed = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    for name in ("log.csv", "train.json"):
        assert (tmp_path / "full" / name).read_text() == (tmp_path / "killed" / name).read_text()


def test_config_hash_separates_configs_and_data() -> None:
    cfg = TrainConfig.model_validate(BASE)
    assert config_hash(cfg, "d1") == config_hash(TrainConfig.model_validate(BASE), "d1")
    assert config_hash(cfg, "d1") != config_hash(cfg, "d2")
    assert config_hash(cfg, "d1") != config_hash(
        TrainConfig.model_validate({**BASE, "lr": 2e-3}), "d1"
    )


def test_params_section_is_validated(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    section = TrainConfig().model_dump(mode="json")
    text = yaml.safe_dump({"train": section}).replace("epsilon0: 0.1", "epsilon0: 1e-2")
    params.write_text(text.replace("hfs: false", "hfs: 0.5"))
    cfg = load_section(params, "train", TrainConfig)
    assert cfg.epsilon0 == 0.01 and cfg.objective_spec(10).hfs == 0.5
    params.write_text(yaml.safe_dump({"train": {**section, "lamda": 1}}))
    with pytest.raises(ParamsError, match="train.lamda"):
        load_section(params, "train", TrainConfig)
    with pytest.raises(ValidationError, match="unknown cost"):
        TrainConfig.model_validate({"cost_x": "l2"})


def test_equal_weights_give_byte_identical_model_files(tmp_path: Path) -> None:
    """The model file must not depend on the temporary name it was written under, or DVC sees a
    new model (and reruns every later stage) whenever train reruns with the same result."""
    from gmgcore.models import build_model
    from stages.modelio import save_model

    torch.manual_seed(0)
    model = build_model({"architecture": "mlp", "observation_shape": [8], "latent_dim": 2})
    save_model(tmp_path / "a.pt", model)
    save_model(tmp_path / "b.pt", model)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    reloaded = load_model(tmp_path / "a.pt")
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value)
