"""The CT nodule bundle's calibrators: detection (logistic), malignancy (boosted trees) and diameter
(linear), fitted on the candidates of fresh calibration cases and stored as JSON in configs/metadata.json."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dicom_node.pipelines.ct_lung_nodule import (
    DETECT_FEATURES,
    MALIGNANCY_TREE_FEATURES,
    Calibrator,
    NoduleModel,
    load_model,
)
from dicom_node.training.boosting import fit_boosted_trees
from dicom_node.training.ct_lung_nodule.data import Case, calibration_cases, match_truths
from dicom_node.training.ct_lung_nodule.runtime import pick_device, progress_bar

# Chosen on the validation seed (777) for bundle 1.2.0: hysteresis outline level, HU-aware outline
# refinement level, and the operating point on the calibrated detection score.
GROW_THRESHOLD = 0.35
HU_REFINE = 0.5
MIN_SCORE = 0.25


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, weights: np.ndarray | None = None) -> dict[str, Any]:
    """L2-regularized logistic regression by Newton steps on standardized features; JSON-ready parameters
    (see :class:`dicom_node.pipelines.ct_lung_nodule.Calibrator`)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    w_s = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=float)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-6] = 1.0
    z = np.concatenate([(x - mean) / scale, np.ones((len(x), 1))], axis=1)
    beta = np.zeros(z.shape[1])
    reg = np.full(z.shape[1], l2)
    reg[-1] = 0.0
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ beta, -30, 30)))
        grad = z.T @ (w_s * (p - y)) + reg * beta
        hess = (z * (w_s * p * (1 - p))[:, None]).T @ z + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return {"mean": mean, "scale": scale, "coef": beta[:-1], "intercept": float(beta[-1])}


def fit_linear(x: np.ndarray, y: np.ndarray, l2: float = 1.0) -> dict[str, Any]:
    """Ridge regression on standardized features (same parameter layout as :func:`fit_logistic`)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-6] = 1.0
    z = (x - mean) / scale
    coef = np.linalg.solve(z.T @ z + l2 * np.eye(z.shape[1]), z.T @ (y - y.mean()))
    return {"mean": mean, "scale": scale, "coef": coef, "intercept": float(y.mean())}


def candidate_table(cases: list[Case], model: NoduleModel, progress: bool = False) -> list[dict[str, Any]]:
    """Every candidate of ``model`` on ``cases`` with its features and truth: ``truth`` (0 = false positive,
    -1 = ignored), ``malignant``, ``diameter`` (truth long axis), ``dice`` with that truth, ``case``."""
    rows: list[dict[str, Any]] = []
    for ci, case in enumerate(progress_bar(cases, progress, desc="candidates", leave=False)):
        cands = model.detect(case.norm, case.region, case.spacing, exact=True)
        truth_by_index = {t.index: t for t in case.truths}
        for c, m in zip(cands, match_truths(cands, case), strict=True):
            row: dict[str, Any] = {"case": ci, "truth": m, "features": dict(c.features), "score": c.score}
            if m > 0:
                t = truth_by_index[m]
                gt = case.labels == m
                inter = float((c.local & gt[c.box]).sum())
                row.update(
                    malignant=t.malignant,
                    diameter=t.diameter,
                    dice=2 * inter / float(c.local.sum() + gt.sum()),
                )
            rows.append(row)
    return rows


# Calibration phantoms: (seed, phantoms, real-inserted cases). Neither the training seeds (0, 101, 102, 104,
# and FPR3D's 556-558) nor validation (777) nor test (1234).
CALIBRATION_SETS = ((555, 56, 12), (559, 56, 12))  # 1.2.0: (555, 56, 12), (556, 60, 8)


# The malignancy trees' settings (chosen on the calibration sets, leave-one-set-out, and validation seed 777).
MALIGNANCY_TREES: dict[str, Any] = {"trees": 100, "depth": 3, "learning_rate": 0.05, "l2": 1.0, "min_leaf": 10}


# Sets whose nodule candidates only the malignancy trees see (the trees need more nodules than the
# logistic calibrators): not training (0, 101, 102, 104, 106, 556-558), validation (777) or test (1234).
MALIGNANCY_EXTRA_SETS = ((560, 56, 12), (561, 56, 12), (562, 56, 12), (563, 56, 12))


DIAMETER_FEATURES = ("diameter_net", "long_axis_mm", "long_axis_open_mm", "equiv_diameter_mm")


def fit_calibrators(
    rows: list[dict[str, Any]], l2: float = 1.0, malignancy_rows: list[dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """Detection and diameter calibrators (logistic / linear) from a :func:`candidate_table`, and the
    malignancy trees (:func:`dicom_node.training.boosting.fit_boosted_trees` on :data:`MALIGNANCY_TREE_FEATURES`)
    from the nodule candidates of ``rows`` plus those of ``malignancy_rows``."""

    def feats(rs: list[dict[str, Any]], names: Sequence[str]) -> np.ndarray:
        return np.array([[r["features"].get(f, 0.0) for f in names] for r in rs], dtype=float)

    def nodules(rs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in rs if r["truth"] > 0 and r.get("malignant", -1) >= 0]

    out: dict[str, dict[str, Any]] = {}
    known = [r for r in rows if r["truth"] >= 0]
    y = np.array([r["truth"] > 0 for r in known], dtype=float)
    if 0 < y.sum() < len(y):
        det = Calibrator(DETECT_FEATURES, **fit_logistic(feats(known, DETECT_FEATURES), y, l2))
        out["detection"] = det.to_json()
    nod = nodules(rows)
    mal_rows = nod + nodules(malignancy_rows or [])
    y_mal = np.array([r["malignant"] for r in mal_rows], dtype=float)
    if 0 < y_mal.sum() < len(y_mal):
        x_mal = feats(mal_rows, MALIGNANCY_TREE_FEATURES)
        out["malignancy"] = fit_boosted_trees(x_mal, y_mal, MALIGNANCY_TREE_FEATURES, **MALIGNANCY_TREES).to_json()
    if len(nod) >= 3:
        y_d = np.array([r["diameter"] for r in nod], dtype=float)
        dia = Calibrator(DIAMETER_FEATURES, **fit_linear(feats(nod, DIAMETER_FEATURES), y_d, l2), kind="linear")
        out["diameter"] = dia.to_json()
    return out


def calibrate(
    bundle_dir: Path,
    cases: list[Case] | None = None,
    grow_threshold: float = GROW_THRESHOLD,
    l2: float = 1.0,
    progress: bool = False,
    hu_refine: float | None = HU_REFINE,
    min_score: float = MIN_SCORE,
    sets: Sequence[tuple[int, int, int]] | None = None,
    malignancy_sets: Sequence[tuple[int, int, int]] | None = None,
) -> dict[str, Any]:
    """Fit the bundle's calibrators on calibration cases with its own networks, and store them (with
    ``grow_threshold``, ``hu_refine`` and ``min_score``) in configs/metadata.json; returns the inference
    block. Without ``cases``, the cases of ``sets`` (default :data:`CALIBRATION_SETS`) are generated;
    with them, ``sets`` only names, for the metadata, the sets they were generated from. The malignancy
    trees also learn from the nodule candidates of ``malignancy_sets`` (default, without ``cases``:
    :data:`MALIGNANCY_EXTRA_SETS`; with them: none)."""
    bundle_dir = Path(bundle_dir)
    device = pick_device()
    model, _ = load_model(bundle_dir, device)
    model.detector = model.malignancy = model.diameter = None
    model.grow_threshold = min(grow_threshold, model.threshold)
    model.hu_refine = hu_refine
    if cases is None:
        sets = CALIBRATION_SETS if sets is None else sets
        extra = MALIGNANCY_EXTRA_SETS if malignancy_sets is None else malignancy_sets
        rows, n_cases = _set_tables(sets, model, progress)
    else:
        extra = malignancy_sets or ()
        rows, n_cases = candidate_table(cases, model, progress), len(cases)
    extra_rows, _ = _set_tables(extra, model, progress)
    meta_path = bundle_dir / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    inference = dict(meta.get("inference", {}))
    inference["grow_threshold"] = model.grow_threshold
    inference["hu_refine"] = hu_refine
    inference["min_score"] = min_score
    inference["calibrators"] = fit_calibrators(rows, l2, extra_rows)
    inference["calibration"] = {
        "sets": [list(t) for t in sets] if sets is not None else "given",
        "cases": n_cases,
        "candidates": len(rows),
        "nodule_candidates": sum(1 for r in rows if r["truth"] > 0),
        "l2": l2,
        "malignancy_extra_sets": [list(t) for t in extra],
        "malignancy_nodule_candidates": sum(1 for r in rows + extra_rows if r["truth"] > 0 and r["malignant"] >= 0),
        "malignancy_trees": dict(MALIGNANCY_TREES),
    }
    meta["inference"] = inference
    meta_path.write_text(json.dumps(meta, indent=2, allow_nan=False) + "\n")
    return inference


def _set_tables(
    sets: Sequence[tuple[int, int, int]], model: NoduleModel, progress: bool
) -> tuple[list[dict[str, Any]], int]:
    """The :func:`candidate_table` rows of the calibration cases of ``sets`` and the number of cases,
    generated one set at a time (a set of 68 cases is about 3 GB)."""
    rows: list[dict[str, Any]] = []
    n_cases = 0
    for one in sets:
        set_cases = calibration_cases((one,))
        rows += candidate_table(set_cases, model, progress)
        n_cases += len(set_cases)
    return rows, n_cases
