"""Scores of a tumour label volume against the phantom truth: Dice, detection, physiological false calls.

Every score is given twice: on all tumours, and on the *detectable* ones only. A tumour is detectable when its
SUVmax as measured (after the PET blur, partial volume and noise) reaches the extraction floor every method
shares (:data:`~dicom_node.pipelines.pet_tumour.detect.MIN_SUVMAX`) and exceeds the 95th percentile of the SUV
in its 4-12 mm surroundings (the local background); a tumour that fails this is not in the image as a hot spot,
and no method, reader or network, can find it from the PET. A called region over an undetectable tumour
counts neither for nor against the detectable scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from dicom_node.pipelines.pet_tumour.detect import MIN_SUVMAX
from dicom_node.synth.pet_phantom import ORGANS

BACKGROUND_PERCENTILE = 95.0
_CUBE = np.ones((3, 3, 3), dtype=bool)


def detectable_ids(truth: np.ndarray, suv: np.ndarray) -> set[int]:
    """The truth labels whose tumour is detectable (see the module docstring; 4 mm voxels: the surroundings
    are the voxels 2 or 3 steps away from the tumour, outside every tumour)."""
    out: set[int] = set()
    for i, sl in enumerate(ndi.find_objects(truth.astype(np.int32)), start=1):
        if sl is None:
            continue
        box = tuple(slice(max(0, s.start - 4), s.stop + 4) for s in sl)
        region = truth[box] == i
        near = ndi.binary_dilation(region, _CUBE, iterations=1)
        shell = ndi.binary_dilation(region, _CUBE, iterations=3) & ~near & (truth[box] == 0)
        peak = float(suv[box][region].max())
        background = float(np.percentile(suv[box][shell], BACKGROUND_PERCENTILE)) if shell.any() else 0.0
        if peak >= MIN_SUVMAX and peak > background:
            out.add(i)
    return out


@dataclass
class ScanScore:
    """One scan: Dice of all tumour voxels, lesions found / visible, false calls (by organ), SUVmax errors."""

    dice: float
    found: int
    lesions: int
    false_calls: int
    false_by_organ: dict[str, int] = field(default_factory=dict)
    suvmax_rel_errors: list[float] = field(default_factory=list)
    dice_detectable: float = 1.0
    found_detectable: int = 0
    detectable: int = 0


def score_scan(
    pred: np.ndarray, truth: np.ndarray, organs: np.ndarray, suv: np.ndarray, visible: set[int] | None = None
) -> ScanScore:
    """Score a predicted label volume (0 none, i lesion) against truth labels on the same grid; ``visible`` the
    truth's :func:`detectable_ids` when already computed (they depend on the scan only)."""
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
    visible = detectable_ids(truth, suv) if visible is None else visible
    hidden = np.isin(truth, [i for i in ids if i not in visible])
    over_hidden = [int(j) for j in np.unique(pred[hidden & p])]
    keep_p = p & ~np.isin(pred, over_hidden) & ~hidden
    keep_t = t & ~hidden
    denom_d = int(keep_p.sum() + keep_t.sum())
    dice_d = 1.0 if denom_d == 0 else 2.0 * float((keep_p & keep_t).sum()) / denom_d
    found_d = sum(1 for i in visible if (p & (truth == i)).any())
    return ScanScore(dice, found, len(ids), sum(false_by.values()), false_by, errors, dice_d, found_d, len(visible))


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
        "dice_detectable_mean": round(float(np.mean([s.dice_detectable for s in scores])), 4),
        "detectable_lesions": sum(s.detectable for s in scores),
        "detectable_found": sum(s.found_detectable for s in scores),
        "false_calls_per_scan": round(sum(s.false_calls for s in scores) / max(len(scores), 1), 3),
        "false_calls_by_organ": dict(sorted(organs.items())),
        "suvmax_rel_error_median": round(float(np.median(errors)), 4) if errors else None,
    }
