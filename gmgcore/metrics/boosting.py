"""Per-factor boosted-tree classifiers and the importance matrix they give (for DCI).

Backends:

- ``"exact"``: ``sklearn.ensemble.GradientBoostingClassifier()`` with default settings (100
  stages, depth 3, learning rate 0.1, exact splits), as disentanglement_lib. Importances are
  scikit-learn's impurity decreases, averaged over trees and normalized to sum to 1.
- ``"fast"``: the same algorithm compiled with numba (:mod:`gmgcore.metrics.trees`): exact
  thresholds, scikit-learn's split rule, Newton leaf values and importances. Exact ties
  between codes are broken at random, from ``seed``, as scikit-learn breaks them from its
  ``random_state``.

``"exact"`` fits the factors independently, in parallel with ``n_jobs`` threads.
``"fast"`` fits the factors one after another, and ``n_jobs`` threads grow the trees of one
boosting round (one per class) at the same time. This keeps both cores busy even when one
factor has most of the classes. Both are deterministic for a given ``seed``; the fast
backend's results do not depend on ``n_jobs``.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np
from joblib import Parallel, delayed
from sklearn.ensemble import GradientBoostingClassifier

from gmgcore.metrics import trees

__all__ = ["DCIBackend", "BACKENDS", "ImportanceFit", "importance_matrix"]

DCIBackend = Literal["exact", "fast"]
BACKENDS: tuple[str, ...] = ("exact", "fast")


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


def _fit_fast(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    seed: int,
    n_threads: int = 1,
) -> tuple[np.ndarray, float, float]:
    """scikit-learn's algorithm, compiled (:mod:`gmgcore.metrics.trees`)."""
    classes, label = np.unique(y_train, return_inverse=True)
    model = trees.fit(x_train, label, classes.size, seed, n_threads)
    train_acc = _accuracy(model.train_scores, classes, y_train)
    test_acc = _accuracy(trees.predict_scores(model, x_test, n_threads), classes, y_test)
    return model.importance, train_acc, test_acc


def _accuracy(scores: np.ndarray, classes: np.ndarray, y: np.ndarray) -> float:
    """scikit-learn's class rule: positive score for two classes, argmax otherwise."""
    index = (scores[:, 0] > 0).astype(int) if scores.shape[1] == 1 else scores.argmax(axis=1)
    return float(np.mean(classes[index] == y))


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

    ``n_jobs`` threads fit different factors (``"exact"``) or the classes of one boosting round
    (``"fast"``) at the same time.

    ``codes_*`` ``[n, n_codes]`` float, ``factors_*`` ``[n, n_factors]`` class indices, each
    factor with at least two classes in the training split. Column ``j`` of the importance
    matrix holds the importances of the codes for predicting factor ``j``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown DCI backend {backend!r}; expected one of {BACKENDS}")
    columns = range(factors_train.shape[1])
    if backend == "fast":  # factor after factor, each growing its classes' trees in parallel
        results = [
            _fit_fast(codes_train, factors_train[:, j], codes_test, factors_test[:, j], seed,
                      n_jobs)
            for j in columns
        ]
    else:
        jobs = (
            delayed(_fit_exact)(codes_train, factors_train[:, j], codes_test, factors_test[:, j],
                                seed)
            for j in columns
        )
        results = Parallel(n_jobs=n_jobs, prefer="threads")(jobs)
    importance = np.stack([r[0] for r in results], axis=1)
    return ImportanceFit(
        importance=importance,
        accuracy_train=np.array([r[1] for r in results]),
        accuracy_test=np.array([r[2] for r in results]),
    )
