"""Lung-nodule post-processing: hysteresis components, candidate features, JSON calibrators, their fitting."""

from __future__ import annotations

import json

import numpy as np

from dicom_node.imaging.series import normalize_hu
from dicom_node.networks.boosted import BoostedTrees
from dicom_node.pipelines.ct_lung_nodule import (
    DETECT_FEATURES,
    MALIGNANCY_TREE_FEATURES,
    Calibrator,
    NoduleModel,
    calibrator_from_json,
    candidate_features,
)
from dicom_node.training.ct_lung_nodule.calibration import fit_calibrators, fit_linear, fit_logistic


def _ball(shape: tuple[int, int, int], center: tuple[int, int, int], r: float) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return ((z - center[0]) ** 2 + (y - center[1]) ** 2 + (x - center[2]) ** 2) <= r * r


def test_hysteresis_keeps_seeded_components_with_their_low_outline() -> None:
    prob = np.zeros((9, 40, 40), dtype=np.float32)
    prob[_ball(prob.shape, (4, 12, 12), 4)] = 0.35  # outline
    prob[_ball(prob.shape, (4, 12, 12), 2)] = 0.9  # confident core
    prob[_ball(prob.shape, (4, 30, 30), 3)] = 0.4  # no confident seed: dropped
    region = np.ones(prob.shape, dtype=bool)
    model = NoduleModel(unet=None, resmtnet=None, threshold=0.5, min_volume_mm3=1.0, grow_threshold=0.3)
    cands = model.components(prob, region, (1.0, 1.0, 1.0))
    assert len(cands) == 1
    assert cands[0].local.sum() == _ball(prob.shape, (4, 12, 12), 4).sum()
    strict = NoduleModel(unet=None, resmtnet=None, threshold=0.5, min_volume_mm3=1.0)
    assert strict.components(prob, region, (1.0, 1.0, 1.0))[0].local.sum() == _ball(prob.shape, (4, 12, 12), 2).sum()


def test_candidate_features_separate_a_ball_from_a_tube() -> None:
    shape = (20, 64, 64)
    hu = np.full(shape, -860.0, dtype=np.float32)
    ball = _ball(shape, (10, 20, 20), 5)
    tube = np.zeros(shape, dtype=bool)
    tube[:, 44:47, 44:47] = True
    hu[ball] = 30.0
    hu[tube] = 40.0
    prob = ball.astype(np.float32)
    prob[6:14][tube[6:14]] = 1.0  # the U-Net saw part of the vessel; the vessel goes on above and below
    region = np.ones(shape, dtype=bool)
    model = NoduleModel(unet=None, resmtnet=None, min_volume_mm3=1.0)
    cands = sorted(model.components(prob, region, (1.0, 1.0, 1.0)), key=lambda c: c.center[1])
    f_ball, f_tube = (candidate_features(normalize_hu(hu), prob, region, (1.0, 1.0, 1.0), c) for c in cands)
    assert f_ball["elongation"] < 0.3 < f_tube["elongation"]
    assert f_ball["shell_dense"] < f_tube["shell_dense"]
    assert f_ball["solidity_2d"] > 0.85 and f_ball["radial_cv"] < 0.2
    assert abs(f_ball["long_axis_mm"] - 11.0) <= 1.5
    assert set(DETECT_FEATURES) - {"nodule_logit", "fpr_logit"} <= set(f_ball)
    assert set(MALIGNANCY_TREE_FEATURES) - {"malignancy_logit", "nodule_logit", "fpr_logit"} <= set(f_ball)


def test_logistic_calibrator_round_trips_through_json() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2))
    y = (x[:, 0] - 0.5 * x[:, 1] + rng.normal(scale=0.3, size=400) > 0).astype(float)
    cal = Calibrator(("a", "b"), **fit_logistic(x, y, l2=0.1))
    again = Calibrator.from_json(json.loads(json.dumps(cal.to_json())))
    p = again({"a": 2.0, "b": -1.0})
    assert p > 0.95 and again({"a": -2.0, "b": 1.0}) < 0.05
    assert abs(p - cal({"a": 2.0, "b": -1.0})) < 1e-4


def test_linear_calibrator_fits_a_line() -> None:
    x = np.linspace(0, 10, 50)[:, None]
    cal = Calibrator(("d",), **fit_linear(x, 2 * x[:, 0] + 1, l2=1e-6), kind="linear")
    assert abs(cal({"d": 4.0}) - 9.0) < 1e-3


def test_hu_refinement_follows_the_half_level_outline() -> None:
    shape = (12, 48, 48)
    truth = _ball(shape, (6, 24, 24), 6)
    hu = np.where(truth, 40.0, -860.0).astype(np.float32)
    region = np.ones(shape, dtype=bool)
    prob = _ball(shape, (6, 24, 24), 4.5).astype(np.float32)  # an under-segmenting U-Net
    model = NoduleModel(unet=None, resmtnet=None, min_volume_mm3=1.0, hu_refine=0.5)
    cands = model.components(prob, region, (1.0, 1.0, 1.0))
    model.refine(normalize_hu(hu), region, cands)
    (c,) = cands
    assert (c.mask == truth).all()
    assert c.key_slice == 6 and c.center == (6, 24, 24)


def test_malignancy_trees_learn_from_the_extra_rows_too() -> None:
    rng = np.random.default_rng(4)

    def row(truth: int, malignant: int) -> dict[str, object]:
        feats = {f: float(rng.normal()) for f in (*DETECT_FEATURES, *MALIGNANCY_TREE_FEATURES)}
        feats["notch_fraction_hu"] = float(malignant) + 0.3 * float(rng.normal())
        return {"truth": truth, "malignant": malignant, "diameter": 8.0, "features": feats}

    rows = [row(0, -1) for _ in range(30)] + [row(1, 0) for _ in range(30)]  # only benign nodules
    extra = [row(1, int(i % 2)) for i in range(200)]
    assert "malignancy" not in fit_calibrators(rows)
    cal = fit_calibrators(rows, malignancy_rows=extra)
    assert cal["detection"]["kind"] == "logistic" and cal["diameter"]["kind"] == "linear"
    trees = calibrator_from_json(json.loads(json.dumps(cal["malignancy"])))
    assert isinstance(trees, BoostedTrees) and trees.features == MALIGNANCY_TREE_FEATURES
    notched, smooth = dict(extra[0]["features"]), dict(extra[0]["features"])  # type: ignore[call-overload]
    notched["notch_fraction_hu"], smooth["notch_fraction_hu"] = 1.0, 0.0
    assert trees(notched) > 0.7 > 0.3 > trees(smooth)


def test_the_shipped_bundle_grades_malignancy_with_trees_on_the_named_features() -> None:
    from dicom_node.pipelines.ct_lung_nodule import DEFAULT_BUNDLE

    meta = json.loads((DEFAULT_BUNDLE / "configs" / "metadata.json").read_text())
    trees = calibrator_from_json(meta["inference"]["calibrators"]["malignancy"])
    assert isinstance(trees, BoostedTrees) and trees.features == MALIGNANCY_TREE_FEATURES
    assert meta["inference"]["calibration"]["malignancy_nodule_candidates"] >= 1000
