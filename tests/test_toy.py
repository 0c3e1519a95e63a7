"""The toy of the paper's Figure 2: entropic OT against POT, samplers, metrics and the stage."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import ot
import pytest
import torch
import yaml

from gmgcore import toy
from stages import toy as toy_stage

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    """The tensors are small: one thread avoids synchronisation costs on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _points(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=gen, dtype=F64) + shift


def _pot_entropic(x: torch.Tensor, y: torch.Tensor, eps: float) -> tuple[np.ndarray, float]:
    """POT's plan and OT_eps = <P, M> + eps KL(P | ab^T) for uniform weights."""
    a, b = np.full(len(x), 1 / len(x)), np.full(len(y), 1 / len(y))
    M = ot.dist(x.numpy(), y.numpy())
    P = ot.sinkhorn(a, b, M, eps, method="sinkhorn_log", numItermax=20000, stopThr=1e-13)
    return P, float((P * M).sum() + eps * (P * np.log(P / np.outer(a, b))).sum())


# ------------------------------------------------------------------------- entropic OT vs POT
@pytest.mark.parametrize(
    ("eps", "scaling", "relaxation"), [(0.5, 0.7, 1.8), (0.1, 0.0, 1.0), (0.1, 0.5, 1.5)]
)
def test_entropic_ot_matches_pot(eps, scaling, relaxation):
    x, y = _points(40, 0), _points(50, 1, shift=1.0)
    res = toy.entropic_ot(x, y, eps, max_iter=20000, tol=1e-12, scaling=scaling,
                          relaxation=relaxation)
    P, value = _pot_entropic(x, y, eps)
    assert res.converged
    np.testing.assert_allclose(res.plan.numpy(), P, atol=1e-9)
    assert res.value.item() == pytest.approx(value, rel=1e-9)
    a, b = np.full(40, 1 / 40), np.full(50, 1 / 50)
    sharp = ot.sinkhorn2(a, b, ot.dist(x.numpy(), y.numpy()), eps, method="sinkhorn_log",
                         numItermax=20000, stopThr=1e-13)
    assert res.transport_cost.item() == pytest.approx(float(sharp), rel=1e-9)
    np.testing.assert_allclose(res.plan.sum(1).numpy(), a, atol=1e-10)
    np.testing.assert_allclose(res.plan.sum(0).numpy(), b, atol=1e-10)


def test_sinkhorn_divergence_matches_pot():
    """Both debiasing conventions: with OT_eps (ours) and with <P, M> (POT's)."""
    x, y, eps = _points(30, 2), _points(35, 3, shift=0.5), 0.3
    ours = toy.sinkhorn_divergence(x, y, eps, max_iter=20000, tol=1e-12).item()
    ref = _pot_entropic(x, y, eps)[1] - 0.5 * (
        _pot_entropic(x, x, eps)[1] + _pot_entropic(y, y, eps)[1])
    assert ours == pytest.approx(ref, rel=1e-8)

    def sharp(u, v):
        return toy.entropic_ot(u, v, eps, max_iter=20000, tol=1e-12).transport_cost.item()

    ours_sharp = sharp(x, y) - 0.5 * (sharp(x, x) + sharp(y, y))
    pot_sharp = ot.bregman.empirical_sinkhorn_divergence(
        x.numpy(), y.numpy(), eps, method="sinkhorn_log", numIterMax=20000, stopThr=1e-13)
    assert ours_sharp == pytest.approx(float(pot_sharp), rel=1e-8)


def test_self_solver_matches_general_solver():
    x = _points(60, 4)
    general = toy.entropic_ot(x, x, 0.2, max_iter=20000, tol=1e-13).value
    assert toy.entropic_ot_self(x, 0.2, tol=1e-12).item() == pytest.approx(general.item(), rel=1e-9)


def test_divergence_zero_for_identical_samples_and_positive_otherwise():
    x = _points(50, 5)
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(0))
    same = toy.sinkhorn_divergence(x, x[perm], 0.2, max_iter=20000, tol=1e-12).item()
    assert abs(same) < 1e-9
    small = toy.sinkhorn_divergence(x, x + 0.1, 0.2, max_iter=20000, tol=1e-12).item()
    large = toy.sinkhorn_divergence(x, x + 0.5, 0.2, max_iter=20000, tol=1e-12).item()
    assert 0 < small < large


def test_divergence_gradient_matches_finite_differences():
    x, y, eps = _points(12, 6).requires_grad_(True), _points(15, 7, shift=0.3), 0.3

    def value(u: torch.Tensor) -> torch.Tensor:
        return toy.sinkhorn_divergence(u, y, eps, max_iter=20000, tol=1e-13)

    value(x).backward()
    direction = _points(12, 8)
    h = 1e-5
    with torch.no_grad():
        fd = (value(x + h * direction) - value(x - h * direction)).item() / (2 * h)
    assert (x.grad * direction).sum().item() == pytest.approx(fd, rel=1e-5)


@pytest.mark.parametrize("kwargs", [{"epsilon": 0.0}, {"scaling": 1.0}, {"relaxation": 2.0}])
def test_entropic_ot_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError, match="need epsilon > 0"):
        toy.entropic_ot(_points(3, 0), _points(3, 1), **{"epsilon": 0.1, **kwargs})


# ------------------------------------------------------------------------- samplers and metrics
def test_samplers_support_and_moments():
    gen = torch.Generator().manual_seed(0)
    square = toy.sample_square(20000, gen, half_width=2.0)
    assert square.abs().max() <= 2.0
    assert square.pow(2).mean().item() == pytest.approx(4.0 / 3.0, rel=0.03)  # Var U(-2, 2)
    ring = toy.sample_ring(20000, gen, inner=0.5, outer=1.0)
    radius = ring.norm(dim=1)
    assert radius.min() >= 0.5 - 1e-12 and radius.max() <= 1.0 + 1e-12
    # uniform by area: E[r^2] = (r_in^2 + r_out^2) / 2
    assert radius.pow(2).mean().item() == pytest.approx(0.625, rel=0.02)
    means = toy.mixture_means(4, 2.0)
    np.testing.assert_allclose(means.norm(dim=1).numpy(), 2.0)
    x, labels = toy.sample_source(8000, means, 0.1, gen)
    for k in range(4):
        assert x[labels == k].mean(0).sub(means[k]).abs().max() < 0.02
        assert (labels == k).double().mean().item() == pytest.approx(0.25, abs=0.03)


def test_knn_purity_oracles():
    gen = torch.Generator().manual_seed(1)
    means = toy.mixture_means(3, 5.0)
    x, labels = toy.sample_source(600, means, 0.1, gen)
    assert toy.knn_label_purity(x, labels, 10) == 1.0
    shuffled = labels[torch.randperm(600, generator=gen)]
    chance = sum(((labels == k).double().mean().item()) ** 2 for k in range(3))
    assert toy.knn_label_purity(x, shuffled, 10) == pytest.approx(chance, abs=0.05)
    perm = torch.randperm(600, generator=gen)
    assert toy.knn_label_purity(x[perm], labels[perm], 10) == 1.0
    with pytest.raises(ValueError, match="k must be"):
        toy.knn_label_purity(x, labels, 600)


def test_mlp_is_seeded_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = toy.make_mlp(3, 2, 8, 2, 7, F64), toy.make_mlp(3, 2, 8, 2, 7, F64)
    assert torch.equal(torch.random.get_rng_state(), state)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_fit_map_reduces_the_divergence():
    gen = torch.Generator().manual_seed(0)
    means = toy.mixture_means(3, 1.0, torch.float32)
    target = toy.sample_square(128, gen, dtype=torch.float32)
    model = toy.make_mlp(3, 2, 16, 1, 0, torch.float32)
    x_eval = toy.sample_source(256, means, 0.15, gen)[0]

    def fit() -> float:
        with torch.no_grad():
            return toy.sinkhorn_divergence(model(x_eval), target, 0.05, 300, 1e-4).item()

    before = fit()
    history = toy.fit_map(
        model, lambda n: toy.sample_source(n, means, 0.15, gen)[0],
        lambda n: toy.sample_square(n, gen, dtype=torch.float32), None, steps=60,
        batch_size=64, reg_batch_size=16, weight=0.0, lr=1e-2, epsilon=0.05,
    )
    assert len(history) == 60 and set(history[0]) == {"fit", "reg", "loss"}
    assert fit() < 0.5 * before


# ------------------------------------------------------------------------- the stage
TINY = {
    "steps": 15, "batch_size": 48, "reg_batch_size": 16, "hidden": 16,
    "eval_size": 120, "eval_gmg_batches": 2, "knn": 5, "epsilon": 0.05,
}


def test_stage_writes_png_and_json_reproducibly(tmp_path):
    stage = toy_stage
    cfg = stage.ToyConfig(**TINY)
    first = stage.run(cfg, tmp_path / "toy")
    files = sorted(p.name for p in (tmp_path / "toy").iterdir())
    assert files == ["metrics.json", "toy.png"]
    assert (tmp_path / "toy" / "toy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "toy" / "metrics.json").read_text()) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]  # no temporary left behind
    for target in stage.TARGETS:
        assert set(first[target]) == set(stage.REGULARIZERS)
        for values in first[target].values():
            assert all(math.isfinite(v) for v in values.values())
            assert 0.0 <= values["knn_purity"] <= 1.0
    second = stage.run(cfg, tmp_path / "toy")  # same seed: identical numbers, same ordering
    assert second == first
    other = stage.run(cfg.model_copy(update={"seed": 1}), tmp_path / "other")
    assert other != first


def test_stage_rejects_inconsistent_config(tmp_path):
    stage = toy_stage
    with pytest.raises(ValueError, match="reg_batch_size"):
        stage.run(stage.ToyConfig(**{**TINY, "reg_batch_size": 64}), tmp_path / "toy")
    assert not (tmp_path / "toy").exists()


def test_cli_command_runs_the_stage(tmp_path):
    stage = toy_stage
    import typer
    from typer.testing import CliRunner

    app = typer.Typer()
    stage.register(app)
    params = tmp_path / "params.yaml"
    full = {**stage.ToyConfig().model_dump(mode="json"), **TINY}  # every key spelled out
    params.write_text(yaml.safe_dump({"toy": full}))
    out = tmp_path / "out"
    runner = CliRunner()
    result = runner.invoke(app, ["--out", str(out), "--params", str(params),
                                 "--set", "toy.steps=2"])
    assert result.exit_code == 0, result.output
    assert (out / "toy.png").is_file() and (out / "metrics.json").is_file()
    bad = runner.invoke(app, ["--out", str(out), "--params", str(params),
                              "--set", "toy.stpes=2"])
    assert bad.exit_code == 2 and "toy.stpes" in bad.output


def test_params_yaml_section_matches_the_config():
    """The repository's ``toy`` section loads (every key, no unknown key) and equals the
    defaults in code, so ``gmg toy`` reproduces docs/toy.md."""
    stage = toy_stage
    from stages.params import load_section

    path = Path(__file__).resolve().parents[1] / "params.yaml"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    assert load_section(path, "toy", stage.ToyConfig) == stage.ToyConfig()
