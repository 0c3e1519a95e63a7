"""Per-factor boosted-tree classifiers and the importance matrix they give (for DCI).

Backends:

- ``"exact"``: ``sklearn.ensemble.GradientBoostingClassifier()`` with default settings (100
  stages, depth 3, learning rate 0.1, exact splits), as disentanglement_lib. Importances are
  scikit-learn's impurity decreases, averaged over trees and normalized to sum to 1.
- ``"lightgbm"``: scikit-learn's algorithm with LightGBM growing the trees. Each round
  LightGBM grows one depth-3 tree (up to 8 leaves, leaves down to one sample, no
  regularization) per class, or one for two classes, on the residuals ``y - p`` with unit
  hessians, so that its split gain is scikit-learn's first-order impurity decrease; the leaf
  values are then replaced by scikit-learn's Newton steps and the scores are updated here (100
  rounds, learning rate 0.1, prior init). One histogram bin per distinct code value, so the
  candidate thresholds are scikit-learn's. Importances are the total split gain per code,
  normalized to sum to 1. It needs the optional ``lightgbm`` package; its deviation from
  ``"exact"`` (within 0.01 on D and C) and its speed are measured in docs/metrics.md.

Both are deterministic for a given ``seed`` and fit the factors independently, in parallel
with ``n_jobs`` threads (both learners release the GIL while building trees). LightGBM's own
threads oversubscribe a small machine badly (OpenMP workers spin between the per-round
calls), so every LightGBM call runs on one thread and parallelism is over factors only.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np
from joblib import Parallel, delayed
from sklearn.ensemble import GradientBoostingClassifier

__all__ = ["DCIBackend", "BACKENDS", "ImportanceFit", "importance_matrix"]

DCIBackend = Literal["exact", "lightgbm"]
BACKENDS: tuple[str, ...] = ("exact", "lightgbm")


class ImportanceFit(NamedTuple):
    """Importances ``[n_codes, n_factors]`` and accuracies ``[n_factors]`` per split."""

    importance: np.ndarray
    accuracy_train: np.ndarray
    accuracy_test: np.ndarray


def _fit_exact(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, seed: int
) -> tuple[np.ndarray, float, float]:
    model = GradientBoostingClassifier(random_state=seed).fit(x_train, y_train)
    return (
        np.abs(model.feature_importances_),
        float(np.mean(model.predict(x_train) == y_train)),
        float(np.mean(model.predict(x_test) == y_test)),
    )


LIGHTGBM_ROUNDS = 100
LEARNING_RATE = 0.1
LIGHTGBM_PARAMS: dict[str, object] = {
    "objective": "none",  # gradients and hessians are supplied each round
    "learning_rate": LEARNING_RATE,  # only scales LightGBM's own leaf values, replaced here
    "max_depth": 3,
    "num_leaves": 8,
    "min_data_in_leaf": 1,
    "min_sum_hessian_in_leaf": 0.0,
    "min_data_in_bin": 1,
    "feature_pre_filter": False,
    "lambda_l2": 0.0,
    "bagging_fraction": 1.0,
    "feature_fraction": 1.0,
    "num_threads": 1,
    "deterministic": True,
    "force_col_wise": True,
    "verbosity": -1,
}
# None: one bin per distinct training value, i.e. scikit-learn's exact thresholds. An int
# caps the bins (LightGBM's quantile bins): 3-4x faster, but D moves by up to 0.02-0.05
# (docs/metrics.md).
LIGHTGBM_MAX_BIN: int | None = None
_LEAVES = 8  # LIGHTGBM_PARAMS["num_leaves"]: leaf indices run over 0..7


def _import_lightgbm():  # noqa: ANN202 - the module
    try:
        import lightgbm
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "DCI backend 'lightgbm' needs the lightgbm package (pip install lightgbm)"
        ) from err
    return lightgbm


def _targets_and_init(label: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Targets ``[n, T]`` and scikit-learn's prior init scores ``[T]``.

    Two classes: one logistic output (``T = 1``, init = log-odds); more: one softmax output per
    class (init = log prior, equal to scikit-learn's up to a shift that softmax ignores).
    """
    onehot = (label[:, None] == np.arange(n_classes)).astype(np.float64)
    eps = np.finfo(np.float64).eps
    prior = np.clip(onehot.mean(axis=0), eps, 1 - eps)
    if n_classes == 2:
        return onehot[:, 1:], np.log(prior[1:] / prior[:1])
    return onehot, np.log(prior)


def _probabilities(scores: np.ndarray) -> np.ndarray:
    if scores.shape[1] == 1:
        return 1.0 / (1.0 + np.exp(-scores))
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _newton_leaf_values(
    leaf_ids: np.ndarray, residual: np.ndarray, prob: np.ndarray, factor: float
) -> np.ndarray:
    r"""scikit-learn's one-step Newton leaf values ``[T, 8]`` of one round's trees.

    .. math:: v_{k,\ell} = f \, \textstyle\sum_{i \in \ell} r_{ik} \big/
        \sum_{i \in \ell} p_{ik} (1 - p_{ik})

    with ``f = (K - 1) / K`` for K > 2 classes and 1 for two (scikit-learn's
    ``_update_terminal_regions``; 0 where the denominator vanishes). ``leaf_ids`` ``[n, T]``.
    """
    flat = (leaf_ids + _LEAVES * np.arange(leaf_ids.shape[1])).ravel()
    size = _LEAVES * leaf_ids.shape[1]
    num = np.bincount(flat, residual.ravel(), minlength=size)
    den = np.bincount(flat, (prob * (1.0 - prob)).ravel(), minlength=size)
    safe = np.abs(den) >= 1e-150
    values = np.zeros(size)
    values[safe] = factor * num[safe] / den[safe]
    return values.reshape(-1, _LEAVES)


def _fit_lightgbm(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, seed: int
) -> tuple[np.ndarray, float, float]:
    """scikit-learn's gradient boosting, with LightGBM growing the trees.

    Each round LightGBM grows one tree per output on the residuals ``y - p`` with unit
    hessians, so its split gain is scikit-learn's first-order (``friedman_mse``) impurity
    decrease; the leaf values are then replaced by scikit-learn's Newton steps, and the scores
    are kept here. Importances: total split gain per code, normalized (scikit-learn's
    ``feature_importances_``, whose per-tree normalization divides by the constant n).
    """
    classes, label = np.unique(y_train, return_inverse=True)
    target, init = _targets_and_init(label, classes.size)
    factor = 1.0 if classes.size == 2 else (classes.size - 1) / classes.size
    if not np.any(x_train != x_train[:1]):  # constant codes: no split, leaves stay at 0
        importance, train_scores = np.zeros(x_train.shape[1]), np.tile(init, (len(label), 1))
        test_scores = np.tile(init, (len(x_test), 1))
    else:
        booster, train_scores, tables = _boost(x_train, label, target, init, factor, seed)
        gain = booster.feature_importance(importance_type="gain").astype(np.float64)
        importance = gain / gain.sum() if gain.sum() > 0 else np.zeros_like(gain)
        test_scores = _test_scores(booster, x_test, init, tables)
    train_acc = _accuracy(train_scores, classes, y_train)
    return importance, train_acc, _accuracy(test_scores, classes, y_test)


def _boost(
    x: np.ndarray, label: np.ndarray, target: np.ndarray, init: np.ndarray, factor: float, seed: int
) -> tuple[object, np.ndarray, list[np.ndarray]]:
    """The boosting rounds: the booster, training scores ``[n, T]``, leaf values per round."""
    lightgbm = _import_lightgbm()
    n, n_out = target.shape
    max_bin = max(n, 2) if LIGHTGBM_MAX_BIN is None else LIGHTGBM_MAX_BIN
    params = {**LIGHTGBM_PARAMS, "num_class": n_out, "seed": seed, "max_bin": max_bin}
    booster = lightgbm.Booster(params, lightgbm.Dataset(x, label=label, params=params))
    scores, ones, tables = np.tile(init, (n, 1)), np.ones((n, n_out)), []
    for it in range(LIGHTGBM_ROUNDS):
        prob = _probabilities(scores)
        residual = target - prob
        gh = (-residual[:, 0], ones[:, 0]) if n_out == 1 else (-residual, ones)
        if booster.update(fobj=lambda _preds, _data, gh=gh: gh):
            break  # no tree of this round could split: nothing is left to learn
        leaf_ids = booster.predict(
            x, pred_leaf=True, start_iteration=it, num_iteration=1, num_threads=1
        ).reshape(n, n_out)
        tables.append(_newton_leaf_values(leaf_ids, residual, prob, factor))
        scores += LEARNING_RATE * np.take_along_axis(tables[-1].T, leaf_ids, axis=0)
    return booster, scores, tables


def _test_scores(
    booster: object, x: np.ndarray, init: np.ndarray, tables: list[np.ndarray]
) -> np.ndarray:
    scores = np.tile(init, (x.shape[0], 1))
    if not tables:
        return scores
    leaf_ids = booster.predict(x, pred_leaf=True, num_iteration=len(tables), num_threads=1)
    leaf_ids = leaf_ids.reshape(x.shape[0], len(tables), init.size)
    for it, table in enumerate(tables):
        scores += LEARNING_RATE * np.take_along_axis(table.T, leaf_ids[:, it, :], axis=0)
    return scores


def _accuracy(scores: np.ndarray, classes: np.ndarray, y: np.ndarray) -> float:
    """scikit-learn's class rule: positive score for two classes, argmax otherwise."""
    index = (scores[:, 0] > 0).astype(int) if scores.shape[1] == 1 else scores.argmax(axis=1)
    return float(np.mean(classes[index] == y))


_FITTERS = {"exact": _fit_exact, "lightgbm": _fit_lightgbm}


def importance_matrix(
    codes_train: np.ndarray,
    factors_train: np.ndarray,
    codes_test: np.ndarray,
    factors_test: np.ndarray,
    *,
    backend: DCIBackend = "exact",
    seed: int = 0,
    n_jobs: int = 1,
) -> ImportanceFit:
    """Fit one classifier per factor on all codes and collect importances and accuracies.

    ``n_jobs`` threads fit different factors at the same time.

    ``codes_*`` ``[n, n_codes]`` float, ``factors_*`` ``[n, n_factors]`` class indices, each
    factor with at least two classes in the training split. Column ``j`` of the importance
    matrix holds the importances of the codes for predicting factor ``j``.
    """
    if backend not in _FITTERS:
        raise ValueError(f"unknown DCI backend {backend!r}; expected one of {BACKENDS}")
    fit = _FITTERS[backend]
    jobs = (
        delayed(fit)(codes_train, factors_train[:, j], codes_test, factors_test[:, j], seed)
        for j in range(factors_train.shape[1])
    )
    results = Parallel(n_jobs=n_jobs, prefer="threads")(jobs)
    importance = np.stack([r[0] for r in results], axis=1)
    return ImportanceFit(
        importance=importance,
        accuracy_train=np.array([r[1] for r in results]),
        accuracy_test=np.array([r[2] for r in results]),
    )
