"""The us_lung pipeline with the shipped bundle: synthetic lung cines and real non-lung ultrasound."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_node.findings import Category, Quantity
from dicom_node.imaging.us import load_us
from dicom_node.pipelines.base import available, create
from dicom_node.pipelines.us_lung import DEFAULT_BUNDLE, UsLungPipeline, count_b_lines
from dicom_node.synth.us_dicom import write_lung_cine
from dicom_node.synth.us_lung import LungPattern, Probe

ROOT = Path(__file__).resolve().parents[2]
REAL = (ROOT / ".." / "shared" / "data" / "real").resolve()
REAL_US = sorted(REAL.glob("us_*/*.dcm"))


@pytest.fixture(scope="module")
def pipeline() -> UsLungPipeline:
    assert (DEFAULT_BUNDLE / "models" / "model.pt").is_file(), "the us_lung bundle is not trained/committed"
    made = create("us_lung")
    assert isinstance(made, UsLungPipeline)
    return made


def test_registered_and_applies_to_ultrasound_only(pipeline: UsLungPipeline) -> None:
    assert "us_lung" in available()
    us = Dataset()
    us.Modality, us.Rows = "US", 480
    assert pipeline.applies_to([us]) is None
    ct = Dataset()
    ct.Modality = "CT"
    assert "not US" in (pipeline.applies_to([ct]) or "")
    pelvis = Dataset()
    pelvis.Modality, pelvis.Rows, pelvis.BodyPartExamined = "US", 480, "PELVIS"
    assert "not the chest" in (pipeline.applies_to([pelvis]) or "")
    assert pipeline.version != "untrained"


def _run(pipeline: UsLungPipeline, tmp: Path, seed: int, pattern: LungPattern, probe: Probe):  # type: ignore[no-untyped-def]
    path = tmp / f"cine{seed}.dcm"
    truth = write_lung_cine(path, seed, frames=6, size=(256, 256), pattern=pattern, probe=probe)
    volume = pipeline.load([str(path)])
    return volume, truth, pipeline.run(volume, "cpu")


def test_b_line_cine_gives_findings_with_masks_and_measurements(pipeline: UsLungPipeline, tmp_path: Path) -> None:
    volume, truth, result = _run(pipeline, tmp_path, 11, LungPattern.B_LINES, Probe.LINEAR)
    assert result.not_applicable is None, result.not_applicable
    by_cat = {f.category: f for f in result.findings}
    assert Category.PLEURAL_LINE in by_cat and Category.B_LINE in by_cat
    pleura = by_cat[Category.PLEURAL_LINE]
    assert pleura.mask.shape == volume.shape
    overlap = (pleura.mask & truth.pleura).sum() / max(1, truth.pleura.sum())
    assert overlap > 0.5
    length = pleura.measurement(Quantity.LENGTH)
    width_mm = volume.shape[2] * volume.spacing[2]
    assert length is not None and 0.3 * width_mm < length < 1.5 * width_mm
    regularity = pleura.measurement(Quantity.REGULARITY)
    assert regularity is not None and 0.0 < regularity <= 1.0
    count = by_cat[Category.B_LINE].measurement(Quantity.COUNT)
    assert count is not None and abs(count - truth.b_line_count) <= 2
    assert result.classification["abnormal"] > 0.5
    assert sum(result.classification[k] for k in ("normal", "b_lines", "consolidation", "effusion")) == (
        pytest.approx(1.0, abs=1e-4)
    )
    assert any("B-lines" in c for c in result.conclusions)
    if truth.rib.any():
        assert Category.RIB in by_cat and by_cat[Category.RIB].mask.shape == volume.shape


def test_normal_cine_is_classified_normal(pipeline: UsLungPipeline, tmp_path: Path) -> None:
    _, _, result = _run(pipeline, tmp_path, 12, LungPattern.NORMAL, Probe.CONVEX)
    assert result.not_applicable is None, result.not_applicable
    assert result.classification["normal"] > 0.5
    assert all(f.category is not Category.B_LINE or (f.measurement(Quantity.COUNT) or 0) <= 2 for f in result.findings)


@pytest.mark.skipif(not REAL_US, reason="shared real data not present")
@pytest.mark.parametrize(
    "path",
    [pytest.param(p, marks=pytest.mark.slow) if "cine" in p.name else p for p in REAL_US],  # 27 frames: ~5 s
    ids=[p.name for p in REAL_US],
)
def test_real_non_lung_ultrasound_is_not_applicable(pipeline: UsLungPipeline, path: Path) -> None:
    volume = load_us([path])
    result = pipeline.run(volume, "cpu")
    assert result.findings == []
    assert result.not_applicable is not None
    assert result.not_applicable.startswith("image does not look like lung ultrasound (")
    # refused on positive evidence from the image, never because the classifier was unsure
    evidence = ("no pleural line found", "no tissue imaged above the pleural line", "of the depth", "mm implausible")
    assert any(e in result.not_applicable for e in evidence), result.not_applicable
    assert "classifier" not in result.not_applicable


def test_count_b_lines() -> None:
    labels = np.zeros((100, 60), dtype=np.uint8)
    labels[30:100, 10:13] = 3
    labels[30:100, 40:44] = 3
    labels[90:100, 50:52] = 3  # too short to be a B-line
    assert count_b_lines(labels) == 2


def test_unknown_spacing_gives_no_length(pipeline: UsLungPipeline, tmp_path: Path) -> None:
    path = tmp_path / "nospacing.dcm"
    write_lung_cine(path, 13, frames=2, pattern=LungPattern.NORMAL, probe=Probe.LINEAR)
    ds = pydicom.dcmread(path)
    ds.SequenceOfUltrasoundRegions[0].PhysicalUnitsXDirection = 0  # region kept, calibration lost
    ds.save_as(path)
    volume = pipeline.load([str(path)])
    assert volume.crop is not None and np.isnan(volume.spacing[1])
    result = pipeline.run(volume, "cpu")
    assert result.not_applicable is None, result.not_applicable
    pleura = [f for f in result.findings if f.category is Category.PLEURAL_LINE]
    assert pleura and pleura[0].measurement(Quantity.LENGTH) is None
    assert any("spacing unknown" in c for c in result.conclusions)


def test_cuda_request_falls_back_to_cpu_without_a_gpu() -> None:
    import torch

    from dicom_node.networks.us_infer import pick_device

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("cuda") == expected
    assert pick_device(None) == expected
    assert pick_device("cpu") == "cpu"


@pytest.mark.slow
def test_evaluate_reproduces_the_shipped_card() -> None:
    import json

    from dicom_node.training.us_lung import evaluate

    meta = json.loads((DEFAULT_BUNDLE / "configs" / "metadata.json").read_text())["metrics"]
    card = (DEFAULT_BUNDLE / "docs" / "README.md").read_text()
    again = evaluate(DEFAULT_BUNDLE, seed=int(meta["eval_seed"]))
    for key in ("rib_dice", "pleura_dice", "b_line_dice", "level1_accuracy", "level2_accuracy", "lung_like_fraction"):
        assert again[key] == pytest.approx(meta[key], abs=0.005), key
        assert f"{meta[key]:.3f}" in card
