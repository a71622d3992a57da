"""load_ct_series on the real CT files in shared/, plus crafted geometry faults written from them."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node.imaging.ct import load_ct_series, voxel_to_patient

ROOT = Path(__file__).resolve().parents[2]
REAL = (ROOT / ".." / "shared" / "data" / "real").resolve()
LIDC = REAL / "ct_lidc0002_slab12" / "dicom"
TSEG = REAL / "ct_totalseg_partialbody_j2k"
SYNTAX = REAL / "ct_chest_slice_transfer_syntaxes"
ECT = REAL / "ct_misc" / "eCT_Supplemental.dcm"

pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason="shared real data not present")


def _lidc() -> list[Path]:
    return sorted(LIDC.glob("*.dcm"))


def test_lidc_slab_sorted_along_normal_in_hu() -> None:
    paths = _lidc()
    shuffled = paths[:]
    random.Random(3).shuffle(shuffled)
    vol = load_ct_series(shuffled)
    assert vol.shape == (12, 512, 512)
    assert vol.spacing == pytest.approx((1.25, 0.681641, 0.681641))
    z = [float(ds.ImagePositionPatient[2]) for ds in vol.sources]
    assert z == sorted(z) and z[0] == pytest.approx(-94.5)
    assert all("PixelData" not in ds for ds in vol.sources)
    # HU: air outside the patient near -1000, soft tissue inside around 0..100.
    assert vol.pixels.dtype == np.float32
    assert vol.pixels[:, 5:20, 5:20].mean() < -900
    # raw values + intercept -1024 reproduce the stored pixels.
    raw = pydicom.dcmread(str(LIDC / "-94.500000.dcm")).pixel_array.astype(np.float32) - 1024
    np.testing.assert_allclose(vol.pixels[0], np.clip(raw, -1024, 3071))
    corner = voxel_to_patient(vol, (0, 0, 0))
    assert corner == pytest.approx([-175.5, -174.5, -94.5])


def test_spacing_from_positions_not_thickness() -> None:
    vol = load_ct_series(sorted(TSEG.iterdir()))  # SliceThickness 3, positions 2 mm apart, JPEG 2000
    assert vol.shape == (20, 512, 512)
    assert vol.spacing[0] == pytest.approx(2.0)


@pytest.mark.parametrize("path", sorted(SYNTAX.glob("*.dcm")), ids=lambda p: p.name.split("_")[-1])
def test_transfer_syntaxes_decode_or_refuse_clearly(path: Path) -> None:
    uid = pydicom.dcmread(str(path), stop_before_pixels=True).file_meta.TransferSyntaxUID
    if uid in ("1.2.840.10008.1.2.4.53", "1.2.840.10008.1.2.4.55"):
        with pytest.raises(ValueError, match=f"transfer syntax .*{uid}"):
            load_ct_series([path])
        return
    vol = load_ct_series([path])
    assert vol.shape == (1, 512, 512)
    reference = load_ct_series([SYNTAX / "CTImage.dcm"]).pixels
    tol = 60.0 if uid in ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.91") else 3.0
    assert np.abs(vol.pixels - reference).mean() < tol


def test_enhanced_ct_frames_sorted_by_position() -> None:
    vol = load_ct_series([ECT])
    assert vol.shape == (2, 512, 512)
    assert vol.is_multiframe and sorted(vol.frame_numbers or []) == [1, 2]
    assert vol.spacing[1] == pytest.approx(0.388672)
    assert vol.spacing[0] > 0
    assert "PixelData" not in vol.sources[0]


def _write_modified(tmp: Path, paths: list[Path], shifts: dict[int, tuple[float, float, float]]) -> list[Path]:
    out = []
    for i, p in enumerate(paths):
        ds = pydicom.dcmread(str(p))
        if i in shifts:
            pos = [float(v) for v in ds.ImagePositionPatient]
            ds.ImagePositionPatient = [pos[j] + shifts[i][j] for j in range(3)]
        target = tmp / p.name
        ds.save_as(target)
        out.append(target)
    return out


def test_missing_slice_refused(tmp_path: Path) -> None:
    paths = _lidc()
    del paths[5]
    with pytest.raises(ValueError, match="1 slice\\(s\\) missing"):
        load_ct_series(paths)


def test_irregular_spacing_refused(tmp_path: Path) -> None:
    paths = _write_modified(tmp_path, _lidc(), {6: (0.0, 0.0, 0.5)})
    with pytest.raises(ValueError, match="irregular slice spacing"):
        load_ct_series(paths)


def test_gantry_tilt_refused(tmp_path: Path) -> None:
    paths = _lidc()
    shifts = {i: (0.0, 0.3 * i, 0.0) for i in range(len(paths))}  # y drifts along z: ~13 degrees
    with pytest.raises(ValueError, match="gantry tilt"):
        load_ct_series(_write_modified(tmp_path, paths, shifts))


def test_garbage_and_duplicates_are_skipped_with_notes(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all" * 10)
    paths = [*_lidc(), _lidc()[0], junk]
    vol = load_ct_series(paths)
    assert vol.shape[0] == 12
    assert any("duplicate" in n for n in vol.notes)


def test_nothing_usable_raises(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x00" * 300)
    with pytest.raises(ValueError):
        load_ct_series([junk])


def test_a_seg_on_an_enhanced_ct_references_the_stored_frame_each_mask_slice_was_read_from() -> None:
    """The reader sorts the frames by position (this file stores them head to foot: frames [2, 1]); the SEG's
    frame for a mask on the first sorted slice must reference stored frame 2 at that slice's position."""
    import highdicom as hd

    from dicom_node.findings import Finding, Findings
    from dicom_node.outputs import encode

    vol = load_ct_series([ECT])
    assert vol.frame_numbers == [2, 1]
    mask = np.zeros(vol.shape, dtype=bool)
    mask[0, 200:260, 200:260] = True
    seg = encode(Findings("toy", "1.0", [Finding("nodule", mask)]), vol, ["seg"])[0]
    assert int(seg.NumberOfFrames) == 1
    frame = seg.PerFrameFunctionalGroupsSequence[0]
    source = frame.DerivationImageSequence[0].SourceImageSequence[0]
    assert int(source.ReferencedFrameNumber) == 2
    stored = pydicom.dcmread(str(ECT), stop_before_pixels=True).PerFrameFunctionalGroupsSequence[1]
    position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
    assert position == pytest.approx([float(v) for v in stored.PlanePositionSequence[0].ImagePositionPatient])
    back = hd.seg.Segmentation.from_dataset(seg)
    pixels = back.get_pixels_by_source_frame(
        str(vol.sources[0].SOPInstanceUID), [2, 1], segment_numbers=[1], assert_missing_frames_are_empty=True
    )
    assert np.array_equal(pixels[..., 0].astype(bool), mask)
