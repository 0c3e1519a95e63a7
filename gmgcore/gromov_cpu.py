"""Compiled (numba) loops of the entropic GW solver's CPU path (:mod:`gmgcore.gromov`).

At n = 64 an outer step of the generic code is some fifty small numpy calls, and their per-call
overhead, not the arithmetic, sets its time. Two levels replace them:

* :func:`log_kernel`, :func:`sinkhorn` and :func:`finish_step` each do, for every problem of a
  batch ``[B, n, m]``, what a handful of numpy calls do, in one call. The generic loop uses
  them on CPU at every size; the kernel's ``exp`` then stays in numpy (vectorised, about ten
  times faster than numba's scalar ``exp``). A Sinkhorn iteration is one sweep over ``K``,
  vectorised: at n = 512 in fp64 it takes 88 µs against 143 µs for numpy's two BLAS products.
* :func:`pgd` runs the whole mirror-descent loop of one problem (any budget), with the same
  folds, Newton steps and Anderson steps as the generic loop. Its kernel takes ``exp`` in the
  arrays' precision by vectorisable loops (:func:`_exp_nonpositive` in float64, within 2 ulp
  of numpy's; :func:`_exp_nonpositive32` in float32, within 1 ulp of the exact value). The
  solver uses it up to n, m ≤ 96, or 512 with a cost in low-rank form
  (:data:`gmgcore.gromov._COMPILED_SIDE`).
* :func:`round_coupling` and :func:`score` end a single problem's solve at any size (with
  :func:`round_and_score` after :func:`pgd`).
* :func:`solve_single` is the whole solve of a single small problem in one call: the finiteness
  checks, the operands, :func:`pgd` and :func:`round_and_score`.

The arithmetic is the same elementwise; sums run in a different order (within rounding). NaN
and inf propagate as in numpy (no ``nnan`` / ``ninf`` fast-math flags): the solver's finiteness
checks rely on it. All arrays are C-contiguous, except that ``C_yᵀ`` may be a transposed view
(only BLAS reads it; loops read ``C_y``); ``p``, ``q`` and ``floor`` have the arrays' dtype.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import types
from numba.extending import overload

__all__ = ["all_finite", "log_kernel", "sinkhorn", "finish_step", "pgd", "relaxation",
           "round_and_score", "round_coupling", "score", "solve_single"]

_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}  # vectorised sums; NaN/inf kept
# error_model="numpy": x / 0 gives inf or NaN (which the solver checks), not ZeroDivisionError


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def all_finite(a: np.ndarray) -> bool:
    """Whether every entry of a C-contiguous array is finite, in one pass without temporaries
    (``x · 0`` is NaN exactly for NaN and ±inf). The zero has the array's type: an integer ``0``
    would make every fp32 product a float64 one."""
    flat = a.reshape(-1)
    if flat.size == 0:
        return True
    zero = flat[0] - flat[0]  # NaN when flat[0] is not finite: the result is then False too
    acc = zero
    for k in range(flat.size):
        acc += flat[k] * zero
    return acc == 0


@numba.njit(cache=True)
def _flip32(k: np.int32, mask: np.int32) -> np.int32:
    return k ^ ((k >> 31) & mask)


@numba.njit(cache=True)
def _flip64(k: np.int64, mask: np.int64) -> np.int64:
    return k ^ ((k >> 63) & mask)


def _key(x: float) -> int:
    """The order key of a float32 or float64 (compiled only): its bits as an integer, with the
    magnitude bits of a negative number flipped, so that the integer order is the float order
    (with ``-0 < +0``); :func:`_unkey` inverts it. An integer maximum vectorises; a float one
    does not (numba's ``max`` is NaN-aware, and even with fast-math flags each row was one
    chain of scalar ``vmaxss``)."""
    raise NotImplementedError("compiled code only")


def _unkey(k: int, like: float) -> float:
    """The float (``like``'s type) whose :func:`_key` is ``k`` (compiled only)."""
    raise NotImplementedError("compiled code only")


@overload(_key)
def _key_typed(x):  # type: ignore[no-untyped-def]
    if x == types.float32:
        mask32 = np.int32(2**31 - 1)
        return lambda x: _flip32(np.float32(x).view(np.int32), mask32)
    mask64 = np.int64(2**63 - 1)
    return lambda x: _flip64(np.float64(x).view(np.int64), mask64)


@overload(_unkey)
def _unkey_typed(k, like):  # type: ignore[no-untyped-def]
    if like == types.float32:
        mask32 = np.int32(2**31 - 1)
        return lambda k, like: np.int32(_flip32(k, mask32)).view(np.float32)
    mask64 = np.int64(2**63 - 1)
    return lambda k, like: np.int64(_flip64(k, mask64)).view(np.float64)


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def log_kernel(S: np.ndarray, g: np.ndarray, floor: float, out: np.ndarray) -> None:
    """``out = max(S + g − rowmax(S + g), floor)`` for ``S``, ``out`` ``[B, n, m]`` and ``g``
    ``[B, 1, m]``. A row with a NaN or +inf gets NaN entries, as with numpy's ``amax`` and
    ``clip``; here the whole row is NaN. The maximum is exact (by integer keys, taken as the row
    is written): the kernel is numpy's bit for bit."""
    B, n, m = S.shape
    zero = floor - floor
    for b in range(B):
        gb = g[b, 0]
        for i in range(n):
            row, Sr, check = out[b, i], S[b, i], zero
            key = _key(Sr[0] + gb[0])
            for j in range(m):
                t = Sr[j] + gb[j]
                row[j] = t
                check += t * zero  # NaN iff an entry is NaN or ±inf (see all_finite)
                key = max(key, _key(t))
            if check == 0:
                top = _unkey(key, Sr[0])
                for j in range(m):
                    row[j] = max(row[j] - top, floor)
                continue
            top, nan = -np.inf, False  # the rare non-finite row, entry by entry
            for j in range(m):
                top = max(top, row[j])
                nan |= row[j] != row[j]
            if nan or top == np.inf:
                row[:] = np.nan
            else:
                for j in range(m):
                    row[j] = max(row[j] - top, floor)


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _relax(new: float, old: float, c: float, one: float) -> float:
    """Over-relaxed scaling ``new · clip(1 + c (new/old − 1), 1 − c, 2)``, ``c = ω − 1``, ``one``
    typed like the scalings (see :func:`gmgcore.gromov._relaxed`)."""
    return new * min(max(one + c * (new / old - one), one - c), one + one)


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _sweep(K: np.ndarray, v: np.ndarray, u: np.ndarray, col: np.ndarray, p: float,
           c: float) -> None:
    """One pass over ``K`` ``[n, m]``: ``u = p / (K v)`` (over-relaxed against the ``u`` given
    when ``c = ω − 1 > 0``) and ``col = Kᵀ u`` (1-D arrays). Rows go four at a time: four
    independent dot products hide each other's latency, and ``col`` is read and written once per
    four rows (25–40 % faster than row by row from n = 96 on)."""
    n, m = K.shape
    zero, one = p - p, p / p
    col[:] = zero
    n4 = n - n % 4
    for i in range(0, n4, 4):
        r0, r1, r2, r3 = K[i], K[i + 1], K[i + 2], K[i + 3]
        s0 = s1 = s2 = s3 = zero
        for j in range(m):
            s0 += r0[j] * v[j]
            s1 += r1[j] * v[j]
            s2 += r2[j] * v[j]
            s3 += r3[j] * v[j]
        u0, u1, u2, u3 = p / s0, p / s1, p / s2, p / s3
        if c != 0:
            u0, u1 = _relax(u0, u[i], c, one), _relax(u1, u[i + 1], c, one)
            u2, u3 = _relax(u2, u[i + 2], c, one), _relax(u3, u[i + 3], c, one)
        u[i], u[i + 1], u[i + 2], u[i + 3] = u0, u1, u2, u3
        for j in range(m):
            col[j] += (r0[j] * u0 + r1[j] * u1) + (r2[j] * u2 + r3[j] * u3)
    for i in range(n4, n):
        row, s = K[i], zero
        for j in range(m):
            s += row[j] * v[j]
        ui = p / s
        if c != 0:
            ui = _relax(ui, u[i], c, one)
        u[i] = ui
        for j in range(m):
            col[j] += row[j] * ui


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def sinkhorn(
    K: np.ndarray, u: np.ndarray, v: np.ndarray, count: int, p: float, q: float, omega: float,
    fresh: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """``count`` Sinkhorn iterations ``u = p / (K v)``, ``v = q / (Kᵀ u)`` from ``u``
    ``[B, n, 1]`` and ``v`` ``[B, m, 1]`` (not modified), over-relaxed by ``omega`` (1: plain;
    :func:`gmgcore.gromov._relaxed`); with ``fresh`` the first ``u`` is not relaxed (``u`` is
    then not read). Returns ``u [B, n, 1]``, ``v [B, m, 1]``, the L1 column-marginal error
    ``[B]`` of the iterate before the last update, and the smallest and largest scaling (both
    NaN if a scaling is not finite).

    One sweep over ``K`` per iteration: row i gives ``u_i`` from the previous ``v`` and, while
    it is in cache, adds ``K_i u_i`` to ``Kᵀ u``. The loops see the scalings as contiguous 1-D
    arrays, which is what lets the compiler vectorise them (a ``v[b, :, 0]`` view runs 2–3×
    slower)."""
    B, n, m = K.shape
    zero = q - q
    c = omega - q / q  # typed like the scalings (a literal 1 would make fp32 sweeps float64)
    u, v = u.copy(), v.copy()
    err, col = np.empty(B, K.dtype), np.empty(m, K.dtype)
    lo, hi, finite = np.inf, -np.inf, True
    for b in range(B):
        Kb, ub, vb = K[b], u[b].reshape(n), v[b].reshape(m)
        for it in range(count):
            _sweep(Kb, vb, ub, col, p, zero if fresh and it == 0 else c)
            if it == count - 1:
                e = zero
                for j in range(m):
                    e += abs(vb[j] * col[j] - q)
                err[b] = e
            if c == 0:
                for j in range(m):
                    vb[j] = q / col[j]
            else:
                for j in range(m):
                    vb[j] = _relax(q / col[j], vb[j], c, q / q)
        for a in (ub, vb):
            for k in range(a.shape[0]):
                t = a[k]
                finite &= np.isfinite(t)
                lo, hi = min(lo, t), max(hi, t)
    if not finite:
        lo = hi = np.nan
    return u, v, err, lo, hi


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def finish_step(
    K: np.ndarray, u: np.ndarray, v: np.ndarray, x: np.ndarray, g: np.ndarray, P: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """End of an outer step: the coupling ``P = u K vᵀ`` (``[B, n, m]``, written into ``P``),
    the new column potential ``g + log vᵀ`` gauge-fixed to max 0 (``[B, 1, m]``), and the L1
    change ``Σ|P − x|`` ``[B]`` from the previous coupling ``x``."""
    B, n, m = K.shape
    change, g_new = np.empty(B, K.dtype), np.empty_like(g)
    for b in range(B):
        vb, c = v[b].reshape(m), 0.0
        for i in range(n):
            ui, Kr, Pr, xr = u[b, i, 0], K[b, i], P[b, i], x[b, i]
            for j in range(m):
                t = ui * Kr[j] * vb[j]
                Pr[j] = t
                c += abs(t - xr[j])
        change[b] = c
        gb, top = g_new[b, 0], -np.inf
        for j in range(m):
            t = g[b, 0, j] + np.log(vb[j])
            gb[j] = t
            if t > top or t != t:
                top = t
        for j in range(m):
            gb[j] -= top
    return g_new, change


# exp(x) for x ≤ 0: exp(x) = 2^k · exp(r), k = round(x / ln 2), |r| ≤ ln(2) / 2 (Cody & Waite),
# exp(r) by its Taylor polynomial (degree 12 in float64, 7 in float32: truncation below 2e-16
# and 6e-9 relative), 2^k built from its exponent bits. A table of 2^k would be a gather, which
# runs several times slower than the arithmetic on current Intel cores.
_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_T = [1.0 / math.factorial(k) for k in range(13)]
_T0, _T1, _T2, _T3, _T4, _T5, _T6, _T7, _T8, _T9, _T10, _T11, _T12 = _T
_LOG2E_32 = np.float32(_LOG2E)
_LN2_HI_32 = np.float32(0.693359375)  # 8 significant bits: k · _LN2_HI_32 is exact
_LN2_LO_32 = np.float32(math.log(2) - 0.693359375)
_S0, _S1, _S2, _S3, _S4, _S5, _S6, _S7 = (np.float32(1.0 / math.factorial(k)) for k in range(8))


@numba.njit(cache=True, fastmath={"contract"}, error_model="numpy")  # no reassociation:
def _exp_nonpositive(x: float) -> float:  # the two-part reduction must stay in order
    """``exp(x)`` for ``-708 ≤ x ≤ 0`` in float64 (the kernel's clamped log-entries), within
    2 ulp of numpy's (tested): vectorisable, where numba's ``exp`` is a scalar library call."""
    nk = np.int64(0.5 - x * _LOG2E)  # −round(x / ln 2): x ≤ 0, so truncation rounds
    k = float(-nk)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    poly = ((((((_T12 * r + _T11) * r + _T10) * r + _T9) * r + _T8) * r + _T7) * r + _T6)
    poly = (((((poly * r + _T5) * r + _T4) * r + _T3) * r + _T2) * r + _T1) * r + _T0
    return poly * np.int64((1023 - nk) << 52).view(np.float64)


@numba.njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _exp_nonpositive32(x: np.float32) -> np.float32:
    """:func:`_exp_nonpositive` in float32 arithmetic for ``-87 ≤ x ≤ 0``, within 1 ulp of the
    exact value (tested)."""
    nk = np.int32(np.float32(0.5) - x * _LOG2E_32)
    k = np.float32(-nk)
    r = (x - k * _LN2_HI_32) - k * _LN2_LO_32
    poly = ((((((_S7 * r + _S6) * r + _S5) * r + _S4) * r + _S3) * r + _S2) * r + _S1) * r + _S0
    return poly * np.int32((127 - nk) << 23).view(np.float32)


def _exp(x: float) -> float:
    """``exp`` of a non-positive float32 or float64 in its own precision (compiled only)."""
    raise NotImplementedError("compiled code only")


@overload(_exp)
def _exp_typed(x):  # type: ignore[no-untyped-def]
    if x == types.float32:
        return lambda x: _exp_nonpositive32(x)
    return lambda x: _exp_nonpositive(x)


@numba.njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _exp_in_place(a: np.ndarray) -> None:
    """``a = exp(a)`` on a 1-D array of entries in ``[floor, 0]`` (the kernel's clamp) or NaN
    (kept), in the array's precision."""
    zero = a.dtype.type(0)
    for j in range(a.size):
        t = a[j]
        finite = t == t
        e = _exp(t if finite else zero)
        a[j] = e if finite else t


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _kernel(S: np.ndarray, g: np.ndarray, floor: float, K: np.ndarray) -> None:
    """The stabilised kernel ``exp(log_kernel(S, g))`` into ``K`` (``[1, n, m]``)."""
    log_kernel(S, g, floor, K)
    _exp_in_place(K.reshape(-1))  # a separate 1-D loop: numba vectorises it there


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _solve_small(G: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, bool]:
    """``G x = b`` for a small ``[k, k]`` float64 system by Gaussian elimination with partial
    pivoting (the first largest pivot, as ``argmax``); ``ok`` is False for a zero or
    non-finite pivot (LAPACK's LinAlgError). Plain loops: they compile in a fraction of the
    time that array expressions or LAPACK bindings take."""
    k = b.shape[0]
    A, x = G.copy(), b.copy()
    for c in range(k):
        piv, best = c, -1.0
        for i in range(c, k):
            a = abs(A[i, c])
            if a != a:
                piv = i
                break
            if a > best:
                piv, best = i, a
        if not (np.isfinite(A[piv, c]) and A[piv, c] != 0):
            return x, False
        if piv != c:
            for j in range(k):
                A[c, j], A[piv, j] = A[piv, j], A[c, j]
            x[c], x[piv] = x[piv], x[c]
        for i in range(c + 1, k):
            f = A[i, c] / A[c, c]
            for j in range(c, k):
                A[i, j] -= f * A[c, j]
            x[i] -= f * x[c]
    for c in range(k - 1, -1, -1):
        t = x[c]
        for j in range(c + 1, k):
            t -= A[c, j] * x[j]
        x[c] = t / A[c, c]
    return x, True


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _reduce(Cx: np.ndarray, CyT: np.ndarray, BxT: np.ndarray, By: np.ndarray, low_x: bool,
            low_y: bool, x: np.ndarray) -> np.ndarray:
    """:func:`gmgcore.gromov._reduce` on ``[n, m]`` with pre-transposed operands."""
    if low_x and low_y:
        return np.dot(np.dot(BxT, x), By)
    if low_x:
        return np.dot(np.dot(BxT, x), CyT)
    if low_y:
        return np.dot(Cx, np.dot(x, By))
    return np.dot(np.dot(Cx, x), CyT)


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _expand(T: np.ndarray, Ax: np.ndarray, AyT: np.ndarray, low_x: bool,
            low_y: bool) -> np.ndarray:
    """:func:`gmgcore.gromov._expand` on ``[n, m]`` with pre-transposed operands."""
    if low_x and low_y:
        return np.dot(np.dot(Ax, T), AyT)
    if low_x:
        return np.dot(Ax, T)
    if low_y:
        return np.dot(T, AyT)
    return T


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _cast(x: float, like: np.ndarray) -> float:
    """``x`` in the dtype of ``like`` (numpy's rule for a Python float times an array)."""
    out = np.empty(1, like.dtype)
    out[0] = x
    return out[0]


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _mass(K: np.ndarray, u: np.ndarray, v: np.ndarray) -> float:
    r""":math:`\sum_{ij} u_i K_{ij} v_j` accumulated in float64. Near convergence the Newton
    line search compares two such values that differ by about the squared marginal error: in
    fp32 sums that difference drowns in rounding, the search rejects good steps at random,
    and Newton stalls (2,007 steps instead of 41 on an n = 96 fp32 problem)."""
    total = 0.0
    for i in range(K.shape[0]):
        row, s = K[i], 0.0
        for j in range(K.shape[1]):
            s += float(row[j]) * float(v[j])
        total += float(u[i]) * s
    return total


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _newton_step(
    K: np.ndarray, u: np.ndarray, v: np.ndarray, p: float, q: float, damping: float
) -> tuple[np.ndarray, np.ndarray, float, bool]:
    """:func:`gmgcore.gromov._newton_step` for one small problem, ``K [n, m]``, ``u [n]``,
    ``v [m]``: the new scalings, the L1 error of both marginals before the step, and False for
    a singular system (the generic code's LinAlgError). The ``[m, m]`` system is solved in
    float64 by :func:`_solve_small`."""
    n, m = K.shape
    zero = q - q
    r, c = np.empty(n, K.dtype), np.zeros(m, K.dtype)
    P, Q = np.empty_like(K), np.empty_like(K)
    for i in range(n):
        row, s = K[i], zero
        for j in range(m):
            s += row[j] * v[j]
            c[j] += row[j] * u[i]
        r[i] = u[i] * s
    err = zero
    for i in range(n):
        err += abs(r[i] - p)
    for j in range(m):
        c[j] *= v[j]
        err += abs(c[j] - q)
    for i in range(n):
        for j in range(m):
            P[i, j] = u[i] * K[i, j] * v[j]
            Q[i, j] = P[i, j] / r[i]
    # Pᵀ (P / r) by BLAS: np.dot of two C-contiguous matrices, a call the linearisation has
    # compiled already (no extra compile time)
    PQ = np.dot(np.ascontiguousarray(P.T), Q)
    A, rhs = np.empty((m, m)), np.empty(m)
    for j in range(m):
        for k in range(m):
            A[j, k] = float(q) / m - PQ[j, k]
        A[j, j] += damping * c[j]
        t = q - c[j]
        for i in range(n):
            t += P[i, j] * ((r[i] - p) / r[i])
        rhs[j] = t
    db64, ok = _solve_small(A, rhs)
    if not ok:
        return u, v, err, False
    db, da = db64.astype(K.dtype), np.empty(n, K.dtype)
    slope, sum_da, sum_db = zero, zero, zero
    for i in range(n):
        t = r[i] - p
        for j in range(m):
            t += P[i, j] * db[j]
        da[i] = -t / r[i]
        slope += (r[i] - p) * da[i]
        sum_da += da[i]
    for j in range(m):
        slope += (c[j] - q) * db[j]
        sum_db += db[j]
    phi0 = _mass(K, u, v)
    t = min(1.0, 30.0 / max(float(np.abs(da).max()), float(np.abs(db).max()), 1e-30))
    u2, v2 = u, v
    for _ in range(30):
        tt = _cast(t, K)
        u2, v2 = u * np.exp(tt * da), v * np.exp(tt * db)
        phi = _mass(K, u2, v2) - t * (float(p) * float(sum_da) + float(q) * float(sum_db))
        if phi <= phi0 + 0.25 * t * float(slope):
            break
        t *= 0.5
    return u2, v2, err, True


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _restart(K: np.ndarray, p: float, q: float) -> tuple[np.ndarray, float]:
    """After a fold (``v = 1``): ``u = p / (K 1)`` ``[1, n, 1]`` and the L1 column error of
    ``(u, 1)``. Loops, not ``sum(axis=1)``, which takes seconds to compile."""
    _, n, m = K.shape
    zero = q - q
    u, col = np.empty((1, n, 1), K.dtype), np.empty(m, K.dtype)
    _sweep(K[0], np.ones(m, K.dtype), u.reshape(n), col, p, zero)
    err = zero
    for j in range(m):
        err += abs(col[j] - q)
    return u, err


@numba.njit(cache=True, error_model="numpy")
def relaxation(omega: float, err: float, previous: float, count: int, failed: bool,
               omega_max: float) -> tuple[float, bool]:
    """The over-relaxation factor for the next Sinkhorn block of an inner solve, from the L1
    marginal errors ``previous`` and ``err`` around the last block of ``count`` iterations
    (which ran at ``omega``); returns it and whether relaxation failed in this solve.

    After a plain block, the observed rate ρ per iteration estimates the squared second
    singular value of the scaled kernel, and ``omega`` becomes Young's optimal factor for that
    rate, 2 / (1 + √(1 − ρ)), at most ``omega_max`` (kept at 1 below 1.05). A relaxed block
    whose error grew falls back to plain Sinkhorn (``failed``) for the rest of the inner solve;
    the next outer step starts plain and estimates again. Used by both the generic and the
    compiled loop, so that they take the same steps."""
    if not (0 < previous < np.inf and np.isfinite(err)):
        return omega, failed
    if omega > 1:
        if err > previous:
            return 1.0, True
        return omega, failed
    if failed or not 0 < err < previous:
        return omega, failed
    target = 2 / (1 + math.sqrt(1 - (err / previous) ** (1 / count)))
    return (min(target, omega_max) if target > 1.05 else omega), failed


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _inner_solve(
    S: np.ndarray, g: np.ndarray, floor: float, K: np.ndarray, tol: float, inner: int,
    max_inner: int, p: float, q: float, limit: float, newton_after: float, damping: float,
    omega: float, omega_max: float,
) -> tuple[np.ndarray, np.ndarray, float, int, bool, float]:
    """:func:`gmgcore.gromov._inner_solve` for one problem (``[1, n, m]``; ``g`` and ``K``
    updated in place): over-relaxed Sinkhorn blocks (:func:`relaxation`), folds, and Newton
    steps when the observed rate predicts more than ``newton_after · max(m, 64)`` iterations.
    Returns ``u``, ``v``, the marginal error, the iteration count, whether the iterate is finite
    and the relaxation factor to carry to the next outer step."""
    _, n, m = K.shape
    _kernel(S, g, floor, K)
    u, v = np.ones((1, n, 1), K.dtype), np.ones((1, m, 1), K.dtype)
    err = np.inf
    done, budget, previous = 0, max_inner, np.inf
    newton, allow_newton, refolded = False, True, False
    fresh, failed = True, False
    while done < budget:
        count = 1 if newton else min(inner, budget - done)
        if newton:
            u1, v1, e, ok = _newton_step(K[0], u.reshape(n), v.reshape(m), p, q, damping)
            if ok:
                u, v, err = u1.reshape(1, n, 1), v1.reshape(1, m, 1), e
                lo, hi = min(u.min(), v.min()), max(u.max(), v.max())
            else:
                newton = allow_newton = False
                count = min(inner, max_inner - done)
        if not newton:
            u, v, errs, lo, hi = sinkhorn(K, u, v, count, p, q, _cast(omega, K), fresh)
            err, fresh = errs[0], False
        done += count
        if not (np.isfinite(err) and np.isfinite(hi) and lo > 0):
            return u, v, err, done, False, omega
        if hi > limit or lo < 1 / limit:  # fold v into g and rebuild K, as the generic code
            for j in range(m):
                g[0, 0, j] += np.log(v[0, j, 0])
            _kernel(S, g, floor, K)
            v = np.ones((1, m, 1), K.dtype)
            u, err = _restart(K, p, q)
            newton, previous = False, np.inf
            if done >= budget and not refolded:
                budget, refolded = done + inner, True
            continue
        if err <= tol:
            break
        if not newton:
            omega, failed = relaxation(omega, float(err), previous, count, failed, omega_max)
        if allow_newton and not newton and 0 < err < previous < np.inf:
            rate = math.log(err / previous) / count
            newton = math.log(tol / err) / rate > newton_after * max(m, 64)
        previous = err
    return u, v, err, done, True, omega


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _axpy(y: np.ndarray, x: np.ndarray, a: float) -> None:
    """``y += a x`` on 1-D arrays."""
    for t in range(y.shape[0]):
        y[t] += a * x[t]


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _anderson(F: np.ndarray, R: np.ndarray, gram: np.ndarray, slot: int, k: int,
              f: np.ndarray, r: np.ndarray, ridge: float, y: np.ndarray) -> int:
    """:class:`gmgcore.gromov._Anderson` for one problem: store the pair ``(f, r)`` in ring
    slot ``slot`` of ``F``, ``R`` (``[memory, n·m]``), add its row to the float64 residual Gram
    matrix, and write ``Σ α_i F_i`` over the ``k`` stored pairs into ``y``. Returns 1 with
    ``k == 1`` (the next point is ``f``), 2 when ``y`` holds the extrapolation, and 0 when
    the system is singular or the result is not finite (restart). Loops throughout: array
    expressions made this the slowest part of the loop to compile."""
    zero = _cast(0.0, y)
    Fs, Rs = F[slot], R[slot]
    Fs[:], Rs[:] = f.reshape(-1), r.reshape(-1)
    for j in range(k):
        Rj, s = R[j], zero
        for t in range(Rs.shape[0]):
            s += Rs[t] * Rj[t]
        gram[slot, j] = s
        gram[j, slot] = s
    if k == 1:
        return 1
    G, top = np.empty((k, k)), gram[0, 0]
    for i in range(k):
        for j in range(k):
            G[i, j] = gram[i, j]
            top = max(top, gram[i, j])
    for i in range(k):
        G[i, i] += ridge * top + np.finfo(y.dtype).tiny
    alpha64, ok = _solve_small(G, np.ones(k))
    if not ok:
        return 0
    alpha = (alpha64 / alpha64.sum()).astype(y.dtype)
    yy = y.reshape(-1)
    yy[:] = zero
    for i in range(k):  # Σ_i α_i F_i in the order of the generic code
        _axpy(yy, F[i], alpha[i])
    check = zero
    for t in range(yy.shape[0]):
        check += yy[t] * zero  # NaN iff an entry is NaN or ±inf
    return 2 if check == 0 else 0


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _product_start(Cx: np.ndarray, Cy: np.ndarray, Ax: np.ndarray, BxT: np.ndarray,
                   By: np.ndarray, AyT: np.ndarray, low_x: bool, low_y: bool
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The first step from the product coupling on :func:`pgd`'s operands:
    :func:`gmgcore.gromov.product_start`'s potential ``[1, 1, m]`` and :func:`_reduce`'s array,
    both in the operands' dtype, from :func:`gmgcore.gromov._product_linearisation`'s ``a``,
    ``b`` and outer product (sums in float64)."""
    n, m = (Ax.shape[0] if low_x else Cx.shape[0]), (AyT.shape[1] if low_y else Cy.shape[0])
    a, b = np.zeros(n), np.zeros(m)
    if low_x:  # B_xᵀ p, then a = A_x (B_xᵀ p)
        left = np.zeros(BxT.shape[0])
        for k in range(BxT.shape[0]):
            for i in range(n):
                left[k] += BxT[k, i]
            left[k] /= n
        for i in range(n):
            for k in range(left.shape[0]):
                a[i] += Ax[i, k] * left[k]
    else:
        for i in range(n):
            for k in range(n):
                a[i] += Cx[i, k]
            a[i] /= n
        left = a
    if low_y:  # B_yᵀ q, then b = A_y (B_yᵀ q), with A_yᵀ given
        right = np.zeros(By.shape[1])
        for k in range(right.shape[0]):
            for j in range(m):
                right[k] += By[j, k]
            right[k] /= m
        for k in range(right.shape[0]):
            for j in range(m):
                b[j] += AyT[k, j] * right[k]
    else:  # C_y q: row sums of C_y
        for j in range(m):
            for k in range(m):
                b[j] += Cy[j, k]
            b[j] /= m
        right = b
    T = np.empty((left.shape[0], right.shape[0]), Ax.dtype)
    for i in range(left.shape[0]):
        for j in range(right.shape[0]):
            T[i, j] = left[i] * right[j]
    order, sorted_a = np.argsort(b, kind="mergesort"), np.sort(a)
    G = np.empty(m)
    G[order[0]], total = 0.0, 0.0
    for j in range(m - 1):
        hi = (j + 1) * n // m
        lo = hi - 1 if (j + 1) * n % m == 0 else hi
        total += (sorted_a[lo] + sorted_a[hi]) / 2 * (b[order[j + 1]] - b[order[j]])
        G[order[j + 1]] = total
    g = np.empty((1, 1, m), Ax.dtype)
    low = G.min()
    for j in range(m):
        g[0, 0, j] = low - G[j]
    return g, T


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def pgd(
    Cx: np.ndarray, Cy: np.ndarray, CyT: np.ndarray, Ax: np.ndarray, BxT: np.ndarray,
    By: np.ndarray, AyT: np.ndarray, low_x: bool, low_y: bool, x0: np.ndarray, p: float, q: float,
    tol: float, max_iter: int, inner: int, max_inner: int, floor: float, limit: float,
    newton_after: float, damping: float, memory: int, anderson_start: float, ridge: float,
    omega_max: float, from_product: bool,
) -> tuple[np.ndarray, float, float, int, int]:
    """The whole mirror-descent loop of :func:`gmgcore.gromov._pgd` for one problem, compiled:
    the same iterates, folds, Newton steps and Anderson steps (on :func:`_reduce`'s array) as
    the generic code, with the kernel's ``exp`` by :func:`_exp_nonpositive`. ``Cx`` (or ``Ax``)
    carries the factor ``4/ε``; ``Cy`` is read by loops and ``CyT`` (``C_yᵀ``) by BLAS; ``x0``
    is ``[1, n, m]``, the product coupling when ``from_product`` (the first step then starts
    from :func:`_product_start`). Returns the last finite coupling ``[1, n, m]``, its marginal
    error and change, and the outer and Sinkhorn counts."""
    _, n, m = x0.shape
    K = np.empty_like(x0)
    if from_product:
        g, T = _product_start(Cx, Cy, Ax, BxT, By, AyT, low_x, low_y)
    else:
        g = np.zeros((1, 1, m), x0.dtype)
        T = _reduce(Cx, CyT, BxT, By, low_x, low_y, x0[0])
    F = np.empty((memory, T.size), x0.dtype)
    R = np.empty((memory, T.size), x0.dtype)
    gram = np.zeros((memory, memory))
    P = x0
    err, change, last = np.inf, np.inf, np.inf
    outer, inner_total, count, omega = 0, 0, 0, 1.0
    while outer < max_iter:
        outer += 1
        S = _expand(T, Ax, AyT, low_x, low_y).reshape(1, n, m)
        u, v, err, done, finite, omega = _inner_solve(
            S, g, floor, K, tol, inner, max_inner, p, q, limit, newton_after, damping, omega,
            omega_max)
        inner_total += done
        if not finite:
            break
        P_new = np.empty_like(x0)
        g, changes = finish_step(K, u, v, P, g, P_new)
        P, change = P_new, changes[0]
        if max(change, err) <= tol:
            break
        T_in = T
        T = _reduce(Cx, CyT, BxT, By, low_x, low_y, P[0])
        residual = math.sqrt(np.sum((T - T_in) ** 2) / np.sum(T * T))
        if memory > 0 and change < anderson_start and residual < last:
            slot = count % memory
            count += 1
            y = np.empty_like(T)
            status = _anderson(F, R, gram, slot, min(count, memory), T, T - T_in, ridge, y)
            if status == 2:
                T = y
            elif status == 0:
                count = 0
        else:
            count = 0
        last = residual
    return P, err, change, outer, inner_total


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def round_coupling(P: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`gmgcore.gromov.round_to_coupling` for one problem (``P`` ``[1, n, m]``): the
    rounded coupling ``[n, m]`` and its row and column sums."""
    _, n, m = P.shape
    Q = P[0].copy()
    zero = _cast(0.0, P)
    p, q = _cast(1.0 / n, Q), _cast(1.0 / m, Q)
    tiny = np.finfo(P.dtype).tiny
    for i in range(n):
        row, s = Q[i], zero
        for j in range(m):
            s += row[j]
        f = min(p / s, _cast(1.0, Q))
        for j in range(m):
            row[j] *= f
    col = np.zeros(m, P.dtype)
    for i in range(n):
        _axpy(col, Q[i], _cast(1.0, Q))
    for j in range(m):
        col[j] = min(q / col[j], _cast(1.0, Q))
    err_r, err_c = np.empty(n, P.dtype), np.zeros(m, P.dtype)
    total = zero
    for i in range(n):
        row, s = Q[i], zero
        for j in range(m):
            row[j] *= col[j]
            s += row[j]
            err_c[j] += row[j]
        err_r[i] = max(p - s, zero)
        total += err_r[i]
    for j in range(m):
        err_c[j] = max(q - err_c[j], zero)
    total = max(total, tiny)
    r, c = np.empty(n, P.dtype), np.zeros(m, P.dtype)
    for i in range(n):
        row, s = Q[i], zero
        for j in range(m):
            t = row[j] + err_r[i] * err_c[j] / total
            row[j] = t
            s += t
            c[j] += t
        r[i] = s
    return Q, r, c


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def score(Q: np.ndarray, cross: float, Cx: np.ndarray, Cy: np.ndarray, r: np.ndarray,
          c: np.ndarray) -> float:
    """:func:`gmgcore.gromov.quadratic_cost` of one coupling ``Q`` ``[n, m]`` with row and
    column sums ``r``, ``c`` and cross term ``cross`` (:func:`gmgcore.gromov.cross_term`, costs
    without ``4/ε``). Loops only: a BLAS product inside a compiled function slows the BLAS
    calls that follow it from n = 256 on, so the generic loop computes ``cross`` in numpy."""
    n, m = Q.shape
    zero = _cast(0.0, Q)
    term_x, term_y = zero, zero
    for i in range(n):
        s = zero
        for k in range(n):
            s += Cx[i, k] * Cx[i, k] * r[k]
        term_x += r[i] * s
    for k in range(m):  # cᵀ (C_y ∘ C_y) c, by rows (a quadratic form is its transpose's)
        s = zero
        for j in range(m):
            s += Cy[k, j] * Cy[k, j] * c[j]
        term_y += c[k] * s
    return term_x + term_y - 2 * cross


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _cross(Q: np.ndarray, Cx: np.ndarray, CyT: np.ndarray, Ax: np.ndarray, BxT: np.ndarray,
           By: np.ndarray, AyT: np.ndarray, low_x: bool, low_y: bool) -> float:
    """:func:`gmgcore.gromov.cross_term` for one coupling ``Q`` ``[n, m]``: ``⟨T, A_xᵀ Q A_y⟩``
    with :func:`_reduce`'s ``T``, without the ``[n, m]`` linearisation."""
    T = _reduce(Cx, CyT, BxT, By, low_x, low_y, Q)
    W = np.dot(np.ascontiguousarray(Ax.T), Q) if low_x else Q
    if low_y:
        W = np.dot(W, np.ascontiguousarray(AyT.T))
    total = _cast(0.0, Q)
    for k in range(T.shape[0]):
        for j in range(T.shape[1]):
            total += T[k, j] * W[k, j]
    return total


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def round_and_score(
    P: np.ndarray, Cx: np.ndarray, Cy: np.ndarray, CyT: np.ndarray, Ax: np.ndarray,
    BxT: np.ndarray, By: np.ndarray, AyT: np.ndarray, low_x: bool, low_y: bool,
) -> tuple[np.ndarray, float]:
    """The end of a solve for one small problem (``P`` ``[1, n, m]``, costs without ``4/ε``):
    the coupling rounded onto U(p, q) (:func:`round_coupling`) and its quadratic cost
    (:func:`score`). The KL is left to :attr:`gmgcore.gromov.GWResult.entropic_cost`."""
    _, n, m = P.shape
    Q, r, c = round_coupling(P)
    cross = _cross(Q, Cx, CyT, Ax, BxT, By, AyT, low_x, low_y)
    return Q.reshape(1, n, m), score(Q, cross, Cx, Cy, r, c)


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def solve_single(
    Cx: np.ndarray, Cy: np.ndarray, CyT: np.ndarray, Ax: np.ndarray, Bx: np.ndarray,
    Ay: np.ndarray, By: np.ndarray, low_x: bool, low_y: bool, x0: np.ndarray, has_init: bool,
    eps: float,
    scale: float, tol: float, max_iter: int, inner: int, max_inner: int, floor: float, limit: float,
    newton_after: float, damping: float, memory: int, anderson_start: float, ridge: float,
    omega_max: float,
) -> tuple[np.ndarray, np.ndarray, int, int, bool]:
    """One problem's whole solve (:func:`gmgcore.gromov.solve` on CPU), in one call: the costs'
    finiteness, the operands of :func:`pgd` (``B_xᵀ``, ``A_yᵀ``, and ``scale = 4/ε`` folded into
    ``C_x`` or ``A_x``), the product init unless ``has_init`` (then ``x0`` ``[n, m]`` is the
    init), :func:`pgd` and :func:`round_and_score`. ``Cx`` ``[n, n]``, ``Cy`` ``[m, m]``, and
    ``CyT`` its transpose, a C-contiguous copy or the transposed view (the caller chooses; see
    :data:`gmgcore.gromov._TRANSPOSED_VIEW`); the factors ``[n, r]`` or ``[1, 1]`` placeholders
    when absent. Returns the rounded coupling ``[n, m]``, ``[cost, marginal error, change, ε]``
    in the costs' dtype, the outer and Sinkhorn counts, and False (with nothing solved) when a
    cost is not finite."""
    n, m = Cx.shape[0], Cy.shape[0]
    stats = np.empty(4, Cx.dtype)
    stats[3] = eps
    if not (all_finite(Cx) and all_finite(Cy)):
        return np.empty((n, m), Cx.dtype), stats, 0, 0, False
    BxT = np.ascontiguousarray(Bx.T)
    AyT = np.ascontiguousarray(Ay.T)
    Cx_s = Cx if low_x else Cx * scale
    Ax_s = Ax * scale if low_x else Ax
    if has_init:
        start = x0.reshape(1, n, m)
    else:
        start = np.empty((1, n, m), Cx.dtype)
        start[:] = _cast(1.0 / (n * m), Cx)
    P, err, change, outer, inner_total = pgd(
        Cx_s, Cy, CyT, Ax_s, BxT, By, AyT, low_x, low_y, start, _cast(1.0 / n, Cx),
        _cast(1.0 / m, Cx), tol, max_iter, inner, max_inner, floor, limit, newton_after, damping,
        memory, anderson_start, ridge, omega_max, not has_init)
    Q, cost = round_and_score(P, Cx, Cy, CyT, Ax, BxT, By, AyT, low_x, low_y)
    stats[0], stats[1], stats[2] = cost, err, change
    return Q.reshape(n, m), stats, outer, inner_total, True
