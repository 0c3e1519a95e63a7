"""Compiled (numba) loops of the entropic GW solver's CPU path (:mod:`gmgcore.gromov`).

At n = 64 an outer step of the generic code is some fifty small numpy calls, and their per-call
overhead, not the arithmetic, sets its time. Two levels replace them:

* :func:`log_kernel`, :func:`sinkhorn` and :func:`finish_step` each do, for every problem of a
  batch ``[B, n, m]``, what a handful of numpy calls do, in one call. The generic loop uses
  them on CPU; the kernel's ``exp`` then stays in numpy (vectorised, about ten times faster than
  numba's scalar ``exp``).
* :func:`fixed_budget_pgd` runs the whole mirror-descent loop of one problem on a fixed
  budget (one Sinkhorn block per outer step, hence no Newton steps: the training budget of
  :mod:`gmgcore.gap`), with the same folds and Anderson steps as the generic loop. Its kernel
  uses :func:`_exp_nonpositive`, a vectorisable ``exp`` within 1 ulp.

Both apply up to n·m = 96² (:data:`gmgcore.gromov._COMPILED_MAX`). Above it, numpy's
multi-threaded BLAS matrix-vector products beat this single-threaded code.

The arithmetic is the same elementwise; sums run in a different order (within rounding). NaN
and inf propagate as in numpy (no ``nnan`` / ``ninf`` fast-math flags outside
:func:`_shift_and_clamp`, which only sees finite rows): the solver's finiteness checks rely on
it. All arrays are C-contiguous; ``p``, ``q`` and ``floor`` have the arrays' dtype.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["log_kernel", "sinkhorn", "finish_step"]

_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}  # vectorised sums; NaN/inf kept
# error_model="numpy": x / 0 gives inf or NaN (which the solver checks), not ZeroDivisionError


@numba.njit(cache=True, fastmath=True)
def _shift_and_clamp(row: np.ndarray, floor: float) -> None:
    """``row = max(row − max(row), floor)`` on a finite row (all fast-math flags: vectorised)."""
    top = row[0]
    for j in range(1, row.shape[0]):
        top = max(top, row[j])
    for j in range(row.shape[0]):
        row[j] = max(row[j] - top, floor)


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def log_kernel(S: np.ndarray, g: np.ndarray, floor: float, out: np.ndarray) -> None:
    """``out = max(S + g − rowmax(S + g), floor)`` for ``S``, ``out`` ``[B, n, m]`` and ``g``
    ``[B, 1, m]``. A row with a NaN or +inf gets NaN entries, as with numpy's ``amax`` and
    ``clip``; here the whole row is NaN."""
    B, n, m = S.shape
    for b in range(B):
        gb = g[b, 0]
        for i in range(n):
            row, Sr, check = out[b, i], S[b, i], floor - floor
            for j in range(m):
                t = Sr[j] + gb[j]
                row[j] = t
                check += t * 0  # NaN iff an entry is NaN or ±inf
            if check == 0:
                _shift_and_clamp(row, floor)
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
def sinkhorn(
    K: np.ndarray, v: np.ndarray, count: int, p: float, q: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """``count`` Sinkhorn iterations ``u = p / (K v)``, ``v = q / (Kᵀ u)`` from ``v``
    ``[B, m, 1]`` (not modified). Returns ``u [B, n, 1]``, ``v [B, m, 1]``, the L1
    column-marginal error ``[B]`` of the iterate before the last update, and the smallest and
    largest scaling (both NaN if a scaling is not finite)."""
    B, n, m = K.shape
    zero = q - q
    u, v = np.empty((B, n, 1), K.dtype), v.copy()
    err, col = np.empty(B, K.dtype), np.empty(m, K.dtype)
    lo, hi, finite = np.inf, -np.inf, True
    for b in range(B):
        Kb, ub, vb = K[b], u[b, :, 0], v[b, :, 0]
        for it in range(count):
            for i in range(n):
                s = zero
                for j in range(m):
                    s += Kb[i, j] * vb[j]
                ub[i] = p / s
            col[:] = zero
            for i in range(n):
                ui = ub[i]
                for j in range(m):
                    col[j] += Kb[i, j] * ui
            if it == count - 1:
                e = zero
                for j in range(m):
                    e += abs(vb[j] * col[j] - q)
                err[b] = e
            for j in range(m):
                vb[j] = q / col[j]
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
    K: np.ndarray, u: np.ndarray, v: np.ndarray, x: np.ndarray, g: np.ndarray,
    P: np.ndarray, r: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """End of an outer step: the coupling ``P = u K vᵀ`` and the step ``r = P − x``
    (``[B, n, m]``, written into ``P`` and ``r``), the new column potential ``g + log vᵀ``
    gauge-fixed to max 0 (``[B, 1, m]``), and the L1 change ``Σ|r|`` ``[B]``."""
    B, n, m = K.shape
    change, g_new = np.empty(B, K.dtype), np.empty_like(g)
    for b in range(B):
        vb, c = v[b, :, 0], 0.0
        for i in range(n):
            ui, Kr, Pr, xr, rr = u[b, i, 0], K[b, i], P[b, i], x[b, i], r[b, i]
            for j in range(m):
                t = ui * Kr[j] * vb[j]
                Pr[j] = t
                d = t - xr[j]
                rr[j] = d
                c += abs(d)
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
# exp(r) by its degree-12 Taylor polynomial (truncation below 2e-16 relative), in float64.
_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_T = [1.0 / math.factorial(k) for k in range(13)]
_T0, _T1, _T2, _T3, _T4, _T5, _T6, _T7, _T8, _T9, _T10, _T11, _T12 = _T
_POW2_NEGATIVE = 2.0 ** -np.arange(1100, dtype=np.float64)  # 2^-k, down to below the fp64 floor


@numba.njit(cache=True, fastmath={"contract"}, error_model="numpy")  # no reassociation:
def _exp_nonpositive(x: float) -> float:  # the two-part reduction must stay in order
    """``exp(x)`` for ``-700 ≤ x ≤ 0`` (the kernel's clamped log-entries), within 2 ulp of
    numpy's in float64 (tested): vectorisable, where numba's ``exp`` is a scalar library call."""
    k = math.floor(x * _LOG2E + 0.5)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    poly = ((((((_T12 * r + _T11) * r + _T10) * r + _T9) * r + _T8) * r + _T7) * r + _T6)
    poly = (((((poly * r + _T5) * r + _T4) * r + _T3) * r + _T2) * r + _T1) * r + _T0
    return poly * _POW2_NEGATIVE[int(-k)]


@numba.njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _exp_in_place(a: np.ndarray) -> None:
    """``a = exp(a)`` on a 1-D array of entries in ``[-700, 0]`` or NaN (kept)."""
    for j in range(a.size):
        t = a[j]
        finite = t == t
        e = _exp_nonpositive(t if finite else 0.0)
        a[j] = e if finite else t


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _kernel(S: np.ndarray, g: np.ndarray, floor: float, K: np.ndarray) -> None:
    """The stabilised kernel ``exp(log_kernel(S, g))`` into ``K`` (``[1, n, m]``)."""
    log_kernel(S, g, floor, K)
    _exp_in_place(K.reshape(-1))  # a separate 1-D loop: numba vectorises it there


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _solve_small(G: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, bool]:
    """``G x = b`` for a small ``[k, k]`` system by Gaussian elimination with partial pivoting;
    ``ok`` is False for a zero or non-finite pivot (LAPACK's LinAlgError)."""
    k = b.shape[0]
    A, x = G.astype(np.float64), b.astype(np.float64)
    for c in range(k):
        piv = c + np.argmax(np.abs(A[c:, c]))
        if not (np.isfinite(A[piv, c]) and A[piv, c] != 0):
            return x, False
        if piv != c:
            for j in range(k):
                A[c, j], A[piv, j] = A[piv, j], A[c, j]
            x[c], x[piv] = x[piv], x[c]
        for i in range(c + 1, k):
            f = A[i, c] / A[c, c]
            A[i, c:] -= f * A[c, c:]
            x[i] -= f * x[c]
    for c in range(k - 1, -1, -1):
        t = x[c]
        for j in range(c + 1, k):
            t -= A[c, j] * x[j]
        x[c] = t / A[c, c]
    return x, True


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _linearization(Cx: np.ndarray, CyT: np.ndarray, Ax: np.ndarray, BxT: np.ndarray,
                   By: np.ndarray, AyT: np.ndarray, low_x: bool, low_y: bool,
                   x: np.ndarray) -> np.ndarray:
    """:func:`gmgcore.gromov.linearization` on ``[n, m]`` with pre-transposed operands."""
    if low_x and low_y:
        return np.dot(Ax, np.dot(np.dot(np.dot(BxT, x), By), AyT))
    if low_x:
        return np.dot(Ax, np.dot(np.dot(BxT, x), CyT))
    if low_y:
        return np.dot(np.dot(Cx, np.dot(x, By)), AyT)
    return np.dot(np.dot(Cx, x), CyT)


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def fixed_budget_pgd(
    Cx: np.ndarray, CyT: np.ndarray, Ax: np.ndarray, BxT: np.ndarray, By: np.ndarray,
    AyT: np.ndarray, low_x: bool, low_y: bool, x0: np.ndarray, p: float, q: float,
    tol: float, max_iter: int, inner: int, floor: float, limit: float, memory: int,
    anderson_start: float, ridge: float,
) -> tuple[np.ndarray, float, float, int, int]:
    """The whole mirror-descent loop of :func:`gmgcore.gromov._pgd` for one problem and a
    budget of one Sinkhorn block per outer step (``max_inner ≤ inner_iterations``, so no
    Newton steps), compiled: the same iterates, folds and Anderson steps as the generic code,
    with the kernel's ``exp`` by :func:`_exp_nonpositive`. ``Cx`` (or ``Ax``) carries the
    factor ``4/ε``; ``x0`` is ``[1, n, m]``. Returns the last finite coupling ``[1, n, m]``,
    its marginal error and change, and the outer and Sinkhorn counts."""
    _, n, m = x0.shape
    K, work = np.empty_like(x0), np.empty_like(x0)
    g = np.zeros((1, 1, m), x0.dtype)
    F = np.empty((memory, n * m), x0.dtype)
    R = np.empty((memory, n * m), x0.dtype)
    gram = np.zeros((memory, memory))
    tiny = np.finfo(x0.dtype).tiny
    x, P = x0, x0
    err, change, last = np.inf, np.inf, np.inf
    outer, inner_total, count = 0, 0, 0
    while outer < max_iter:
        outer += 1
        S = _linearization(Cx, CyT, Ax, BxT, By, AyT, low_x, low_y, x[0]).reshape(1, n, m)
        _kernel(S, g, floor, K)
        u, v = np.ones((1, n, 1), x0.dtype), np.ones((1, m, 1), x0.dtype)
        done, budget, refolded, finite = 0, inner, False, True
        while done < budget:
            c = min(inner, budget - done)
            u, v, errs, lo, hi = sinkhorn(K, v, c, p, q)
            done += c
            err = errs[0]
            if not (np.isfinite(err) and np.isfinite(hi) and lo > 0):
                finite = False
                break
            if hi > limit or lo < 1 / limit:  # fold v into g and rebuild K, as _inner_solve
                for j in range(m):
                    g[0, 0, j] += np.log(v[0, j, 0])
                _kernel(S, g, floor, K)
                v = np.ones((1, m, 1), x0.dtype)
                u = (p / K[0].sum(axis=1)).reshape(1, n, 1)
                err = np.abs(np.dot(u.reshape(n), K[0]) - q).sum()
                if done >= budget and not refolded:
                    budget, refolded = done + inner, True
                continue
            if err <= tol:
                break
        inner_total += done
        if not finite:
            break
        P = np.empty_like(x0)
        g, changes = finish_step(K, u, v, x, g, P, work)
        change = changes[0]
        if max(change, err) <= tol:
            break
        x = P
        if memory > 0 and change < min(last, anderson_start):
            slot = count % memory
            F[slot], R[slot] = P.reshape(-1), work.reshape(-1)
            count += 1
            k = min(count, memory)
            for j in range(k):
                gram[slot, j] = np.dot(R[slot], R[j])
                gram[j, slot] = gram[slot, j]
            if k > 1:
                G = gram[:k, :k].copy()
                G += (ridge * G.max() + tiny) * np.eye(k)
                alpha, ok = _solve_small(G, np.ones(k))
                if ok:
                    alpha = (alpha / alpha.sum()).astype(x0.dtype)
                    y = np.zeros_like(x0)
                    flat = y.reshape(-1)
                    for i in range(k):
                        flat += alpha[i] * F[i]
                    ok = np.isfinite(flat).all()
                if ok:
                    x = y
                else:
                    count = 0
        else:
            count = 0
        last = change
    return P, err, change, outer, inner_total
