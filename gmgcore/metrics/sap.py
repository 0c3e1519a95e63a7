"""Separated Attribute Predictability (Kumar, Sattigeri, Balakrishnan 2018, "Variational
inference of disentangled latent concepts from unlabeled observations", Sec. 3), in
disentanglement_lib's form.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import LinearSVC

from gmgcore.metrics.inputs import check_split, informative_factors
from gmgcore.metrics.results import SAPResult

__all__ = ["sap", "sap_from_scores", "sap_score_matrix"]

_MIN_VARIANCE = 1e-12


def sap_from_scores(score_matrix: np.ndarray) -> float:
    r"""Mean over factors of the gap between the two best codes.

    .. math:: \mathrm{SAP} = \frac{1}{K} \sum_j \bigl(S_{(1) j} - S_{(2) j}\bigr)

    for a score matrix ``S`` ``[n_codes, n_factors]``; with one code the runner-up is 0.
    """
    top = np.sort(score_matrix, axis=0)[::-1]
    second = top[1] if top.shape[0] > 1 else np.zeros(top.shape[1])
    return float(np.mean(top[0] - second))


def sap_score_matrix(
    codes_train: np.ndarray,
    factors_train: np.ndarray,
    codes_test: np.ndarray,
    factors_test: np.ndarray,
    continuous: bool = False,
) -> np.ndarray:
    r"""Score ``S[i, j]`` of code ``i`` for factor ``j``, shape ``[n_codes, n_factors]``.

    Discrete factors: test accuracy of ``LinearSVC(C=0.01, class_weight="balanced")`` fitted on
    the single code ``z_i`` of the training split. Continuous factors: the squared correlation
    :math:`\mathrm{cov}(z_i, v_j)^2 / (\mathrm{var}\, z_i \, \mathrm{var}\, v_j)` on the training
    split (ddof 1). In both modes a code with variance <= 1e-12 scores 0 (disentanglement_lib
    does this only in the continuous mode; its discrete mode would score a constant code by the
    frequency of the class its SVM happens to predict).
    """
    n_codes, n_factors = codes_train.shape[1], factors_train.shape[1]
    scores = np.zeros((n_codes, n_factors))
    for i in range(n_codes):
        z = codes_train[:, i]
        if z.size < 2 or np.var(z, ddof=1) <= _MIN_VARIANCE:
            continue
        for j in range(n_factors):
            y = factors_train[:, j]
            if continuous:
                cov = np.cov(z, y, ddof=1)
                scores[i, j] = cov[0, 1] ** 2 / (cov[0, 0] * cov[1, 1])
            else:
                svm = LinearSVC(C=0.01, class_weight="balanced")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    svm.fit(z[:, None], y)
                scores[i, j] = np.mean(svm.predict(codes_test[:, i : i + 1]) == factors_test[:, j])
    return scores


def sap(
    codes_train: np.ndarray,
    factors_train: np.ndarray,
    codes_test: np.ndarray,
    factors_test: np.ndarray,
    continuous: bool = False,
) -> SAPResult:
    """SAP score of codes ``[n, n_codes]`` for factors ``[n, n_factors]`` (class indices).

    ``continuous=False`` is disentanglement_lib's study default (classification accuracy on the
    test split); ``continuous=True`` uses squared correlations on the training split only.
    Factors with a single value in ``factors_train`` are dropped with a warning.
    """
    z_tr, y_tr, z_te, y_te = check_split(codes_train, factors_train, codes_test, factors_test)
    keep = informative_factors(y_tr, "factors_train")
    s = sap_score_matrix(z_tr, y_tr[:, keep], z_te, y_te[:, keep], continuous)
    return SAPResult(sap=sap_from_scores(s), score_matrix=s, factor_indices=keep)
