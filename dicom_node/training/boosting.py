"""Fitting :class:`dicom_node.networks.boosted.BoostedTrees`: Newton boosting of fixed-depth trees on the
logistic loss, with splits searched over quantile bins of each feature (as histogram boosting does)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dicom_node.networks.boosted import BoostedTrees


def fit_boosted_trees(
    x: np.ndarray,
    y: np.ndarray,
    features: Sequence[str],
    *,
    trees: int = 100,
    depth: int = 2,
    learning_rate: float = 0.05,
    l2: float = 1.0,
    min_leaf: int = 10,
    bins: int = 32,
) -> BoostedTrees:
    """Fit ``trees`` trees of ``depth`` levels to labels ``y`` (0/1) from ``x`` (n, len(features)).

    Each split maximizes the second-order gain ``G_L^2/(H_L+l2) + G_R^2/(H_R+l2) - G^2/(H+l2)`` over the
    features' quantile bin edges, keeping at least ``min_leaf`` rows on each side; a node with no such
    split sends every row left. Leaves hold ``-learning_rate * G / (H + l2)``. Deterministic.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    n, n_feat = x.shape
    if n_feat != len(features) or len(y) != n:
        raise ValueError("fit_boosted_trees: x, y and features disagree in size")
    if not 0 < y.sum() < n:
        raise ValueError("fit_boosted_trees: both classes are needed")
    edges = [np.unique(np.quantile(x[:, j], np.linspace(0, 1, bins + 1)[1:-1])) for j in range(n_feat)]
    codes = np.stack([np.searchsorted(edges[j], x[:, j], side="left") for j in range(n_feat)], axis=1)
    prior = float(np.clip(y.mean(), 1e-6, 1 - 1e-6))
    base = float(np.log(prior / (1 - prior)))
    inner, leaves = 2**depth - 1, 2**depth
    split_feature = np.zeros((trees, inner), dtype=int)
    split_threshold = np.full((trees, inner), np.inf)
    leaf = np.zeros((trees, leaves))
    z = np.full(n, base)
    for t in range(trees):
        p = 1.0 / (1.0 + np.exp(-z))
        g, h = p - y, p * (1 - p)
        node = np.zeros(n, dtype=int)
        for i in range(inner):
            rows = node == i
            best = _best_split(codes[rows], g[rows], h[rows], edges, l2, min_leaf)
            if best is not None:
                split_feature[t, i], split_threshold[t, i] = best
            right = rows & (x[:, split_feature[t, i]] > split_threshold[t, i])
            node[rows] = 2 * i + 1
            node[right] = 2 * i + 2
        at = node - inner
        gs = np.bincount(at, weights=g, minlength=leaves)
        hs = np.bincount(at, weights=h, minlength=leaves)
        leaf[t] = -learning_rate * gs / (hs + l2)
        z += leaf[t, at]
    return BoostedTrees(tuple(features), depth, base, split_feature, split_threshold, leaf)


def _best_split(
    codes: np.ndarray, g: np.ndarray, h: np.ndarray, edges: list[np.ndarray], l2: float, min_leaf: int
) -> tuple[int, float] | None:
    """(feature, threshold) of the best split of these rows, or None when none keeps ``min_leaf`` a side."""
    n = len(g)
    if n < 2 * min_leaf:
        return None
    gt, ht = g.sum(), h.sum()
    parent = gt * gt / (ht + l2)
    best_gain, best = 1e-12, None
    for j, e in enumerate(edges):
        if len(e) == 0:
            continue
        k = len(e) + 1
        c = codes[:, j]
        gl = np.cumsum(np.bincount(c, weights=g, minlength=k))[:-1]
        hl = np.cumsum(np.bincount(c, weights=h, minlength=k))[:-1]
        nl = np.cumsum(np.bincount(c, minlength=k))[:-1]
        ok = (nl >= min_leaf) & (n - nl >= min_leaf)
        if not ok.any():
            continue
        gain = gl**2 / (hl + l2) + (gt - gl) ** 2 / (ht - hl + l2) - parent
        gain[~ok] = -np.inf
        b = int(np.argmax(gain))
        if gain[b] > best_gain:
            best_gain, best = float(gain[b]), (j, float(e[b]))
    return best
