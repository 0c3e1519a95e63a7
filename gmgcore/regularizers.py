"""Geometry regularizers of the encoder and/or decoder: GMG, DST and a Jacobian isometry baseline.

Two levels, as everywhere in gmgcore: pure cores on tensors (:func:`gap_penalty`,
:func:`relaxed_distortion`) and a thin wrapper (:func:`regularize`) that picks the map's inputs
and outputs from a VAE forward pass.

* Encoder, :math:`T: x \\mapsto \\mu(x)`: source = the image batch ``[n, C, H, W]`` (flattened
  inside the costs), image = ``mu`` ``[n, d]``. Reference measure r = the data batch.
* Decoder, :math:`T: z \\mapsto \\hat x = E[x|z]` (``sigmoid(logits)`` for Bernoulli): source =
  the sampled codes ``z`` ``[n, d]`` of the same forward pass, image = ``x_hat`` ``[n, C, H, W]``.
  Reference measure r = the encoder's samples, so the decoder penalty reuses the reconstruction
  pass (no extra decoder evaluation).

:mod:`gmgcore.gap` treats the source as the fixed reference sample (detached): gradients reach the
map through its outputs only. For the decoder, ``x_hat = d(z)`` still depends on the encoder
through ``z``, so the encoder receives the penalty's gradient along that path.

Costs are named per *space*, not per side of the map: ``cost_x`` on the data space (images,
reconstructions), ``cost_y`` on the latent space (``mu`` or ``z``). The encoder's GMG is thus
``GMG(x, mu; c_x, c_y)`` and the decoder's ``GMG(z, x_hat; c_y, c_x)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from gmgcore import gap
from gmgcore.models.vae import VAE, VAEOutput

__all__ = [
    "REGULARIZERS",
    "TARGETS",
    "RegularizerResult",
    "RegularizerSpec",
    "gap_penalty",
    "regularize",
    "relaxed_distortion",
]

REGULARIZERS = ("none", "gmg", "dst", "jacobian")
TARGETS = ("encoder", "decoder", "both")


class RegularizerResult(NamedTuple):
    """``value``: differentiable scalar; ``terms``: name → detached scalar."""

    value: torch.Tensor
    terms: dict[str, torch.Tensor]


@dataclass(frozen=True)
class RegularizerSpec:
    """``kind`` (none | gmg | dst | jacobian) on ``target`` (encoder | decoder | both), added to
    the loss as ``weight`` × value. ``cost_x``: cost on the data space; ``cost_y``: on the latent
    space. ``epsilon0``: GMG's relative entropic regularisation. ``gap_options``: extra keyword
    arguments for :func:`gmgcore.gap.gromov_monge_gap` (solver budget, init, center; DST uses
    ``center`` too).
    ``jacobian_mixup``: η of the latent mixup of Lee et al. 2022 (0 = evaluate at the codes)."""

    kind: str = "none"
    target: str = "decoder"
    cost_x: str = "cosine"
    cost_y: str = "cosine"
    epsilon0: float = 0.1
    weight: float = 1.0
    gap_options: Mapping[str, Any] = field(default_factory=dict)
    jacobian_mixup: float = 0.2

    def __post_init__(self) -> None:
        if self.kind not in REGULARIZERS:
            raise ValueError(f"regularizer {self.kind!r}: expected one of {REGULARIZERS}")
        if self.target not in TARGETS:
            raise ValueError(f"regularizer target {self.target!r}: expected one of {TARGETS}")
        if self.kind == "jacobian" and self.target != "decoder":
            raise ValueError(
                f"regularizer 'jacobian' penalises the decoder's isometry only, got target "
                f"{self.target!r}"
            )

    @property
    def targets(self) -> tuple[str, ...]:
        if self.kind == "none":
            return ()
        return ("encoder", "decoder") if self.target == "both" else (self.target,)


def _scalar(value: Any, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(value, dtype=torch.float32, device=like.device).detach().float()


def gap_penalty(
    kind: str,
    source: torch.Tensor,
    image: torch.Tensor,
    cost_source: str,
    cost_image: str,
    epsilon0: float,
    gap_options: Mapping[str, Any] | None = None,
) -> RegularizerResult:
    r"""GMG or DST of the map ``source`` ``[n, ...]`` → ``image`` ``[n, ...]`` on one batch.

    DST (Uscidda et al., ICLR 2025, §3):
    :math:`\frac{1}{n^2}\sum_{ij}\tfrac12(c_X(x_i,x_j) - c_Y(T(x_i),T(x_j)))^2`;
    GMG = DST − GW_ε between the batch and its image (:func:`gmgcore.gap.gromov_monge_gap`).
    Both are computed in float32. Terms: ``gmg``, ``dst``, ``gw``, ``gw_epsilon``,
    ``solver_iterations``, ``solver_converged`` (GMG) or ``dst`` (DST).
    """
    source, image = source.float(), image.float()
    options = dict(gap_options or {})
    if kind == "dst":
        center = {"center": options["center"]} if "center" in options else {}
        value = gap.distortion(source, image, cost_source, cost_image, **center)
        return RegularizerResult(value, {"dst": value.detach()})
    if kind != "gmg":
        raise ValueError(f"gap_penalty kind {kind!r}: expected 'gmg' or 'dst'")
    res = gap.gromov_monge_gap(source, image, cost_source, cost_image, epsilon0, **options)
    terms = {
        "gmg": res.value.detach(),
        "dst": _scalar(res.distortion, res.value),
        "gw": _scalar(res.gw, res.value),
        "gw_epsilon": _scalar(res.epsilon, res.value),
        "solver_iterations": _scalar(res.iterations, res.value),
        "solver_converged": _scalar(res.converged, res.value),
    }
    return RegularizerResult(res.value, terms)


def relaxed_distortion(
    fn: Callable[[torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    generator: torch.Generator | None = None,
    mixup: float = 0.2,
) -> RegularizerResult:
    r"""Relaxed distortion of a decoder (Lee, Yoon, Son & Park 2022, "Regularized autoencoders for
    isometric representation learning", ICLR) minus its minimum:

    .. math::
        d\,\frac{E_z[\operatorname{tr} G(z)^2]}{(E_z[\operatorname{tr} G(z)])^2} - 1 \;\ge 0,
        \qquad G = J^\top J,\ J = \partial f / \partial z,

    zero iff :math:`G(z) = cI` for one constant c, i.e. f is a scaled isometry. The traces come
    from two random projections per point through forward-mode AD (``torch.func.jvp``), with
    :math:`v, w \sim N(0, I)`: :math:`\operatorname{tr}G = E\|Jv\|^2`,
    :math:`\operatorname{tr}G^2 = E\langle Jv, Jw\rangle^2`. As in Lee et al., z is drawn from a
    mixup of the codes, :math:`\alpha z_i + (1-\alpha) z_{\pi(i)}`,
    :math:`\alpha \sim U(-\eta, 1+\eta)`. ``z``: ``[n, d]`` (detached here); ``fn`` maps
    ``[m, d]`` → ``[m, ...]``.
    """
    z = z.detach()
    n, d = z.shape
    if mixup > 0:
        alpha = torch.rand((n, 1), generator=generator, device=z.device, dtype=z.dtype)
        alpha = alpha * (1 + 2 * mixup) - mixup
        perm = torch.randperm(n, generator=generator, device=z.device)
        z = alpha * z + (1 - alpha) * z[perm]
    v = torch.randn((2 * n, d), generator=generator, device=z.device, dtype=z.dtype)
    _, jv = torch.func.jvp(fn, (torch.cat([z, z]),), (v,))
    jv1, jv2 = jv.float().flatten(1).chunk(2)
    tr_g = 0.5 * (jv1.pow(2).sum(1) + jv2.pow(2).sum(1)).mean()
    tr_g2 = (jv1 * jv2).sum(1).pow(2).mean()
    value = d * tr_g2 / tr_g.pow(2) - 1.0
    return RegularizerResult(value, {"jacobian": value.detach(), "jacobian_trace": tr_g.detach()})


def regularize(
    spec: RegularizerSpec,
    x: torch.Tensor,
    out: VAEOutput,
    model: VAE,
    generator: torch.Generator | None = None,
) -> RegularizerResult:
    """``spec.weight`` × the sum of the penalty over ``spec.targets``, for one forward pass.

    ``x``: input batch ``[n, *shape]``; ``out``: the VAE's forward on it (``out.logits`` needed
    for the decoder GMG/DST). Terms are named ``gmg``, ``dst``, ... for a single target and get a
    ``_encoder`` / ``_decoder`` suffix when both are regularised.
    """
    terms: dict[str, torch.Tensor] = {}
    total = x.new_zeros((), dtype=torch.float32)
    for target in spec.targets:
        if spec.kind == "jacobian":
            res = relaxed_distortion(
                lambda z: model.observation_mean(model.decode(z)), out.z, generator,
                spec.jacobian_mixup,
            )
        elif target == "encoder":
            res = gap_penalty(
                spec.kind, x, out.mu, spec.cost_x, spec.cost_y, spec.epsilon0, spec.gap_options
            )
        else:
            if out.logits is None:
                raise ValueError("a decoder regularizer needs the decoder's output (logits)")
            x_hat = model.observation_mean(out.logits)
            res = gap_penalty(
                spec.kind, out.z, x_hat, spec.cost_y, spec.cost_x, spec.epsilon0, spec.gap_options
            )
        total = total + res.value
        suffix = f"_{target}" if len(spec.targets) > 1 else ""
        terms.update({f"{k}{suffix}": v for k, v in res.terms.items()})
    return RegularizerResult(spec.weight * total, terms)
