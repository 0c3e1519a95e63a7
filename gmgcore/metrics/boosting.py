"""Per-factor boosted-tree classifiers and the importance matrix they give (for DCI).

Backends:

- ``"exact"``: ``sklearn.ensemble.GradientBoostingClassifier()`` with default settings (100
  stages, depth 3, learning rate 0.1, exact splits), as disentanglement_lib. Importances are
  scikit-learn's impurity decreases, averaged over trees and normalized to sum to 1.
- ``"lightgbm"``: LightGBM boosting with the same budget (100 rounds of depth-3 trees with up
  to 8 leaves, learning rate 0.1, softmax or logistic loss, no regularization, LightGBM's
  default leaf minimums of 20 samples and 1e-3 hessian), histogram splits over up to 255 bins,
  one thread per model. Importances are the total split gain per code, normalized to sum to 1.
  The training accuracy is read from the booster's own training scores, which saves a second
  pass over the trees. It needs the optional ``lightgbm`` package. Its deviation from
  ``"exact"`` (split criterion: second-order gain instead of scikit-learn's first-order
  ``friedman_mse``; binned thresholds) is measured in docs/metrics.md.

Both are deterministic for a given ``seed`` and fit the factors independently, in parallel
with ``n_jobs`` threads (both learners release the GIL while building trees). LightGBM's own
threads oversubscribe a small machine badly, so parallelism is over factors only.
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


LIGHTGBM_PARAMS: dict[str, object] = {
    "learning_rate": 0.1,
    "max_depth": 3,
    "num_leaves": 8,
    "min_data_in_leaf": 20,
    "min_sum_hessian_in_leaf": 1e-3,
    "lambda_l2": 0.0,
    "bagging_fraction": 1.0,
    "feature_fraction": 1.0,
    "num_threads": 1,
    "deterministic": True,
    "force_col_wise": True,
    "metric": "None",
    "verbosity": -1,
}
LIGHTGBM_ROUNDS = 100


def _fit_lightgbm(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, seed: int
) -> tuple[np.ndarray, float, float]:
    try:
        import lightgbm
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "DCI backend 'lightgbm' needs the lightgbm package (pip install lightgbm)"
        ) from err
    classes, label = np.unique(y_train, return_inverse=True)
    binary = classes.size == 2
    params = {**LIGHTGBM_PARAMS, "seed": seed}
    params.update({"objective": "binary"} if binary else
                  {"objective": "multiclass", "num_class": int(classes.size)})  # fmt: skip
    data = lightgbm.Dataset(x_train, label=label)
    booster = lightgbm.train(
        params, data, num_boost_round=LIGHTGBM_ROUNDS, keep_training_booster=True
    )
    gain = booster.feature_importance(importance_type="gain").astype(np.float64)
    importance = gain / gain.sum() if gain.sum() > 0 else np.zeros_like(gain)

    def predicted(proba: np.ndarray) -> np.ndarray:
        # The class rule of LGBMClassifier.predict: argmax, or p > 0.5 for two classes.
        return classes[(proba > 0.5).astype(int) if binary else np.argmax(proba, axis=1)]

    # Training accuracy from the booster's own training scores (no second pass over the trees).
    train_acc = booster.eval_train(
        lambda proba, _: ("accuracy", float(np.mean(predicted(proba) == y_train)), True)
    )[0][2]
    test_acc = float(np.mean(predicted(booster.predict(x_test)) == y_test))
    return importance, float(train_acc), test_acc


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
