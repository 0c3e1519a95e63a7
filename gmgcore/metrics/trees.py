"""scikit-learn's ``GradientBoostingClassifier()`` with its default settings, compiled with numba.

This is the ``"fast"`` DCI backend (:mod:`gmgcore.metrics.boosting`). It runs the algorithm of
scikit-learn's ``_gb.py`` and ``_tree.pyx`` step for step (Friedman 2001, "Greedy function
approximation", Algorithm 6 for K classes):

* the codes are cast to float32 first (scikit-learn's trees work on float32);
* init: the log class priors (the log-odds for two classes);
* 100 rounds, learning rate 0.1. Each round computes the residuals ``r = y − p`` once. It then
  grows one depth-3 regression tree per class, or a single tree for two classes;
* splits are exact: every threshold halfway between consecutive distinct values (values closer
  than 1e-7 count as equal). The split with the largest ``friedman_mse`` proxy
  :math:`(n_R S_L - n_L S_R)^2 / (n_L n_R)` wins. A node splits when it has ≥ 2 samples and
  its residual variance is > machine epsilon;
* the leaf values are the one-step Newton values
  :math:`\\tfrac{K-1}{K} \\sum r / \\sum p (1 - p)` (no factor for two classes; 0 where the
  denominator is below 1e-150);
* the importance of a code is the total decrease of ``n · variance`` over the splits on it,
  normalized to sum to 1. This equals ``feature_importances_``, whose per-tree normalization
  divides every tree by the same n.

The speed comes from sorting each code once, where scikit-learn sorts every node again. A tree
level costs one pass per code over each node's contiguous, sorted samples. The rows are then
stably partitioned, branch-free, into the children's segments. The trees of one round are grown
on several threads (:func:`fit`). Two things differ from scikit-learn:

* Exact ties between splits on different codes (a 2-sample node splits the same way on every
  code) go to the code with the lower random priority, drawn per node from ``seed``.
  scikit-learn keeps the first of the tied codes in a random visiting order drawn from
  ``random_state``. The choice is just as uniform, but the draws differ.
* Sums run left to right, and the proxy's numerator is computed as :math:`c S_L - n_L S`;
  scikit-learn sometimes subtracts from the node total instead.

Both only matter for exact ties or rounding-level near-ties. The deviation from
scikit-learn is measured in docs/metrics.md.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numba
import numpy as np

__all__ = ["BoostedTrees", "fit", "predict_scores", "ROUNDS", "LEARNING_RATE", "MAX_DEPTH"]

ROUNDS = 100
LEARNING_RATE = 0.1
MAX_DEPTH = 3
_NODES = 2**MAX_DEPTH - 1  # internal nodes, level by level: level l holds 2**l - 1 .. 2**(l+1) - 2
_LEAVES = 2**MAX_DEPTH
_FEATURE_THRESHOLD = 1e-7  # scikit-learn's _splitter.pyx
_EPSILON = float(np.finfo(np.float64).eps)  # scikit-learn's _tree.pyx: purer nodes are leaves
_TINY_DENOMINATOR = 1e-150  # scikit-learn's _safe_divide


class BoostedTrees(NamedTuple):
    """A fitted ensemble. ``T`` outputs: 1 for two classes, else one per class.

    ``init`` ``[T]``; ``feature`` ``[rounds, T, 7]`` (−1: the node does not split, its samples
    go left); ``threshold`` ``[rounds, T, 7]`` (``x ≤ t`` goes left); ``leaf_value``
    ``[rounds, T, 8]`` (learning rate not applied); ``importance`` ``[d]`` (sums to 1, or all
    0); ``train_scores`` ``[n, T]``.
    """

    init: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    leaf_value: np.ndarray
    importance: np.ndarray
    train_scores: np.ndarray


@numba.njit(cache=True, nogil=True)
def _impurity(cnt, tot, sq):  # pragma: no cover - compiled
    mean = tot / cnt
    return sq / cnt - mean * mean


@numba.njit(cache=True, nogil=True, inline="always")
def _consider(f, v, prev, diff, scale, keys, best, best_f, best_key, best_thr):  # pragma: no cover
    """Keep the split before value ``v`` of code ``f`` if its proxy beats (or ties with a
    lower priority) the best so far."""
    if v > prev + _FEATURE_THRESHOLD:
        proxy = diff * diff / scale
        if proxy > best or (proxy == best and f != best_f and keys[f] < best_key):
            t = prev / 2.0 + v / 2.0
            return proxy, f, keys[f], prev if (t == v or np.isinf(t)) else t
    return best, best_f, best_key, best_thr


@numba.njit(cache=True, nogil=True)
def _best_split(xw, work, r, s, e, tot, keys):  # pragma: no cover - compiled
    """Best split of the node whose samples are ``work[f, s:e]`` (sorted by code f, values
    ``xw[f, s:e]``): returns (code or −1, threshold). Exact ties between codes go to the lower
    priority ``keys[f]``.

    The proxy :math:`(n_R S_L - n_L S_R)^2 / (n_L n_R)` is computed as
    :math:`(c S_L - n_L S)^2 / (n_L n_R)` and only when its numerator reaches
    ``best · n_L n_R``. Codes are scanned in pairs, which keeps two independent running sums in
    flight.
    """
    c = float(e - s)
    d = xw.shape[0]
    best, best_f, best_key, best_thr = -np.inf, -1, 2.0, 0.0
    for f0 in range(0, d, 2):
        f1 = min(f0 + 1, d - 1)  # an odd last code is scanned twice; ties keep the first
        row0, x0, row1, x1 = work[f0], xw[f0], work[f1], xw[f1]
        p0, p1 = np.float64(x0[s]), np.float64(x1[s])
        left0, left1 = r[row0[s]], r[row1[s]]
        nl = 1.0
        for j in range(s + 1, e):
            v0, v1 = np.float64(x0[j]), np.float64(x1[j])
            scale = nl * (c - nl)
            bound = best * scale
            diff0, diff1 = c * left0 - nl * tot, c * left1 - nl * tot
            if diff0 * diff0 >= bound or diff1 * diff1 >= bound:
                best, best_f, best_key, best_thr = _consider(
                    f0, v0, p0, diff0, scale, keys, best, best_f, best_key, best_thr
                )
                best, best_f, best_key, best_thr = _consider(
                    f1, v1, p1, diff1, scale, keys, best, best_f, best_key, best_thr
                )
            left0 += r[row0[j]]
            left1 += r[row1[j]]
            nl += 1.0
            p0, p1 = v0, v1
    return best_f, best_thr


@numba.njit(cache=True, nogil=True)
def _partition(src, src_x, dst, dst_x, s, e, n_left, right):  # pragma: no cover - compiled
    """Stable partition of ``src[s:e]`` and its values into ``dst[s:e]``: the ``n_left`` left
    samples first. Branch-free (the side is a coin flip): one computed store per sample."""
    li, ri = 0, 0
    for j in range(s, e):
        i = src[j]
        g = np.int64(right[i])
        pos = s + li + g * (n_left + ri - li)
        dst[pos], dst_x[pos] = i, src_x[j]
        li += 1 - g
        ri += g


@numba.njit(cache=True, nogil=True)
def _grow(
    xT, order, xs, r, keys, feature, threshold, slot, importance, work, xw, right
):  # pragma: no cover - compiled
    """One depth-3 regression tree on ``r`` ``[n]``: fills ``feature``/``threshold`` ``[7]`` and
    ``slot`` ``[n]`` (each sample's leaf, 0..7), adds its impurity decreases to ``importance``.

    Level 0 scans the presorted ``order`` / values ``xs`` ``[d, n]``. After each split level
    every code's row is stably partitioned into the next buffer (``work[l]`` / ``xw[l]``,
    ``[2, d, n]``), so that each node's samples stay contiguous and sorted (``[lo, hi)``).
    ``keys`` ``[7, d]``: tie-breaking priorities.
    """
    d, n = xT.shape
    lo, hi = np.zeros(_LEAVES, np.int64), np.zeros(_LEAVES, np.int64)
    cnt, tot, sq = np.zeros(_LEAVES), np.zeros(_LEAVES), np.zeros(_LEAVES)
    ccnt, ctot, csq = np.zeros(_LEAVES), np.zeros(_LEAVES), np.zeros(_LEAVES)
    active = np.zeros(_LEAVES, np.bool_)
    best_f, best_thr = np.full(_LEAVES, -1, np.int64), np.zeros(_LEAVES)
    hi[0], active[0], cnt[0] = n, True, n
    slot[:] = 0
    for i in range(n):
        tot[0] += r[i]
        sq[0] += r[i] * r[i]
    for level in range(MAX_DEPTH):
        m = 1 << level
        src, src_x = (order, xs) if level == 0 else (work[level - 1], xw[level - 1])
        for a in range(m):
            best_f[a], best_thr[a] = -1, 0.0
            if active[a] and cnt[a] >= 2 and _impurity(cnt[a], tot[a], sq[a]) > _EPSILON:
                best_f[a], best_thr[a] = _best_split(
                    src_x, src, r, lo[a], hi[a], tot[a], keys[m - 1 + a]
                )
            feature[m - 1 + a], threshold[m - 1 + a] = best_f[a], best_thr[a]
        ccnt[: 2 * m], ctot[: 2 * m], csq[: 2 * m] = 0.0, 0.0, 0.0
        for i in range(n):  # route every sample; unsplit nodes send theirs left
            a = slot[i]
            f = best_f[a]
            g = 1 if (f >= 0 and xT[f, i] > best_thr[a]) else 0
            right[i] = g
            slot[i] = 2 * a + g
            ccnt[2 * a + g] += 1.0
            ctot[2 * a + g] += r[i]
            csq[2 * a + g] += r[i] * r[i]
        for a in range(m - 1, -1, -1):  # children (2a, 2a + 1 >= a) overwrite processed nodes
            f = best_f[a]
            split = f >= 0
            if split:
                importance[f] += (
                    cnt[a] * _impurity(cnt[a], tot[a], sq[a])
                    - ccnt[2 * a] * _impurity(ccnt[2 * a], ctot[2 * a], csq[2 * a])
                    - ccnt[2 * a + 1] * _impurity(ccnt[2 * a + 1], ctot[2 * a + 1], csq[2 * a + 1])
                )
                if level < MAX_DEPTH - 1:
                    for g in range(d):
                        _partition(src[g], src_x[g], work[level, g], xw[level, g], lo[a], hi[a],
                                   int(ccnt[2 * a]), right)
            mid = lo[a] + int(ccnt[2 * a])
            lo[2 * a + 1], hi[2 * a + 1] = mid, hi[a]  # before 2a, which may be a itself
            lo[2 * a], hi[2 * a] = lo[a], mid
            active[2 * a], active[2 * a + 1] = split, split
        cnt[: 2 * m], tot[: 2 * m], sq[: 2 * m] = ccnt[: 2 * m], ctot[: 2 * m], csq[: 2 * m]


@numba.njit(cache=True, nogil=True)
def _probabilities(scores, prob, start, stop):  # pragma: no cover - compiled
    """Sigmoid (one output) or softmax over the outputs of ``scores`` ``[T, n]``, for the
    samples ``start:stop``."""
    t = scores.shape[0]
    for i in range(start, stop):
        if t == 1:
            prob[0, i] = 1.0 / (1.0 + np.exp(-scores[0, i]))
            continue
        top = scores[0, i]
        for k in range(1, t):
            top = max(top, scores[k, i])
        total = 0.0
        for k in range(t):
            prob[k, i] = np.exp(scores[k, i] - top)
            total += prob[k, i]
        for k in range(t):
            prob[k, i] /= total


@numba.njit(cache=True, nogil=True)
def _round(
    classes, xT, order, xs, target, prob, keys, factor, learning_rate, feature, threshold,
    leaf_value, importance, scores, work, xw, right, slot, r, hess,
):  # pragma: no cover - compiled
    """Grow one round's trees for the outputs ``classes`` and update their scores.

    ``target``, ``prob``, ``scores`` ``[T, n]`` (one row per output, so that threads do not
    share cache lines); ``prob``: the probabilities at the start of the round. ``keys``
    ``[T, 7, d]``, ``feature``/``threshold`` ``[T, 7]``, ``leaf_value`` ``[T, 8]``: this
    round's; ``importance`` ``[T, d]`` accumulates per output. ``work`` ``[2, d, n]``, ``xw``,
    ``right``, ``slot``, ``r``, ``hess`` ``[n]``: scratch of the calling thread, reused across
    rounds (fresh large buffers every round cost page faults)."""
    n = r.shape[0]
    num, den = np.empty(_LEAVES), np.empty(_LEAVES)
    for k in classes:
        for i in range(n):
            r[i] = target[k, i] - prob[k, i]
            hess[i] = prob[k, i] * (1.0 - prob[k, i])
        _grow(xT, order, xs, r, keys[k], feature[k], threshold[k], slot, importance[k], work, xw,
              right)
        num[:] = 0.0
        den[:] = 0.0
        for i in range(n):
            num[slot[i]] += r[i]
            den[slot[i]] += hess[i]
        for leaf in range(_LEAVES):
            if abs(den[leaf]) >= _TINY_DENOMINATOR:
                leaf_value[k, leaf] = factor * num[leaf] / den[leaf]
        for i in range(n):
            scores[k, i] += learning_rate * leaf_value[k, slot[i]]


@numba.njit(cache=True, nogil=True)
def _predict(x, init, feature, threshold, leaf_value, learning_rate):  # pragma: no cover
    n = x.shape[0]
    rounds, t = feature.shape[0], feature.shape[1]
    scores = np.empty((n, t))
    for i in range(n):
        for k in range(t):
            total = init[k]
            for it in range(rounds):
                node = 0
                for level in range(MAX_DEPTH):
                    f = feature[it, k, (1 << level) - 1 + node]
                    go_right = f >= 0 and x[i, f] > threshold[it, k, (1 << level) - 1 + node]
                    node = 2 * node + (1 if go_right else 0)
                total += learning_rate * leaf_value[it, k, node]
            scores[i, k] = total
    return scores


def _ranges(n: int, parts: int) -> list[tuple[int, int]]:
    bounds = np.linspace(0, n, max(min(parts, n), 1) + 1).astype(int)
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _parallel(pool: ThreadPoolExecutor, kernel, calls: list[tuple]) -> list:  # noqa: ANN001
    """Run ``kernel(*call)`` for each call, on the pool's threads when there are several."""
    if len(calls) == 1:
        return [kernel(*calls[0])]
    return [f.result() for f in [pool.submit(kernel, *call) for call in calls]]


def _float32_values(codes: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(codes, dtype=np.float32).astype(np.float64)


def presort(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each code's sample order ``[d, n]`` (int32, stable) and its sorted values ``[d, n]``
    (float32) for the float32-cast codes ``x`` ``[n, d]``."""
    order = np.ascontiguousarray(np.argsort(x, axis=0, kind="stable").T.astype(np.int32))
    return order, np.ascontiguousarray(np.take_along_axis(x, order.T, axis=0).T.astype(np.float32))


def _targets_and_init(label: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Targets ``[n, T]`` and scikit-learn's prior init ``[T]`` (priors clipped to float32's
    eps; log-odds for two classes, else log priors: equal to scikit-learn's symmetric logits up
    to a shift that softmax ignores)."""
    onehot = (label[:, None] == np.arange(n_classes)).astype(np.float64)
    eps = np.finfo(np.float32).eps
    prior = np.clip(onehot.mean(axis=0), eps, 1 - eps)
    if n_classes == 2:
        return np.ascontiguousarray(onehot[:, 1:]), np.log(prior[1:] / prior[:1])
    return onehot, np.log(prior)


def fit(
    codes: np.ndarray, label: np.ndarray, n_classes: int, seed: int = 0, n_threads: int = 1
) -> BoostedTrees:
    """Boost on ``codes`` ``[n, d]`` for ``label`` ``[n]`` in ``0..n_classes-1`` (≥ 2 classes).

    ``seed`` draws the tie-breaking priorities: the same seed gives the same trees, whatever
    ``n_threads``. ``n_threads`` threads grow the trees of a round (one per class) at once.
    """
    if n_classes < 2:
        raise ValueError(f"boosting needs at least two classes; got {n_classes}")
    x = _float32_values(codes)
    n, d = x.shape
    order, xs = presort(x)
    xT = np.ascontiguousarray(x.T)
    target, init = _targets_and_init(label, n_classes)
    target, t = np.ascontiguousarray(target.T), target.shape[1]
    factor = 1.0 if n_classes == 2 else (n_classes - 1) / n_classes
    feature = np.full((ROUNDS, t, _NODES), -1, np.int64)
    threshold = np.zeros((ROUNDS, t, _NODES))
    leaf_value = np.zeros((ROUNDS, t, _LEAVES))
    importance = np.zeros((t, d))
    scores, prob = np.repeat(init[:, None], n, axis=1), np.empty((t, n))
    rng = np.random.default_rng(seed)
    threads = max(n_threads, 1)
    chunks = [np.arange(c, t, threads) for c in range(min(threads, t))]
    scratch = [
        (np.empty((2, d, n), np.int32), np.empty((2, d, n), np.float32), np.zeros(n, np.uint8),
         np.zeros(n, np.int64), np.empty(n), np.empty(n))
        for _ in chunks
    ]
    with ThreadPoolExecutor(threads) as pool:
        for it in range(ROUNDS):
            _parallel(pool, _probabilities, [(scores, prob, a, b) for a, b in _ranges(n, threads)])
            keys = rng.random((t, _NODES, d))
            args = (xT, order, xs, target, prob, keys, factor, LEARNING_RATE, feature[it],
                    threshold[it], leaf_value[it], importance, scores)
            _parallel(pool, _round, [(c, *args, *b) for c, b in zip(chunks, scratch, strict=True)])
    total = importance.sum(axis=0)
    total = total / total.sum() if total.sum() > 0 else np.zeros(d)
    return BoostedTrees(init, feature, threshold, leaf_value, total, scores.T)


def predict_scores(model: BoostedTrees, codes: np.ndarray, n_threads: int = 1) -> np.ndarray:
    """Raw scores ``[n, T]`` of ``codes`` ``[n, d]`` (cast to float32 like the training codes),
    ``n_threads`` threads each scoring a block of rows."""
    x = _float32_values(codes)
    parts = [(x[a:b], model.init, model.feature, model.threshold, model.leaf_value, LEARNING_RATE)
             for a, b in _ranges(x.shape[0], n_threads)]
    with ThreadPoolExecutor(max(n_threads, 1)) as pool:
        return np.concatenate(_parallel(pool, _predict, parts), axis=0)
