"""Scores of a tumour label volume against the phantom truth: Dice, detection, physiological false calls."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dicom_node.synth.pet_phantom import ORGANS


@dataclass
class ScanScore:
    """One scan: Dice of all tumour voxels, lesions found / visible, false calls (by organ), SUVmax errors."""

    dice: float
    found: int
    lesions: int
    false_calls: int
    false_by_organ: dict[str, int] = field(default_factory=dict)
    suvmax_rel_errors: list[float] = field(default_factory=list)


def score_scan(pred: np.ndarray, truth: np.ndarray, organs: np.ndarray, suv: np.ndarray) -> ScanScore:
    """Score a predicted label volume (0 none, i lesion) against truth labels on the same grid."""
    p, t = pred > 0, truth > 0
    denom = int(p.sum() + t.sum())
    dice = 1.0 if denom == 0 else 2.0 * float((p & t).sum()) / denom
    found = 0
    errors: list[float] = []
    ids = [int(i) for i in np.unique(truth) if i > 0]
    for i in ids:
        region = truth == i
        hits = np.unique(pred[region & p])
        if hits.size:
            found += 1
            true_max = float(suv[region].max())
            got = float(suv[np.isin(pred, hits)].max())
            errors.append(abs(got - true_max) / max(true_max, 1e-6))
    false_by: dict[str, int] = {}
    for j in (int(v) for v in np.unique(pred) if v > 0):
        region = pred == j
        if (region & t).any():
            continue
        organ = ORGANS[int(np.bincount(organs[region].ravel()).argmax())]
        false_by[organ] = false_by.get(organ, 0) + 1
    return ScanScore(dice, found, len(ids), sum(false_by.values()), false_by, errors)


def summarize(scores: list[ScanScore]) -> dict[str, object]:
    """Mean Dice, lesion sensitivity, false calls per scan (and by organ), median SUVmax error."""
    organs: dict[str, int] = {}
    for s in scores:
        for k, v in s.false_by_organ.items():
            organs[k] = organs.get(k, 0) + v
    errors = [e for s in scores for e in s.suvmax_rel_errors]
    lesions = sum(s.lesions for s in scores)
    return {
        "scans": len(scores),
        "dice_mean": round(float(np.mean([s.dice for s in scores])), 4),
        "dice_min": round(float(np.min([s.dice for s in scores])), 4),
        "lesions": lesions,
        "lesions_found": sum(s.found for s in scores),
        "sensitivity": round(sum(s.found for s in scores) / max(lesions, 1), 4),
        "false_calls_per_scan": round(sum(s.false_calls for s in scores) / max(len(scores), 1), 3),
        "false_calls_by_organ": dict(sorted(organs.items())),
        "suvmax_rel_error_median": round(float(np.median(errors)), 4) if errors else None,
    }
