"""The shipped lung-nodule bundle on real CT: the LIDC slab (a real nodule tip), lower chest, a head CT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node.findings import Category, Evaluation, Quantity
from dicom_node.imaging.ct import load_ct_series
from dicom_node.pipelines import create
from dicom_node.pipelines.ct_lung_nodule import DEFAULT_BUNDLE
from dicom_node.training.ct_lidc import lidc_nodule_masks

ROOT = Path(__file__).resolve().parents[2]
REAL = (ROOT / ".." / "shared" / "data" / "real").resolve()
LIDC = REAL / "ct_lidc0002_slab12"

pytestmark = [
    pytest.mark.slow,  # the whole pipeline (four networks) on real CT
    pytest.mark.skipif(not REAL.is_dir(), reason="shared real data not present"),
    pytest.mark.skipif(not (DEFAULT_BUNDLE / "models" / "model.pt").exists(), reason="bundle not trained"),
]


@pytest.fixture(scope="module")
def lidc():  # type: ignore[no-untyped-def]
    import torch

    torch.set_num_threads(1)
    pipe = create("ct_lung_nodule")
    paths = [str(p) for p in sorted((LIDC / "dicom").glob("*.dcm"))]
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    assert pipe.applies_to(headers) is None
    vol = pipe.load(paths)
    return vol, pipe.run(vol, "cpu")


def test_findings_contract(lidc) -> None:  # type: ignore[no-untyped-def]
    vol, result = lidc
    assert result.pipeline == "ct_lung_nodule" and result.version
    assert result.not_applicable is None and result.conclusions
    for f in result.findings:
        assert f.category is Category.NODULE and f.mask.shape == vol.shape and f.mask.any()
        assert 0.0 <= f.score <= 1.0
        long_axis = f.measurement(Quantity.LONG_AXIS) or 0.0
        assert long_axis >= (f.measurement(Quantity.SHORT_AXIS) or 0.0) > 0
        assert (f.measurement(Quantity.VOLUME) or 0.0) > 0
        assert f.evaluations[Evaluation.MALIGNANCY_LIKELIHOOD] in ("low", "intermediate", "high")
        assert f.evaluations[Evaluation.COMPOSITION] in ("solid", "part_solid", "ground_glass")


def test_real_lidc_nodule_tip_found(lidc) -> None:  # type: ignore[no-untyped-def]
    vol, result = lidc
    truth = lidc_nodule_masks(LIDC / "annotations" / "071.xml", vol)
    hits = [f for f in result.findings if (f.mask & truth).any()]
    assert hits, "the readers' nodule (LIDC-IDRI 0002, upper tip) was not detected"
    # Bundles 1.0.0/1.1.0 found it but under-segmented the faint, partial-volume tip (Dice about 0.2
    # against the union of the two readers' outlines); 1.2.0's HU-aware outline measures 0.75. Nothing
    # else in the slab.
    mask = np.any([f.mask for f in hits], axis=0)
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.5
    assert len(result.findings) - len(hits) <= 1


def test_thick_slices_are_not_applicable() -> None:
    """A real CT with slices 10 mm apart is outside the model's range: refused with the reason, no guess."""
    pipe = create("ct_lung_nodule")
    vol = load_ct_series([REAL / "ct_misc" / "eCT_Supplemental.dcm"])
    result = pipe.run(vol, "cpu")
    assert not result.findings and result.not_applicable and "10 mm apart" in result.not_applicable


@pytest.mark.slow
def test_real_chests_tumour_as_one_mass_few_false_positives_thick_slices_refused() -> None:
    """Issue 16 on the real chest CT in ../shared, the whole pipeline as the node runs it: the boxed
    adenocarcinoma of the 5 mm whole chest is found as a mass (not graded by the nodule classifier), at most
    2 false positives and no nodule outside the lungs; the 8 mm chest is refused with the reason; the LIDC
    nodule tip is outlined."""
    from dicom_node.training.ct_lung_nodule.real import evaluate_real_scans

    if not (REAL / "ct_lung_pet_ct_dx").is_dir():
        pytest.skip(f"no real whole-chest CT at {REAL}")
    pipe = create("ct_lung_nodule")
    report = evaluate_real_scans(pipe, REAL)
    a1 = report["A0001_chest_5mm_lung_kernel"]
    assert a1["lesion_found"] and a1["false_positives"] <= 2 and a1["nodules_outside_lung"] == 0, a1
    on_tumour = [f for f in a1["findings"] if f["on_lesion"]]
    assert [f["label"].split()[0] for f in on_tumour] == ["mass"] and on_tumour[0]["long_axis_mm"] >= 30
    assert "8 mm apart" in report["A0002_thorax_8mm_b70f"]["not_applicable"]
    slab = report["lidc0002_slab12"]
    assert slab["lesion_found"] and slab["dice"] >= 0.7 and slab["false_positives"] == 0


def test_a_noisier_real_chest_is_smoothed_into_range_and_an_enhanced_one_refused() -> None:
    """The real 5 mm whole chest with correlated noise added (lung noise about 1.6x as measured) still
    gives its tumour as a mass with at most 2 false positives (without the smoothing, the tumour was lost
    at this level); with its lung vessels raised by 150 HU, as intravenous contrast does, it is refused
    with the measured HU; far noisier, it is refused for noise."""
    import dataclasses

    from scipy import ndimage as ndi

    from dicom_node.pipelines.ct_lung_field import segment_lungs
    from dicom_node.training.ct_lung_nodule.real import real_scans, score_scan

    scan = next((s for s in real_scans(REAL) if s.name.startswith("A0001")), None)
    if scan is None:
        pytest.skip(f"no real whole-chest CT at {REAL}")
    pipe = create("ct_lung_nodule")
    hu = scan.volume.pixels
    noise = ndi.gaussian_filter(np.random.default_rng(0).standard_normal(hu.shape).astype(np.float32), (0, 0.6, 0.6))
    noise /= noise.std()

    noisy = dataclasses.replace(scan.volume, pixels=(hu + 80.0 * noise).astype(np.float32))
    entry = score_scan(scan, pipe.run(noisy, "cpu"), 0.0)
    assert entry["lesion_found"] and entry["false_positives"] <= 2, entry
    assert [f["label"].split()[0] for f in entry["findings"] if f["on_lesion"]] == ["mass"]

    lung = segment_lungs(scan.volume).both
    vessels = lung & (hu > -400) & ~scan.lesion
    enhanced = hu + 150.0 * vessels * np.clip((hu + 400.0) / 400.0, 0.0, 1.0)
    result = pipe.run(dataclasses.replace(scan.volume, pixels=enhanced.astype(np.float32)), "cpu")
    assert not result.findings and result.not_applicable and "contrast" in result.not_applicable

    very_noisy = dataclasses.replace(scan.volume, pixels=(hu + 320.0 * noise).astype(np.float32))
    result = pipe.run(very_noisy, "cpu")
    assert not result.findings and result.not_applicable and "noise" in result.not_applicable


def test_a_real_chest_with_darker_lungs_is_brought_to_the_training_level() -> None:
    """The real 5 mm whole chest with every HU 30 lower (as a more inflated lung or another scanner's
    calibration reads): without the lung-level harmonisation (1.8.0) two hilar vessels came out as a nodule
    and a mass; now its parenchyma is mapped to the phantoms' level first (and the SR says so), the tumour
    is found as a mass and at most one false positive remains."""
    import dataclasses

    from dicom_node.training.ct_lung_nodule.real import real_scans, score_scan

    scan = next((s for s in real_scans(REAL) if s.name.startswith("A0001")), None)
    if scan is None:
        pytest.skip(f"no real whole-chest CT at {REAL}")
    pipe = create("ct_lung_nodule")
    darker = dataclasses.replace(scan.volume, pixels=(scan.volume.pixels - 30.0).astype(np.float32))
    result = pipe.run(darker, "cpu")
    entry = score_scan(scan, result, 0.0)
    assert entry["lesion_found"] and entry["false_positives"] <= 1, entry
    assert [f["label"].split()[0] for f in entry["findings"] if f["on_lesion"]] == ["mass"]
    assert entry["share_in_box"] >= 0.55, entry
    assert any("Lung parenchyma" in c and "mapped to -847 HU" in c for c in result.conclusions), result.conclusions
