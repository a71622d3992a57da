"""PET/CT outputs: SEG on the PET with one segment per lesion, TID 1500 SR with SUVbw (DCM 126401, UCUM
{SUVbw}g/ml) max / mean / peak, Metabolic Volume (ml) and Total Lesion Glycolysis (g), GSPS on PET slices with
their own Rescale Slopes; all valid for dciodvfy. Run with the SUV 2.5 baseline (no bundle needed) and, when
the shipped bundle is there, with the network."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pytest

from dicom_node.findings import Findings
from dicom_node.imaging.volume import Volume
from dicom_node.outputs import encode
from dicom_node.pipelines import create
from dicom_node.pipelines.pet_tumour.model import DEFAULT_BUNDLE
from dicom_node.synth.pet_dicom import write_pet_ct_study
from dicom_node.synth.pet_phantom import make_pet_ct_phantom
from tests.peers.dicomcheck import dciodvfy, dsrdump

ACCEPTED_WARNINGS = {
    r"attribute <Laterality>": "PR General Series Laterality (Type 2C) is empty = unknown: lesions anywhere",
}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[Path]]:
    phantom = make_pet_ct_phantom(
        21, n_lesions=3, pet_slices=36, pet_matrix=96, ct_matrix=160, ct_mm=2.4, z_start_mm=270.0
    )
    return write_pet_ct_study(phantom, tmp_path_factory.mktemp("petct"), seed=21)


@pytest.fixture(scope="module")
def result(study: tuple[list[Path], list[Path]]) -> tuple[Findings, Volume]:
    ct, pt = study
    pipe = create("pet_tumour", method="suv25")
    volume = pipe.load([str(p) for p in [*pt, *ct]])
    return pipe.run(volume, "cpu"), volume


def test_outputs_are_valid_and_carry_the_pet_codes(result: tuple[Findings, Volume], tmp_path: Path) -> None:
    findings, volume = result
    assert findings.findings
    objects = encode(findings, volume, ["seg", "sr", "gsps"])
    iods = {"SEG": "Segmentation", "SR": "Comprehensive3DSR", "PR": "GrayscaleSoftcopyPresentationState"}
    paths = {}
    for ds in objects:
        path = tmp_path / f"{ds.Modality}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths[ds.Modality] = path
        verdict = dciodvfy(path)
        assert verdict.iod == iods[ds.Modality]
        assert verdict.errors == [], verdict.errors
        assert verdict.unexplained(ACCEPTED_WARNINGS) == [], verdict.warnings
    seg = hd.seg.segread(paths["SEG"])
    assert len(seg.SegmentSequence) == len(findings.findings)
    assert seg.FrameOfReferenceUID == volume.sources[0].FrameOfReferenceUID
    text = dsrdump(paths["SR"], "+Pc")
    for needle in (
        "126401",
        "{SUVbw}g/ml",
        "126031",
        "56851009",
        "373098007",
        "Metabolic Volume",
        "Total Lesion Glycolysis",
        "(ml,UCUM",
        "(g,UCUM",
        "total MTV",
    ):
        assert needle in text, needle
    assert "Lung" not in text  # PET lesions have no lung finding site


def test_no_lesion_and_not_applicable_reports(result: tuple[Findings, Volume], tmp_path: Path) -> None:
    _, volume = result
    for findings, needle in (
        (Findings("pet_tumour", "1.0.0"), "No abnormality"),
        (Findings("pet_tumour", "1.0.0", not_applicable="SUV cannot be computed: PatientWeight"), "Not applicable"),
    ):
        (sr,) = encode(findings, volume, ["seg", "sr"])
        path = tmp_path / "sr.dcm"
        sr.save_as(path, enforce_file_format=True)
        assert dciodvfy(path).errors == []
        assert needle.lower() in dsrdump(path).lower()


@pytest.mark.slow
def test_shipped_network_finds_tumours_and_leaves_the_myocardium_out(study: tuple[list[Path], list[Path]]) -> None:
    if not (DEFAULT_BUNDLE / "models" / "model.pt").exists():
        pytest.skip("no shipped pet_tumour bundle")
    ct, pt = study
    phantom = make_pet_ct_phantom(
        21, n_lesions=3, pet_slices=36, pet_matrix=96, ct_matrix=160, ct_mm=2.4, z_start_mm=270.0
    )
    pipe = create("pet_tumour")
    volume = pipe.load([str(p) for p in [*pt, *ct]])
    findings = pipe.run(volume, "cpu")
    from dicom_node.synth.pet_phantom import ORGAN

    assert all(0.0 < f.score <= 1.0 for f in findings.findings)  # the network's highest probability in it
    heart = phantom.organ_labels == ORGAN["myocardium"]
    for f in findings.findings:
        assert (f.mask & heart).sum() < 0.5 * f.mask.sum(), "a call on the myocardium"
    visible = [
        i
        for i, lesion in enumerate(phantom.lesions, start=1)
        if lesion.diameter_mm >= 15 and (phantom.lesion_labels == i).any()
    ]
    for i in visible:
        assert any((f.mask & (phantom.lesion_labels == i)).any() for f in findings.findings), f"lesion {i} missed"
