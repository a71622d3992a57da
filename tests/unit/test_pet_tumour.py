"""PET/CT: the phantom written as DICOM reads back as SUV, the CT lands on the PET grid, the measures and
baselines are exact on known volumes, and the pipeline refuses what it cannot measure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node.findings import Category, Quantity
from dicom_node.imaging.ct import load_ct_series
from dicom_node.imaging.pet import index_to_patient, labels_onto, load_pet_series, resample_onto
from dicom_node.imaging.volume import Volume, geometry_only
from dicom_node.pipelines import create
from dicom_node.pipelines.pet_tumour.baselines import liver_reference, percent40, percist, suv25
from dicom_node.pipelines.pet_tumour.detect import lesion_labels
from dicom_node.pipelines.pet_tumour.measures import PEAK_RADIUS_MM, lesion_stats
from dicom_node.synth.pet_dicom import write_pet_ct_study
from dicom_node.synth.pet_phantom import ORGAN, make_pet_ct_phantom


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, list[Path], list[Path]]:
    phantom = make_pet_ct_phantom(
        11, n_lesions=3, pet_slices=36, pet_matrix=96, ct_matrix=160, ct_mm=2.4, z_start_mm=270.0
    )
    ct, pt = write_pet_ct_study(phantom, tmp_path_factory.mktemp("petct"), seed=11)
    return phantom, ct, pt


def test_pet_reads_back_as_the_phantom_suv(study: tuple) -> None:
    phantom, _, pt = study
    volume = load_pet_series(pt)
    assert volume.modality == "PT" and volume.spacing == (4.0, 4.0, 4.0)
    hot = phantom.suv > 1.0
    rel = np.abs(volume.pixels[hot] - phantom.suv[hot]) / phantom.suv[hot]
    assert rel.max() < 1e-3  # SUV through the headers (BQML, START decay) within 0.1%


def test_ct_and_pet_share_the_frame_but_not_the_grid_and_resample_by_geometry(study: tuple) -> None:
    phantom, ct_paths, pt_paths = study
    ct0, pt0 = (pydicom.dcmread(p[0], stop_before_pixels=True) for p in (ct_paths, pt_paths))
    assert ct0.FrameOfReferenceUID == pt0.FrameOfReferenceUID and ct0.StudyInstanceUID == pt0.StudyInstanceUID
    assert ct0.PixelSpacing != pt0.PixelSpacing and ct0.ImagePositionPatient != pt0.ImagePositionPatient
    pet, ct = load_pet_series(pt_paths), load_ct_series(ct_paths)
    on_pet = resample_onto(ct, pet, fill=-1000.0)
    assert on_pet.shape == pet.shape
    for organ, lo, hi in (("liver", 35, 85), ("lung", -900, -700), ("myocardium", 20, 70)):
        inside = phantom.organ_labels == ORGAN[organ]
        inner = inside & np.roll(inside, 2, axis=1) & np.roll(inside, -2, axis=1)  # away from the edges
        assert inner.any(), organ
        assert lo < float(np.median(on_pet[inner])) < hi, organ


def _axial(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], origin: tuple[float, ...], iop: list[float]
) -> Volume:
    """A single-frame stack whose slices step along the normal of ``iop`` (headers only)."""
    normal = np.cross(iop[:3], iop[3:])
    sources = []
    for k in range(shape[0]):
        ds = pydicom.Dataset()
        ds.ImagePositionPatient = list(np.asarray(origin) + k * spacing[0] * normal)
        ds.ImageOrientationPatient = iop
        ds.PixelSpacing = [spacing[1], spacing[2]]
        sources.append(ds)
    return Volume(np.zeros(shape, dtype=np.float32), spacing, "CT", sources)


def test_labels_go_onto_another_grid_voxel_by_voxel_through_both_geometries() -> None:
    pet = _axial((12, 16, 16), (4.0, 4.0, 4.0), (-30.0, -30.0, 100.0), [1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    # a CT of finer voxels, offset, and turned by 90 degrees in the plane (rows along -x, columns along +y)
    ct = geometry_only(_axial((30, 40, 36), (1.5, 1.2, 1.1), (10.3, -28.1, 97.2), [0.0, 1.0, 0.0, -1.0, 0.0, 0.0]))
    labels = np.zeros(pet.shape, dtype=np.uint8)
    labels[3:6, 4:8, 5:9] = 1
    labels[7, 10, 2] = 2  # one voxel
    on_ct = labels_onto(labels, pet, ct)
    assert on_ct.shape == ct.shape and set(np.unique(on_ct)) == {0, 1, 2}
    to_pet = np.linalg.inv(index_to_patient(pet)) @ index_to_patient(ct)
    idx = np.indices(ct.shape).reshape(3, -1)
    at = np.rint((to_pet[:3, :3] @ idx + to_pet[:3, 3:4]).T).astype(int)  # the PET voxel each CT centre lies in
    inside = np.all((at >= 0) & (at < np.asarray(pet.shape)), axis=1)
    expected = np.zeros(idx.shape[1], dtype=np.uint8)
    expected[inside] = labels[tuple(at[inside].T)]
    assert np.array_equal(on_ct.reshape(-1), expected)
    # a region keeps its physical volume (up to the CT's sampling of the PET voxel faces)
    pet_mm3, ct_mm3 = (labels == 1).sum() * 64.0, (on_ct == 1).sum() * 1.5 * 1.2 * 1.1
    assert abs(ct_mm3 - pet_mm3) < 0.15 * pet_mm3
    assert not labels_onto(np.zeros(pet.shape, dtype=np.uint8), pet, ct).any()


def test_index_to_patient_of_an_enhanced_multiframe_reads_the_frame_positions() -> None:
    ds = pydicom.Dataset()
    ds.NumberOfFrames = 3
    shared = pydicom.Dataset()
    orientation = pydicom.Dataset()
    orientation.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    shared.PlaneOrientationSequence = [orientation]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for z in (20.0, 10.0, 15.0):  # stored out of order
        item, position = pydicom.Dataset(), pydicom.Dataset()
        position.ImagePositionPatient = [-5.0, 7.0, z]
        item.PlanePositionSequence = [position]
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = frames
    volume = Volume(np.zeros((3, 4, 4), dtype=np.float32), (5.0, 0.5, 0.7), "CT", [ds], frame_numbers=[2, 3, 1])
    affine = index_to_patient(volume)
    assert np.allclose(affine @ [0, 0, 0, 1], [-5.0, 7.0, 10.0, 1])
    assert np.allclose(affine @ [2, 1, 3, 1], [-5.0 + 3 * 0.7, 7.0 + 0.5, 20.0, 1])


def test_measures_of_a_uniform_sphere_are_exact() -> None:
    spacing = (2.0, 2.0, 2.0)
    zz, yy, xx = np.ogrid[:40, :40, :40]
    sphere = ((zz - 20) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2) * 4.0 <= 15.0**2
    suv = np.where(sphere, 10.0, 1.0).astype(np.float32)
    stats = lesion_stats(suv, sphere, spacing)
    assert stats.suv_max == stats.suv_mean == stats.suv_peak == 10.0
    assert stats.mtv_ml == pytest.approx(sphere.sum() * 8.0 / 1000.0)
    assert stats.tlg_g == pytest.approx(10.0 * stats.mtv_ml)
    assert PEAK_RADIUS_MM == pytest.approx(6.2035, abs=1e-3)  # 1 ml
    spike = suv.copy()
    spike[20, 20, 20] = 30.0  # one hot voxel raises SUVmax, barely SUVpeak
    hot = lesion_stats(spike, sphere, spacing)
    assert hot.suv_max == 30.0 and 10.0 < hot.suv_peak < 12.0


def test_baselines_call_physiological_uptake_that_the_truth_leaves_out() -> None:
    suv = np.full((30, 40, 40), 1.0, dtype=np.float32)
    suv[5:25, 5:15, 5:15] = 8.0  # a "myocardium"
    suv[14:17, 28:31, 28:31] = 5.0  # a small lesion
    labels, count = lesion_labels(suv25(suv), suv)
    assert count == 2 and labels[15, 29, 29] > 0 and labels[10, 10, 10] > 0
    assert percent40(suv)[15, 29, 29] and not percent40(suv)[15, 20, 20]
    mean, sd = liver_reference(suv, (15.0, 20.0, 20.0), (4.0, 4.0, 4.0))
    assert mean == pytest.approx(1.0) and sd == pytest.approx(0.0)
    assert percist(suv, mean, sd)[15, 29, 29] and not percist(suv, mean, sd)[0, 0, 0]


def test_pipeline_refuses_without_pet_and_without_weight(study: tuple, tmp_path: Path) -> None:
    _, ct, pt = study
    pipe = create("pet_tumour", method="suv25")
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in ct[:3]]
    assert pipe.applies_to(headers) == "no PET (PT) image in the series"
    copies = []
    for p in pt:
        ds = pydicom.dcmread(p)
        del ds.PatientWeight
        ds.save_as(tmp_path / p.name)
        copies.append(str(tmp_path / p.name))
    assert pipe.applies_to([pydicom.dcmread(copies[0], stop_before_pixels=True)]) is None
    findings = pipe.run(pipe.load(copies), "cpu")
    assert findings.not_applicable is not None and "PatientWeight" in findings.not_applicable


def test_a_single_real_pet_slice_is_not_applicable_with_the_reason() -> None:
    real = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real" / "pet_suv_references" / "pet_slices"
    if not real.is_dir():
        pytest.skip("shared real data not present")
    for method in ("network", "suv25"):
        pipe = create("pet_tumour", method=method)
        findings = pipe.run(pipe.load([str(real / "acrin_flt_breast_028.dcm")]), "cpu")
        assert findings.not_applicable is not None and "1 PET slice(s)" in findings.not_applicable
        assert not findings.findings


def test_pipeline_baseline_pairs_the_ct_and_measures_every_lesion(study: tuple) -> None:
    phantom, ct, pt = study
    pipe = create("pet_tumour", method="percent40")
    volume = pipe.load([str(p) for p in [*pt, *ct]])
    assert getattr(volume, "ct", None) is not None and volume.ct.shape == volume.shape
    findings = pipe.run(volume, "cpu")
    assert findings.findings and all(f.category is Category.TUMOUR for f in findings.findings)
    for f in findings.findings:
        assert f.measurement(Quantity.SUV_MAX) >= f.measurement(Quantity.SUV_PEAK) > 0
        assert f.measurement(Quantity.TLG) == pytest.approx(
            f.measurement(Quantity.SUV_MEAN) * f.measurement(Quantity.MTV), rel=1e-2
        )
    assert "total MTV" in findings.conclusions[0] and "baseline" in findings.conclusions[-1]
    alone = pipe.load([str(p) for p in pt])  # PET only
    assert getattr(alone, "ct", "x") is None and any("PET only" in n for n in alone.notes)
    del phantom
