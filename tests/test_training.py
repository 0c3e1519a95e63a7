"""The training loop: every objective × regularizer × target, learning, resume, NaN guard."""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from gmgcore.objectives import ObjectiveSpec
from gmgcore.regularizers import RegularizerSpec
from gmgcore.training import (
    NonFiniteLossError,
    TrainSpec,
    build_seeded,
    pick_device,
    step_generator,
    train,
)

SHAPE = (8, 8)
FAST = {"max_iter": 3, "inner_iterations": 10, "max_inner": 20}  # a small GW solver budget
MLP = {"architecture": "mlp", "observation_shape": list(SHAPE), "latent_dim": 3, "hidden": [32]}


def _toy_images(n: int, seed: int = 0) -> np.ndarray:
    """Binary 8×8 images of one vertical bar (3 px wide) at a random column: a 1-factor toy."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, *SHAPE), np.uint8)
    for img, col in zip(images, rng.integers(0, SHAPE[1] - 2, n), strict=True):
        img[:, col : col + 3] = 255
    return images


def _batches(images: np.ndarray, batch_size: int, seed: int = 0):
    def from_step(start: int) -> Iterator[torch.Tensor]:
        for s in itertools.count(start):
            rng = np.random.default_rng([seed, s])
            yield torch.from_numpy(images[rng.choice(len(images), batch_size, replace=False)])

    return from_step


IMAGES = _toy_images(256)

_OBJECTIVES = [
    ("beta_vae", 0.0),
    ("beta_vae", 1.0),
    ("beta_tcvae", 0.0),
    ("beta_tcvae", 1.0),
    ("factorvae", 0.0),
    ("decoder_free", 0.0),
]
_REGULARIZERS = [("none", "decoder"), ("jacobian", "decoder")] + [
    (k, t) for k in ("gmg", "dst") for t in ("encoder", "decoder", "both")
]


@pytest.mark.parametrize(("kind", "target"), _REGULARIZERS)
@pytest.mark.parametrize(("name", "hfs"), _OBJECTIVES)
def test_every_combination_trains(name: str, hfs: float, kind: str, target: str) -> None:
    objective = ObjectiveSpec(
        name=name, beta=2.0, hfs=hfs, dataset_size=len(IMAGES), discriminator_hidden=32
    )
    regularizer = RegularizerSpec(kind=kind, target=target, cost_x="cosine", cost_y="sqeuclidean",
                                  gap_options=FAST)
    model = build_seeded(MLP, 0)
    before = [p.detach().clone() for p in model.encoder.parameters()]
    if name == "decoder_free" and kind != "none" and target != "encoder":
        # Nothing trains the decoder, so a decoder penalty cannot be asked for.
        with pytest.raises(ValueError, match="decoder"):
            train(model, _batches(IMAGES, 16), objective, regularizer, TrainSpec(steps=2))
        return
    result = train(
        model,
        _batches(IMAGES, 16),
        objective,
        regularizer,
        TrainSpec(steps=2, lr=1e-3, log_every=1),
    )
    assert [r["step"] for r in result.rows] == [1.0, 2.0]
    row = result.rows[-1]
    assert all(np.isfinite(v) for v in row.values())
    assert ("hfs" in row) == (hfs > 0) and ("discriminator" in row) == (name == "factorvae")
    suffixes = ["_encoder", "_decoder"] if target == "both" else [""]
    if kind in ("gmg", "dst"):
        assert all(f"{kind}{s}" in row for s in suffixes)
    after = list(model.encoder.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize("arch", ["dlib_conv", "hfs_conv"])
def test_conv_models_train_with_decoder_gmg(arch: str) -> None:
    images = np.zeros((8, 64, 64), np.uint8)
    images[:, 20:40, 10:30] = 255
    model = build_seeded({"architecture": arch, "observation_shape": [64, 64]}, 0)
    result = train(
        model,
        _batches(images, 4),
        ObjectiveSpec(),
        RegularizerSpec(kind="gmg", gap_options=FAST),
        TrainSpec(steps=2, log_every=2),
    )
    assert {"reconstruction", "kl", "gmg", "dst", "gw"} <= set(result.rows[-1])


def test_bf16_autocast_path_trains_with_float32_losses() -> None:
    # The path CUDA takes by default ("auto"), forced on CPU: the conv forward runs in bf16,
    # the outputs are cast back, and every term (GMG included) is computed in float32.
    images = np.zeros((8, 64, 64), np.uint8)
    images[:, 20:40, 10:30] = 255
    model = build_seeded({"architecture": "dlib_conv", "observation_shape": [64, 64]}, 0)
    seen = []
    model.decoder.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    result = train(
        model,
        _batches(images, 4),
        ObjectiveSpec(),
        RegularizerSpec(kind="gmg", gap_options=FAST),
        TrainSpec(steps=2, log_every=1, precision="bf16"),
    )
    assert seen and all(dtype == torch.bfloat16 for dtype in seen)
    assert all(np.isfinite(v) for row in result.rows for v in row.values())
    assert next(model.parameters()).dtype == torch.float32
    with pytest.raises(ValueError, match="precision 'fp16'"):
        TrainSpec(steps=1, precision="fp16")


def test_loss_falls_on_a_toy() -> None:
    model = build_seeded(MLP, 0)
    result = train(
        model,
        _batches(IMAGES, 32),
        ObjectiveSpec(),
        RegularizerSpec(),
        TrainSpec(steps=50, lr=3e-3, log_every=1),
    )
    losses = [r["loss"] for r in result.rows]
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])


class _Killed(Exception):
    pass


def _run(
    spec: TrainSpec,
    objective: ObjectiveSpec,
    regularizer: RegularizerSpec,
    kill_at: int | None = None,
    resume: dict | None = None,
):
    saved: list[bytes] = []

    def on_checkpoint(state: dict) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        saved.append(buf.getvalue())

    def on_step(step: int, terms: dict) -> None:
        if step == kill_at:
            raise _Killed

    model = build_seeded(MLP, spec.seed)
    try:
        result = train(
            model,
            _batches(IMAGES, 16, spec.seed),
            objective,
            regularizer,
            spec,
            resume=resume,
            on_step=on_step,
            on_checkpoint=on_checkpoint,
        )
    except _Killed:
        result = None
    last = torch.load(io.BytesIO(saved[-1]), weights_only=True) if saved else None
    return model, result, last


@pytest.mark.parametrize(
    ("objective", "regularizer"),
    [
        (
            ObjectiveSpec(name="beta_tcvae", hfs=1.0, dataset_size=256),
            RegularizerSpec(kind="gmg", target="both", gap_options=FAST),
        ),
        (
            ObjectiveSpec(name="factorvae", discriminator_hidden=32),
            RegularizerSpec(kind="jacobian"),
        ),
    ],
)
def test_resume_after_kill_is_bit_identical(objective, regularizer) -> None:
    spec = TrainSpec(steps=7, lr=1e-3, seed=3, checkpoint_every=2, log_every=3)
    full, full_result, _ = _run(spec, objective, regularizer)
    killed, _, last = _run(spec, objective, regularizer, kill_at=5)
    assert last["step"] == 4
    torch.manual_seed(12345)  # the resumed run must not depend on the global RNG state
    resumed, resumed_result, _ = _run(spec, objective, regularizer, resume=last)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert full_result.rows == resumed_result.rows
    pairs = zip(full.parameters(), killed.parameters(), strict=True)
    assert not all(torch.equal(a, b) for a, b in pairs)


def test_nan_loss_stops_with_step_and_term_and_keeps_last_checkpoint() -> None:
    def batches(start: int) -> Iterator[torch.Tensor]:
        for s in itertools.count(start):
            x = torch.from_numpy(IMAGES[:8]).float().unsqueeze(1) / 255
            yield x.fill_(float("nan")) if s == 4 else x  # the batch of step 5

    saved: list[int] = []
    with pytest.raises(NonFiniteLossError, match=r"step 5: loss term 'reconstruction'") as err:
        train(
            build_seeded(MLP, 0),
            batches,
            ObjectiveSpec(),
            RegularizerSpec(),
            TrainSpec(steps=10, checkpoint_every=2),
            on_checkpoint=lambda state: saved.append(state["step"]),
        )
    assert saved == [2, 4] and err.value.last_checkpoint == 4
    assert "checkpoint (step 4) is kept" in str(err.value)


def test_device_and_generators() -> None:
    assert pick_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            pick_device("cuda")
    cpu = torch.device("cpu")
    a = torch.rand(4, generator=step_generator(0, 5, cpu))
    assert torch.equal(a, torch.rand(4, generator=step_generator(0, 5, cpu)))
    assert not torch.equal(a, torch.rand(4, generator=step_generator(0, 6, cpu)))
    assert not torch.equal(a, torch.rand(4, generator=step_generator(1, 5, cpu)))
