"""The lung-nodule bundle's stored score models ("calibrators" in its metadata): a logistic or linear
:class:`Calibrator` on named features, or :class:`~dicom_node.networks.boosted.BoostedTrees`.

Both are stored as JSON in the bundle's ``configs/metadata.json`` and read back with
:func:`calibrator_from_json`. Fitting lives in :mod:`dicom_node.training`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dicom_node.networks.boosted import BoostedTrees


@dataclass
class Calibrator:
    """A logistic (or, with ``kind="linear"``, linear) model on named features, stored as JSON in the bundle."""

    features: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    kind: str = "logistic"

    def __call__(self, feats: dict[str, float]) -> float:
        x = np.array([feats.get(f, 0.0) for f in self.features], dtype=float)
        z = float(((x - self.mean) / self.scale) @ self.coef + self.intercept)
        if self.kind == "linear":
            return z
        return float(1.0 / (1.0 + np.exp(-np.clip(z, -30, 30))))

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "features": list(self.features),
            "mean": [round(float(v), 6) for v in self.mean],
            "scale": [round(float(v), 6) for v in self.scale],
            "coef": [round(float(v), 6) for v in self.coef],
            "intercept": round(float(self.intercept), 6),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Calibrator:
        return cls(
            features=tuple(d["features"]),
            mean=np.asarray(d["mean"], dtype=float),
            scale=np.asarray(d["scale"], dtype=float),
            coef=np.asarray(d["coef"], dtype=float),
            intercept=float(d["intercept"]),
            kind=str(d.get("kind", "logistic")),
        )


ScoreModel = Calibrator | BoostedTrees  # what a bundle's "calibrators" entries load as


def calibrator_from_json(d: dict[str, Any]) -> ScoreModel:
    """A bundle's calibrator entry: boosted trees (``"kind": "boosted_trees"``) or a logistic / linear
    :class:`Calibrator`."""
    if d.get("kind") == BoostedTrees.kind:
        return BoostedTrees.from_json(d)
    return Calibrator.from_json(d)
