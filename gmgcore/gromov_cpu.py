"""Compiled (numba) loops of the entropic GW solver's CPU path (:mod:`gmgcore.gromov`).

Each function does, for every problem of a batch ``[B, n, m]``, what a handful of numpy calls do
in the solver's generic code (which the torch backend runs unchanged), in one pass and one call.
At n = 64 an outer step used to be some fifty small numpy calls, and their per-call overhead, not
the arithmetic, set its time. Two parts stay in numpy:

* the kernel's ``exp``: numpy's vectorised ``exp`` is about ten times faster than numba's
  scalar one;
* Sinkhorn blocks of problems with n·m above 96² (:data:`gmgcore.gromov._COMPILED_SINKHORN_MAX`):
  there numpy's multi-threaded BLAS matrix-vector products beat this single-threaded loop.

The arithmetic is the same elementwise; sums run in a different order (within rounding). NaN
and inf propagate as in numpy (no ``nnan`` / ``ninf`` fast-math flags outside
:func:`_shift_and_clamp`, which only sees finite rows): the solver's finiteness checks rely on
it. All arrays are C-contiguous; ``p``, ``q`` and ``floor`` have the arrays' dtype.
"""

from __future__ import annotations

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
