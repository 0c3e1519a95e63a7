r"""Distortion (DST) and Gromov-Monge gap (GMG) of a map from a mini-batch ``(x_i, T(x_i))``.

Uscidda et al., "Disentangled Representation Learning with the Gromov-Monge Gap", ICLR 2025,
§3 (DST, GMG) and Algorithm 1 (ε scaling). With :math:`C^x_{ij} = c_X(x_i, x_j)` and
:math:`C^y_{ij} = c_Y(T(x_i), T(x_j))` (``[n, n]``, see :mod:`gmgcore.costs`) and the ½ convention
of the paper:

.. math::

    \mathrm{DST} = \frac{1}{n^2} \sum_{ij} \tfrac12 (C^x_{ij} - C^y_{ij})^2, \qquad
    \mathrm{GMG} = \mathrm{DST} - \tfrac12 Q(\bar P), \qquad
    Q(P) = \sum_{ijkl} (C^x_{ik} - C^y_{jl})^2 P_{ij} P_{kl},

where :math:`\bar P` (detached) is the better, in the entropic objective
:math:`E(P) = \tfrac12 Q(P) + \varepsilon\,\mathrm{KL}(P \| \tfrac{1}{n^2} 1 1^\top)`, of two
couplings of the uniform weights: the entropic GW coupling found by
:func:`gmgcore.gromov.solve`, and the map's own coupling :math:`I/n` (whose quadratic cost is DST).

* **ε.** :math:`\varepsilon = \varepsilon_0 \cdot \mathrm{mean}|C^x| \cdot \mathrm{mean}|C^y|`
  (Algorithm 1 with stat = mean; the absolute value keeps ε > 0 for signed costs such as a
  centred cosine, whose mean can vanish), detached. This ε belongs to the ½-convention
  objective; :func:`gmgcore.gromov.solve` and POT use ``epsilon = 2 ε`` for the same coupling
  (:func:`solver_epsilon`).
* **Entropic term.** Not subtracted: ``gw`` is the quadratic part :math:`\tfrac12 Q(\bar P)`;
  ``gw_entropic`` = :math:`E(\bar P)` is reported for logging.
* **Sign.** GMG ≥ 0 for the exact (unregularised, global) GW. The estimate is not: the entropic
  coupling is blurred and only a local optimum, so :math:`\tfrac12 Q(\bar P)` can exceed DST. The
  choice of :math:`\bar P` guarantees
  :math:`E(\bar P) \le E(I/n) = \mathrm{DST} + \varepsilon \log n`, hence
  :math:`-\varepsilon \log n \le \mathrm{GMG} \le \mathrm{DST}`; for an isometry,
  :math:`\mathrm{GMG} \in [-\varepsilon \log n, 0]`.
* **Gradient.** Envelope theorem: :math:`\bar P` is detached and the closed form is
  differentiated, never the solver. The gradient of ``value`` is the exact gradient of
  :math:`\mathrm{DST} - E(\bar P)` at a converged :math:`\bar P` with ε held fixed. Computed as
  ``value = <C^x P̄ C^{y⊤}, P̄> − mean(C^x ⊙ C^y)``, equal to DST − ½Q(P̄) for uniform marginals
  and free of the cancellation between two large terms.
* **Budget.** The defaults are a fixed small budget for a training step: at most 20 outer
  steps of 5 Sinkhorn iterations, no Newton steps, and an early exit at ``tol``. A step gets
  one more block when its scalings were folded into the potential at the very end.
  ``converged`` says whether ``tol`` was reached. The coupling is always a valid coupling and
  the value is always finite.

  Measured (``bench/bench_gw.py``, docs/gw.md) at n = 64, on the decoder of a dlib_conv VAE,
  against the converged fp64 estimate:

  * ScL2² at ε0 = 0.1, fp32, on the initial batch: value error 2.3e-7, gradient error 1.4e-5;
    on four batches after 40–300 Adam steps 1.4e-5 to 2.4e-2 (value) and 6.6e-6 to 0.16
    (gradient), and at most 1.4e-3 / 1.5e-3 at 30 × 10 (docs/gw.md, "The first step from the
    product coupling"). On a batch after about 300 training steps the coupling is sharp, and
    fp32 needs scalings beyond its fold limit. Before the extra block, each outer step ended on
    a half-iteration, and the estimate was 0.093 against 0.276. It now agrees with fp64 to
    4e-5.
  * Centred cosine at ε0 = 0.1 does not converge inside the budget, and its error depends on
    the batch. On three batches after 40 training steps it was 0.5–2.4 % (value) and 0.8–1.9 %
    (gradient); 30 × 10 (``max_iter=30, inner_iterations=max_inner=10``) brings both below
    0.02 % for about 2 ms more. On the bench's near-initial batch it was 2.1 % / 9.9 %,
    1.6 % / 8.1 % at 30 × 10, and 0.07 % / 0.6 % at 60 × 10.
  * At ε0 = 0.01 the budgeted estimate often stops at the identity coupling (GMG = 0). That is
    right on the initial batch, whose converged estimate is 0 too, but not on the trained one.

  At n = 64 the solve takes about 1 ms (20 × 5, fp32, compiled loop). Raise ``max_iter`` /
  ``max_inner`` (e.g. 200 / 1000, which also enables Newton steps) for small ε0 or cosine
  costs, at a higher cost per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from gmgcore import gromov
from gmgcore.costs import CostName, cost_rank, pairwise_cost, pairwise_cost_factors

Init = Literal["product", "identity"]


@dataclass(frozen=True)
class GapResult:
    """GMG estimate and its parts; tensors are ``[]`` (or ``[B]`` for batched costs).

    Attributes:
        value: GMG, differentiable. distortion: DST, differentiable. gw: ½Q(P̄) = DST − value,
            differentiable. gw_entropic: E(P̄) (detached). epsilon: ε in the ½ convention.
        coupling: P̄ ``[n, n]`` (detached). identity_won: whether P̄ is the map's own coupling.
        iterations, inner_iterations: solver counts. converged: the solver reached ``tol`` for
            every problem. marginal_error: the solver's largest L1 marginal error before rounding.
    """

    value: Tensor
    distortion: Tensor
    gw: Tensor
    gw_entropic: Tensor
    epsilon: Tensor
    coupling: Tensor
    identity_won: Tensor
    iterations: int
    inner_iterations: int
    converged: bool
    marginal_error: float


def distortion_from_costs(C_x: Tensor, C_y: Tensor) -> Tensor:
    """DST :math:`\\frac{1}{n^2}\\sum_{ij} \\tfrac12 (C^x_{ij} - C^y_{ij})^2`; ``[.., n, n]``."""
    return 0.5 * (C_x - C_y).square().mean((-1, -2))


def distortion(
    x: Tensor, y: Tensor, cost_x: CostName, cost_y: CostName, *, center: bool = False
) -> Tensor:
    """DST of the map ``x_i → y_i``; ``x: [n, ...]``, ``y: [n, ...]`` → scalar. Differentiable
    in ``y`` only: ``x`` is the reference sample and is detached."""
    return distortion_from_costs(
        pairwise_cost(x.detach(), cost_x, center=center), pairwise_cost(y, cost_y, center=center)
    )


def gap_epsilon(C_x: Tensor, C_y: Tensor, epsilon0: float) -> Tensor:
    """:math:`\\varepsilon_0\\,\\mathrm{mean}|C^x|\\,\\mathrm{mean}|C^y|` (½ convention)."""
    stat = C_x.detach().abs().mean((-1, -2)) * C_y.detach().abs().mean((-1, -2))
    return epsilon0 * stat


def solver_epsilon(epsilon: Tensor) -> Tensor:
    """POT's / :func:`gmgcore.gromov.solve`'s ε for the ½-convention ε: ``2 ε``, floored at
    ``sqrt(tiny)`` so that ``4 / ε`` stays finite when both costs vanish (a constant map)."""
    return (2.0 * epsilon).clamp(min=torch.finfo(epsilon.dtype).tiny ** 0.5)


class _EnvelopeValue(torch.autograd.Function):
    r""":math:`\langle C^x \bar P C^{y\top}, \bar P\rangle - \mathrm{mean}(C^x \odot C^y)`
    (``[..]``) for a fixed coupling :math:`\bar P` ``[.., n, m]`` (no gradient), with its
    closed-form gradients :math:`\bar P^\top C^x \bar P - C^x / nm` (for :math:`C^y`) and
    :math:`\bar P C^y \bar P^\top - C^y / nm` (for :math:`C^x`): one graph node and two
    matrix products per side, where autograd through the expression records about ten."""

    @staticmethod
    def forward(ctx, C_x: Tensor, C_y: Tensor, P: Tensor) -> Tensor:  # noqa: ANN001
        ctx.save_for_backward(C_x, C_y, P)
        return (gromov.linearization(C_x, C_y, P) * P).sum((-1, -2)) - (C_x * C_y).mean((-1, -2))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # noqa: ANN001
        C_x, C_y, P = ctx.saved_tensors
        g, size = grad[..., None, None], C_x.shape[-1] * C_x.shape[-2]
        Pt = P.transpose(-1, -2)
        d_x = g * (P @ C_y @ Pt - C_y / size) if ctx.needs_input_grad[0] else None
        d_y = g * (Pt @ C_x @ P - C_x / size) if ctx.needs_input_grad[1] else None
        return d_x, d_y, None


def _init_coupling(init: Init | float, eye: Tensor) -> Tensor | None:
    """``None`` (product), ``I/n``, or the blend ``(1 − δ) · 11ᵀ/n² + δ · I/n`` for a float δ."""
    if init == "product":
        return None
    if init == "identity":
        return eye
    if isinstance(init, float | int) and 0.0 <= init <= 1.0:
        return (1.0 - init) / eye.shape[-1] ** 2 + init * eye
    raise ValueError(f"init must be 'product', 'identity' or a float in [0, 1]; got {init!r}")


def gromov_monge_gap_from_costs(
    C_x: Tensor,
    C_y: Tensor,
    epsilon: float | Tensor,
    *,
    init: Init | float = "product",
    tol: float = 1e-5,
    max_iter: int = 20,
    inner_iterations: int = 5,
    max_inner: int = 5,
    factors_x: gromov.Factors | None = None,
    factors_y: gromov.Factors | None = None,
) -> GapResult:
    """GMG from cost matrices ``C_x``, ``C_y`` ``[n, n]`` or ``[B, n, n]`` (module docstring).

    ``epsilon`` is the ½-convention ε (scalar or ``[B]``), e.g. :func:`gap_epsilon`. ``init``
    starts the solver from the product coupling (POT/OTT default), from ``I/n``, or from a blend
    ``(1 − δ) · product + δ · I/n`` (float δ). The product coupling is an exact stationary point
    when the row means of ``C_x`` or ``C_y`` are constant (e.g. centred inner products); a small
    δ then breaks the symmetry. The budget arguments and factors go to
    :func:`gmgcore.gromov.solve`.
    """
    if C_x.shape != C_y.shape or C_x.shape[-1] != C_x.shape[-2]:
        raise ValueError(f"C_x and C_y must both be [n, n] (or [B, n, n]); got {C_x.shape}, "
                         f"{C_y.shape}")
    n = C_x.shape[-1]
    eps = torch.as_tensor(epsilon, dtype=C_x.dtype, device=C_x.device).detach()
    eps = eps.expand(C_x.shape[:-2]) if eps.ndim == 0 else eps
    eye = torch.eye(n, dtype=C_x.dtype, device=C_x.device).expand(C_x.shape) / n
    res = gromov.solve(
        C_x.detach(), C_y.detach(), solver_epsilon(eps), _init_coupling(init, eye),
        tol=tol, max_iter=max_iter, inner_iterations=inner_iterations, max_inner=max_inner,
        factors_x=factors_x, factors_y=factors_y,
    )
    dst = distortion_from_costs(C_x, C_y)
    entropic = 0.5 * res.entropic_cost
    entropic_identity = dst.detach() + eps * math.log(n)
    identity_won = entropic_identity < entropic
    P = torch.where(identity_won[..., None, None], eye, res.coupling)
    value = _EnvelopeValue.apply(C_x, C_y, P)
    return GapResult(
        value=value,
        distortion=dst,
        gw=dst - value,
        gw_entropic=torch.minimum(entropic, entropic_identity),
        epsilon=eps,
        coupling=P,
        identity_won=identity_won,
        iterations=res.iterations,
        inner_iterations=res.inner_iterations,
        converged=bool(res.converged.all()),
        marginal_error=float(res.marginal_error.max()),
    )


def _factors(x: Tensor, kind: CostName, center: bool) -> gromov.Factors | None:
    """Low-rank factors of the cost when they make the linearisation cheaper (rank < n / 2)."""
    if cost_rank(x, kind) * 2 >= x.shape[0]:
        return None
    return pairwise_cost_factors(x, kind, center=center)


def gromov_monge_gap(
    x: Tensor,
    y: Tensor,
    cost_x: CostName,
    cost_y: CostName,
    epsilon0: float,
    *,
    center: bool = False,
    init: Init | float = "product",
    tol: float = 1e-5,
    max_iter: int = 20,
    inner_iterations: int = 5,
    max_inner: int = 5,
) -> GapResult:
    """GMG of the map ``x_i → y_i``; ``x: [n, ...]``, ``y: [n, ...]`` are flattened per sample.

    Costs as in :func:`gmgcore.costs.pairwise_cost` (``center`` applies to cosine and inner
    product); ε = ``epsilon0`` · mean|C_x| · mean|C_y| (:func:`gap_epsilon`). A side whose cost
    has rank < n/2 (e.g. a 10-dim latent) is passed to the solver in low-rank form. Gradients
    reach the map through ``y`` only: ``x`` is the reference sample and is detached (call
    :func:`gromov_monge_gap_from_costs` to differentiate both sides). Raises ValueError on
    non-finite costs; otherwise always returns finite values.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same batch size; got {x.shape[0]}, {y.shape[0]}")
    C_x = pairwise_cost(x.detach(), cost_x, center=center)
    C_y = pairwise_cost(y, cost_y, center=center)
    return gromov_monge_gap_from_costs(
        C_x, C_y, gap_epsilon(C_x, C_y, epsilon0), init=init, tol=tol, max_iter=max_iter,
        inner_iterations=inner_iterations, max_inner=max_inner,
        factors_x=_factors(x.detach(), cost_x, center),
        factors_y=_factors(y.detach(), cost_y, center),
    )
