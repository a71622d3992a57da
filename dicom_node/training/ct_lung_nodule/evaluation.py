"""Evaluation of the CT nodule bundle: Dice, FROC, malignancy AUC and diameter MAE on held-out phantoms (a
seed the training never uses), and the real chest CT in ``shared/data/real``; the numbers go into
docs/metrics.json and the model card."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dicom_node.pipelines.ct_lung_nodule import (
    COMPOSITIONS,
    Candidate,
    load_model,
    long_short_axes,
)
from dicom_node.pipelines.ct_lung_nodule.pipeline import CtLungNodule
from dicom_node.pipelines.ct_lung_nodule.scope import inside_lungs
from dicom_node.training.ct_lung_nodule.card import write_card
from dicom_node.training.ct_lung_nodule.data import REAL_DIR, Case, match_truths, phantom_case
from dicom_node.training.ct_lung_nodule.real import evaluate_real_scans
from dicom_node.training.ct_lung_nodule.runtime import pick_device

FROC_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def froc(
    detections: list[tuple[float, int, int]],
    n_positive: int,
    n_scans: int,
    rates: Sequence[float] = FROC_RATES,
) -> dict[str, float]:
    """Sensitivity at each FP/scan rate. ``detections`` = (score, scan, truth id or 0 for FP) per candidate
    (duplicates of the same truth must already be removed)."""
    out: dict[str, float] = {}
    if n_positive == 0:
        return {str(r): float("nan") for r in rates}
    ordered = sorted(detections, key=lambda d: -d[0])
    for rate in rates:
        tp = fp = 0
        best = 0.0
        for _score, _, tid in ordered:
            if tid > 0:
                tp += 1
            else:
                fp += 1
            if fp / n_scans <= rate:
                best = max(best, tp / n_positive)
        out[str(rate)] = best
    return out


EVAL_SCANS = 32  # 1.1.0 and before: 16 (the same first 16 phantoms of the seed)


def evaluate(
    bundle_dir: Path, seed: int = 1234, real_dir: Path | None = None, n_scans: int = EVAL_SCANS
) -> dict[str, Any]:
    """Held-out synthetic evaluation (phantoms from ``seed``) plus the real chest CT; updates the card."""
    device = pick_device()
    model, version = load_model(bundle_dir, device)
    min_score = float(getattr(model, "min_score", 0.5))
    rng = np.random.default_rng(seed)
    seconds: list[float] = []
    records: list[dict[str, Any]] = []  # one per truth nodule and one per false-positive candidate
    for scan in range(n_scans):
        case = phantom_case(rng, f"eval{scan}", n_nodules=(1, 4))
        t0 = time.perf_counter()
        cands = [c for c in model.detect(case.norm, case.region, case.spacing) if _in_lung(c, case)]
        seconds.append(time.perf_counter() - t0)
        matches = match_truths(cands, case)
        best: dict[int, tuple[float, Candidate]] = {}
        for c, m in zip(cands, matches, strict=True):
            if m > 0:
                if m not in best or c.score > best[m][0]:
                    best[m] = (c.score, c)
            elif m == 0:
                records.append({"scan": scan, "fp": True, "score": c.score})
        for t in case.truths:
            rec: dict[str, Any] = {"scan": scan, "fp": False, "big": t.diameter >= 6.0, "found": t.index in best}
            if t.index in best:
                score, c = best[t.index]
                gt = case.labels == t.index
                inter = float((c.local & gt[c.box]).sum())
                k = int(np.argmax(c.local.reshape(c.local.shape[0], -1).sum(axis=1)))
                rec.update(
                    score=score,
                    dice=2 * inter / float(c.local.sum() + gt.sum()),
                    p_malignant=c.p_malignant,
                    malignant=t.malignant,
                    composition_ok=int(
                        max(c.composition, key=lambda n: c.composition[n]) == COMPOSITIONS[t.composition]
                    ),
                    diameter_err=abs(c.diameter - t.diameter),
                    mask_diameter_err=abs(
                        long_short_axes(c.local[k], (case.spacing[1], case.spacing[2]))[0] - t.diameter
                    ),
                )
            records.append(rec)
    result: dict[str, Any] = {"version": version, "seed": seed, "scans": n_scans}
    result.update(_metrics(records, n_scans, min_score))
    result["detect_seconds_per_scan"] = float(np.mean(seconds))
    result["device"] = device
    if n_scans > 16:
        sub = _metrics([r for r in records if r["scan"] < 16], 16, min_score)
        result["first_16_scans"] = {
            k: sub[k]
            for k in (
                "nodules_ge_6mm",
                "froc_sensitivity_ge_6mm",
                "operating_point",
                "dice_detected_ge_6mm",
                "malignancy_auc",
                "diameter_mae_mm",
            )
        }
    result["real"] = evaluate_real_scans(CtLungNodule(bundle=str(bundle_dir)), real_dir or REAL_DIR, device)
    path = Path(bundle_dir) / "docs" / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    write_card(Path(bundle_dir))
    return result


def _in_lung(c: Candidate, case: Case) -> bool:
    """The pipeline's inside-the-lungs rule (see :mod:`dicom_node.pipelines.ct_lung_nodule.scope`)."""
    return case.lung is None or inside_lungs(c.mask, case.lung, case.spacing)


def _metrics(records: list[dict[str, Any]], n_scans: int, min_score: float) -> dict[str, Any]:
    """The card's numbers from :func:`evaluate`'s per-nodule / per-false-positive records."""
    truths = [r for r in records if not r["fp"]]
    fps = [r for r in records if r["fp"]]
    big = [r for r in truths if r["big"]]
    dets = [(r["score"], r["scan"], 0) for r in fps] + [(r["score"], r["scan"], 1) for r in big if r["found"]]
    sens = froc(dets, len(big), n_scans)
    kept = [r for r in truths if r["found"] and r["score"] >= min_score]
    kept_big = [r for r in kept if r["big"]]
    dice_all = [r["dice"] if r["found"] and r["score"] >= min_score else 0.0 for r in big]

    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else float("nan")

    return {
        "nodules_ge_6mm": len(big),
        "froc_sensitivity_ge_6mm": sens,
        "froc_mean": float(np.mean(list(sens.values()))),
        "operating_point": {
            "min_score": min_score,
            "sensitivity_ge_6mm": len(kept_big) / max(len(big), 1),
            "fp_per_scan": sum(r["score"] >= min_score for r in fps) / n_scans,
        },
        "dice_detected_ge_6mm": mean([r["dice"] for r in kept_big]),
        "dice_all_ge_6mm_misses_zero": mean(dice_all),
        "malignancy_auc": auc(np.asarray([r["p_malignant"] for r in kept]), np.asarray([r["malignant"] for r in kept])),
        "composition_accuracy": mean([r["composition_ok"] for r in kept]),
        "diameter_mae_mm": mean([r["diameter_err"] for r in kept]),
        "mask_long_axis_mae_mm": mean([r["mask_diameter_err"] for r in kept]),
    }
