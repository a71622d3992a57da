"""PET series to an SUVbw :class:`~dicom_node.imaging.volume.Volume`, and a CT resampled onto its grid.

The PT instances are stacked along the slice normal like a CT (same geometry checks: missing slices, irregular
spacing and tilt are refused), each slice rescaled with its own Rescale Slope / Intercept and multiplied by its
SUV factor from :mod:`dicom_node.imaging.suv` (a missing SUV field is refused with its name). The CT of the same
Frame of Reference goes onto the PET grid through both series' real geometry (Image Position / Orientation,
spacing): trilinear, air outside the CT.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from dicom_node.imaging.ct import _check_stack_geometry, _pixel_spacing, decode_pixels, slice_normal, strip_pixels
from dicom_node.imaging.suv import PetHeader, suv_factors
from dicom_node.imaging.volume import Volume

PET_SOP = "1.2.840.10008.5.1.4.1.1.128"
ENHANCED_PET_SOP = "1.2.840.10008.5.1.4.1.1.130"


def is_pet(ds: Dataset) -> bool:
    """True for a PET image instance (Modality PT or a PET SOP class)."""
    return str(ds.get("Modality", "")).upper() == "PT" or str(ds.get("SOPClassUID", "")) in (PET_SOP, ENHANCED_PET_SOP)


def load_pet_series(paths: Sequence[str | Path]) -> Volume:
    """Read one single-frame PT series into SUVbw (g/ml), slices sorted along the normal.

    Raises:
        ValueError: no PT image, an Enhanced PET multi-frame (not supported), irregular geometry.
        dicom_node.imaging.suv.SuvError: a field SUV needs is missing or invalid (a ValueError too).
    """
    items: list[Dataset] = []
    notes: list[str] = []
    for p in paths:
        ds = pydicom.dcmread(str(p), force=True)
        if not is_pet(ds) or "PixelData" not in ds:
            continue
        if str(ds.get("SOPClassUID", "")) == ENHANCED_PET_SOP:
            raise ValueError("Enhanced PET multi-frame images are not supported: send the single-frame series")
        items.append(ds)
    if not items:
        raise ValueError("no PET (PT) image among the given files")
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in items}
    if len(series) > 1:
        first = str(items[0].get("SeriesInstanceUID", ""))
        notes.append(f"kept one PT series of {len(series)}")
        items = [ds for ds in items if str(ds.get("SeriesInstanceUID", "")) == first]
    orientation = np.asarray([float(v) for v in items[0].ImageOrientationPatient])
    normal = slice_normal(orientation)
    dist = np.array([float(np.asarray([float(v) for v in ds.ImagePositionPatient]) @ normal) for ds in items])
    order = np.argsort(dist, kind="stable")
    items = [items[i] for i in order]
    dist = dist[order]
    positions = np.stack([np.asarray([float(v) for v in ds.ImagePositionPatient]) for ds in items])
    spacing_z = _check_stack_geometry(positions, normal, dist, items[0], notes)
    row_sp, col_sp = _pixel_spacing(items[0])
    factors = suv_factors([PetHeader.from_dataset(ds) for ds in items])
    pixels = np.empty((len(items), int(items[0].Rows), int(items[0].Columns)), dtype=np.float32)
    for i, (item, factor) in enumerate(zip(items, factors, strict=True)):
        arr = decode_pixels(item, f"PT slice {i + 1}").astype(np.float64)
        slope = float(item.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(item.get("RescaleIntercept", 0.0) or 0.0)
        pixels[i] = (arr * slope + intercept) * factor.suv_bw
        strip_pixels(item)
    return Volume(pixels=pixels, spacing=(spacing_z, row_sp, col_sp), modality="PT", sources=items, notes=notes)


def index_to_patient(volume: Volume) -> np.ndarray:
    """The 4x4 affine from (slice, row, column, 1) to patient (x, y, z, 1) mm of a single-frame volume."""
    src = volume.sources[0]
    ori = np.asarray([float(v) for v in src.ImageOrientationPatient])
    p0 = np.asarray([float(v) for v in src.ImagePositionPatient])
    dz, dy, dx = volume.spacing
    if len(volume.sources) > 1:
        step = (np.asarray([float(v) for v in volume.sources[-1].ImagePositionPatient]) - p0) / (
            len(volume.sources) - 1
        )
    else:
        step = slice_normal(ori) * dz
    affine = np.eye(4)
    affine[:3, 0] = step
    affine[:3, 1] = ori[3:] * dy
    affine[:3, 2] = ori[:3] * dx
    affine[:3, 3] = p0
    return affine


def resample_onto(moving: Volume, fixed: Volume, fill: float) -> np.ndarray:
    """``moving``'s pixels on ``fixed``'s grid (trilinear; ``fill`` outside), through both real geometries."""
    from scipy import ndimage as ndi

    to_moving = np.linalg.inv(index_to_patient(moving)) @ index_to_patient(fixed)
    matrix, offset = to_moving[:3, :3], to_moving[:3, 3]
    out = ndi.affine_transform(
        moving.pixels.astype(np.float32), matrix, offset=offset, output_shape=fixed.shape, order=1, cval=fill
    )
    return np.asarray(out, dtype=np.float32)


def same_frame(a: Sequence[Dataset], b: Sequence[Dataset]) -> bool:
    """True when both series name the same (non-empty) Frame of Reference UID."""
    fa = {str(ds.get("FrameOfReferenceUID", "")) for ds in a}
    fb = {str(ds.get("FrameOfReferenceUID", "")) for ds in b}
    return len(fa) == 1 and fa == fb and "" not in fa
