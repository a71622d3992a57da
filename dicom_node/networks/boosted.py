"""Gradient-boosted decision trees on named features: a small, JSON-stored classifier for the bundles'
calibrators where a logistic model on the same features misses their interactions (a shape feature
means one thing on a calcified nodule, another next to the pleura).

Each tree is complete and of fixed depth, stored level by level: node ``i`` splits on
``features[feature[i]] <= threshold[i]`` (left child ``2i+1``, right ``2i+2``); the ``2**depth``
leaves hold additive log-odds. Fitting lives in :mod:`dicom_node.training.boosting`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class BoostedTrees:
    """A sum of fixed-depth regression trees on named features, squashed by a logistic function."""

    features: tuple[str, ...]
    depth: int
    base: float  # log-odds before the first tree
    split_feature: np.ndarray  # (trees, 2**depth - 1) int: index into ``features``
    split_threshold: np.ndarray  # (trees, 2**depth - 1) float
    leaf: np.ndarray  # (trees, 2**depth) float: log-odds added by each leaf

    kind = "boosted_trees"

    def logit(self, x: np.ndarray) -> np.ndarray:
        """Summed log-odds for the rows of ``x`` (n, len(features)), in ``features`` order."""
        x = np.asarray(x, dtype=float)
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise ValueError(f"expected (n, {len(self.features)}) features, got {x.shape}")
        out = np.full(len(x), self.base)
        rows = np.arange(len(x))
        for t in range(len(self.leaf)):
            node = np.zeros(len(x), dtype=int)
            for _ in range(self.depth):
                f = self.split_feature[t, node]
                go_right = x[rows, f] > self.split_threshold[t, node]
                node = 2 * node + 1 + go_right
            out += self.leaf[t, node - (2**self.depth - 1)]
        return out

    def __call__(self, feats: dict[str, float]) -> float:
        """Probability for one candidate's feature dict (a missing feature counts as 0, as in the
        logistic calibrators)."""
        x = np.array([[feats.get(f, 0.0) for f in self.features]], dtype=float)
        return float(1.0 / (1.0 + np.exp(-np.clip(self.logit(x)[0], -30, 30))))

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "features": list(self.features),
            "depth": self.depth,
            "base": round(float(self.base), 6),
            "split_feature": self.split_feature.astype(int).tolist(),
            # a node that does not split sends every row left: threshold +inf, stored as null (strict JSON)
            "split_threshold": [
                [round(float(v), 6) if np.isfinite(v) else None for v in row] for row in self.split_threshold
            ],
            "leaf": [[round(float(v), 6) for v in row] for row in self.leaf],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BoostedTrees:
        depth = int(d["depth"])
        model = cls(
            features=tuple(d["features"]),
            depth=depth,
            base=float(d["base"]),
            split_feature=np.asarray(d["split_feature"], dtype=int).reshape(-1, 2**depth - 1),
            split_threshold=np.asarray(
                [[np.inf if v is None else v for v in row] for row in d["split_threshold"]], dtype=float
            ).reshape(-1, 2**depth - 1),
            leaf=np.asarray(d["leaf"], dtype=float).reshape(-1, 2**depth),
        )
        if len(model.split_feature) != len(model.leaf) or len(model.split_threshold) != len(model.leaf):
            raise ValueError("boosted trees: split and leaf tables disagree on the number of trees")
        used = model.split_feature
        if used.size and (used.min() < 0 or used.max() >= len(model.features)):
            raise ValueError("boosted trees: a split names a feature index outside the feature list")
        return model
