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
  \otimes P`. Its fixed points are POT's; from the same init it reaches POT's coupling (tested),
  though in this non-convex problem rounding differences (fp32) can lead to another local
  optimum, and PGD can also cycle (then ``converged`` is False). OTT-JAX's ``epsilon`` is half
  of this one, and so is the :math:`\varepsilon` of the ½-convention objective
  :math:`\tfrac12 Q(P) - \varepsilon H(P)` used by :mod:`gmgcore.gap`.
* ``cost`` is :math:`Q(P)`, with no ½ and no entropy (POT's ``log["gw_dist"]``);
  ``entropic_cost`` is :math:`Q(P) + \varepsilon\,\mathrm{KL}(P \,\|\, p q^\top)`, the objective
  above up to the constant :math:`\varepsilon \log(nm)` (OTT's ``reg_gw_cost`` convention),
  computed from the returned coupling on first access (its KL takes a ``log`` per entry,
  0.9 ms at n = 512, which a caller after the coupling and ``cost`` does not pay).
* ``C_x`` and ``C_y`` are assumed symmetric (true for every cost in :mod:`gmgcore.costs`); a
  non-symmetric input is used as given, without POT's symmetrisation.

Numerics (log-stabilised). Each outer step forms the kernel from the linearisation in the log
domain, :math:`\log K = 4 C^x P_t C^{y\top}/\varepsilon + g`, with the column potential
:math:`g` carried over from the previous step (warm start; the first step from the product
coupling starts from :func:`product_start`, the exact dual of its rank-one linearisation without
entropy); it subtracts each row's maximum
(the row potential is implicit) and clamps at ``log(tiny) + 50`` (no exact zeros, no fp32
subnormals, finite logs). Sinkhorn then runs in the scaling domain on that stabilised kernel,
folding the scalings back into :math:`g` (and rebuilding the kernel) whenever they leave
:math:`[e^{-|f|/2}, e^{|f|/2}]`, with f the clamp (about ``1e8`` in fp32), so that a clamped
entry times a scaling stays negligible and no column is lost to the clamp. Sinkhorn is
over-relaxed by Young's factor for its observed plain rate (same fixed points; see
:func:`_relaxed`); when the observed rate is still too slow (small ε, sharp couplings), it
switches to damped Newton steps on the same dual. Each outer step is solved to the marginal
tolerance, as POT does; in the final linear phase the linearisation is Anderson-extrapolated
(same fixed points) in its reduced form, ``B_xᵀ P C_yᵀ`` (``[r, m]``) when ``C_x`` is in
low-rank form. The returned
coupling is the last finite iterate rounded onto :math:`U(p, q)` (Altschuler, Weed & Rigollet
2017, Alg. 2), so its marginals are exact up to rounding even when ``converged`` is False.
Convergence: the last outer step moved :math:`P` by at most ``tol`` in L1 and its marginal error
(L1) was at most ``tol``. On CPU the loop runs through numpy on zero-copy views of the tensors
(the same arithmetic with far less per-call overhead on small matrices), with the kernel, the
Sinkhorn blocks and the end of each outer step compiled, and a single small problem runs its
whole solve (checks, operands, loop, rounding and cost) as one compiled call
(:mod:`gmgcore.gromov_cpu`);
``4/ε`` is folded into ``C_x`` once, and the kernel and the Anderson history live in buffers
reused across outer steps, so an outer step allocates only the linearisation and the new
coupling.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from gmgcore import gromov_cpu

Factors = tuple[Tensor, Tensor]
Array = Any  # a numpy array or a torch tensor: the numerics below are written for both

_ANDERSON_MEMORY = 5  # outer steps mixed by Anderson acceleration (0: plain PGD)
_NEWTON_AFTER = 0.5  # Newton once Sinkhorn would need more than this × max(m, 64) iterations
_OMEGA_MAX = 1.8  # largest Sinkhorn over-relaxation factor
# The L1 coupling change below which Anderson may start. 1e-2 saves about a sixth of the outer
# steps against 1e-3 (docs/gw.md); 0.1 sent a problem at ε0 = 0.03 to another local optimum
# than plain PGD's. fp32 started at 1e-3, because earlier extrapolation makes the two backends
# drift further apart over a long unconverged budget (up to 3.4e-5 in L1 over 40 steps); 1e-2
# takes fewer steps in fp32 too, at about the same accuracy of the default GMG budget.
_ANDERSON_START = 1e-2
# Up to n, m ≤ this a single problem runs its whole loop compiled (its Newton systems are solved
# by plain elimination), and up to the second size when a cost is in low-rank form. Above it
# the generic loop (with compiled kernel, Sinkhorn and step pieces) is as fast or faster on 2
# threads: after a full matrix product inside the compiled loop, BLAS's spinning worker thread
# can halve the speed of the single-threaded sweeps, and LAPACK solves the larger Newton systems
# (docs/gw.md). With a low-rank cost the products are thin, and since Anderson keeps its
# history in reduced form and the kernel's exp runs in the costs' precision, the compiled loop
# is 14–41 % faster at n = 384–512, ε0 = 0.1, and 6–19 % faster at ε0 = 0.01; 512 is the
# largest size measured.
_COMPILED_SIDE = 96
_COMPILED_SIDE_LOW_RANK = 512
# From this side on the compiled solve reads C_yᵀ as a transposed view (BLAS takes it as is)
# instead of a copy: the copy cost 0.38 ms (fp32) and 0.76 ms (fp64) at m = 512, and whole
# solves with the view ran ×0.93 there and ×0.92–0.99 at m = 320–448. Below, the transposed
# sgemm is slower than the copy and the plain product together (×1.01–1.09 at m = 64–256).
_TRANSPOSED_VIEW = 320


@dataclass(frozen=True)
class GWResult:
    """Output of :func:`solve`; a leading ``[B]`` appears on every tensor for batched input.

    Attributes:
        coupling: ``[n, m]`` coupling with marginals exactly ``1/n`` and ``1/m`` (up to rounding).
        cost: ``[]`` quadratic cost :math:`Q(P)` (no ½, no entropy).
        iterations: outer (mirror-descent) steps run.
        inner_iterations: Sinkhorn iterations run (a Newton step counts as one), summed.
        converged: ``[]`` bool, per problem.
        marginal_error: ``[]`` L1 marginal error of the last iterate before rounding.
        coupling_change: ``[]`` L1 change of the coupling over the last outer step.
        epsilon: ``[]`` POT's ε of the problem, in the coupling's dtype.
        entropic_cost: ``[]`` :math:`Q(P) + \\varepsilon \\mathrm{KL}(P \\| pq^\\top)`,
            computed on first access.
    """

    coupling: Tensor
    cost: Tensor
    iterations: int
    inner_iterations: int
    converged: Tensor
    marginal_error: Tensor
    coupling_change: Tensor
    epsilon: Tensor

    @functools.cached_property
    def entropic_cost(self) -> Tensor:
        P = self.coupling
        if P.device.type == "cpu":
            kl = torch.from_numpy(np.asarray(_kl(P.numpy().reshape(-1, *P.shape[-2:]), np)))
        else:
            kl = _kl(P.reshape(-1, *P.shape[-2:]), torch)
        return self.cost + self.epsilon * kl.reshape(self.cost.shape)


def _ns(a: Array) -> ModuleType:
    return np if isinstance(a, np.ndarray) else torch


def linearization(C_x: Array, C_y: Array, P: Array,
                  factors_x: Factors | None = None, factors_y: Factors | None = None) -> Array:
    """:math:`C^x P C^{y\\top}`, ``[B, n, m]``: the coupling-dependent part of
    :math:`\\mathcal L \\otimes P = C^{x2} p 1^\\top + 1 q^\\top C^{y2\\top} - 2 C^x P C^{y\\top}`
    (Peyré, Cuturi & Solomon 2016, Prop. 1). Factors ``(A, B)`` with ``C = A Bᵀ`` (``[.., n, r]``)
    replace the O(n³) products by O(r n²) ones: ``A_x ((B_xᵀ P) C_yᵀ)`` and its mirror image.
    Works on tensors (differentiably) and on numpy arrays."""
    return _expand(_reduce(C_x, C_y, P, factors_x, factors_y), factors_x, factors_y)


def _reduce(C_x: Array, C_y: Array, P: Array, factors_x: Factors | None,
            factors_y: Factors | None) -> Array:
    """The linearisation before its outer factors: ``B_xᵀ P C_yᵀ`` ``[B, r, m]`` with ``C_x`` in
    low-rank form, ``C_x P B_y`` ``[B, n, r']`` with ``C_y`` in low-rank form, ``B_xᵀ P B_y``
    with both, and ``C_x P C_yᵀ`` itself with neither. The solver's outer iteration depends on
    its linearisation point only through this (smaller) array."""
    if factors_x is not None:
        left = factors_x[1].swapaxes(-1, -2) @ P
        return left @ (factors_y[1] if factors_y is not None else C_y.swapaxes(-1, -2))
    if factors_y is not None:
        return C_x @ (P @ factors_y[1])
    return (C_x @ P) @ C_y.swapaxes(-1, -2)


def _expand(T: Array, factors_x: Factors | None, factors_y: Factors | None) -> Array:
    """:func:`linearization` from :func:`_reduce`'s array: ``A_x T A_yᵀ`` (each factor only
    where that side is in low-rank form)."""
    if factors_x is not None:
        T = factors_x[0] @ T
    if factors_y is not None:
        T = T @ factors_y[0].swapaxes(-1, -2)
    return T


def _product_linearisation(C_x: Array, C_y: Array, factors_x: Factors | None,
                           factors_y: Factors | None, xp: ModuleType) -> tuple[Array, Array, Array]:
    """At the product coupling ``p qᵀ`` the linearisation is rank one, ``a bᵀ`` with ``a = C_x p``
    ``[B, n]`` and ``b = C_y q`` ``[B, m]`` (float64), and :func:`_reduce`'s array is the outer
    product of ``B_xᵀ p`` (or ``a``) and ``B_yᵀ q`` (or ``b``): returns ``a``, ``b`` and that
    array in ``C_x``'s dtype, from matrix-vector sums instead of two passes over ``[n, m]``."""
    f64 = np.float64 if xp is np else torch.float64

    def side(C: Array, factors: Factors | None) -> tuple[Array, Array]:
        if factors is None:
            full = C.sum(axis=-1, dtype=f64) if xp is np else C.sum(dim=-1, dtype=f64)
            full = full / C.shape[-1]
            return full, full
        A, B = (t.astype(f64) if xp is np else t.to(f64) for t in factors)
        reduced = B.sum(axis=-2) / B.shape[-2]
        return (A @ reduced[..., None])[..., 0], reduced

    (a, left), (b, right) = side(C_x, factors_x), side(C_y, factors_y)
    T = left[..., :, None] * right[..., None, :]
    dtype = (factors_x[0] if factors_x is not None else C_x).dtype
    return a, b, (T.astype(dtype) if xp is np else T.to(dtype))


def product_start(a: Array, b: Array, xp: ModuleType, dtype: Any) -> Array:
    """The column potential ``g`` ``[B, 1, m]`` (max 0) of the first outer step from the product
    coupling, whose linearisation is rank one: ``log K = a bᵀ + g`` with ``a = 4 C_x p / ε``
    ``[B, n]`` and ``b = C_y q`` ``[B, m]``. Transport with the gain ``a_i b_j`` is solved by
    the monotone coupling (``a`` and ``b`` sorted alike; the north-west corner rule on uniform
    weights), and ``-g`` is its column dual: with ``G_{j+1} − G_j = ā_j (b_{(j+1)} − b_{(j)})``
    along sorted ``b``, ``ā_j`` the entry of sorted ``a`` at the quantile ``(j+1)/m`` (the mean
    of the two around it when the quantile falls between rows), every row and every column of
    ``a bᵀ − G`` has its maximum on the coupling's support. The kernel then starts balanced up
    to the entropic correction. From ``g = 0`` its column scalings had to span
    ``exp(range(a) · range(b))``: on the bench's n = 512 problem at ε0 = 0.1 about ``e^95``,
    three folds (kernel rebuilds) in fp32 and 25–40 Sinkhorn iterations, against 20 and none
    from this start. Any sort order of ties gives the same ``g``. ``a`` and ``b`` in float64
    (so that backends agree to the last bit on ``g`` as a rule); ``g`` in ``dtype``."""
    B, n = a.shape
    m = b.shape[-1]
    if xp is np:
        order = np.argsort(b, axis=-1, kind="stable")
        sorted_b, sorted_a = np.take_along_axis(b, order, axis=-1), np.sort(a, axis=-1)
    else:
        sorted_b, order = torch.sort(b, dim=-1, stable=True)
        sorted_a = torch.sort(a, dim=-1).values
    boundary = np.arange(1, m) * n  # (j + 1) n: the quantile (j + 1)/m in units of 1/(n m)
    hi = boundary // m
    lo = np.where(boundary % m == 0, hi - 1, hi)
    if xp is not np:
        hi, lo = (torch.from_numpy(i).to(a.device) for i in (hi, lo))
    mean_a = (sorted_a[..., lo] + sorted_a[..., hi]) / 2
    steps = mean_a * (sorted_b[..., 1:] - sorted_b[..., :-1])
    G_sorted = xp.zeros_like(b)
    G_sorted[..., 1:] = xp.cumsum(steps, axis=-1) if xp is np else torch.cumsum(steps, dim=-1)
    G = xp.empty_like(b)
    if xp is np:
        np.put_along_axis(G, order, G_sorted, axis=-1)
    else:
        G.scatter_(-1, order, G_sorted)
    low = G.min(axis=-1, keepdims=True) if xp is np else G.amin(dim=-1, keepdim=True)
    g = (low - G).reshape(B, 1, m)
    return g.astype(dtype) if xp is np else g.to(dtype)


def quadratic_cost(C_x: Array, C_y: Array, P: Array, factors_x: Factors | None = None,
                   factors_y: Factors | None = None) -> Array:
    """:math:`Q(P) = \\sum_{ijkl} (C^x_{ik} - C^y_{jl})^2 P_{ij} P_{kl}
    = r^\\top C^{x2} r + c^\\top C^{y2} c - 2 \\langle C^x P C^{y\\top}, P\\rangle` (r, c the
    marginals of P), ``[B]`` for ``P`` ``[B, n, m]``; the last term by :func:`cross_term`."""
    r, c = P.sum(axis=-1, keepdims=True), P.sum(axis=-2, keepdims=True).swapaxes(-1, -2)
    term_x = (r.swapaxes(-1, -2) @ (C_x * C_x) @ r).reshape(-1)
    term_y = (c.swapaxes(-1, -2) @ (C_y * C_y) @ c).reshape(-1)
    return term_x + term_y - 2 * cross_term(C_x, C_y, P, factors_x, factors_y)


def cross_term(C_x: Array, C_y: Array, P: Array, factors_x: Factors | None = None,
               factors_y: Factors | None = None) -> Array:
    """:math:`\\langle C^x P C^{y\\top}, P\\rangle` ``[B]`` without the ``[n, m]``
    linearisation: with :func:`_reduce`'s ``T``, it is :math:`\\langle T, A_x^\\top P A_y\\rangle`
    (each factor only where that side is in low-rank form), the adjoint of :func:`_expand`."""
    W = P
    if factors_x is not None:
        W = factors_x[0].swapaxes(-1, -2) @ W
    if factors_y is not None:
        W = W @ factors_y[0]
    return (_reduce(C_x, C_y, P, factors_x, factors_y) * W).sum(axis=(-1, -2))


def round_to_coupling(P: Array, n: int, m: int) -> Array:
    """Project a positive ``[B, n, m]`` matrix onto the uniform couplings (Altschuler et al.
    2017, Alg. 2): scale rows and columns down to the marginals, then add the rank-one
    correction. Moves ``P`` by at most twice its L1 marginal error."""
    xp, p, q = _ns(P), 1.0 / n, 1.0 / m
    P = P * xp.clip(p / P.sum(axis=-1, keepdims=True), None, 1.0)
    P = P * xp.clip(q / P.sum(axis=-2, keepdims=True), None, 1.0)
    err_r = xp.clip(p - P.sum(axis=-1, keepdims=True), 0.0, None)
    err_c = xp.clip(q - P.sum(axis=-2, keepdims=True), 0.0, None)
    total = xp.clip(err_r.sum(axis=-2, keepdims=True), float(xp.finfo(P.dtype).tiny), None)
    return P + err_r * err_c / total


def _check(C_x: Array, C_y: Array, init: Array | None, eps: Array) -> None:
    """Value checks on backend arrays (NaN/inf costs, invalid init, ε ≤ 0): ValueError."""
    xp = _ns(C_x)
    finite = gromov_cpu.all_finite if xp is np else (lambda a: bool(torch.isfinite(a).all()))
    if not (finite(C_x) and finite(C_y)):
        raise ValueError("cost matrices contain NaN or inf")
    if not (bool(xp.isfinite(eps).all()) and bool((eps > 0).all())):
        raise ValueError(f"epsilon must be finite and > 0; got {eps.reshape(-1).tolist()}")
    if init is not None:
        _check_init(init, xp)


def _check_init(init: Array, xp: ModuleType) -> None:
    """ValueError unless ``init`` ``[B, n, m]`` is a coupling of the uniform weights."""
    n, m = init.shape[-2:]
    rows = float(xp.abs(init.sum(axis=-1) - 1.0 / n).max())
    cols = float(xp.abs(init.sum(axis=-2) - 1.0 / m).max())
    if not (bool(xp.isfinite(init).all()) and bool((init >= 0).all())
            and rows <= 1e-4 / n and cols <= 1e-4 / m):
        raise ValueError("init must be a coupling of the uniform weights (marginals 1/n, 1/m)")


def _check_shapes(C_x: Tensor, C_y: Tensor, init: Tensor | None) -> None:
    if C_x.ndim not in (2, 3) or C_x.ndim != C_y.ndim:
        raise ValueError(
            f"C_x and C_y must both be [n, n] or [B, n, n]; got {C_x.shape}, {C_y.shape}"
        )
    if C_x.shape[-1] != C_x.shape[-2] or C_y.shape[-1] != C_y.shape[-2]:
        raise ValueError(f"cost matrices must be square; got {C_x.shape}, {C_y.shape}")
    if C_x.ndim == 3 and C_x.shape[0] != C_y.shape[0]:
        raise ValueError(f"batch sizes differ: {C_x.shape[0]} vs {C_y.shape[0]}")
    if C_x.dtype != C_y.dtype or C_x.device != C_y.device:
        raise ValueError("C_x and C_y must share one floating dtype and one device")
    if C_x.dtype not in (torch.float32, torch.float64):  # fp16's range cannot hold the kernel
        raise ValueError(f"cost matrices must be float32 or float64; got {C_x.dtype}")
    shape = (*C_x.shape[:-1], C_y.shape[-1])
    if init is not None and tuple(init.shape) != shape:
        raise ValueError(f"init must have shape {shape}; got {tuple(init.shape)}")


def _kernel(S: Array, g: Array, floor: float, xp: ModuleType, out: Array | None = None) -> Array:
    """Stabilised kernel ``exp(S + g - rowmax(S + g))`` clamped below at ``exp(floor)``: rows
    peak at 1, so the row potential is implicit and no entry is 0 or subnormal. Written into
    ``out`` (a buffer shaped like ``S``) when given: one pass per operation, no allocation."""
    if xp is np:
        logK = out if out is not None else np.empty_like(S)
        gromov_cpu.log_kernel(S, g, S.dtype.type(floor), logK)
        return np.exp(logK, out=logK)
    logK = xp.add(S, g, out=out) if out is not None else S + g
    logK -= xp.amax(logK, axis=-1, keepdims=True)
    xp.clip(logK, floor, None, out=logK)
    return xp.exp(logK, out=logK)


def _sinkhorn_block(
    K: Array, u: Array, v: Array, count: int, p: float, q: float, omega: float, fresh: bool,
    xp: ModuleType,
) -> tuple[Array, Array, Array, float, float]:
    """``count`` Sinkhorn iterations from the scalings ``u [B, n, 1]``, ``v [B, m, 1]``,
    over-relaxed by ``omega`` (:func:`_relaxed`; 1 is plain Sinkhorn); with ``fresh`` the
    first ``u`` is not relaxed (``u`` is not read). Returns ``u``, ``v``, the L1 column-marginal
    error ``[B]`` of the iterate before the last update, and the smallest and largest scaling
    (NaN if one is not finite)."""
    if xp is np:
        dtype = K.dtype.type
        return gromov_cpu.sinkhorn(K, np.ascontiguousarray(u), np.ascontiguousarray(v), count,
                                   dtype(p), dtype(q), dtype(omega), fresh)
    Kt, c = K.swapaxes(-1, -2), omega - 1.0
    for it in range(count):
        new = p / (K @ v)
        u = new if c == 0 or (fresh and it == 0) else _relaxed(new, u, c, xp)
        Ktu = Kt @ u
        if it == count - 1:
            err = xp.abs(v * Ktu - q).sum(axis=(-1, -2))
        new = q / Ktu
        v = new if c == 0 else _relaxed(new, v, c, xp)
    lo, hi = _maxima(xp, -xp.minimum(u.amin(), v.amin()), xp.maximum(u.amax(), v.amax()))
    lo = -lo
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo = hi = math.nan
    return u, v, err, lo, hi


def _relaxed(new: Array, old: Array, c: float, xp: ModuleType) -> Array:
    r"""Over-relaxed Sinkhorn scaling: the plain update ``new`` times
    ``clip(1 + c (new/old − 1), 1 − c, 2)``, ``c = ω − 1 ∈ [0, 1)``. The factor is the tangent at 1
    of :math:`(new/old)^{ω-1}`, so the update matches the over-relaxed Sinkhorn of Thibault et
    al. (2021) and Lehmann et al. (2022), :math:`u \leftarrow u^{1-ω} (p / Kv)^ω`, to first order
    (same local rate), and its fixed points are Sinkhorn's; it needs no ``pow`` and stays
    positive and increasing in ``new``."""
    return new * xp.clip(1.0 + c * (new / old - 1.0), 1.0 - c, 2.0)


def _newton_step(
    K: Array, Kt: Array, u: Array, v: Array, p: float, q: float, xp: ModuleType
) -> tuple[Array, Array, Array]:
    """One damped Newton step on the Sinkhorn dual (Brauer et al. 2017, "A Sinkhorn-Newton method
    for entropic optimal transport"): minimise :math:`\\phi(a, b) = \\sum_{ij} e^{a_i} K_{ij}
    e^{b_j} - p^\\top a - q^\\top b` over the log-scalings, eliminating ``a`` by its Schur
    complement (an ``[m, m]`` solve, slightly damped), with Armijo backtracking. Returns ``u``,
    ``v`` and the L1 error of both marginals before the step; raises the backend's LinAlgError
    if the system is singular."""
    Kv, Ktu = K @ v, Kt @ u
    r, c = u * Kv, v * Ktu
    err = (xp.abs(r - p).sum(axis=(-1, -2)) + xp.abs(c - q).sum(axis=(-1, -2)))
    P = u * K * v.swapaxes(-1, -2)
    Pt = P.swapaxes(-1, -2)
    m = c.shape[-2]
    damping = _newton_damping(P.dtype)
    A = xp.eye(m, dtype=P.dtype, device=P.device)[None] * (damping * c) - Pt @ (P / r) + q / m
    rhs = (q - c) + Pt @ ((r - p) / r)
    db = xp.linalg.solve(A, rhs)
    da = -((r - p) + P @ db) / r
    slope = ((r - p) * da).sum(axis=(-1, -2)) + ((c - q) * db).sum(axis=(-1, -2))
    phi0 = r.sum(axis=(-1, -2))
    t = min(1.0, 30.0 / max(float(xp.abs(da).max()), float(xp.abs(db).max()), 1e-30))
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
    p: float, q: float, omega: float, xp: ModuleType, out: Array | None = None,
) -> tuple[Array, Array, Array, Array, Array, int, bool, float]:
    """Sinkhorn on the kernel of ``S + g`` until the L1 marginal error is ≤ ``target`` or
    ``max_inner`` iterations, over-relaxed by ``omega`` as adapted from block to block
    (:func:`gmgcore.gromov_cpu.relaxation`); switches to Newton steps (each costs about m
    Sinkhorn iterations) when the observed Sinkhorn rate predicts more than
    ``_NEWTON_AFTER · max(m, 64)`` more. ``K`` is written into ``out`` (a buffer shaped like
    ``S``) when given. Returns ``K, u, v, g, err, iterations, finite, omega``."""
    K = _kernel(S, g, floor, xp, out)
    u, v = xp.ones_like(S[..., :1]), xp.ones_like(g).swapaxes(-1, -2)
    done, previous, newton, allow_newton, refolded = 0, math.inf, False, True, False
    fresh, failed = True, False
    limit = _fold_limit(floor)
    budget = max_inner
    while done < budget:
        count = 1 if newton else min(inner_iterations, budget - done)
        if newton:
            try:
                u, v, err = _newton_step(K, K.swapaxes(-1, -2), u, v, p, q, xp)
            except (np.linalg.LinAlgError, RuntimeError):  # torch's LinAlgError is a RuntimeError
                newton = allow_newton = False
                count = min(inner_iterations, max_inner - done)
        if not newton:
            u, v, err, lo, hi = _sinkhorn_block(K, u, v, count, p, q, omega, fresh, xp)
            fresh = False
        else:
            lo, hi = min(float(u.min()), float(v.min())), max(float(u.max()), float(v.max()))
        done += count
        worst = float(err.max())
        if not (math.isfinite(worst) and math.isfinite(hi) and lo > 0):
            return K, u, v, g, err, done, False, omega
        if hi > limit or lo < 1 / limit:  # fold v into g, rebuild K (before trusting err)
            g = g + xp.log(v).swapaxes(-1, -2)
            K, v, newton, previous = _kernel(S, g, floor, xp, out), xp.ones_like(v), False, math.inf
            u = p / (K @ v)  # a consistent iterate in case the budget ends here
            err = xp.abs(K.swapaxes(-1, -2) @ u - q).sum(axis=(-1, -2))
            if done >= budget and not refolded:
                # The fold restarted the scalings at the end of the budget: one more block, so
                # that the step does not end on a single half-iteration. In fp32 a sharp
                # coupling folds at the end of every outer step of a small fixed budget.
                budget, refolded = done + inner_iterations, True
            continue
        if worst <= target:
            break
        if not newton:
            omega, failed = gromov_cpu.relaxation(omega, worst, previous, count, failed,
                                                  _OMEGA_MAX)
        if allow_newton and not newton and 0 < worst < previous < math.inf:
            rate = math.log(worst / previous) / count
            newton = math.log(target / worst) / rate > _NEWTON_AFTER * max(v.shape[-2], 64)
        previous = worst
    return K, u, v, g, err, done, True, omega


def _finish_step(
    K: Array, u: Array, v: Array, x: Array, g: Array, xp: ModuleType
) -> tuple[Array, Array, Array]:
    """The outer step's coupling ``P = u K vᵀ``, the new potential ``g + log vᵀ`` gauge-fixed
    to max 0, and the L1 change ``Σ|P − x|`` ``[B]`` from the previous coupling ``x``. ``K``
    may be overwritten. Returns ``g, P, change``."""
    if xp is np:
        P = np.empty_like(K)
        g, change = gromov_cpu.finish_step(
            K, np.ascontiguousarray(u), np.ascontiguousarray(v), x, g, P
        )
        return g, P, change
    g = g + xp.log(v).swapaxes(-1, -2)
    g = g - xp.amax(g, axis=-1, keepdims=True)
    P = u * K
    P *= v.swapaxes(-1, -2)
    r = xp.subtract(P, x, out=K)
    return g, P, xp.abs(r, out=K).sum(axis=(-1, -2))


def _fold_limit(floor: float) -> float:
    """Largest scaling kept before it is folded into the potential: a clamped kernel entry
    (``exp(floor)``) times it stays negligible."""
    return min(math.exp(-floor / 2), 1e30)


def _newton_damping(dtype: Any) -> float:
    """Factor on the diagonal of the Newton system; keeps it definite on split supports."""
    finfo = torch.finfo if isinstance(dtype, torch.dtype) else np.finfo
    return 1.0 + float(finfo(dtype).eps) ** 0.5


def _anderson_ridge(dtype: Any) -> float:
    """Relative ridge of the Anderson least-squares system for ``dtype``."""
    return 1e-10 if dtype in (np.float64, torch.float64) else 1e-5


def _empty(shape: tuple[int, ...], like: Array, xp: ModuleType) -> Array:
    if xp is np:
        return np.empty(shape, dtype=like.dtype)
    return torch.empty(shape, dtype=like.dtype, device=like.device)


class _Anderson:
    """Type-II Anderson extrapolation (Walker & Ni 2011) of a fixed-point map ``x → f(x)`` on
    ``[B, k, l]`` iterates: ``Σ α_k f_k`` with ``Σ α_k = 1`` minimising ``‖Σ α_k r_k‖₂``,
    ``r_k = f_k − x_k`` (ridge-regularised), per problem, over the last ``memory`` pairs. The
    pairs live in a preallocated ring (the combination does not depend on their order) and the
    Gram matrix of the residuals gains one row per step."""

    def __init__(self, like: Array, memory: int, xp: ModuleType) -> None:
        B = like.shape[0]
        self.F = _empty((B, memory, like.shape[1] * like.shape[2]), like, xp)
        self.R = _empty(self.F.shape, like, xp)
        self.gram = xp.zeros_like(self.F[:, :, :memory])
        self.xp, self.memory, self.count = xp, memory, 0
        self.ridge = _anderson_ridge(like.dtype)

    def reset(self) -> None:
        self.count = 0

    def __call__(self, f: Array, r: Array) -> Array:
        """Add the pair ``(f, r)`` and return the extrapolated next point (``f`` itself while
        only one pair is stored)."""
        xp, slot, B = self.xp, self.count % self.memory, f.shape[0]
        self.F[:, slot], self.R[:, slot] = f.reshape(B, -1), r.reshape(B, -1)
        self.count += 1
        k = min(self.count, self.memory)
        row = (self.R[:, slot:slot + 1] @ self.R[:, :k].swapaxes(-1, -2))[:, 0]
        self.gram[:, slot, :k], self.gram[:, :k, slot] = row, row
        if k == 1:
            return f
        gram = self.gram[:, :k, :k]
        scale = self.ridge * xp.amax(gram, axis=(-1, -2), keepdims=True) + float(
            xp.finfo(f.dtype).tiny)
        gram = gram + scale * xp.eye(k, dtype=f.dtype, device=f.device)[None]
        alpha = xp.linalg.solve(gram, xp.ones_like(gram[..., :1]))
        alpha = alpha / alpha.sum(axis=-2, keepdims=True)
        return (alpha.swapaxes(-1, -2) @ self.F[:, :k]).reshape(f.shape)


def _pgd(
    C_x: Array, C_y: Array, x0: Array, eps: Array, xp: ModuleType, tol: float, max_iter: int,
    inner_iterations: int, max_inner: int, factors_x: Factors | None, factors_y: Factors | None,
    from_product: bool,
) -> tuple[Array, Array, Array, int, int]:
    """Mirror-descent loop on backend arrays ``[B, n, m]``. Only the column potential ``g``
    (units of ε, gauge-fixed to max 0) is carried between outer steps, and each Sinkhorn solve
    targets ``tol`` (inexact early solves were tried: they can change the local optimum reached
    at small ε). An outer step sees its linearisation point only through :func:`_reduce`'s
    array ``T`` (``[B, r, m]`` with ``C_x`` in low-rank form), so the iteration is the fixed-point
    map ``T → _reduce(Sinkhorn(_expand(T)))``. Once it is in its final linear phase (L1
    coupling change < ``_ANDERSON_START`` and a shrinking relative residual
    ``‖T_out − T_in‖ / ‖T_out‖``), the next ``T`` is Anderson-extrapolated from the last
    ``_ANDERSON_MEMORY + 1`` steps (same fixed points); the extrapolation restarts whenever the
    residual grows. Keeping the history in this form costs O(r m) per step, against several
    passes over ``[n, m]`` arrays for the coupling's. ``4/ε`` is folded into ``C_x`` (or its
    first factor) once. With ``from_product`` (``x0`` is the product coupling) the first step
    starts from :func:`product_start`'s potential instead of ``g = 0``, and its linearisation
    comes from :func:`_product_linearisation`.
    Returns the last finite Sinkhorn coupling (unrounded), its marginal error and its change
    from the previous coupling ``[B]``, and the counts."""
    B, n, m = x0.shape
    p, q = 1.0 / n, 1.0 / m
    floor = math.log(float(xp.finfo(x0.dtype).tiny)) + 50.0
    scale = 4.0 / eps
    if factors_x is not None:
        factors_x = (factors_x[0] * scale, factors_x[1])
    else:
        C_x = C_x * scale
    if from_product:
        a, b, T = _product_linearisation(C_x, C_y, factors_x, factors_y, xp)
        g = product_start(a, b, xp, x0.dtype)
    else:
        g = x0[..., :1, :] * 0
        T = _reduce(C_x, C_y, x0, factors_x, factors_y)
    P = x0
    err, change = xp.abs(x0[:, 0, 0]) + math.inf, xp.abs(x0[:, 0, 0]) + math.inf
    K = _empty(x0.shape, x0, xp)
    anderson = _Anderson(T, _ANDERSON_MEMORY + 1, xp) if _ANDERSON_MEMORY else None
    outer, inner_total, last, omega = 0, 0, math.inf, 1.0
    while outer < max_iter:
        outer += 1
        K, u, v, g, err, done, finite, omega = _inner_solve(
            _expand(T, factors_x, factors_y), g, floor, tol, inner_iterations, max_inner, p, q,
            omega, xp, K
        )
        inner_total += done
        if not finite:
            break
        g, P, change = _finish_step(K, u, v, P, g, xp)
        worst, worst_err = _maxima(xp, change, err)
        if max(worst, worst_err) <= tol:
            break
        T, T_in = _reduce(C_x, C_y, P, factors_x, factors_y), T
        # Anderson's progress is judged by the relative fixed-point residual ‖T − T_in‖ / ‖T‖:
        # the coupling change jumps with every extrapolation.
        (residual,) = _maxima(xp, xp.sqrt(((T - T_in) ** 2).sum(axis=(-1, -2))
                                          / (T * T).sum(axis=(-1, -2))))
        if anderson is not None and worst < _ANDERSON_START and residual < last:
            try:
                extrapolated = anderson(T, T - T_in)
                if bool(xp.isfinite(extrapolated).all()):
                    T = extrapolated
                else:
                    anderson.reset()
            except (np.linalg.LinAlgError, RuntimeError):  # torch's LinAlgError: RuntimeError
                anderson.reset()
        elif anderson is not None:
            anderson.reset()
        last = residual
    return P, err, change, outer, inner_total


def _maxima(xp: ModuleType, *arrays: Array) -> list[float]:
    """The largest entry of each array, as floats: on a device, one synchronisation for all."""
    if xp is np:
        return [float(a.max()) for a in arrays]
    return torch.stack([a.max() for a in arrays]).tolist()


def _compiled(xp: ModuleType, B: int, n: int, m: int, factors_x: Factors | None,
              factors_y: Factors | None) -> bool:
    """Whether a solve runs its whole loop (and its end) compiled."""
    low_rank = factors_x is not None or factors_y is not None
    side = _COMPILED_SIDE_LOW_RANK if low_rank else _COMPILED_SIDE
    return xp is np and B == 1 and max(n, m) <= side


@functools.cache
def _dtype_settings(dtype: np.dtype) -> tuple[Any, ...]:
    """The dtype-dependent arguments of :func:`gmgcore.gromov_cpu.pgd`: the clamp, the fold
    limit, the Newton damping, and Anderson's ridge."""
    floor = math.log(float(np.finfo(dtype).tiny)) + 50.0
    return dtype.type(floor), _fold_limit(floor), _newton_damping(dtype), _anderson_ridge(dtype)


# stands in for an absent factor or init in the compiled call's typed arguments
_PLACEHOLDER = {np.dtype(t): np.zeros((1, 1), t) for t in (np.float32, np.float64)}


def _matrix(t: Tensor, like: Tensor) -> np.ndarray:
    """A C-contiguous numpy ``[rows, cols]`` view (or copy) of a CPU tensor ``[.., rows, cols]``
    in ``like``'s dtype."""
    t = t.detach()
    if t.dtype != like.dtype or t.device != like.device:
        t = t.to(like)
    a = t.numpy()
    return np.ascontiguousarray(a.reshape(a.shape[-2:]))


def _solve_single(
    C_x: Tensor, C_y: Tensor, epsilon: float | Tensor, init: Tensor | None, batched: bool,
    tol: float, max_iter: int, inner: int, max_inner: int, factors_x: Factors | None,
    factors_y: Factors | None,
) -> GWResult:
    """:func:`solve` for one small problem on CPU as a single compiled call
    (:func:`gmgcore.gromov_cpu.solve_single`): the checks, operands, loop, rounding and cost.
    Its wrap around the loop (conversions, checks, result tensors) took a fifth to a third of a
    whole solve at n = 64–128 as separate numpy and compiled calls."""
    Cx, Cy = _matrix(C_x, C_x), _matrix(C_y, C_x)
    CyT = Cy.T if Cy.shape[0] >= _TRANSPOSED_VIEW else np.ascontiguousarray(Cy.T)
    dtype = Cx.dtype
    eps = float(dtype.type(float(epsilon)))  # rounded to the costs' dtype, as for a batch
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"epsilon must be finite and > 0; got {[eps]}")
    none = _PLACEHOLDER[dtype]
    x0 = none if init is None else _matrix(init, C_x)
    if init is not None:
        _check_init(x0[None], np)
    Ax, Bx = (none, none) if factors_x is None else (_matrix(f, C_x) for f in factors_x)
    Ay, By = (none, none) if factors_y is None else (_matrix(f, C_x) for f in factors_y)
    floor, limit, damping, ridge = _dtype_settings(dtype)
    P, stats, outer, inner_total, finite = gromov_cpu.solve_single(
        Cx, Cy, CyT, Ax, Bx, Ay, By, factors_x is not None, factors_y is not None, x0,
        init is not None, eps, dtype.type(4.0 / eps), tol, max_iter, inner, max_inner, floor,
        limit, _NEWTON_AFTER, damping, _ANDERSON_MEMORY + 1 if _ANDERSON_MEMORY else 0,
        _ANDERSON_START, ridge, _OMEGA_MAX)
    if not finite:
        raise ValueError("cost matrices contain NaN or inf")
    converged = np.array(stats[2] <= tol and stats[1] <= tol)
    if batched:
        P, stats, converged = P[None], stats[:, None], converged[None]
    values = [torch.from_numpy(stats[k, ...]) for k in range(4)]
    return GWResult(torch.from_numpy(P), values[0], outer, inner_total,
                    torch.from_numpy(converged), *values[1:])


def _round_and_score(C_x: Array, C_y: Array, P: Array, factors_x: Factors | None,
                     factors_y: Factors | None, xp: ModuleType) -> tuple[Array, Array]:
    """The last iterate rounded onto U(p, q) and its quadratic cost ``[B]``; for a single
    problem on CPU the rounding and the cost are compiled (at n = 512 the numpy version took
    4.5 ms, a quarter of the solve)."""
    B, n, m = P.shape
    if xp is np and B == 1:
        Q, r, c = gromov_cpu.round_coupling(P)
        P = Q.reshape(P.shape)
        cross = cross_term(C_x, C_y, P, factors_x, factors_y)[0]
        return P, np.array([gromov_cpu.score(Q, cross, C_x[0], C_y[0], r, c)], P.dtype)
    P = round_to_coupling(P, n, m)
    return P, quadratic_cost(C_x, C_y, P, factors_x, factors_y)


def _kl(P: Array, xp: ModuleType) -> Array:
    r""":math:`\mathrm{KL}(P \,\|\, pq^\top) = \sum P \log P + \log(nm)` for couplings
    ``[B, n, m]`` of the uniform weights (``[B]``)."""
    n, m = P.shape[-2:]
    tiny = float(xp.finfo(P.dtype).tiny)
    if xp is np:  # in place, one product-sum: a third of the time on small couplings
        logP = np.maximum(P, tiny)
        np.log(logP, out=logP)
        return np.einsum("bij,bij->b", P, logP) + math.log(n * m)
    return (P * xp.log(xp.clip(P, tiny, None))).sum(axis=(-1, -2)) + math.log(n * m)


def _use_numpy(device: torch.device, backend: str) -> bool:
    if backend not in ("auto", "torch", "numpy"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'numpy'; got {backend!r}")
    if backend == "numpy" and device.type != "cpu":
        raise ValueError("backend='numpy' needs CPU tensors")
    return backend == "numpy" or (backend == "auto" and device.type == "cpu")


def solve(
    C_x: Tensor,
    C_y: Tensor,
    epsilon: float | Tensor,
    init: Tensor | None = None,
    *,
    tol: float = 1e-6,
    max_iter: int = 1000,
    inner_iterations: int = 5,
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
        tol: stop when the last outer step changed P by ≤ tol (L1) and its marginal error is
            ≤ tol (L1), for every problem in the batch; each Sinkhorn solve also targets tol.
        max_iter: outer-step budget.
        inner_iterations: Sinkhorn iterations between two marginal-error checks.
        max_inner: Sinkhorn budget per outer step (a Newton step counts as one). Setting
            ``max_inner == inner_iterations`` gives a fixed budget of ``max_iter × max_inner``
            Sinkhorn iterations without Newton steps. When the scalings are folded into the
            potential at the very end of the budget (large scalings; in fp32 past ~1e8), one
            more block of ``inner_iterations`` follows, so a step can cost up to
            ``max_inner + inner_iterations``.
        factors_x, factors_y: optional ``(A, B)`` with ``C = A Bᵀ`` (``[.., n, r]``), used only
            for the linearisation ``C_x P C_yᵀ`` (see :func:`gmgcore.costs.pairwise_cost_factors`).
        backend: "auto" iterates through numpy on CPU and through torch elsewhere.

    Returns:
        :class:`GWResult`. ``converged`` False means the budget ran out (or an iterate stopped
        being finite); the coupling is then the last finite iterate, rounded onto U(p, q).
    """
    _check_shapes(C_x, C_y, init)
    batched = C_x.ndim == 3
    B, n, m = (C_x.shape[0] if batched else 1), C_x.shape[-1], C_y.shape[-1]
    eps = epsilon.detach().reshape(-1) if isinstance(epsilon, Tensor) else float(epsilon)
    if isinstance(eps, Tensor) and eps.numel() not in (1, B):
        raise ValueError(f"epsilon must be a scalar or have {B} entries; got {eps.numel()}")
    xp = np if _use_numpy(C_x.device, backend) else torch
    if _compiled(xp, B, n, m, factors_x, factors_y):  # detached views: no autograd to pause
        return _solve_single(C_x, C_y, eps, init, batched, tol, max_iter, inner_iterations,
                             max_inner, factors_x, factors_y)
    return _solve_batch(C_x, C_y, eps, init, batched, xp, tol, max_iter, inner_iterations,
                        max_inner, factors_x, factors_y)


@torch.no_grad()
def _solve_batch(
    C_x: Tensor, C_y: Tensor, eps: float | Tensor, init: Tensor | None, batched: bool,
    xp: ModuleType, tol: float, max_iter: int, inner_iterations: int, max_inner: int,
    factors_x: Factors | None, factors_y: Factors | None,
) -> GWResult:
    """:func:`solve` through the generic loop (:func:`_pgd`) on backend arrays ``[B, ...]``."""
    B, n, m = (C_x.shape[0] if batched else 1), C_x.shape[-1], C_y.shape[-1]

    def conv(t: Tensor) -> Array:  # a backend array [B, ...] in C_x's dtype and place
        t = t.detach()
        if t.dtype != C_x.dtype or t.device != C_x.device:
            t = t.to(C_x)
        if xp is np:
            return np.ascontiguousarray(t.numpy().reshape(B, *t.shape[-2:]))
        return t.reshape(B, *t.shape[-2:])

    Cx, Cy = conv(C_x), conv(C_y)
    x0 = None if init is None else conv(init)
    if xp is np and not isinstance(eps, Tensor):  # a float: no tensor round trip
        eps_b = np.full((B, 1, 1), eps, Cx.dtype)
    else:
        eps_b = conv(torch.as_tensor(eps, dtype=torch.float64).reshape(-1).expand(B)
                     .reshape(B, 1, 1))
    _check(Cx, Cy, x0, eps_b)
    fx = None if factors_x is None else (conv(factors_x[0]), conv(factors_x[1]))
    fy = None if factors_y is None else (conv(factors_y[0]), conv(factors_y[1]))
    if x0 is None:
        x0 = (np.full((B, n, m), 1.0 / (n * m), Cx.dtype) if xp is np
              else torch.full((B, n, m), 1.0 / (n * m), dtype=Cx.dtype, device=Cx.device))
    P, err, change, outer, inner = _pgd(Cx, Cy, x0, eps_b, xp, tol, max_iter, inner_iterations,
                                        max_inner, fx, fy, init is None)
    P, cost = _round_and_score(Cx, Cy, P, fx, fy, xp)
    converged = (change <= tol) & (err <= tol)
    results = (P, cost, converged, err, change, eps_b.reshape(B))
    if xp is np:
        out = [torch.from_numpy(a if batched else a[0, ...]) for a in results]
    else:
        out = [t if batched else t[0] for t in results]
    return GWResult(out[0], out[1], outer, inner, *out[2:])
