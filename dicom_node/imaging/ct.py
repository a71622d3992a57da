"""CT series to a Hounsfield-unit :class:`~dicom_node.imaging.volume.Volume`.

Read leniently, refuse honestly: unreadable files are skipped with a note, pixel data that cannot be
decoded raises a :class:`ValueError` naming the transfer syntax, and geometry that cannot be stacked into
a regular grid (missing slices, irregular spacing, gantry tilt, mixed orientations) raises a
:class:`ValueError` with the reason instead of producing a wrong volume.

Supported: single-frame CT instances (any transfer syntax pydicom and its plugins decode) and Enhanced
CT multi-frame instances (positions and rescale from the functional groups).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from dicom_node.imaging.volume import Volume

logger = logging.getLogger(__name__)

ENHANCED_CT_SOP = "1.2.840.10008.5.1.4.1.1.2.1"
CT_SOP = "1.2.840.10008.5.1.4.1.1.2"
HU_MIN = -1024.0
HU_MAX = 3071.0
# A slice gap may deviate this much (relative) from the median spacing and still count as regular.
SPACING_TOLERANCE = 0.1
# Positions may drift off the slice normal by this angle (degrees) before we call it gantry tilt.
TILT_TOLERANCE_DEG = 0.5
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass
class _Slice:
    header: Dataset
    path: str
    position: np.ndarray
    orientation: np.ndarray


def transfer_syntax_name(ds: Dataset) -> str:
    """The transfer syntax of ``ds`` as "Name (UID)", or "unknown" when the file meta lacks it."""
    meta = getattr(ds, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if not uid:
        return "unknown transfer syntax"
    return f"{UID(uid).name} ({uid})"


def decode_pixels(ds: Dataset, where: str = "") -> np.ndarray:
    """Decode ``ds.pixel_array``; failures become a ValueError naming the transfer syntax."""
    try:
        return np.asarray(ds.pixel_array)
    except (
        ValueError,
        RuntimeError,
        NotImplementedError,
        AttributeError,
        TypeError,
        KeyError,
        OSError,
        IndexError,
    ) as exc:
        label = f" of {where}" if where else ""
        raise ValueError(
            f"cannot decode the pixel data{label}: transfer syntax {transfer_syntax_name(ds)} "
            f"is not supported by the installed decoders ({type(exc).__name__}: {exc})"
        ) from exc


def strip_pixels(ds: Dataset) -> Dataset:
    """Remove bulk pixel data from ``ds`` in place and return it (headers only)."""
    for tag in _PIXEL_TAGS:
        if tag in ds:
            delattr(ds, tag)
    return ds


def is_localizer(ds: Dataset) -> bool:
    """True for scout/localizer/topogram images (never part of an axial volume)."""
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "LOCALIZER" in image_type:
        return True
    desc = str(ds.get("SeriesDescription", "")).lower()
    return any(word in desc for word in ("scout", "topogram", "localizer", "surview", "scanogram"))


def slice_normal(orientation: Sequence[float] | np.ndarray) -> np.ndarray:
    """Unit normal of an image plane from ImageOrientationPatient (row x column direction)."""
    o = np.asarray(orientation, dtype=float)
    n = np.cross(o[:3], o[3:])
    norm = np.linalg.norm(n)
    if norm < 1e-6:
        raise ValueError(f"ImageOrientationPatient {list(o)} is degenerate")
    return np.asarray(n / norm)


def load_ct_series(paths: Sequence[str | Path]) -> Volume:
    """Read a CT series into an HU volume sorted along the slice normal.

    Args:
        paths: Files of one series (single-frame CT instances, or one Enhanced CT multi-frame file).
            Unreadable and non-image files are skipped with a note in ``Volume.notes``.

    Returns:
        A :class:`Volume` with ``pixels`` in HU (float32, clipped to [-1024, 3071]), ``spacing`` =
        (slice distance from positions, row spacing, column spacing) in mm, and ``sources`` the
        headers without pixel data in slice order (or the single multi-frame header plus
        ``frame_numbers``).

    Raises:
        ValueError: no CT image in ``paths``; undecodable pixel data (names the transfer syntax);
            missing slices, irregular spacing, gantry tilt or mixed geometry.
    """
    notes: list[str] = []
    headers: list[tuple[str, Dataset]] = []
    for p in paths:
        ds: Dataset
        try:
            ds = pydicom.dcmread(str(p), force=True)
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
            notes.append(f"skipped unreadable file {Path(p).name}: {type(exc).__name__}")
            logger.warning("skipping unreadable file", extra={"path": str(p), "error": str(exc)})
            continue
        if "PixelData" not in ds:
            notes.append(f"skipped {Path(p).name}: no pixel data")
            continue
        headers.append((str(p), ds))
    if not headers:
        raise ValueError("no readable CT image among the given files")

    multi = [(p, ds) for p, ds in headers if int(ds.get("NumberOfFrames", 1) or 1) > 1]
    single = [(p, ds) for p, ds in headers if int(ds.get("NumberOfFrames", 1) or 1) <= 1]
    if multi and not single:
        if len(multi) > 1:
            notes.append(f"{len(multi)} multi-frame instances given; using the one with most frames")
        path, ds = max(multi, key=lambda t: int(t[1].NumberOfFrames))
        volume = _load_enhanced(path, ds)
        volume.notes[:0] = notes
        return volume
    if multi:
        notes.append(f"ignored {len(multi)} multi-frame instance(s) mixed into a single-frame series")
    return _load_single_frames(single, notes)


def _modality_ok(ds: Dataset) -> bool:
    modality = str(ds.get("Modality", "")).upper()
    sop = str(ds.get("SOPClassUID", "")) or str(getattr(ds.get("file_meta"), "MediaStorageSOPClassUID", ""))
    return modality == "CT" or sop in (CT_SOP, ENHANCED_CT_SOP)


def _load_single_frames(items: list[tuple[str, Dataset]], notes: list[str]) -> Volume:
    slices: list[_Slice] = []
    for path, ds in items:
        name = Path(path).name
        if not _modality_ok(ds):
            notes.append(f"skipped {name}: modality {ds.get('Modality', '?')} is not CT")
            continue
        if is_localizer(ds):
            notes.append(f"skipped {name}: localizer")
            continue
        try:
            pos = np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=float)
            ori = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=float)
            if pos.shape != (3,) or ori.shape != (6,):
                raise ValueError("wrong multiplicity")
        except (AttributeError, ValueError, TypeError) as exc:
            notes.append(f"skipped {name}: no usable ImagePositionPatient/ImageOrientationPatient ({exc})")
            continue
        slices.append(_Slice(ds, path, pos, ori))
    if not slices:
        raise ValueError("no axial CT image with position and orientation among the given files: " + "; ".join(notes))

    # Group by series, orientation and matrix; keep the largest coherent stack.
    def key(s: _Slice) -> tuple[str, tuple[float, ...], int, int]:
        return (
            str(s.header.get("SeriesInstanceUID", "")),
            tuple(np.round(s.orientation, 3).tolist()),
            int(s.header.get("Rows", 0)),
            int(s.header.get("Columns", 0)),
        )

    groups = Counter(key(s) for s in slices)
    best, _ = groups.most_common(1)[0]
    if len(groups) > 1:
        dropped = len(slices) - groups[best]
        notes.append(f"kept the largest stack of {groups[best]} slices; dropped {dropped} with other geometry/series")
        slices = [s for s in slices if key(s) == best]

    normal = slice_normal(slices[0].orientation)
    dist = np.array([float(s.position @ normal) for s in slices])
    order = np.argsort(dist, kind="stable")
    slices = [slices[i] for i in order]
    dist = dist[order]
    keep = [0]
    for i in range(1, len(slices)):
        if abs(dist[i] - dist[keep[-1]]) < 1e-3:
            continue
        keep.append(i)
    if len(keep) < len(slices):
        notes.append(f"dropped {len(slices) - len(keep)} duplicate slice position(s)")
        slices = [slices[i] for i in keep]
        dist = dist[keep]

    positions = np.stack([s.position for s in slices])
    spacing_z = _check_stack_geometry(positions, normal, dist, slices[0].header, notes)

    ref = slices[0].header
    row_sp, col_sp = _pixel_spacing(ref)
    for s in slices[1:]:
        rs, cs = _pixel_spacing(s.header)
        if abs(rs - row_sp) > 1e-3 or abs(cs - col_sp) > 1e-3:
            raise ValueError(
                f"pixel spacing changes within the series ({row_sp}x{col_sp} vs {rs}x{cs} mm): not one volume"
            )

    pixels = np.empty((len(slices), int(ref.Rows), int(ref.Columns)), dtype=np.float32)
    for i, s in enumerate(slices):
        arr = decode_pixels(s.header, Path(s.path).name)
        if arr.shape != pixels.shape[1:]:
            raise ValueError(f"{Path(s.path).name}: pixel array shape {arr.shape} != {pixels.shape[1:]}")
        pixels[i] = _to_hu(arr, s.header)
        strip_pixels(s.header)
    np.clip(pixels, HU_MIN, HU_MAX, out=pixels)
    return Volume(
        pixels=pixels,
        spacing=(spacing_z, row_sp, col_sp),
        modality="CT",
        sources=[s.header for s in slices],
        notes=notes,
    )


def _check_stack_geometry(
    positions: np.ndarray, normal: np.ndarray, dist: np.ndarray, ref: Dataset, notes: list[str]
) -> float:
    """Validate that the sorted positions form a regular stack; return the slice spacing in mm."""
    if len(dist) == 1:
        thickness = float(ref.get("SpacingBetweenSlices") or ref.get("SliceThickness") or 1.0)
        notes.append(f"single slice: slice spacing taken from the header ({thickness} mm)")
        return thickness
    tilt = float(ref.get("GantryDetectorTilt", 0.0) or 0.0)
    steps = np.diff(positions, axis=0)
    lengths = np.linalg.norm(steps, axis=1)
    cosines = np.abs(steps @ normal) / np.maximum(lengths, 1e-9)
    worst = float(np.degrees(np.arccos(np.clip(cosines.min(), -1.0, 1.0))))
    if worst > TILT_TOLERANCE_DEG or abs(tilt) > TILT_TOLERANCE_DEG:
        angle = max(worst, abs(tilt))
        raise ValueError(
            f"gantry tilt of {angle:.1f} degrees (slice positions are not along the slice normal); "
            "tilted acquisitions are not supported: reconstruct without tilt"
        )
    gaps = np.diff(dist)
    median = float(np.median(gaps))
    if median <= 0:
        raise ValueError("slice positions do not increase along the slice normal")
    deviation = np.abs(gaps - median) / median
    if deviation.max() > SPACING_TOLERANCE:
        i = int(np.argmax(deviation))
        ratio = gaps[i] / median
        if ratio > 1.5 and abs(ratio - round(ratio)) < SPACING_TOLERANCE:
            missing = round(ratio) - 1
            raise ValueError(
                f"{missing} slice(s) missing between positions {dist[i]:.2f} and {dist[i + 1]:.2f} mm "
                f"(spacing {median:.2f} mm): the series is incomplete"
            )
        raise ValueError(
            f"irregular slice spacing: gaps from {gaps.min():.2f} to {gaps.max():.2f} mm "
            f"(median {median:.2f} mm); cannot build a regular volume"
        )
    thickness = ref.get("SliceThickness")
    if thickness is not None and thickness != "":
        if abs(float(thickness) - median) > 0.5 * median:
            notes.append(f"slice spacing {median:.3f} mm from positions differs from SliceThickness {thickness}")
    return median


def _pixel_spacing(ds: Dataset) -> tuple[float, float]:
    ps = ds.get("PixelSpacing")
    if ps is None or len(ps) != 2:
        raise ValueError("PixelSpacing is missing: cannot measure in mm")
    return float(ps[0]), float(ps[1])


def _to_hu(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def _first(seq_owner: Dataset | None, seq_name: str) -> Dataset | None:
    if seq_owner is None or seq_name not in seq_owner:
        return None
    seq = seq_owner.get(seq_name)
    return seq[0] if seq else None


def _frame_attr(shared: Dataset | None, frame: Dataset | None, seq_name: str, attr: str) -> Any:
    for owner in (frame, shared):
        item = _first(owner, seq_name)
        if item is not None and attr in item:
            return item.get(attr)
    return None


def _load_enhanced(path: str, ds: Dataset) -> Volume:
    name = Path(path).name
    if not _modality_ok(ds):
        raise ValueError(f"{name}: modality {ds.get('Modality', '?')} is not CT")
    n = int(ds.NumberOfFrames)
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence") or [])
    if len(per_frame) != n:
        raise ValueError(f"{name}: {len(per_frame)} per-frame functional groups for {n} frames")
    positions, orientations, slopes, intercepts = [], [], [], []
    for item in per_frame:
        pos = _frame_attr(shared, item, "PlanePositionSequence", "ImagePositionPatient")
        ori = _frame_attr(shared, item, "PlaneOrientationSequence", "ImageOrientationPatient")
        if pos is None or ori is None:
            raise ValueError(f"{name}: a frame lacks plane position or orientation")
        positions.append([float(v) for v in pos])
        orientations.append([float(v) for v in ori])
        slope = _frame_attr(shared, item, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _frame_attr(shared, item, "PixelValueTransformationSequence", "RescaleIntercept")
        slopes.append(float(slope) if slope is not None else float(ds.get("RescaleSlope", 1.0)))
        intercepts.append(float(intercept) if intercept is not None else float(ds.get("RescaleIntercept", 0.0)))
    ori_arr = np.asarray(orientations)
    if np.abs(ori_arr - ori_arr[0]).max() > 1e-3:
        raise ValueError(f"{name}: frames have different orientations; not one volume")
    spacing_raw = _frame_attr(shared, per_frame[0], "PixelMeasuresSequence", "PixelSpacing")
    if spacing_raw is None:
        raise ValueError(f"{name}: PixelSpacing is missing from the functional groups")
    row_sp, col_sp = (float(v) for v in spacing_raw)
    normal = slice_normal(ori_arr[0])
    pos_arr = np.asarray(positions)
    dist = pos_arr @ normal
    order = np.argsort(dist, kind="stable")
    notes: list[str] = []
    if len(np.unique(np.round(dist, 3))) != n:
        raise ValueError(f"{name}: several frames share one position (multiple stacks or temporal positions)")
    if n == 1:
        thickness = _frame_attr(shared, per_frame[0], "PixelMeasuresSequence", "SliceThickness")
        spacing_z = float(thickness) if thickness is not None else 1.0
    else:
        spacing_z = _check_stack_geometry(pos_arr[order], normal, dist[order], ds, notes)
    raw = decode_pixels(ds, name)
    if raw.ndim == 2:
        raw = raw[None]
    pixels = np.empty(raw.shape, dtype=np.float32)
    for out_i, frame_i in enumerate(order):
        pixels[out_i] = raw[frame_i].astype(np.float32) * np.float32(slopes[frame_i]) + np.float32(intercepts[frame_i])
    np.clip(pixels, HU_MIN, HU_MAX, out=pixels)
    strip_pixels(ds)
    return Volume(
        pixels=pixels,
        spacing=(spacing_z, row_sp, col_sp),
        modality="CT",
        sources=[ds],
        frame_numbers=[int(i) + 1 for i in order],
        notes=notes,
    )


def voxel_to_patient(volume: Volume, index: tuple[float, float, float]) -> np.ndarray:
    """Patient (LPS, mm) coordinates of a voxel index (slice, row, column) of ``volume``."""
    k, r, c = index
    if volume.frame_numbers is not None:
        src = volume.sources[0]
        shared = _first(src, "SharedFunctionalGroupsSequence")
        frames = src.PerFrameFunctionalGroupsSequence
        item = frames[volume.frame_numbers[round(k)] - 1]
        pos = np.asarray([float(v) for v in _frame_attr(shared, item, "PlanePositionSequence", "ImagePositionPatient")])
        ori = np.asarray(
            [float(v) for v in _frame_attr(shared, item, "PlaneOrientationSequence", "ImageOrientationPatient")]
        )
    else:
        src = volume.sources[round(k)]
        pos = np.asarray([float(v) for v in src.ImagePositionPatient])
        ori = np.asarray([float(v) for v in src.ImageOrientationPatient])
    return np.asarray(pos + ori[:3] * c * volume.spacing[2] + ori[3:] * r * volume.spacing[1])
