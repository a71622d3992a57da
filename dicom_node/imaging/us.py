"""Ultrasound instances to a :class:`~dicom_node.imaging.volume.Volume` of grayscale frames.

Handles single-frame images and multi-frame cines; RGB, YBR (full, 4:2:2, ICT/RCT after JPEG 2000
decoding) and palette colour are turned into luminance in 0..1. The frames are cropped to the main
2-D tissue region of ``SequenceOfUltrasoundRegions`` (so burned-in text, logos and scales outside it
are ignored) and the pixel spacing is taken from that region's physical deltas (cm in DICOM, mm here).
Without a usable region the whole image is kept, with ``PixelSpacing`` if present, else the spacing
is :data:`UNKNOWN_SPACING` (NaN) and a note says so: a NaN cannot silently become a length in mm.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from dicom_node.imaging.volume import Volume

logger = logging.getLogger(__name__)

UNKNOWN_SPACING = math.nan
"""Row/column spacing used when neither a calibrated region nor PixelSpacing gives one."""

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_UNITS_CM = 3
_SPATIAL_2D = 1
_DATA_TISSUE = 1
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class Region:
    """An ultrasound region: inclusive-exclusive pixel box and spacing in mm (NaN when unknown)."""

    row0: int
    col0: int
    row1: int
    col1: int
    row_mm: float
    col_mm: float
    calibrated: bool

    @property
    def area(self) -> int:
        return max(0, self.row1 - self.row0) * max(0, self.col1 - self.col0)


def spacing_known(volume: Volume) -> bool:
    """True when the volume's row and column spacing are physical (not :data:`UNKNOWN_SPACING`)."""
    return all(math.isfinite(s) and s > 0 for s in volume.spacing[1:])


def main_region(ds: Dataset) -> Region | None:
    """The main 2-D tissue region of ``SequenceOfUltrasoundRegions``, clipped to the image.

    Prefers 2-D tissue regions (RegionSpatialFormat 1, RegionDataType 1) calibrated in cm, then any
    2-D region; among those the largest (the first on a tie, e.g. the left half of a dual view).
    Returns ``None`` when the image has no usable region.
    """
    rows, cols = int(ds.Rows), int(ds.Columns)
    candidates: list[tuple[int, int, Region]] = []
    for item in ds.get("SequenceOfUltrasoundRegions", []):
        if int(item.get("RegionSpatialFormat", 0) or 0) != _SPATIAL_2D:
            continue
        try:
            x0, y0 = int(item.RegionLocationMinX0), int(item.RegionLocationMinY0)
            x1, y1 = int(item.RegionLocationMaxX1), int(item.RegionLocationMaxY1)
        except AttributeError:
            continue
        box = (max(0, y0), max(0, x0), min(rows, y1 + 1), min(cols, x1 + 1))
        if box[2] - box[0] < 8 or box[3] - box[1] < 8:
            continue
        ux = int(item.get("PhysicalUnitsXDirection", 0) or 0)
        uy = int(item.get("PhysicalUnitsYDirection", 0) or 0)
        dx = float(item.get("PhysicalDeltaX", 0.0) or 0.0)
        dy = float(item.get("PhysicalDeltaY", 0.0) or 0.0)
        calibrated = ux == _UNITS_CM and uy == _UNITS_CM and dx > 0 and dy > 0
        row_mm = abs(dy) * 10.0 if calibrated else UNKNOWN_SPACING
        col_mm = abs(dx) * 10.0 if calibrated else UNKNOWN_SPACING
        region = Region(*box, row_mm=row_mm, col_mm=col_mm, calibrated=calibrated)
        tissue = int(item.get("RegionDataType", 0) or 0) == _DATA_TISSUE
        rank = 2 * int(tissue and calibrated) + int(calibrated)
        candidates.append((rank, region.area, region))
    if not candidates:
        return None
    best_rank = max(c[0] for c in candidates)
    best = [c for c in candidates if c[0] == best_rank]
    return max(best, key=lambda c: c[1])[2]  # max() keeps the first of equals


def to_gray(ds: Dataset, pixels: np.ndarray) -> np.ndarray:
    """Decoded pixels (frames, rows, cols[, samples]) to float32 luminance in 0..1.

    pydicom 3 returns YBR_FULL / YBR_FULL_422 (and JPEG 2000 YBR_ICT/RCT) as RGB, so every colour
    image arrives here as RGB or palette indices.
    """
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = apply_color_lut(pixels, ds)
        top = float(np.iinfo(rgb.dtype).max) if rgb.dtype.kind in "ui" else float(rgb.max() or 1.0)
        return (rgb.astype(np.float32) @ _LUMA) / top
    if pixels.ndim == 4 or (pixels.ndim == 3 and int(ds.get("SamplesPerPixel", 1)) == 3):
        gray = pixels.astype(np.float32) @ _LUMA
        return gray / float(2 ** int(ds.get("BitsStored", 8)) - 1)
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)))
    gray = pixels.astype(np.float32)
    if int(ds.get("PixelRepresentation", 0)) == 1:
        gray = gray + float(2 ** (bits - 1))
    gray = gray / float(2**bits - 1)
    if photometric == "MONOCHROME1":
        gray = 1.0 - gray
    return np.clip(gray, 0.0, 1.0)


def _decode(path: Path, ds: Dataset) -> np.ndarray:
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many kinds: missing plugin, corrupt stream, bad length
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        message = f"cannot decode pixel data of {path.name} (transfer syntax {syntax}): {exc}"
        raise ValueError(message) from exc
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    colour = int(ds.get("SamplesPerPixel", 1)) > 1
    if frames == 1 and (pixels.ndim == 2 or (colour and pixels.ndim == 3)):
        pixels = pixels[np.newaxis]
    return np.asarray(pixels)


def _header(ds: Dataset) -> Dataset:
    for keyword in _PIXEL_KEYWORDS:
        if keyword in ds:
            delattr(ds, keyword)
    return ds


def _read(path: Path) -> tuple[Dataset, np.ndarray]:
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # InvalidDicomError, OSError, truncated files
        raise ValueError(f"cannot read {path}: {exc}") from exc
    if str(ds.get("Modality", "")).upper() != "US":
        logger.info("loading a non-US instance as ultrasound", extra={"modality": ds.get("Modality")})
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise ValueError(f"{path.name} has no pixel data")
    gray = to_gray(ds, _decode(path, ds))
    return _header(ds), gray


def load_us(paths: Sequence[str | Path]) -> Volume:
    """Load ultrasound instances as a cropped grayscale volume.

    A multi-frame instance (cine) becomes one volume with ``frame_numbers`` 1..N; when several
    cines are given, the one with the most frames is used and the others are noted. Single-frame
    instances are stacked (``sources`` one per frame); those whose size or region differs from the
    most common one are left out with a note.

    Args:
        paths: DICOM files of one ultrasound series.

    Returns:
        Frames (n, rows, cols) in 0..1 cropped to the main tissue region, spacing (0, row mm, col mm).

    Raises:
        ValueError: when nothing is given, a file cannot be read or its pixel data cannot be decoded.
    """
    if not paths:
        raise ValueError("no ultrasound files given")
    loaded = [(Path(p), *_read(Path(p))) for p in paths]
    notes: list[str] = []
    cines = [item for item in loaded if int(item[1].get("NumberOfFrames", 1) or 1) > 1]
    if cines:
        path, ds, gray = max(cines, key=lambda item: item[2].shape[0])
        if len(loaded) > 1:
            notes.append(f"{len(loaded) - 1} other instance(s) left out; using the cine {path.name}")
        return _volume([ds], gray, notes, frame_numbers=list(range(1, gray.shape[0] + 1)))
    keys = [_geometry_key(item[1]) for item in loaded]
    key = max(keys, key=keys.count)  # the most common geometry (the first of equally common ones)
    kept = [item for item, k in zip(loaded, keys, strict=True) if k == key]
    if len(kept) < len(loaded):
        notes.append(f"{len(loaded) - len(kept)} single-frame instance(s) with other geometry left out")
    gray = np.concatenate([item[2] for item in kept], axis=0)
    return _volume([item[1] for item in kept], gray, notes, frame_numbers=None)


def _geometry_key(ds: Dataset) -> tuple[object, ...]:
    region = main_region(ds)
    return (int(ds.Rows), int(ds.Columns), region)


def _volume(sources: list[Dataset], gray: np.ndarray, notes: list[str], frame_numbers: list[int] | None) -> Volume:
    ds = sources[0]
    region = main_region(ds)
    crop: tuple[int, int, int, int] | None = None
    row_mm = col_mm = UNKNOWN_SPACING
    if region is not None:
        crop = (region.row0, region.col0, region.row1, region.col1)
        gray = gray[:, region.row0 : region.row1, region.col0 : region.col1]
        row_mm, col_mm = region.row_mm, region.col_mm
        if not region.calibrated:
            notes.append("ultrasound region is not calibrated in cm")
    else:
        notes.append("no 2-D ultrasound region; using the whole image (burned-in text may be included)")
    if not math.isfinite(row_mm):
        spacing = ds.get("PixelSpacing")
        if spacing is not None and len(spacing) == 2 and float(spacing[0]) > 0 and float(spacing[1]) > 0:
            row_mm, col_mm = float(spacing[0]), float(spacing[1])
            notes.append("spacing from PixelSpacing")
        else:
            notes.append("pixel spacing unknown: no calibrated region and no PixelSpacing")
    for note in notes:
        logger.info("ultrasound load: %s", note)
    return Volume(
        pixels=np.ascontiguousarray(gray, dtype=np.float32),
        spacing=(0.0, row_mm, col_mm),
        modality=str(ds.get("Modality", "US")),
        sources=sources,
        frame_numbers=frame_numbers,
        crop=crop,
        notes=notes,
    )
