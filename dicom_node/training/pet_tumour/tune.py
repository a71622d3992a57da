"""Choosing the network's probability threshold, seed threshold and boundary refinement fraction on the
validation seeds (never trained on, never the held-out test seeds): the highest mean Dice among the settings
with at most 0.5 false calls per scan (the fewest false calls when none qualifies), with the torso and brown fat
rules of the pipeline applied before the refinement (:func:`~dicom_node.pipelines.pet_tumour.detect.
refine_boundaries`; fraction 0 leaves the network's regions as they are). Written into the bundle's
``configs/metadata.json``."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dicom_node.pipelines.pet_tumour.detect import (
    anatomy_rules,
    hysteresis,
    lesion_labels,
    network_probabilities,
    refine_boundaries,
    torso_mask,
)
from dicom_node.pipelines.pet_tumour.model import load_net
from dicom_node.training.pet_tumour.data import VALIDATION_SEEDS, load_case
from dicom_node.training.pet_tumour.metrics import detectable_ids, score_scan

THRESHOLDS = (0.2, 0.3, 0.4)  # 1.1.0 also tried 0.5-0.7 and seeds 0.6-0.95, on 12 validation phantoms
SEEDS = (0.5, 0.9, 0.98)
FRACTIONS = (0.0, 0.3, 0.35, 0.4)
MAX_FALSE_PER_SCAN = 0.5


def tune(
    bundle: str | Path, *, seeds: Sequence[int] = VALIDATION_SEEDS, progress: Callable[[str], None] = print
) -> dict[str, Any]:
    """Pick (threshold, seed_threshold, refine_fraction) on ``seeds`` and store them in the bundle's metadata."""
    from dicom_node.training.ct_lung_nodule.runtime import pick_device

    net = load_net(bundle, pick_device())
    cases = []
    visible: list[set[int]] = []
    for seed in seeds:
        case = load_case(seed)
        cases.append((case, network_probabilities(net, case.suv, case.ct, case.spacing), torso_mask(case.ct)))
        visible.append(detectable_ids(case.lesions, case.suv))
        progress(f"validation seed {seed}: probabilities ready")
    table: list[dict[str, float]] = []
    for low in THRESHOLDS:
        for high in SEEDS:
            if high < low:
                continue
            masks = [
                anatomy_rules(hysteresis(prob, low, high, case.suv), case.ct, case.suv, torso)
                for case, prob, torso in cases
            ]
            for fraction in FRACTIONS:
                scores = []
                for (case, _, _), mask, seen in zip(cases, masks, visible, strict=True):
                    labels, _ = lesion_labels(refine_boundaries(mask, case.suv, case.spacing, fraction), case.suv)
                    scores.append(score_scan(labels, case.lesions, case.organs, case.suv, seen))
                table.append(
                    {
                        "threshold": low,
                        "seed_threshold": high,
                        "refine_fraction": fraction,
                        "dice": round(float(np.mean([s.dice for s in scores])), 4),
                        "false_per_scan": round(sum(s.false_calls for s in scores) / len(scores), 3),
                    }
                )
    ok = [row for row in table if row["false_per_scan"] <= MAX_FALSE_PER_SCAN]
    best = max(ok, key=lambda r: r["dice"]) if ok else min(table, key=lambda r: (r["false_per_scan"], -r["dice"]))
    path = Path(bundle) / "configs" / "metadata.json"
    meta = json.loads(path.read_text())
    meta["threshold"], meta["seed_threshold"] = best["threshold"], best["seed_threshold"]
    meta["refine_fraction"] = best["refine_fraction"]
    meta["tuning"] = {"validation_seeds": [int(s) for s in seeds], "chosen": best, "table": table}
    path.write_text(json.dumps(meta, indent=2) + "\n")
    progress(f"chosen: {best}")
    return best
