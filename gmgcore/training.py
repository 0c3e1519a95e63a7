"""The training loop: Adam, per-step seeded randomness, resumable state, NaN guard, callbacks.

The loop does no I/O: batches come from a callable, and checkpoints, logs and progress leave
through callbacks. Reproducibility: the model is initialised from ``seed``; every random draw
of step s (reparameterisation noise, FactorVAE permutations, HFS and Jacobian samples) comes
from a generator seeded by (seed, s); the batch of step s is the caller's business (the
project's store makes it a function of (seed, s)). A checkpoint holds the weights, optimizer
states, the global torch RNG states, the step and the log rows so far, as tensors and plain
types (loadable with ``torch.load(weights_only=True)``), so a resumed run ends with the same
weights, bit for bit on CPU, as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from gmgcore.models import VAE, Discriminator, VAEOutput, build_model, images_to_tensor
from gmgcore.objectives import (
    ObjectiveSpec,
    compute_objective,
    discriminator_loss,
    permute_dims,
)
from gmgcore.regularizers import RegularizerSpec, regularize

__all__ = [
    "NonFiniteLossError",
    "TrainResult",
    "TrainSpec",
    "build_seeded",
    "pick_device",
    "step_generator",
    "train",
]

logger = logging.getLogger(__name__)

Batches = Callable[[int], Iterator[Any]]
Row = dict[str, float]


class NonFiniteLossError(ValueError):
    """A loss term became NaN or infinite; ``step`` and ``term`` name where."""

    def __init__(self, step: int, term: str, value: float, last_checkpoint: int | None) -> None:
        kept = (
            f"the last checkpoint (step {last_checkpoint}) is kept"
            if last_checkpoint is not None
            else "no checkpoint was written yet"
        )
        super().__init__(
            f"step {step}: loss term {term!r} is {value}; training stopped before the update, "
            f"{kept}"
        )
        self.step, self.term, self.value, self.last_checkpoint = step, term, value, last_checkpoint


@dataclass(frozen=True)
class TrainSpec:
    """Optimisation settings. Steps are counted from 1; a log row is written at every multiple
    of ``log_every`` (the mean of the terms since the previous row) and at the last step; a
    checkpoint at every multiple of ``checkpoint_every`` and at the last step. ``precision``:
    the model's forward pass under bf16 autocast (``"bf16"``), in float32 (``"fp32"``), or
    ``"auto"``: bf16 on CUDA, float32 elsewhere. Losses and regularizers are always float32."""

    steps: int
    lr: float = 1e-4
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 10
    discriminator_lr: float = 1e-4
    discriminator_betas: tuple[float, float] = (0.5, 0.9)
    precision: str = "auto"

    def __post_init__(self) -> None:
        for name in ("steps", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r}: expected one of {PRECISIONS}")


class TrainResult(NamedTuple):
    """Trained ``model`` (in place), its ``discriminator`` (FactorVAE) and the log ``rows``."""

    model: VAE
    discriminator: nn.Module | None
    rows: list[Row]


PRECISIONS = ("auto", "fp32", "bf16")


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` → cuda if available, else cpu; an explicit device must exist."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available")
    return dev


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded by the pair (seed, step) through numpy's SeedSequence."""
    state = np.random.SeedSequence([seed, step]).generate_state(2, dtype=np.uint32)
    gen = torch.Generator(device=device)
    gen.manual_seed(int(state[0]) << 32 | int(state[1]))
    return gen


def build_seeded(model_config: Mapping[str, Any], seed: int) -> VAE:
    """``build_model`` with weights drawn from ``seed`` (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(model_config)


def _discriminator(latent_dim: int, objective: ObjectiveSpec, seed: int) -> Discriminator:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        return Discriminator(
            latent_dim, objective.discriminator_hidden, objective.discriminator_layers
        )


def _to_input(batch: Any, device: torch.device) -> torch.Tensor:
    images = batch[0] if isinstance(batch, tuple | list) else batch
    if isinstance(images, np.ndarray) or images.dtype == torch.uint8:
        return images_to_tensor(images, device)
    return images.to(device).float()


def _float_output(out: VAEOutput) -> VAEOutput:
    return VAEOutput(*(t.float() if t is not None else None for t in out))


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


class _Accumulator:
    """Sums of the terms since the last log row (plain floats, so it fits in a checkpoint)."""

    def __init__(self, state: Mapping[str, Any] | None = None) -> None:
        self.count = int(state["count"]) if state else 0
        self.sums: dict[str, float] = dict(state["sums"]) if state else {}

    def add(self, values: Mapping[str, float]) -> None:
        self.count += 1
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v

    def pop_row(self, step: int) -> Row:
        row = {"step": float(step), **{k: v / self.count for k, v in self.sums.items()}}
        self.count, self.sums = 0, {}
        return row

    def state(self) -> dict[str, Any]:
        return {"count": self.count, "sums": dict(self.sums)}


def _finite_values(terms: Mapping[str, torch.Tensor], step: int, last_ckpt: int | None) -> Row:
    """All terms as floats in one device sync; raise :class:`NonFiniteLossError` naming the first
    non-finite term (components come before the total, so the culprit is named)."""
    names = list(terms)
    values = torch.stack([terms[k].detach().float().reshape(()) for k in names]).cpu().tolist()
    for name, value in zip(names, values, strict=True):
        if not np.isfinite(value):
            raise NonFiniteLossError(step, name, value, last_ckpt)
    return dict(zip(names, values, strict=True))


class _Parts:
    """The model, the FactorVAE critic (if any) and their optimizers; one update at a time."""

    def __init__(
        self, model: VAE, objective: ObjectiveSpec, regularizer: RegularizerSpec,
        spec: TrainSpec, dev: torch.device,
    ) -> None:
        self.model, self.objective, self.regularizer = model.to(dev).train(), objective, regularizer
        self.opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
        self.disc: nn.Module | None = None
        self.opt_d: torch.optim.Optimizer | None = None
        if objective.name == "factorvae":
            self.disc = _discriminator(model.latent_dim, objective, spec.seed).to(dev).train()
            self.opt_d = torch.optim.Adam(
                self.disc.parameters(), lr=spec.discriminator_lr, betas=spec.discriminator_betas
            )
        bf16 = spec.precision == "bf16" or (spec.precision == "auto" and dev.type == "cuda")
        self.autocast = (
            torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        )

    def update(self, x: torch.Tensor, gen: torch.Generator, step: int, last: int | None) -> Row:
        """One Adam step on the VAE (and one on the critic); the terms, checked finite first."""
        with self.autocast:
            out = _float_output(self.model(x, generator=gen, decode=self.objective.uses_decoder))
        obj = compute_objective(self.objective, x, out, self.disc, gen)
        try:
            reg = regularize(self.regularizer, x, out, self.model, gen)
        except ValueError as err:  # the GW solver refuses non-finite costs
            for name, t in zip(out._fields, out, strict=True):
                if t is not None and not bool(torch.isfinite(t).all()):
                    raise NonFiniteLossError(step, name, float("nan"), last) from err
            raise
        loss = obj.loss + reg.value
        values = _finite_values({**obj.terms, **reg.terms, "loss": loss}, step, last)
        values = {"loss": values.pop("loss"), **values}
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.disc is not None and self.opt_d is not None:
            d_loss = discriminator_loss(self.disc, out.z, permute_dims(out.z.detach(), gen))
            values.update(_finite_values({"discriminator": d_loss}, step, last))
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
        return values

    def state(self) -> dict[str, Any]:
        state = {"model": self.model.state_dict(), "optimizer": self.opt.state_dict()}
        if self.disc is not None and self.opt_d is not None:
            state["discriminator"] = self.disc.state_dict()
            state["discriminator_optimizer"] = self.opt_d.state_dict()
        return state

    def load(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        if self.disc is not None and self.opt_d is not None:
            self.disc.load_state_dict(state["discriminator"])
            self.opt_d.load_state_dict(state["discriminator_optimizer"])


def train(
    model: VAE,
    batches: Batches,
    objective: ObjectiveSpec,
    regularizer: RegularizerSpec,
    spec: TrainSpec,
    *,
    device: str | torch.device | None = None,
    resume: Mapping[str, Any] | None = None,
    on_step: Callable[[int, Row], None] | None = None,
    on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train ``model`` for ``spec.steps`` steps (continuing from ``resume``, a checkpoint dict).

    ``batches(start)`` yields the batches of steps ``start + 1, start + 2, ...``: uint8 images
    ``[B, H, W(, C)]`` (or ``(images, factors)`` tuples) or float tensors ``[B, *shape]``.
    ``on_step(step, terms)`` is called after every update; ``on_checkpoint(state)`` receives a
    dict to be saved as is (its tensors are live: serialise before returning). On GPU the
    forward runs under bf16 autocast and the losses in float32.
    """
    if not objective.uses_decoder and "decoder" in regularizer.targets:
        raise ValueError(
            f"objective {objective.name!r} trains no decoder: the regularizer target must be "
            f"'encoder', got {regularizer.target!r}"
        )
    dev = pick_device(device)
    parts = _Parts(model, objective, regularizer, spec, dev)
    start, rows, acc, last_ckpt = 0, [], _Accumulator(), None
    if resume is not None:
        start = last_ckpt = int(resume["step"])
        parts.load(resume)
        rows, acc = [dict(r) for r in resume["rows"]], _Accumulator(resume["accumulator"])
        _set_rng_state(resume["rng"])
        logger.info("resuming at step %d of %d", start, spec.steps)
    it = batches(start) if start < spec.steps else iter(())
    for step in range(start + 1, spec.steps + 1):
        x = _to_input(next(it), dev)
        values = parts.update(x, step_generator(spec.seed, step, dev), step, last_ckpt)
        acc.add(values)
        if step % spec.log_every == 0 or step == spec.steps:
            rows.append(acc.pop_row(step))
        if on_step is not None:
            on_step(step, values)
        if on_checkpoint is not None and (step % spec.checkpoint_every == 0 or step == spec.steps):
            on_checkpoint({"step": step, **parts.state(), "rng": _rng_state(),
                           "rows": [dict(r) for r in rows], "accumulator": acc.state()})
            last_ckpt = step
    return TrainResult(model, parts.disc, rows)
