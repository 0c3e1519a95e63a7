r"""Entropic Gromov-Wasserstein between two cost matrices, solved in the log domain.

Problem (square loss, uniform weights :math:`p = 1_n/n`, :math:`q = 1_m/m`):

.. math::

    \min_{P \in U(p, q)} \; Q(P) - \varepsilon H(P), \qquad
    Q(P) = \sum_{ijkl} (C^x_{ik} - C^y_{jl})^2 P_{ij} P_{kl},
    \quad H(P) = -\sum_{ij} P_{ij} \log P_{ij}.

Conventions (all stated against POT 0.9.7, ``ot.gromov.entropic_gromov_wasserstein``):

* ``epsilon`` has POT's meaning. The solver runs POT's projected mirror descent (PGD; Peyré,
  Cuturi & Solomon 2016, Prop. 2 with the factor 2 that POT restores): :math:`P_{t+1} =
  \mathrm{Sinkhorn}(\nabla Q(P_t), \varepsilon)` with :math:`\nabla Q(P) = 2\,\mathcal L(C^x, C^y)
  \otimes P`. With the same init, its fixed point is POT's coupling. OTT-JAX's ``epsilon`` is half
  of this one, and so is the :math:`\varepsilon` of the ½-convention objective
  :math:`\tfrac12 Q(P) - \varepsilon H(P)` used by :mod:`gmgcore.gap`.
* ``cost`` is :math:`Q(P)`, with no ½ and no entropy (POT's ``log["gw_dist"]``);
  ``entropic_cost`` is :math:`Q(P) + \varepsilon\,\mathrm{KL}(P \,\|\, p q^\top)`, the objective
  above up to the constant :math:`\varepsilon \log(nm)` (OTT's ``reg_gw_cost`` convention).
* ``C_x`` and ``C_y`` are assumed symmetric (true for every cost in :mod:`gmgcore.costs`); a
  non-symmetric input is used as given, without POT's symmetrisation.

Numerics. Each outer step forms the kernel :math:`\log K = 4 C^x P_t C^{y\top}/\varepsilon +
f \oplus g` from the potentials :math:`f, g` carried over from the previous step (warm start),
renormalises its rows exactly in the log domain, clamps it at ``log(tiny) + 30`` (no exact zeros,
no fp32 subnormals) and then runs Sinkhorn in the scaling domain on that stabilised kernel,
absorbing the scalings back into the potentials whenever they leave :math:`[10^{-15}, 10^{15}]`.
The returned coupling is the last finite iterate rounded onto :math:`U(p, q)` (Altschuler, Weed &
Rigollet 2017, Alg. 2), so its marginals are exact up to rounding even when ``converged`` is
False. Convergence: the last outer step moved :math:`P` by at most ``tol`` in L1 and its Sinkhorn
marginal error (L1) was at most ``tol``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

Factors = tuple[Tensor, Tensor]

_SCALE_LIMIT = 1e15  # fold the Sinkhorn scaling into the potential beyond this range
_NEWTON_AFTER = 2.0  # Newton once Sinkhorn would need more than this × max(m, 64) iterations


@dataclass(frozen=True)
class GWResult:
    """Output of :func:`solve`; a leading ``[B]`` appears on every tensor for batched input.

    Attributes:
        coupling: ``[n, m]`` coupling with marginals exactly ``1/n`` and ``1/m`` (up to rounding).
        cost: ``[]`` quadratic cost :math:`Q(P)` (no ½, no entropy).
        entropic_cost: ``[]`` :math:`Q(P) + \\varepsilon \\mathrm{KL}(P \\| pq^\\top)`.
        iterations: outer (mirror-descent) steps run.
        inner_iterations: Sinkhorn iterations run, summed over outer steps.
        converged: ``[]`` bool, per problem.
        marginal_error: ``[]`` L1 marginal error of the last iterate before rounding.
        coupling_change: ``[]`` L1 change of the coupling over the last outer step.
    """

    coupling: Tensor
    cost: Tensor
    entropic_cost: Tensor
    iterations: int
    inner_iterations: int
    converged: Tensor
    marginal_error: Tensor
    coupling_change: Tensor


def _check_inputs(C_x: Tensor, C_y: Tensor, init: Tensor | None) -> None:
    if C_x.ndim not in (2, 3) or C_x.ndim != C_y.ndim:
        raise ValueError(
            f"C_x and C_y must both be [n, n] or [B, n, n]; got {C_x.shape}, {C_y.shape}"
        )
    if C_x.shape[-1] != C_x.shape[-2] or C_y.shape[-1] != C_y.shape[-2]:
        raise ValueError(f"cost matrices must be square; got {C_x.shape}, {C_y.shape}")
    if C_x.ndim == 3 and C_x.shape[0] != C_y.shape[0]:
        raise ValueError(f"batch sizes differ: {C_x.shape[0]} vs {C_y.shape[0]}")
    if not C_x.is_floating_point() or C_x.dtype != C_y.dtype or C_x.device != C_y.device:
        raise ValueError("C_x and C_y must share one floating dtype and one device")
    if not (torch.isfinite(C_x).all() and torch.isfinite(C_y).all()):
        raise ValueError("cost matrices contain NaN or inf")
    if init is not None:
        shape = (*C_x.shape[:-1], C_y.shape[-1])
        if tuple(init.shape) != shape:
            raise ValueError(f"init must have shape {shape}; got {tuple(init.shape)}")
        n, m = shape[-2:]
        ok = (
            torch.isfinite(init).all()
            and (init >= 0).all()
            and torch.allclose(init.sum(-1), torch.full_like(init.sum(-1), 1 / n), atol=1e-4 / n)
            and torch.allclose(init.sum(-2), torch.full_like(init.sum(-2), 1 / m), atol=1e-4 / m)
        )
        if not ok:
            raise ValueError("init must be a coupling of the uniform weights (marginals 1/n, 1/m)")


def _as_epsilon(epsilon: float | Tensor, batch: int, like: Tensor) -> Tensor:
    eps = torch.as_tensor(epsilon, dtype=like.dtype, device=like.device).reshape(-1)
    if eps.numel() not in (1, batch):
        raise ValueError(f"epsilon must be a scalar or have {batch} entries; got {eps.numel()}")
    if not (torch.isfinite(eps).all() and (eps > 0).all()):
        raise ValueError(f"epsilon must be finite and > 0; got {eps.tolist()}")
    return eps.expand(batch).reshape(batch, 1, 1)


def linearization(C_x: Tensor, C_y: Tensor, P: Tensor,
                  factors_x: Factors | None = None, factors_y: Factors | None = None) -> Tensor:
    """:math:`C^x P C^{y\\top}`, ``[B, n, m]``: the coupling-dependent part of
    :math:`\\mathcal L \\otimes P = C^{x2} p 1^\\top + 1 q^\\top C^{y2\\top} - 2 C^x P C^{y\\top}`
    (Peyré, Cuturi & Solomon 2016, Prop. 1). Factors ``(A, B)`` with ``C = A Bᵀ`` (``[.., n, r]``)
    replace the O(n³) products by O(r n²) ones: ``A_x ((B_xᵀ P) C_yᵀ)`` and its mirror image."""
    if factors_x is not None:
        A, B = factors_x
        if factors_y is not None:
            return A @ (((B.swapaxes(-1, -2) @ P) @ factors_y[1]) @ factors_y[0].swapaxes(-1, -2))
        return A @ ((B.swapaxes(-1, -2) @ P) @ C_y.swapaxes(-1, -2))
    if factors_y is not None:
        return (C_x @ (P @ factors_y[1])) @ factors_y[0].swapaxes(-1, -2)
    return (C_x @ P) @ C_y.swapaxes(-1, -2)


def quadratic_cost(C_x: Tensor, C_y: Tensor, P: Tensor, G: Tensor | None = None) -> Tensor:
    """:math:`Q(P) = \\sum_{ijkl} (C^x_{ik} - C^y_{jl})^2 P_{ij} P_{kl}`, ``[B]`` for ``P``
    ``[B, n, m]``; ``G`` is :func:`linearization` at ``P`` if already known."""
    if G is None:
        G = linearization(C_x, C_y, P)
    r, c = P.sum(-1, keepdim=True), P.sum(-2, keepdim=True).transpose(-1, -2)
    term_x = (r.transpose(-1, -2) @ (C_x * C_x) @ r).reshape(-1)
    term_y = (c.transpose(-1, -2) @ (C_y * C_y) @ c).reshape(-1)
    return term_x + term_y - 2 * (G * P).sum((-1, -2))


def round_to_coupling(P: Tensor, n: int, m: int) -> Tensor:
    """Project a positive ``[B, n, m]`` matrix onto the uniform couplings (Altschuler et al.
    2017, Alg. 2): scale rows and columns down to the marginals, then add the rank-one
    correction. Moves ``P`` by at most twice its L1 marginal error."""
    p, q = 1.0 / n, 1.0 / m
    P = P * (p / P.sum(-1, keepdim=True)).clamp(max=1)
    P = P * (q / P.sum(-2, keepdim=True)).clamp(max=1)
    err_r = (p - P.sum(-1, keepdim=True)).clamp(min=0)
    err_c = (q - P.sum(-2, keepdim=True)).clamp(min=0)
    total = err_r.sum(-2, keepdim=True).clamp(min=torch.finfo(P.dtype).tiny)
    return P + err_r * err_c / total


Array = Any  # a numpy array or a torch tensor: the iteration below is written for both


def _kernel(S: Array, g: Array, floor: float, xp: ModuleType) -> Array:
    """Stabilised kernel ``exp(S + g - rowmax(S + g))`` clamped below at ``exp(floor)``: rows
    peak at 1, so the row potential is implicit and no entry is 0 or subnormal."""
    logK = S + g
    return xp.exp(xp.clip(logK - xp.amax(logK, axis=-1, keepdims=True), floor, None))


def _sinkhorn_block(
    K: Array, Kt: Array, v: Array, count: int, p: float, q: float, xp: ModuleType
) -> tuple[Array, Array, Array]:
    """``count`` Sinkhorn iterations from the column scaling ``v [B, m, 1]``; returns ``u``,
    ``v`` and the L1 column-marginal error ``[B]`` of the iterate before the last update."""
    for _ in range(count - 1):
        u = p / (K @ v)
        v = q / (Kt @ u)
    u = p / (K @ v)
    Ktu = Kt @ u
    err = xp.abs(v * Ktu - q).sum(axis=(-1, -2))
    return u, q / Ktu, err


def _newton_step(
    K: Array, Kt: Array, u: Array, v: Array, p: float, q: float, xp: ModuleType
) -> tuple[Array, Array, Array]:
    """One damped Newton step on the Sinkhorn dual (Brauer et al. 2017, "A Sinkhorn-Newton method
    for entropic optimal transport"): minimise :math:`\\phi(a, b) = \\sum_{ij} e^{a_i} K_{ij}
    e^{b_j} - p^\\top a - q^\\top b` over the log-scalings, eliminating ``a`` by its Schur
    complement (an ``[m, m]`` solve), with Armijo backtracking. Returns ``u``, ``v`` and the L1
    error of both marginals before the step."""
    Kv, Ktu = K @ v, Kt @ u
    r, c = u * Kv, v * Ktu
    err = (xp.abs(r - p).sum(axis=(-1, -2)) + xp.abs(c - q).sum(axis=(-1, -2)))
    P = u * K * v.swapaxes(-1, -2)
    Pt = P.swapaxes(-1, -2)
    m = c.shape[-2]
    A = Pt @ (P / r)
    A = -A + xp.eye(m, dtype=A.dtype)[None] * c + (1.0 / m) * xp.ones_like(A) * q
    rhs = (q - c) + Pt @ ((r - p) / r)
    db = xp.linalg.solve(A, rhs)
    da = -((r - p) + P @ db) / r
    slope = ((r - p) * da).sum(axis=(-1, -2)) + ((c - q) * db).sum(axis=(-1, -2))
    phi0 = r.sum(axis=(-1, -2))
    t = min(1.0, 30.0 / max(float(xp.amax(xp.abs(da))), float(xp.amax(xp.abs(db))), 1e-30))
    for _ in range(30):
        u2, v2 = u * xp.exp(t * da), v * xp.exp(t * db)
        phi = (u2 * (K @ v2)).sum(axis=(-1, -2)) - t * (p * da.sum(axis=(-1, -2)) + q * db.sum(
            axis=(-1, -2)))
        if bool(xp.all(phi <= phi0 + 0.25 * t * slope)):
            break
        t *= 0.5
    return u2, v2, err


def _inner_solve(
    S: Array, g: Array, floor: float, target: float, inner_iterations: int, max_inner: int,
    p: float, q: float, xp: ModuleType,
) -> tuple[Array, Array, Array, Array, Array, int, bool]:
    """Sinkhorn on the kernel of ``S + g`` until the L1 marginal error is ≤ ``target`` or
    ``max_inner`` iterations; switches to Newton steps (each costs about m Sinkhorn iterations)
    when the observed Sinkhorn rate predicts more than ``_NEWTON_AFTER · max(m, 64)`` more.
    Returns ``K, u, v, g, err, iterations, finite``."""
    K = _kernel(S, g, floor, xp)
    u, v = xp.ones_like(S[..., :1]), xp.ones_like(g).swapaxes(-1, -2)
    done, previous, newton = 0, math.inf, False
    while done < max_inner:
        count = 1 if newton else min(inner_iterations, max_inner - done)
        if newton:
            u, v, err = _newton_step(K, K.swapaxes(-1, -2), u, v, p, q, xp)
        else:
            u, v, err = _sinkhorn_block(K, K.swapaxes(-1, -2), v, count, p, q, xp)
        done += count
        worst = float(xp.amax(err))
        lo = min(float(xp.amin(u)), float(xp.amin(v)))
        hi = max(float(xp.amax(u)), float(xp.amax(v)))
        if not (math.isfinite(worst) and math.isfinite(hi) and lo > 0):
            return K, u, v, g, err, done, False
        if worst <= target:
            break
        if hi > _SCALE_LIMIT or lo < 1 / _SCALE_LIMIT:  # fold v into g, rebuild K
            g = g + xp.log(v).swapaxes(-1, -2)
            K, v, newton = _kernel(S, g, floor, xp), xp.ones_like(v), False
        elif not newton and 0 < worst < previous < math.inf:
            rate = math.log(worst / previous) / count
            newton = math.log(target / worst) / rate > _NEWTON_AFTER * max(v.shape[-2], 64)
        previous = worst
    return K, u, v, g, err, done, True


def _pgd(
    C_x: Array, C_y: Array, x0: Array, eps: Array, xp: ModuleType, tol: float, max_iter: int,
    inner_iterations: int, max_inner: int, factors_x: Factors | None, factors_y: Factors | None,
) -> tuple[Array, Array, Array, int, int]:
    """Mirror-descent loop on backend arrays ``[B, n, m]``. Only the column potential ``g``
    (units of ε, gauge-fixed to max 0) is carried between outer steps. Returns the last finite
    Sinkhorn coupling (unrounded), its marginal error and change ``[B]``, and the counts."""
    B, n, m = x0.shape
    p, q = 1.0 / n, 1.0 / m
    floor = math.log(float(xp.finfo(x0.dtype).tiny)) + 50.0
    g = x0[..., :1, :] * 0
    P, err, change = x0, xp.abs(x0[:, 0, 0]) + math.inf, xp.abs(x0[:, 0, 0]) + math.inf
    scale = 4.0 / eps
    outer, inner_total = 0, 0
    while outer < max_iter:
        outer += 1
        S = linearization(C_x, C_y, P, factors_x, factors_y) * scale
        K, u, v, g, err, done, finite = _inner_solve(
            S, g, floor, tol, inner_iterations, max_inner, p, q, xp
        )
        inner_total += done
        if not finite:
            break
        g = g + xp.log(v).swapaxes(-1, -2)
        g = g - xp.amax(g, axis=-1, keepdims=True)
        P_new = u * K * v.swapaxes(-1, -2)
        change = xp.abs(P_new - P).sum(axis=(-1, -2))
        P = P_new
        if max(float(xp.amax(change)), float(xp.amax(err))) <= tol:
            break
    return P, err, change, outer, inner_total


def _to(factors: Factors | None, like: Tensor) -> Factors | None:
    return None if factors is None else (factors[0].to(like), factors[1].to(like))


def _use_numpy(device: torch.device, backend: str) -> bool:
    if backend not in ("auto", "torch", "numpy"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'numpy'; got {backend!r}")
    if backend == "numpy" and device.type != "cpu":
        raise ValueError("backend='numpy' needs CPU tensors")
    return backend == "numpy" or (backend == "auto" and device.type == "cpu")


@torch.no_grad()
def solve(
    C_x: Tensor,
    C_y: Tensor,
    epsilon: float | Tensor,
    init: Tensor | None = None,
    *,
    tol: float = 1e-6,
    max_iter: int = 200,
    inner_iterations: int = 10,
    max_inner: int = 1000,
    factors_x: Factors | None = None,
    factors_y: Factors | None = None,
    backend: Literal["auto", "torch", "numpy"] = "auto",
) -> GWResult:
    """Entropic GW coupling between ``C_x`` ``[n, n]`` and ``C_y`` ``[m, m]`` (or a batch
    ``[B, n, n]``, ``[B, m, m]``); see the module docstring for the problem and conventions.

    Args:
        C_x, C_y: symmetric cost matrices, finite (else ValueError); no gradient flows.
        epsilon: POT's ε (> 0): a float, or ``[B]`` for one value per problem.
        init: starting coupling ``[n, m]`` / ``[B, n, m]`` of the uniform weights; default the
            product coupling :math:`pq^\top` (as in POT and OTT).
        tol: stop when the last outer step changed P by ≤ tol (L1) and its Sinkhorn marginal
            error is ≤ tol (L1), for every problem in the batch.
        max_iter: outer-step budget.
        inner_iterations: Sinkhorn iterations between two marginal-error checks.
        max_inner: Sinkhorn budget per outer step. ``max_inner == inner_iterations`` gives a
            fixed budget of ``max_iter × inner_iterations`` Sinkhorn iterations.
        factors_x, factors_y: optional ``(A, B)`` with ``C = A Bᵀ`` (``[.., n, r]``), used only
            for the linearisation ``C_x P C_yᵀ`` (see :func:`gmgcore.costs.pairwise_cost_factors`).
        backend: "auto" runs the iteration through numpy on CPU (same arithmetic, about 5×
            less per-call overhead on small matrices; zero-copy) and through torch elsewhere.

    Returns:
        :class:`GWResult`. ``converged`` False means the budget ran out (or an iterate stopped
        being finite); the coupling is then the last finite iterate, rounded onto U(p, q).
    """
    _check_inputs(C_x, C_y, init)
    batched = C_x.ndim == 3
    if not batched:
        C_x, C_y = C_x.unsqueeze(0), C_y.unsqueeze(0)
        init = None if init is None else init.unsqueeze(0)
        factors_x = None if factors_x is None else (factors_x[0][None], factors_x[1][None])
        factors_y = None if factors_y is None else (factors_y[0][None], factors_y[1][None])
    B, n, m = C_x.shape[0], C_x.shape[-1], C_y.shape[-1]
    eps = _as_epsilon(epsilon, B, C_x)
    x0 = C_x.new_full((B, n, m), 1.0 / (n * m)) if init is None else init.to(C_x)
    if _use_numpy(C_x.device, backend):
        conv = (lambda t: t.detach().contiguous().numpy()), np
    else:
        conv = (lambda t: t.detach()), torch
    fx = None if factors_x is None else tuple(conv[0](t.to(C_x)) for t in factors_x)
    fy = None if factors_y is None else tuple(conv[0](t.to(C_x)) for t in factors_y)
    P, err, change, outer, inner = _pgd(
        conv[0](C_x), conv[0](C_y), conv[0](x0), conv[0](eps), conv[1], tol, max_iter,
        inner_iterations, max_inner, fx, fy,
    )
    P, err, change = (torch.as_tensor(a, device=C_x.device) for a in (P, err, change))
    converged = (change <= tol) & (err <= tol)
    P = round_to_coupling(P, n, m)
    G = linearization(C_x, C_y, P, _to(factors_x, C_x), _to(factors_y, C_x))
    cost = quadratic_cost(C_x, C_y, P, G)
    kl = torch.xlogy(P, P).sum((-1, -2)) + math.log(n * m)
    entropic = cost + eps.reshape(-1) * kl
    out = GWResult(P, cost, entropic, outer, inner, converged, err, change)
    if batched:
        return out
    return GWResult(*(t.squeeze(0) if isinstance(t, Tensor) else t for t in vars(out).values()))
