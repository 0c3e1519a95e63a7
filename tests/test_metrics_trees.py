"""The compiled gradient boosting against scikit-learn's GradientBoostingClassifier."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.tree import DecisionTreeRegressor

from gmgcore.metrics import trees


def _data(n: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    x = np.c_[y + 0.8 * rng.normal(size=n), rng.normal(size=(n, 2)), 0.3 * y + rng.normal(size=n)]
    return x, y


def _centred(scores: np.ndarray) -> np.ndarray:
    """Multiclass raw scores are defined up to a shift per sample (softmax ignores it)."""
    return scores if scores.shape[1] == 1 else scores - scores.mean(axis=1, keepdims=True)


def test_training_scores_match_scikit_learn() -> None:
    # 100 rounds of two-class boosting, tree for tree: the scores agree to rounding. (This data
    # set has no exact tie between splits that part the samples differently; where there is
    # one, each side picks its own tied code at random.)
    x, y = _data(300, 2, 0)
    ours = trees.fit(x, y, 2)
    reference = GradientBoostingClassifier(random_state=0).fit(x, y)
    np.testing.assert_allclose(ours.train_scores[:, 0], reference.decision_function(x), atol=1e-9)
    np.testing.assert_allclose(ours.importance, reference.feature_importances_, atol=0.01)


def test_multiclass_importance_is_within_scikit_learns_own_seed_spread() -> None:
    x, y = _data(400, 4, 0)
    ours = trees.fit(x, y, 4)
    runs = [GradientBoostingClassifier(random_state=s).fit(x, y) for s in (0, 1)]
    spread = np.abs(runs[0].feature_importances_ - runs[1].feature_importances_).max()
    assert np.abs(ours.importance - runs[0].feature_importances_).max() <= max(3 * spread, 0.01)
    accuracy = np.mean(_centred(ours.train_scores).argmax(axis=1) == y)
    assert accuracy == pytest.approx(runs[0].score(x, y), abs=0.02)


def test_one_tree_matches_scikit_learn_split_for_split() -> None:
    x, _ = _data(300, 2, 1)
    r = x[:, 0] + np.random.default_rng(1).normal(size=300)  # continuous: no tied partitions
    x32 = x.astype(np.float32).astype(np.float64)
    n, d = x.shape
    order, xs = trees.presort(x32)
    feature, threshold = np.zeros(7, np.int64), np.zeros(7)
    slot, importance = np.zeros(n, np.int64), np.zeros(d)
    trees._grow(
        np.ascontiguousarray(x32.T), order, xs, r, np.random.default_rng(0).random((7, d)),
        feature, threshold, slot, importance, np.empty((2, d, n), np.int32),
        np.empty((2, d, n), np.float32), np.zeros(n, np.uint8),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tree = DecisionTreeRegressor(max_depth=3, random_state=0).fit(x, r).tree_
    internal = tree.children_left >= 0
    # scikit-learn numbers its nodes depth first; this tree is complete, so compare as sets
    assert sorted(zip(feature, threshold, strict=True)) == sorted(
        zip(tree.feature[internal], tree.threshold[internal], strict=True)
    )
    np.testing.assert_allclose(
        importance / n, tree.compute_feature_importances(normalize=False), rtol=1e-9
    )
    leaves = tree.apply(x.astype(np.float32))
    assert len(np.unique(slot)) == len(np.unique(leaves))
    for leaf in np.unique(slot):  # the same samples end in the same leaves
        assert len(np.unique(leaves[slot == leaf])) == 1


def test_test_scores_follow_the_stored_trees() -> None:
    x, y = _data(300, 3, 2)
    model = trees.fit(x, y, 3)
    np.testing.assert_allclose(trees.predict_scores(model, x), model.train_scores, atol=1e-12)


def test_constant_codes_give_no_splits_and_zero_importance() -> None:
    # No split anywhere, yet every round still moves the scores by one leaf value (the root's
    # Newton step), as in scikit-learn.
    x, y = np.ones((100, 2)), np.arange(100) % 3
    model = trees.fit(x, y, 3)
    assert (model.feature == -1).all() and not model.importance.any()
    theirs = GradientBoostingClassifier(random_state=0).fit(x, y).decision_function(x)
    np.testing.assert_allclose(_centred(model.train_scores), _centred(theirs), atol=1e-9)


def test_one_class_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least two classes"):
        trees.fit(np.ones((10, 2)), np.zeros(10, int), 1)
