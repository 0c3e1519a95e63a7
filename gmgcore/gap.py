r"""Distortion (DST) and the Gromov-Monge gap (GMG) of a map from mini-batch samples.

For a batch :math:`x_1..x_n`, its images :math:`y_i = T(x_i)` and cost matrices
:math:`C^x_{ij} = c_X(x_i, x_j)`, :math:`C^y_{ij} = c_Y(y_i, y_j)` (Uscidda et al., ICLR 2025,
§3; the ½ convention of the authors' definition of DST):

.. math::

    \mathrm{DST}(T) = \frac{1}{n^2} \sum_{ij} \tfrac12 (C^x_{ij} - C^y_{ij})^2
                    = \tfrac12 Q(I/n),

    \mathrm{GW}_\varepsilon = \tfrac12 Q(P_\varepsilon), \quad
    P_\varepsilon = \arg\min_{P \in U(1/n, 1/n)} \tfrac12 Q(P) - \varepsilon H(P),

    \mathrm{GMG}(T) = \mathrm{DST}(T) - \mathrm{GW}_\varepsilon,

with :math:`Q(P) = \sum_{ijkl} (C^x_{ik} - C^y_{jl})^2 P_{ij} P_{kl}` (:mod:`gmgcore.gromov`).

Estimator, exactly:

* ε follows the paper's rule :math:`\varepsilon = \varepsilon_0 \cdot \overline{|C^x|} \cdot
  \overline{|C^y|}` (means over all :math:`n^2` entries, computed without gradient) and belongs
  to the ½-convention objective above. :func:`gmgcore.gromov.solve` takes POT's ε, which is
  twice it, so the solver is called with ``2 ε``.
* Only the quadratic part is subtracted: the entropic term :math:`\varepsilon H(P_\varepsilon)`
  is *not* part of ``gw``. It would shift the value by a constant of the batch but not change the
  gradient (envelope theorem), and leaving it out keeps GMG = 0 for an exact Gromov-Monge map
  solved with ε → 0.
* Gradients flow into both cost matrices with :math:`P_\varepsilon` detached (envelope theorem;
  the solver is never unrolled): :math:`\partial \mathrm{GW} / \partial C^y = 2 (C^y \odot
  q q^\top) - 2 P^\top C^x P` and symmetrically for :math:`C^x`.
* Sign. Without entropy GW ≤ DST (the diagonal coupling :math:`I/n` is feasible), so GMG ≥ 0.
  With entropy, :math:`P_\varepsilon` is blurred and the problem is non-convex, so a solver can
  end at a coupling whose quadratic cost exceeds DST: the estimate can be slightly negative,
  by at most the entropic bias (roughly :math:`2\varepsilon \log n`) when the solver finds the
  map's own coupling basin. The value is returned as computed, never clamped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from gmgcore.costs import CostName, pairwise_cost
from gmgcore.gromov import quadratic_cost, solve

__all__ = [
    "GapResult",
    "distortion",
    "distortion_from_costs",
    "gap_epsilon",
    "gromov_monge_gap",
    "gromov_monge_gap_from_costs",
]


@dataclass(frozen=True)
class GapResult:
    """Output of :func:`gromov_monge_gap`; scalars are ``[]`` (or ``[B]`` for batched costs).

    Attributes:
        value: GMG = ``distortion - gw``, differentiable in both cost matrices.
        distortion: DST, differentiable.
        gw: ½ Q(P_ε) at the detached coupling, differentiable (envelope gradient).
        epsilon: the ½-convention ε = ε0 · mean|C_x| · mean|C_y| (detached).
        coupling: ``[n, n]`` detached entropic GW coupling.
        iterations: outer solver steps.
        inner_iterations: Sinkhorn iterations, summed over outer steps.
        converged: bool tensor, per problem.
    """

    value: Tensor
    distortion: Tensor
    gw: Tensor
    epsilon: Tensor
    coupling: Tensor
    iterations: int
    inner_iterations: int
    converged: Tensor

    def log_terms(self) -> dict[str, float]:
        """Plain floats for logging (batch means)."""
        return {
            "gmg": float(self.value.detach().mean()),
            "dst": float(self.distortion.detach().mean()),
            "gw": float(self.gw.detach().mean()),
            "gw_epsilon": float(self.epsilon.mean()),
            "solver_iterations": float(self.iterations),
            "solver_converged": float(self.converged.float().mean()),
        }


def distortion_from_costs(C_x: Tensor, C_y: Tensor) -> Tensor:
    r""":math:`\frac{1}{n^2}\sum_{ij} \tfrac12 (C^x_{ij} - C^y_{ij})^2` for ``[.., n, n]`` costs."""
    if C_x.shape != C_y.shape:
        raise ValueError(f"cost matrices differ in shape: {tuple(C_x.shape)} vs {tuple(C_y.shape)}")
    return 0.5 * (C_x - C_y).pow(2).mean((-2, -1))


def distortion(x: Tensor, y: Tensor, cost_x: CostName, cost_y: CostName) -> Tensor:
    """DST of the map ``x_i → y_i``; ``x: [n, ...]``, ``y: [n, ...]`` flattened per sample."""
    _check_pair(x, y)
    return distortion_from_costs(pairwise_cost(x, cost_x), pairwise_cost(y, cost_y))


def gap_epsilon(C_x: Tensor, C_y: Tensor, epsilon0: float) -> Tensor:
    """ε = ε0 · mean|C_x| · mean|C_y| (½ convention), detached, ``[]`` or ``[B]``."""
    if not epsilon0 > 0:
        raise ValueError(f"epsilon0 must be > 0, got {epsilon0}")
    with torch.no_grad():
        eps = epsilon0 * C_x.abs().mean((-2, -1)) * C_y.abs().mean((-2, -1))
        return eps.clamp(min=torch.finfo(C_x.dtype).tiny)


def gromov_monge_gap_from_costs(
    C_x: Tensor, C_y: Tensor, epsilon0: float, init: Tensor | None = None, **solver_options: Any
) -> GapResult:
    """GMG from cost matrices ``[n, n]`` (or ``[B, n, n]``); see the module docstring.

    ``solver_options`` go to :func:`gmgcore.gromov.solve` (``tol``, ``max_iter``, ...). Non-finite
    costs raise ValueError; a solver that runs out of budget still returns a valid coupling with
    ``converged`` False.
    """
    if not (torch.isfinite(C_x).all() and torch.isfinite(C_y).all()):
        raise ValueError("gromov_monge_gap: cost matrices contain NaN or inf")
    eps = gap_epsilon(C_x, C_y, epsilon0)
    result = solve(C_x.detach(), C_y.detach(), 2.0 * eps, init=init, **solver_options)
    P = result.coupling.detach()
    gw = 0.5 * quadratic_cost(_batched(C_x), _batched(C_y), _batched(P))
    gw = gw.reshape(C_x.shape[:-2])
    dst = distortion_from_costs(C_x, C_y)
    return GapResult(
        value=dst - gw,
        distortion=dst,
        gw=gw,
        epsilon=eps,
        coupling=P,
        iterations=result.iterations,
        inner_iterations=result.inner_iterations,
        converged=result.converged,
    )


def gromov_monge_gap(
    x: Tensor,
    y: Tensor,
    cost_x: CostName,
    cost_y: CostName,
    epsilon0: float,
    init: Tensor | None = None,
    **solver_options: Any,
) -> GapResult:
    """GMG of the map ``x_i → y_i``; ``x: [n, ...]``, ``y: [n, ...]`` flattened per sample.

    Gradients reach ``y`` (and ``x`` if it requires grad) through the cost matrices only.
    """
    _check_pair(x, y)
    C_x, C_y = pairwise_cost(x, cost_x), pairwise_cost(y, cost_y)
    return gromov_monge_gap_from_costs(C_x, C_y, epsilon0, init=init, **solver_options)


def _batched(t: Tensor) -> Tensor:
    return t if t.ndim == 3 else t.unsqueeze(0)


def _check_pair(x: Tensor, y: Tensor) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y need the same batch size; got {x.shape[0]} and {y.shape[0]}")
    if x.shape[0] < 2:
        raise ValueError("a gap needs at least 2 samples")
