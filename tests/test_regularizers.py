"""Geometry regularizers: Jacobian isometry closed forms, GMG/DST wiring per target."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from gmgcore import gap
from gmgcore.models import build_model
from gmgcore.regularizers import RegularizerSpec, gap_penalty, regularize, relaxed_distortion


def _linear(matrix: torch.Tensor):
    return lambda z: z @ matrix.T


@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_relaxed_distortion_vanishes_on_scaled_isometries(scale: float) -> None:
    d, D = 3, 7
    q, _ = torch.linalg.qr(
        torch.randn(D, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    )
    z = torch.randn(20000, d, dtype=torch.float64)
    res = relaxed_distortion(_linear(scale * q), z, torch.Generator().manual_seed(1), mixup=0)
    assert res.value.item() == pytest.approx(0.0, abs=0.05)
    assert res.terms["jacobian_trace"].item() == pytest.approx(d * scale**2, rel=0.03)


def test_relaxed_distortion_matches_closed_form_for_a_linear_map() -> None:
    # J = diag(1, 3): G = diag(1, 9), d·tr(G²)/tr(G)² − 1 = 2·82/100 − 1 = 0.64.
    jac = torch.diag(torch.tensor([1.0, 3.0], dtype=torch.float64))
    z = torch.randn(20000, 2, dtype=torch.float64)
    res = relaxed_distortion(_linear(jac), z, torch.Generator().manual_seed(2), mixup=0.2)
    assert res.value.item() == pytest.approx(0.64, abs=0.08)


def test_relaxed_distortion_gradient_reaches_the_map() -> None:
    layer = torch.nn.Linear(2, 5)
    res = relaxed_distortion(layer, torch.randn(64, 2), torch.Generator().manual_seed(0))
    res.value.backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_dst_of_an_isometry_is_zero() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 4, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    res = gap_penalty("dst", x, x @ q.T + 1.0, "sqeuclidean", "sqeuclidean", 0.1)
    assert res.value.item() == pytest.approx(0.0, abs=1e-5)
    res = gap_penalty("gmg", x, x @ q.T, "cosine", "cosine", 0.1, {"max_iter": 5})
    assert {"gmg", "dst", "gw", "gw_epsilon", "solver_iterations", "solver_converged"} == set(
        res.terms
    )
    assert res.terms["dst"].item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("target", ["encoder", "decoder", "both"])
def test_regularize_feeds_each_map_its_inputs_and_outputs(target: str, monkeypatch) -> None:
    calls = []

    def fake_gap(x, y, cost_x, cost_y, epsilon0, **options):
        calls.append((x, y, cost_x, cost_y, epsilon0, options))
        value = y.float().sum() * 0 + float(len(calls))
        return SimpleNamespace(
            value=value,
            distortion=value.detach(),
            gw=0.0,
            epsilon=0.5,
            iterations=7,
            converged=True,
        )

    monkeypatch.setattr(gap, "gromov_monge_gap", fake_gap)
    model = build_model(
        {"architecture": "mlp", "observation_shape": [4, 4], "latent_dim": 2, "hidden": [8]}
    )
    x = torch.rand(5, 1, 4, 4)
    out = model(x)
    spec = RegularizerSpec(
        kind="gmg",
        target=target,
        cost_x="cosine",
        cost_y="sqeuclidean",
        epsilon0=0.3,
        weight=2.0,
        gap_options={"max_outer": 3},
    )
    res = regularize(spec, x, out, model)
    by_target = dict(zip(spec.targets, calls, strict=True))
    if "encoder" in by_target:
        src, img, cx, cy, eps, opts = by_target["encoder"]
        assert torch.equal(src, x) and torch.equal(img, out.mu)
        assert (cx, cy, eps, opts) == ("cosine", "sqeuclidean", 0.3, {"max_outer": 3})
    if "decoder" in by_target:
        src, img, cx, cy, _, _ = by_target["decoder"]
        assert torch.equal(src, out.z) and torch.equal(img, torch.sigmoid(out.logits))
        assert (cx, cy) == ("sqeuclidean", "cosine")  # latent space → data space
    assert res.value.item() == pytest.approx(2.0 * sum(range(1, len(calls) + 1)))
    names = {f"gmg_{t}" for t in spec.targets} if target == "both" else {"gmg"}
    assert names <= set(res.terms)
    suffix = "_encoder" if target == "both" else ""
    assert res.terms[f"solver_iterations{suffix}"] == 7


def test_spec_validation() -> None:
    assert RegularizerSpec().targets == ()
    with pytest.raises(ValueError, match="jacobian"):
        RegularizerSpec(kind="jacobian", target="encoder")
    with pytest.raises(ValueError, match="target"):
        RegularizerSpec(kind="gmg", target="latent")
