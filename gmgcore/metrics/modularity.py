"""Modularity and explicitness (Ridgeway & Mozer 2018, "Learning deep disentangled embeddings
with the F-statistic loss", Sec. 3), in disentanglement_lib's form.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from gmgcore.metrics.information import histogram_discretize, mutual_info_matrix
from gmgcore.metrics.inputs import check_split, informative_factors
from gmgcore.metrics.results import ModularityExplicitnessResult

__all__ = ["modularity_explicitness", "modularity_from_mutual_info", "explicitness"]


def modularity_from_mutual_info(mutual_info: np.ndarray) -> float:
    r"""Modularity from ``m[i, j] = I(z_i; v_j)`` ``[n_codes, n_factors]``.

    .. math::
        \theta_i = \max_j m_{ij}^2, \quad
        \delta_i = \frac{\sum_j m_{ij}^2 - \theta_i}{\theta_i (K - 1)}, \quad
        \mathrm{mod} = \frac{1}{L} \sum_i (1 - \delta_i)

    averaged over all ``L`` codes; a code with :math:`\theta_i = 0` scores 0, so empty codes
    lower the score. With a single factor (``K = 1``) every informative code is trivially
    modular (``delta_i = 0``; disentanglement_lib divides 0 by 0 there).
    """
    sq = np.square(mutual_info)
    theta = sq.max(axis=1)
    k = sq.shape[1]
    score = np.zeros(sq.shape[0])
    informative = theta > 0
    if k == 1:
        score[informative] = 1.0
    else:
        delta = (sq[informative].sum(axis=1) - theta[informative]) / (theta[informative] * (k - 1))
        score[informative] = 1.0 - delta
    return float(np.mean(score))


def _standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Standardize both splits with the train mean and std; a constant code is only centred."""
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return (train - mean) / std, (test - mean) / std


def _macro_auc(y: np.ndarray, proba: np.ndarray, classes: np.ndarray, name: str) -> float:
    """Macro one-vs-rest ROC-AUC over the classes present in ``y`` that the model knows."""
    present = np.unique(y)
    if present.size < 2:
        raise ValueError(f"{name}: a single class is present, ROC-AUC is undefined")
    columns = np.searchsorted(classes, present)
    known = (columns < classes.size) & (classes[np.minimum(columns, classes.size - 1)] == present)
    if not known.any():
        raise ValueError(f"{name}: none of its classes was seen in training")
    pairs = zip(present[known], columns[known], strict=True)
    aucs = [roc_auc_score(y == c, proba[:, col]) for c, col in pairs]
    return float(np.mean(aucs))


def explicitness(
    codes_train: np.ndarray,
    factor_train: np.ndarray,
    codes_test: np.ndarray,
    factor_test: np.ndarray,
) -> tuple[float, float]:
    """Train and test ROC-AUC of a logistic regression predicting one factor from all codes.

    ``codes_*`` ``[n, n_codes]`` are standardized with the training mean and std, the model is
    ``LogisticRegression()`` with scikit-learn defaults, and the score is the macro average of
    the one-vs-rest AUCs of the classes present in each split (disentanglement_lib's
    ``MultiLabelBinarizer`` + ``roc_auc_score``, which fails when the splits hold different
    classes). ``factor_*`` are class indices ``[n]``.
    """
    x_tr, x_te = _standardize(codes_train, codes_test)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = LogisticRegression().fit(x_tr, factor_train)
    return (
        _macro_auc(factor_train, clf.predict_proba(x_tr), clf.classes_, "factors_train"),
        _macro_auc(factor_test, clf.predict_proba(x_te), clf.classes_, "factors_test"),
    )


def modularity_explicitness(
    codes_train: np.ndarray,
    factors_train: np.ndarray,
    codes_test: np.ndarray,
    factors_test: np.ndarray,
    num_bins: int = 20,
) -> ModularityExplicitnessResult:
    """Modularity (on the training split) and explicitness (train and test).

    Codes ``[n, n_codes]``, factors ``[n, n_factors]`` (class indices). Modularity uses the
    mutual information of ``num_bins``-bin discretized codes with the factors (nats);
    explicitness averages :func:`explicitness` over factors. Factors with a single value in
    ``factors_train`` are dropped with a warning.
    """
    z_tr, y_tr, z_te, y_te = check_split(codes_train, factors_train, codes_test, factors_test)
    keep = informative_factors(y_tr, "factors_train")
    y_tr, y_te = y_tr[:, keep], y_te[:, keep]
    m = mutual_info_matrix(histogram_discretize(z_tr, num_bins), y_tr)
    scores = [explicitness(z_tr, y_tr[:, j], z_te, y_te[:, j]) for j in range(y_tr.shape[1])]
    train, test = np.mean(scores, axis=0)
    return ModularityExplicitnessResult(
        modularity=modularity_from_mutual_info(m),
        explicitness_train=float(train),
        explicitness_test=float(test),
        mutual_info=m,
        factor_indices=keep,
    )
