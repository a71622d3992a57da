"""load_us on every real ultrasound file in shared/, plus crafted colour models and broken files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, UltrasoundImageStorage, generate_uid

from dicom_node.imaging.us import UNKNOWN_SPACING, load_us, main_region, spacing_known

ROOT = Path(__file__).resolve().parents[2]
REAL = (ROOT / ".." / "shared" / "data" / "real").resolve()
CLINICAL = REAL / "us_clinical_samples"
PHANTOM = REAL / "us_vendor_deid_phantom"

pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason="shared real data not present")


def _check(volume_pixels: np.ndarray) -> None:
    assert volume_pixels.dtype == np.float32
    assert volume_pixels.min() >= 0.0 and volume_pixels.max() <= 1.0
    assert volume_pixels.max() > 0.5  # something bright survived the conversion


@pytest.mark.parametrize("name", ["US1_UNCR.dcm", "US1_J2KR.dcm", "US1_J2KI.dcm"])
def test_rgb_and_jpeg2000_without_region_keep_whole_image_and_flag_spacing(name: str) -> None:
    vol = load_us([CLINICAL / name])
    assert vol.shape == (1, 480, 640)
    assert vol.crop is None and vol.frame_numbers is None
    assert not spacing_known(vol) and math.isnan(vol.spacing[1])
    assert any("spacing unknown" in n for n in vol.notes)
    _check(vol.pixels)
    assert "PixelData" not in vol.sources[0]


def test_jpeg2000_lossless_equals_uncompressed() -> None:
    raw = load_us([CLINICAL / "US1_UNCR.dcm"]).pixels
    lossless = load_us([CLINICAL / "US1_J2KR.dcm"]).pixels
    lossy = load_us([CLINICAL / "US1_J2KI.dcm"]).pixels
    assert np.abs(raw - lossless).max() < 1e-6
    assert 0 < np.abs(raw - lossy).mean() < 0.05


def test_ybr_full_422_region_crop_and_spacing() -> None:
    vol = load_us([CLINICAL / "esaote_US-YBR_FULL_422-EVRLE.dcm"])
    assert vol.crop == (75, 184, 555, 800)  # region X0..X1 / Y0..Y1 inclusive, clipped to the image
    assert vol.shape == (1, 480, 616)
    assert vol.spacing[1] == pytest.approx(0.0616, rel=1e-4)  # 0.00616 cm
    _check(vol.pixels)


def test_palette_16bit_dual_view_takes_first_of_equal_regions() -> None:
    vol = load_us([CLINICAL / "gdcm-US-ALOKA-16.dcm"])
    assert vol.crop == (24, 32, 416, 336)
    assert vol.spacing[1:] == pytest.approx((0.38265, 0.38265), rel=1e-4)
    _check(vol.pixels)


def test_rle_palette_without_pixel_spacing_uses_region() -> None:
    path = CLINICAL / "philips_cardiac_rle_no-pixel-spacing.dcm"
    assert "PixelSpacing" not in pydicom.dcmread(path, stop_before_pixels=True)
    vol = load_us([path])
    assert vol.crop == (60, 120, 519, 800)  # MaxX1 = 800 lies outside the 800-column image
    assert spacing_known(vol) and vol.spacing[2] == pytest.approx(0.33054, rel=1e-4)
    assert vol.pixels.max() > 0.5


def test_region_spacing_agrees_with_pixel_spacing() -> None:
    path = PHANTOM / "siemens_6C1_rgb.dcm"
    ps = [float(v) for v in pydicom.dcmread(path, stop_before_pixels=True).PixelSpacing]
    vol = load_us([path])
    assert vol.spacing[1:] == pytest.approx(tuple(ps), rel=1e-4)
    _check(vol.pixels)


def test_multiframe_cine() -> None:
    vol = load_us([PHANTOM / "philips_L12-5_cine27.dcm"])
    assert vol.is_multiframe and vol.frame_numbers == list(range(1, 28))
    assert vol.shape == (27, 562, 779) and len(vol.sources) == 1
    assert vol.spacing[1] == pytest.approx(0.083078, rel=1e-4)
    assert "PixelData" not in vol.sources[0]
    _check(vol.pixels)
    assert vol.uncrop(np.ones(vol.shape, dtype=bool)).shape == (27, 600, 800)


def test_burned_in_text_outside_region_is_cropped_away() -> None:
    path = PHANTOM / "philips_L12-5_greyscale.dcm"
    full = pydicom.dcmread(path).pixel_array
    vol = load_us([path])
    r0, c0, r1, c1 = vol.crop or (0, 0, 0, 0)
    assert full[:r0].max() > 100  # the header band holds burned-in text ...
    assert vol.pixels.shape[1:] == (r1 - r0, c1 - c0)  # ... and is not part of the volume


def test_single_frames_stack_and_mismatched_geometry_is_left_out() -> None:
    a = PHANTOM / "philips_L12-5_greyscale.dcm"
    vol = load_us([a, a, CLINICAL / "US1_UNCR.dcm"])
    assert vol.shape[0] == 2 and len(vol.sources) == 2
    assert any("other geometry" in n for n in vol.notes)
    odd_first = load_us([CLINICAL / "US1_UNCR.dcm", a, a])  # the majority wins, not the first file
    assert odd_first.shape == vol.shape


def _write(tmp: Path, photometric: str, pixels: np.ndarray, **extra: object) -> Path:
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = UltrasoundImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    for key, value in extra.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype(np.uint8).tobytes()
    path = tmp / f"{photometric}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_ybr_full_gives_luma_and_monochrome1_is_inverted(tmp_path: Path) -> None:
    ybr = np.zeros((16, 16, 3), dtype=np.uint8)
    ybr[..., 0] = np.arange(16)[None, :] * 16
    ybr[..., 1:] = 128
    vol = load_us([_write(tmp_path, "YBR_FULL", ybr)])
    assert vol.pixels[0] == pytest.approx(ybr[..., 0] / 255.0, abs=2 / 255)
    mono = np.full((16, 16), 255, dtype=np.uint8)
    assert load_us([_write(tmp_path, "MONOCHROME1", mono)]).pixels.max() == pytest.approx(0.0)


def test_pixel_spacing_fallback_when_region_uncalibrated(tmp_path: Path) -> None:
    region = pydicom.Dataset()
    region.RegionSpatialFormat, region.RegionDataType = 1, 1
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 2, 2
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = 29, 25
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 0
    path = _write(
        tmp_path,
        "MONOCHROME2",
        np.full((32, 32), 200, dtype=np.uint8),
        SequenceOfUltrasoundRegions=[region],
        PixelSpacing=[0.2, 0.3],
    )
    region_found = main_region(pydicom.dcmread(path))
    assert region_found is not None and not region_found.calibrated
    vol = load_us([path])
    assert vol.crop == (2, 2, 26, 30) and vol.spacing == (0.0, 0.2, 0.3)


def test_decode_failure_is_a_clear_value_error(tmp_path: Path) -> None:
    ds = pydicom.dcmread(CLINICAL / "philips_cardiac_rle_no-pixel-spacing.dcm")
    assert ds.file_meta.TransferSyntaxUID == RLELossless
    ds.PixelData = ds.PixelData[:200]
    broken = tmp_path / "broken.dcm"
    ds.save_as(broken)
    with pytest.raises(ValueError, match=r"cannot decode pixel data of broken\.dcm"):
        load_us([broken])
    with pytest.raises(ValueError, match="cannot read"):
        load_us([tmp_path / "missing.dcm"])
    with pytest.raises(ValueError):
        load_us([])
    assert math.isnan(UNKNOWN_SPACING)
