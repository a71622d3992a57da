"""Boosted-tree calibrators: fitting finds interactions a logistic model cannot, JSON round trip, bad tables."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dicom_node.networks.boosted import BoostedTrees
from dicom_node.training.boosting import fit_boosted_trees
from dicom_node.training.ct_lung_nodule.calibration import fit_logistic
from dicom_node.training.ct_lung_nodule.evaluation import auc


def _xor(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Label = sign(a) == sign(b), plus a noise feature: no single direction separates it."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    y = ((x[:, 0] > 0) == (x[:, 1] > 0)).astype(float)
    flip = rng.random(n) < 0.05
    y[flip] = 1 - y[flip]
    return x, y


def test_trees_learn_an_interaction_that_a_logistic_model_misses() -> None:
    x, y = _xor(800, 0)
    xt, yt = _xor(400, 1)
    trees = fit_boosted_trees(x, y, ("a", "b", "noise"), trees=60, depth=2, learning_rate=0.2)
    lin = fit_logistic(x, y, l2=1.0)
    lin_z = ((xt - lin["mean"]) / lin["scale"]) @ lin["coef"] + lin["intercept"]
    assert auc(trees.logit(xt), yt) > 0.9
    assert auc(lin_z, yt) < 0.65
    assert set(np.unique(trees.split_feature)) <= {0, 1, 2}
    assert (trees.split_feature == 2).mean() < 0.2  # the noise feature is seldom chosen


def test_fitting_is_deterministic_and_json_round_trips() -> None:
    x, y = _xor(300, 2)
    a = fit_boosted_trees(x, y, ("a", "b", "c"), trees=20)
    b = fit_boosted_trees(x, y, ("a", "b", "c"), trees=20)
    assert np.array_equal(a.leaf, b.leaf) and np.array_equal(a.split_threshold, b.split_threshold)
    again = BoostedTrees.from_json(json.loads(json.dumps(a.to_json())))
    assert np.allclose(again.logit(x), a.logit(x), atol=1e-4)
    feats = {"a": 1.0, "b": 1.0, "c": 0.0}
    assert abs(again(feats) - a(feats)) < 1e-5
    assert 0.0 < a(feats) < 1.0
    assert a({"a": 1.0}) == a({"a": 1.0, "b": 0.0, "c": 0.0})  # a missing feature reads as 0


def test_a_node_without_a_valid_split_sends_every_row_left() -> None:
    x = np.zeros((30, 1))
    y = np.r_[np.ones(10), np.zeros(20)]
    model = fit_boosted_trees(x, y, ("constant",), trees=3, min_leaf=5)
    assert np.isinf(model.split_threshold).all()
    text = json.dumps(model.to_json(), allow_nan=False)  # strict JSON: the +inf thresholds are stored as null
    assert np.isinf(BoostedTrees.from_json(json.loads(text)).split_threshold).all()
    assert np.allclose(model.logit(x), model.logit(x)[0])  # one value for all rows: the prior, shrunk toward it


def test_bad_inputs_and_tables_are_refused() -> None:
    with pytest.raises(ValueError, match="both classes"):
        fit_boosted_trees(np.zeros((5, 1)), np.ones(5), ("f",))
    with pytest.raises(ValueError, match="disagree in size"):
        fit_boosted_trees(np.zeros((5, 2)), np.r_[np.ones(2), np.zeros(3)], ("f",))
    good = fit_boosted_trees(*_xor(100, 3), ("a", "b", "c"), trees=2).to_json()
    with pytest.raises(ValueError, match="outside the feature list"):
        BoostedTrees.from_json(dict(good, features=["a"]))
    with pytest.raises(ValueError, match="number of trees"):
        BoostedTrees.from_json(dict(good, leaf=good["leaf"][:1]))
    with pytest.raises(ValueError, match="expected"):
        BoostedTrees.from_json(good).logit(np.zeros((2, 2)))
