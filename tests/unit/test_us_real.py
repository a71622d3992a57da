"""Real lung-US support: the fixed split, wrapping frames as US DICOM, pseudo-labels, coded clip results."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from dicom_node.imaging.us import load_us, spacing_known
from dicom_node.outputs.codes import clinical_result_code
from dicom_node.synth.us_lung import generate
from dicom_node.training.us_adapt import NO_LABEL, clip_targets
from dicom_node.training.us_pseudo import IGNORE, PLEURA, pseudo_label
from dicom_node.training.us_real_data import (
    REAL_LUNG_US,
    SPLIT_FILE,
    clip_dataset,
    clip_frames,
    read_clips,
    write_clip,
)
from dicom_node.training.us_real_eval import ClipResult, summarise

HAVE_REAL = (REAL_LUNG_US / "labels.csv").is_file()
needs_real = pytest.mark.skipif(not HAVE_REAL, reason="../shared/data/real/us_pocus_ccby is not present")


def _split_rows() -> list[dict[str, str]]:
    with open(SPLIT_FILE, newline="") as fh:
        return list(csv.DictReader(fh))


def test_split_separates_patients_and_sources() -> None:
    rows = _split_rows()
    parts: dict[str, set[str]] = {}
    for row in rows:
        parts.setdefault(row["patient_group"], set()).add(row["part"])
        assert row["part"] in {"train", "check"}
    assert all(len(p) == 1 for p in parts.values()), "a patient group is in both parts"
    sources: dict[str, set[str]] = {}
    for row in rows:
        if row["source_group"] != "charlotte":  # the one source split by patient
            sources.setdefault(row["source_group"], set()).add(row["part"])
    assert all(len(p) == 1 for p in sources.values()), "a source is in both parts"
    assert {r["part"] for r in rows} == {"train", "check"}


@needs_real
def test_every_labelled_file_is_in_the_split() -> None:
    with open(REAL_LUNG_US / "labels.csv", newline="") as fh:
        labelled = {row["file"] for row in csv.DictReader(fh)}
    assert labelled == {r["file"] for r in _split_rows()}
    clips = read_clips()
    check = [c for c in clips if c.part == "check"]
    assert any(c.abnormal for c in check) and any(c.abnormal is False for c in check)


@needs_real
def test_a_real_clip_wraps_as_us_dicom_with_unknown_spacing(tmp_path: Path) -> None:
    pytest.importorskip("av", reason="PyAV (the real-us extra) decodes the clips")
    clip = next(c for c in read_clips() if c.name == "Reg_Image_181739_trimmed_crop.mp4")  # the shortest video
    frames = clip_frames(clip.path, n=3)
    assert frames.shape[0] == 3 and frames.dtype == np.float32 and 0.0 <= frames.min() <= frames.max() <= 1.0
    path = tmp_path / "clip.dcm"
    clip_dataset(frames, clip.name).save_as(path, enforce_file_format=True)
    volume = load_us([path])
    assert volume.pixels.shape == frames.shape
    assert not spacing_known(volume) and math.isnan(volume.spacing[1])
    assert volume.frame_numbers == [1, 2, 3]


def test_clip_targets_are_hierarchical() -> None:
    from dicom_node.training.us_real_data import RealClip

    def clip(diagnosis: str, **marks: int | None) -> RealClip:
        findings = {
            k: marks.get(k, 0) for k in ("b_lines", "a_lines", "consolidation", "effusion", "pleural_irregular")
        }
        return RealClip("f.mp4", Path("f.mp4"), "video", diagnosis, "convex", "train", "s", findings)

    assert clip_targets(clip("regular")) == (0, NO_LABEL)
    assert clip_targets(clip("covid-19", b_lines=1)) == (1, 0)
    assert clip_targets(clip("covid-19", consolidation=1)) == (1, 1)
    assert clip_targets(clip("covid-19", pleural_irregular=1)) == (1, NO_LABEL)
    assert clip_targets(clip("viral pneumonia")) == (NO_LABEL, NO_LABEL)  # abnormal diagnosis, no finding marked


def test_pseudo_label_finds_the_synthetic_pleural_line() -> None:
    hits = 0
    for seed in range(6):
        sample = generate(seed, size=(128, 128), pattern="normal")
        labels = pseudo_label(sample.image[0], below_is_background=True)
        if labels is None:
            continue
        truth_rows = np.nonzero(sample.pleura[0])[0]
        found_rows = np.nonzero(labels == PLEURA)[0]
        if found_rows.size and abs(float(np.median(found_rows)) - float(np.median(truth_rows))) < 6:
            hits += 1
        assert (labels != IGNORE).any()
    assert hits >= 4


def test_pseudo_label_refuses_a_blank_frame() -> None:
    assert pseudo_label(np.zeros((128, 128), dtype=np.float32), below_is_background=True) is None


def test_clinical_result_code() -> None:
    assert clinical_result_code({}) is None
    assert clinical_result_code({"abnormal": 0.9}) is None
    normal = clinical_result_code({"normal": 0.8, "b_lines": 0.1, "abnormal": 0.2})
    effusion = clinical_result_code({"normal": 0.1, "b_lines": 0.2, "effusion": 0.7})
    assert normal is not None and normal.meaning == "Normal"
    assert effusion is not None and effusion.value == "60046008"


def test_clinical_result_is_hierarchical_with_an_uncertain_type() -> None:
    from dicom_node.outputs.codes import clinical_result

    # normal vs abnormal first: 0.45 normal is the largest class, but abnormal is 0.55
    assert clinical_result({"normal": 0.45, "b_lines": 0.35, "consolidation": 0.2, "abnormal": 0.55}) == "b_lines"
    assert clinical_result({"normal": 0.6, "b_lines": 0.3, "effusion": 0.1, "abnormal": 0.4}) == "normal"
    # abnormal, but no abnormal class holds half of it: abnormal, type uncertain (SNOMED CT Abnormal)
    uncertain = {"normal": 0.1, "b_lines": 0.4, "consolidation": 0.35, "effusion": 0.15, "abnormal": 0.9}
    assert clinical_result(uncertain) == "abnormal"
    code = clinical_result_code(uncertain)
    assert code is not None and code.value == "263654008"
    assert clinical_result({"normal": 0.05, "consolidation": 0.5, "b_lines": 0.45, "abnormal": 0.95}) == "consolidation"


def test_gate_refuses_a_line_with_nothing_above_it_and_ignores_the_classifier() -> None:
    from pydicom.dataset import Dataset

    from dicom_node.imaging.volume import Volume
    from dicom_node.pipelines.us_lung import check_lung

    rng = np.random.default_rng(0)
    labels = np.zeros((4, 128, 128), dtype=np.uint8)
    labels[:, 30:34, 8:120] = PLEURA
    confidence = np.full(labels.shape, 0.9, dtype=np.float32)
    lung = rng.uniform(0.15, 0.6, labels.shape).astype(np.float32)  # chest wall speckle above the line
    in_air = lung.copy()
    in_air[:, :30] = 0.0  # a bright line with nothing above it: probe in air, an empty sector

    def volume(pixels: np.ndarray) -> Volume:
        header = Dataset()
        header.Modality = "US"
        return Volume(pixels, (0.0, math.nan, math.nan), "US", [header], frame_numbers=[1, 2, 3, 4])

    assert check_lung(volume(lung), labels, confidence).plausible
    refused = check_lung(volume(in_air), labels, confidence)
    assert not refused.plausible
    assert refused.reasons == ["no tissue imaged above the pleural line (probe in air or no chest wall) (4/4 frames)"]


def test_the_reported_pleural_line_clears_the_depth_check_when_the_network_took_the_skin_line() -> None:
    from pydicom.dataset import Dataset

    from dicom_node.imaging.volume import Volume
    from dicom_node.pipelines.us_lung import check_lung

    rng = np.random.default_rng(1)
    network = np.zeros((4, 200, 128), dtype=np.uint8)
    network[:, 3:5, 8:120] = PLEURA  # the skin line, at 2 % of the depth
    reported = np.zeros_like(network)
    reported[:, 30:34, 8:120] = PLEURA  # the line the anatomy picks (us_pleura)
    confidence = np.full(network.shape, 0.9, dtype=np.float32)
    header = Dataset()
    header.Modality = "US"
    volume = Volume(
        rng.uniform(0.15, 0.6, network.shape).astype(np.float32),
        (0.0, math.nan, math.nan),
        "US",
        [header],
        frame_numbers=[1, 2, 3, 4],
    )
    refused = check_lung(volume, network, confidence)
    assert refused.reasons == ["pleural line at 2% of the depth (4/4 frames)"]
    assert check_lung(volume, network, confidence, reported).plausible
    too_deep = np.zeros_like(network)
    too_deep[:, 150:154, 8:120] = PLEURA  # 76 % of the depth: no excuse for the network's line
    assert not check_lung(volume, network, confidence, too_deep).plausible


def _result(part: str, analysed: bool, abnormal: bool | None, pred: bool | None, pleura: float) -> ClipResult:
    return ClipResult(
        name="c.mp4",
        part=part,
        source="s",
        analysed=analysed,
        reason="" if analysed else "refused",
        frames=4,
        pleura_fraction=pleura,
        abnormal_truth=abnormal,
        abnormal_pred=pred if analysed else None,
        p_abnormal=0.9 if pred else 0.1,
        b_lines_truth=abnormal,
        b_lines_pred=pred if analysed else None,
        b_line_max=0,
        top_class="normal",
        seconds=0.1,
    )


def test_summary_counts_a_refused_clip_as_wrong() -> None:
    results = [
        _result("check", True, False, False, 1.0),
        _result("check", False, True, None, 0.5),
        _result("check", True, None, True, 0.0),  # not rated: left out of normal vs abnormal
    ]
    summary = summarise(results)
    assert summary["analysed"] == {"right": 2, "of": 3, "rate": pytest.approx(2 / 3)}
    assert summary["normal_vs_abnormal"] == {"right": 1, "of": 2, "rate": 0.5}
    assert summary["pleura_frames_normal_clips"] == 1.0


@needs_real
@pytest.mark.slow  # decodes a clip and runs the pipeline (a few seconds)
def test_a_textbook_normal_check_clip_is_analysed_with_a_pleural_line(tmp_path: Path) -> None:
    pytest.importorskip("av", reason="PyAV (the real-us extra) decodes the clips")
    from dicom_node.pipelines.us_lung import UsLungPipeline
    from dicom_node.training.us_real_eval import evaluate_clip

    clip = next(c for c in read_clips() if c.name == "Reg_pat4Image_140238.mpeg")
    assert clip.part == "check" and clip.abnormal is False
    result = evaluate_clip(UsLungPipeline(), clip, tmp_path, frames=8)
    assert result.analysed, result.reason
    assert result.pleura_fraction >= 0.9
    assert result.abnormal_pred is False and result.b_lines_pred is False


@pytest.mark.slow  # decodes a clip and runs the pipeline (a few seconds)
def test_a_b_line_pattern_without_a_countable_line_is_not_reported_as_zero_b_lines(tmp_path: Path) -> None:
    pytest.importorskip("av", reason="PyAV (the real-us extra) decodes the clips")
    from dicom_node.findings import Category
    from dicom_node.outputs.codes import clinical_result
    from dicom_node.pipelines.us_lung import UsLungPipeline

    clip = next(c for c in read_clips() if c.name == "Vir_whitelung_h1n1.mp4")  # diffuse white lung
    assert clip.findings["b_lines"] == 1
    result = UsLungPipeline().run(load_us([write_clip(clip, tmp_path, 16)]), "cpu")
    assert result.not_applicable is None and clinical_result(result.classification or {}) == "b_lines"
    text = " ".join(result.conclusions)
    counted = [f for f in result.findings if f.category == Category.B_LINE]
    if not counted:  # the classifier's pattern, no single line traced: say so, never "at most 0"
        assert "no single B-line traced to count" in text and "at most 0" not in text, text
    else:
        assert f"at most {int(counted[0].measurements[0].value)} in one frame" in text, text


def test_a_wrapped_clip_carries_the_type_2_attributes_the_encoders_copy(tmp_path: Path) -> None:
    """A wrapped clip is a complete US image (empty Type 2 patient / study attributes): the node's encoders,
    which copy them into every result, write a SEG and an SR for it (highdicom failed on the missing ones),
    also with a single segment (the SEG encoder failed when highdicom shared the segment identification)."""
    from dicom_node.findings import Category, Finding, Findings
    from dicom_node.outputs import encode

    frames = np.random.default_rng(0).random((3, 32, 40)).astype(np.float32)
    path = tmp_path / "clip.dcm"
    clip_dataset(frames, "toy.mp4").save_as(path, enforce_file_format=True)
    volume = load_us([path])
    mask = np.zeros(volume.shape, dtype=bool)
    mask[1:3, 10:14, 5:30] = True
    findings = Findings("us_lung", "0.0", [Finding(Category.PLEURAL_LINE, mask, key_slice=1)])
    seg, sr = encode(findings, volume, ["seg", "sr"])
    for ds in (seg, sr):
        assert ds.PatientBirthDate == "" and ds.PatientSex == "" and ds.StudyID == "1"
    # one segment: highdicom shares its identification; each SEG frame still references its source frame
    refs = [
        int(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
        for f in seg.PerFrameFunctionalGroupsSequence
    ]
    assert refs == [2, 3]
    assert seg.SharedFunctionalGroupsSequence[0].SegmentIdentificationSequence[0].ReferencedSegmentNumber == 1
