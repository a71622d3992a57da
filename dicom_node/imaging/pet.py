"""PET series to an SUVbw :class:`~dicom_node.imaging.volume.Volume`, and a CT resampled onto its grid.

The PT instances are stacked along the slice normal like a CT (same geometry checks: missing slices, irregular
spacing and tilt are refused), each slice rescaled with its own Rescale Slope / Intercept and multiplied by its
SUV factor from :mod:`dicom_node.imaging.suv` (a missing SUV field is refused with its name). The CT of the same
Frame of Reference goes onto the PET grid through both series' real geometry (Image Position / Orientation,
spacing): trilinear, air outside the CT; lesion labels go back from the PET grid onto the CT's the same way,
nearest neighbour (:func:`labels_onto`).
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
    """The 4x4 affine from (slice, row, column, 1) to patient (x, y, z, 1) mm of ``volume``: single-frame
    slices or the frames of an enhanced multi-frame image (their per-frame positions), in slice order."""
    from dicom_node.imaging.ct import voxel_to_patient

    p0 = voxel_to_patient(volume, (0, 0, 0))
    row_step = voxel_to_patient(volume, (0, 1, 0)) - p0  # one row down: the column direction cosines x dy
    col_step = voxel_to_patient(volume, (0, 0, 1)) - p0
    n = volume.shape[0]
    if n > 1:
        step = (voxel_to_patient(volume, (n - 1, 0, 0)) - p0) / (n - 1)
    else:
        normal = np.cross(col_step, row_step)
        step = normal / np.linalg.norm(normal) * float(volume.spacing[0] or 1.0)
    affine = np.eye(4)
    affine[:3, 0] = step
    affine[:3, 1] = row_step
    affine[:3, 2] = col_step
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


def labels_onto(labels: np.ndarray, moving: Volume, fixed: Volume) -> np.ndarray:
    """A label volume on ``moving``'s grid carried onto ``fixed``'s grid, nearest neighbour, through both real
    geometries: each voxel of ``fixed`` takes the label of the ``moving`` voxel its centre lies in (0 outside).

    Labels stay disjoint and each keeps its physical extent (a 4 mm PET voxel becomes the 1 mm CT voxels
    inside it). Only the bounding box of the labelled voxels is resampled, so a large CT costs little.

    Args:
        labels: Integer labels, ``moving.shape``; 0 is background.
        moving: The grid ``labels`` lie on (its sources, spacing and shape are read; not its pixels).
        fixed: The grid to carry them onto (likewise).

    Returns:
        The labels on ``fixed.shape`` (same dtype).
    """
    from scipy import ndimage as ndi

    if labels.shape != moving.shape:
        raise ValueError(f"labels of shape {labels.shape} are not on the moving grid {moving.shape}")
    out = np.zeros(fixed.shape, dtype=labels.dtype)
    nonzero = np.argwhere(labels != 0)
    if nonzero.size == 0:
        return out
    to_fixed = np.linalg.inv(index_to_patient(fixed)) @ index_to_patient(moving)
    lo, hi = nonzero.min(axis=0) - 0.5, nonzero.max(axis=0) + 0.5  # the voxels' outer faces
    corners = np.array([[a, b, c, 1.0] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    on_fixed = (corners @ to_fixed.T)[:, :3]
    start = np.maximum(np.floor(on_fixed.min(axis=0)).astype(int) - 1, 0)
    stop = np.minimum(np.ceil(on_fixed.max(axis=0)).astype(int) + 2, np.asarray(fixed.shape))
    if np.any(stop <= start):
        return out  # the labels lie outside the fixed grid
    to_moving = np.linalg.inv(to_fixed)
    matrix = to_moving[:3, :3]
    offset = to_moving[:3, :3] @ start + to_moving[:3, 3]
    shape = tuple(int(v) for v in stop - start)
    box = ndi.affine_transform(labels, matrix, offset=offset, output_shape=shape, order=0, mode="grid-constant")
    out[start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]] = box
    return out


def same_frame(a: Sequence[Dataset], b: Sequence[Dataset]) -> bool:
    """True when both series name the same (non-empty) Frame of Reference UID."""
    fa = {str(ds.get("FrameOfReferenceUID", "")) for ds in a}
    fb = {str(ds.get("FrameOfReferenceUID", "")) for ds in b}
    return len(fa) == 1 and fa == fb and "" not in fa
