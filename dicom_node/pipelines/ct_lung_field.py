"""Chest CT lung fields by HU threshold and morphology (no learned weights).

Steps: body mask (soft tissue, largest component per slice, holes filled) -> air inside the body ->
3-D components that look like lung (size, parenchymal mean HU; pure-air gas pockets such as the stomach
bubble are rejected) -> large airways removed (small pure-air 2-D blobs) -> left/right split (by
components, eroding until two appear if the lungs touch) -> vessel holes filled per slice, and a small
closing so juxtapleural nodules stay inside the field.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from scipy import ndimage as ndi

from dicom_node.findings import Category, Finding, Findings, Laterality, Measurement, Quantity
from dicom_node.imaging.ct import is_localizer, load_ct_series
from dicom_node.imaging.volume import Volume
from dicom_node.pipelines.base import register

logger = logging.getLogger(__name__)

VERSION = "1.0.0"
MIN_SLICES = 3
AIR_HU = -400.0
BODY_HU = -500.0
# A lung component must be at least this big (mL), and its mean HU must look like parenchyma.
MIN_LUNG_ML = 15.0
LUNG_MEAN_HU_RANGE = (-980.0, -500.0)
# Gas pockets (stomach bubble, bowel) are mostly pure air: their median HU is below this, lung's is not.
GAS_MEDIAN_HU = -935.0
AIRWAY_MAX_AREA_MM2 = 700.0
AIRWAY_MEAN_HU = -950.0


@dataclass
class LungFields:
    """Lung masks of one volume: ``left`` and ``right`` are boolean arrays shaped like the volume."""

    left: np.ndarray
    right: np.ndarray

    @property
    def both(self) -> np.ndarray:
        return np.asarray(self.left | self.right)


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return np.asarray(x * x + y * y <= radius * radius)


IN_PLANE = np.zeros((3, 3, 3), dtype=bool)  # 4-connectivity within a slice, none across slices
IN_PLANE[1] = ndi.generate_binary_structure(2, 1)


def body_mask(hu: np.ndarray) -> np.ndarray:
    """Per-slice body: largest soft-tissue component, holes filled (table and arms outside excluded).

    Every step works slice by slice, done for the whole volume at once with in-plane structures.
    """
    tissue = ndi.binary_opening(hu > BODY_HU, structure=_disk(2)[None])
    labels, n = ndi.label(tissue, structure=IN_PLANE)  # each label lies in one slice
    if n == 0:
        return np.zeros(hu.shape, dtype=bool)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    slice_of = np.array([sl[0].start for sl in ndi.find_objects(labels)])  # labels 1..n, each present
    largest = np.zeros(n + 1, dtype=bool)
    for k in np.unique(slice_of):
        ids = np.nonzero(slice_of == k)[0] + 1  # in raster order, as a per-slice labelling numbers them
        largest[ids[int(np.argmax(sizes[ids]))]] = True
    return fill_holes_per_slice(largest[labels])


def fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes`` of each slice (4-connected background), in one labelling:
    the background parts that touch no edge of their slice are holes."""
    labels, _ = ndi.label(~mask, structure=IN_PLANE)
    edge = np.unique(np.concatenate([labels[:, [0, -1], :].ravel(), labels[:, :, [0, -1]].ravel()]))
    outside = np.zeros(int(labels.max()) + 1, dtype=bool)
    outside[edge] = True
    outside[0] = False
    return np.asarray(~outside[labels])


def _patient_x_of_columns(volume: Volume) -> tuple[float, float]:
    """(x at column 0, dx per column) in patient LPS; +x is the patient's left."""
    src = volume.sources[0]
    try:
        if volume.frame_numbers is not None:
            return 0.0, 1.0
        ori = [float(v) for v in src.ImageOrientationPatient]
        pos = [float(v) for v in src.ImagePositionPatient]
    except (AttributeError, ValueError, TypeError):
        return 0.0, 1.0
    return pos[0], ori[0] * volume.spacing[2]


def segment_lungs(volume: Volume) -> LungFields:
    """Left and right lung masks of a CT volume in HU (empty masks when there is no lung).

    Images of 256 pixels and more are segmented at half resolution in-plane (2 x 2 mean), then refined
    at full resolution: air-like voxels within 2 pixels of the coarse field, airways removed again, and
    holes (vessels, nodules) filled slice by slice.
    """
    rows, cols = volume.pixels.shape[1:]
    if min(rows, cols) < 256:
        return _segment_lungs(volume)
    hu = volume.pixels
    r2, c2 = rows // 2 * 2, cols // 2 * 2
    quads = [hu[:, i:r2:2, j:c2:2] for i in (0, 1) for j in (0, 1)]  # 2 x 2 mean, as 4 strided adds
    small = ((quads[0] + quads[1]) + (quads[2] + quads[3])).astype(np.float32) * np.float32(0.25)
    dz, dy, dx = volume.spacing
    coarse = _segment_lungs(dataclasses.replace(volume, pixels=small, spacing=(dz, dy * 2, dx * 2)))

    def refine(mask: np.ndarray) -> np.ndarray:
        full = np.zeros(hu.shape, dtype=bool)
        full[:, :r2, :c2] = mask.repeat(2, axis=1).repeat(2, axis=2)
        if not full.any():
            return full
        # Everything below stays within 2 pixels of the coarse field: work in its in-plane bounding box,
        # widened by those 2 pixels (the same result as on the whole slices, in about half the time).
        rr, cc = np.nonzero(full.any(axis=(0, 2)))[0], np.nonzero(full.any(axis=(0, 1)))[0]
        box = (
            slice(None),
            slice(max(int(rr[0]) - 2, 0), min(int(rr[-1]) + 3, rows)),
            slice(max(int(cc[0]) - 2, 0), min(int(cc[-1]) + 3, cols)),
        )
        sub_hu = hu[box]
        in_plane = np.zeros((3, 3, 3), dtype=bool)
        in_plane[1] = ndi.generate_binary_structure(2, 1)
        # Air-like voxels near the coarse field; vessels and nodules come back as filled holes, while thin
        # walls that mean pooling blurred away (trachea next to a lung) separate the airways again.
        refined = ndi.binary_dilation(full[box], in_plane, iterations=2) & (sub_hu < AIR_HU)
        labels, _ = ndi.label(refined)
        for i, sl in enumerate(ndi.find_objects(labels), start=1):  # pure gas (trachea) as in full resolution
            if sl is not None and np.median(sub_hu[sl][labels[sl] == i]) < GAS_MEDIAN_HU:
                refined[sl] &= labels[sl] != i
        _remove_airways(refined, sub_hu, dy * dx)
        full[:] = False
        full[box] = _fill_slices(refined, dy)
        return full

    left = refine(coarse.left)
    right = refine(coarse.right) & ~left
    return LungFields(left=left, right=right)


def _segment_lungs(volume: Volume) -> LungFields:
    """:func:`segment_lungs` at the volume's own resolution."""
    hu = volume.pixels
    dz, dy, dx = volume.spacing
    voxel_ml = dz * dy * dx / 1000.0
    pixel_mm2 = dy * dx
    body = body_mask(hu)
    air = (hu < AIR_HU) & body
    # Components touching the image border are outside air that leaked in (open body outline).
    labels, n = ndi.label(air)
    empty = LungFields(np.zeros(hu.shape, bool), np.zeros(hu.shape, bool))
    if n == 0:
        return empty
    sizes = np.bincount(labels.ravel(), minlength=n + 1).astype(float)
    means = np.bincount(labels.ravel(), weights=hu.ravel(), minlength=n + 1) / np.maximum(sizes, 1)
    border = np.zeros(n + 1, dtype=bool)
    for face in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        border[face.ravel()] = True
    min_voxels = min(MIN_LUNG_ML / voxel_ml, 0.002 * hu[0].size * hu.shape[0])
    keep = np.zeros(n + 1, dtype=bool)
    for i in range(1, n + 1):
        if border[i] or sizes[i] < min_voxels:
            continue
        if not LUNG_MEAN_HU_RANGE[0] <= means[i] <= LUNG_MEAN_HU_RANGE[1]:
            continue
        keep[i] = True
    boxes = ndi.find_objects(labels)
    for i in (int(j) for j in np.nonzero(keep)[0]):
        sl = boxes[i - 1]
        if sl is not None and np.median(hu[sl][labels[sl] == i]) < GAS_MEDIAN_HU:
            keep[i] = False
    lungs = keep[labels]
    if not lungs.any():
        return empty
    _remove_airways(lungs, hu, pixel_mm2)
    left, right = _split_left_right(lungs, volume)
    left = _fill_slices(left, dy)
    right = _fill_slices(right, dy)
    right &= ~left
    return LungFields(left=left, right=right)


def _remove_airways(lungs: np.ndarray, hu: np.ndarray, pixel_mm2: float) -> None:
    """Remove large airways in place: small, pure-air 2-D blobs (trachea, main bronchi) in each slice."""
    for k in range(lungs.shape[0]):
        lab2, n2 = ndi.label(lungs[k])
        if n2 == 0:
            continue
        counts = np.bincount(lab2.ravel(), minlength=n2 + 1)
        areas = counts * pixel_mm2
        mean2 = np.bincount(lab2.ravel(), weights=hu[k].ravel(), minlength=n2 + 1) / np.maximum(counts, 1)
        airway = (areas < AIRWAY_MAX_AREA_MM2) & (np.asarray(mean2) < AIRWAY_MEAN_HU)
        airway[0] = False
        if airway.any():
            lungs[k] &= ~airway[lab2]


def _split_left_right(lungs: np.ndarray, volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    x0, dxc = _patient_x_of_columns(volume)
    labels, n = ndi.label(lungs)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    order = np.argsort(sizes)[::-1]
    big = [int(i) for i in order[:2] if sizes[i] > 0]
    if len(big) == 2 and sizes[big[1]] > 0.15 * sizes[big[0]]:
        if n == 2:  # the two lungs and nothing else: they are the answer, there is nothing to grow
            left_id, right_id = _left_first(labels, big, x0, dxc)
            return labels == left_id, labels == right_id
        seeds = labels * np.isin(labels, big)
    else:
        seeds = _erode_until_two(lungs)
    if seeds is None:
        # One lung only (or fused and inseparable): assign by side of the body midline.
        cols = np.nonzero(lungs.any(axis=(0, 1)))[0]
        mid_col = (cols.min() + cols.max()) / 2.0 if cols.size else lungs.shape[2] / 2.0
        x_mid = x0 + dxc * mid_col
        side_left = (x_mid > 0) if abs(x_mid) > 30 else None
        col_idx = np.arange(lungs.shape[2])
        if side_left is None:
            left_cols = (x0 + dxc * col_idx) > 0
            left = lungs & left_cols[None, None, :]
            return left, lungs & ~left
        return (lungs, np.zeros_like(lungs)) if side_left else (np.zeros_like(lungs), lungs)
    # Grow the two seeds back over the lung mask (nearest seed), inside the lungs' bounding box only.
    box = ndi.find_objects(lungs.astype(np.int8))[0]
    sub_seeds = seeds[box]
    idx = ndi.distance_transform_edt(
        sub_seeds == 0, return_distances=False, return_indices=True, sampling=volume.spacing
    )
    grown = np.zeros(seeds.shape, dtype=seeds.dtype)
    grown[box] = sub_seeds[tuple(idx)] * lungs[box]
    ids = [int(i) for i in np.nonzero(np.bincount(seeds.ravel()))[0] if i != 0][:2]
    left_id, right_id = _left_first(grown, ids, x0, dxc)
    # Also keep small lung pieces not reached (none: grown covers all lung voxels).
    return np.asarray(grown == left_id), np.asarray(grown == right_id)


def _left_first(labels: np.ndarray, ids: list[int], x0: float, dxc: float) -> tuple[int, int]:
    """(left, right) of two labels: the one whose mean column lies further to the patient's left."""
    counts = np.zeros((2, labels.shape[2]))
    for j, i in enumerate(ids):
        counts[j] = (labels == i).sum(axis=(0, 1))
    cols = np.arange(labels.shape[2], dtype=float)
    xs = [x0 + dxc * float((c * cols).sum() / c.sum()) for c in counts]
    return ids[int(np.argmax(xs))], ids[int(np.argmin(xs))]


def _erode_until_two(lungs: np.ndarray) -> np.ndarray | None:
    """Erode (in-plane) until the lung mask splits into two large components; their labels or None."""
    mask = lungs.copy()
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndi.generate_binary_structure(2, 1)
    for _ in range(12):
        mask = ndi.binary_erosion(mask, structure=structure)
        labels, n = ndi.label(mask)
        if n < 2:
            if n == 0:
                return None
            continue
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        a, b = np.argsort(sizes)[::-1][:2]
        if sizes[b] > 0.15 * sizes[a]:
            out = np.zeros(labels.shape, dtype=np.int32)
            out[labels == a] = 1
            out[labels == b] = 2
            return out
    return None


def _fill_slices(mask: np.ndarray, pixel_mm: float) -> np.ndarray:
    """Close small gaps (about 3 mm) and fill holes (vessels, nodules) slice by slice."""
    radius = max(1, round(3.0 / pixel_mm))
    disk = _disk(radius)
    out = np.zeros_like(mask)
    row_hits, col_hits = np.any(mask, axis=2), np.any(mask, axis=1)  # per slice, two passes over the volume
    for k in np.nonzero(np.any(row_hits, axis=1))[0]:
        rows = np.nonzero(row_hits[k])[0]
        cols = np.nonzero(col_hits[k])[0]
        r0, r1 = max(rows[0] - radius - 1, 0), min(rows[-1] + radius + 2, mask.shape[1])
        c0, c1 = max(cols[0] - radius - 1, 0), min(cols[-1] + radius + 2, mask.shape[2])
        sub = mask[k, r0:r1, c0:c1]
        padded = np.pad(sub, radius + 1)
        closed = ndi.binary_closing(padded, structure=disk)[radius + 1 : -radius - 1, radius + 1 : -radius - 1]
        out[k, r0:r1, c0:c1] = ndi.binary_fill_holes(closed | sub)
    return out


def lung_findings(volume: Volume, fields: LungFields) -> list[Finding]:
    """One :class:`Finding` per non-empty lung with volume (mm3) and mean HU."""
    voxel_mm3 = float(np.prod(volume.spacing))
    out = []
    for mask, side in ((fields.right, Laterality.RIGHT), (fields.left, Laterality.LEFT)):
        count = int(mask.sum())
        if count == 0:
            continue
        out.append(
            Finding(
                category=Category.LUNG,
                mask=mask,
                label=f"{side.value} lung",
                laterality=side,
                measurements=[
                    Measurement(Quantity.VOLUME, count * voxel_mm3),
                    Measurement(Quantity.MEAN_HU, float(volume.pixels[mask].mean())),
                ],
            )
        )
    return out


def ct_applies_to(series: Sequence[Dataset], min_slices: int = MIN_SLICES) -> str | None:
    """Shared CT applicability check: a reason string when ``series`` is not an axial CT stack."""
    if not series:
        return "empty series"
    first = series[0]
    modality = str(first.get("Modality", "")).upper()
    sop = str(first.get("SOPClassUID", ""))
    if modality != "CT" and not sop.startswith("1.2.840.10008.5.1.4.1.1.2"):
        return f"modality {modality or '?'} is not CT"
    images = [ds for ds in series if not is_localizer(ds)]
    if not images:
        return "only localizer/scout images"
    frames = sum(int(ds.get("NumberOfFrames", 1) or 1) for ds in images)
    if frames < min_slices:
        return f"only {frames} CT slice(s); at least {min_slices} needed"
    return None


@register("ct_lung_field")
class CtLungField:
    """Classical lung-field segmentation of chest CT (left and right lung, volume and mean HU)."""

    name = "ct_lung_field"
    version = VERSION

    def __init__(self, min_slices: int = MIN_SLICES) -> None:
        self.min_slices = int(min_slices)

    def applies_to(self, series: Sequence[Dataset]) -> str | None:
        """None for an axial CT stack of at least ``min_slices`` slices, else the reason."""
        return ct_applies_to(series, self.min_slices)

    def load(self, paths: Sequence[str]) -> Volume:
        """HU volume of the series (see :func:`dicom_node.imaging.ct.load_ct_series`)."""
        return load_ct_series(paths)

    def run(self, volume: Volume, device: str = "cpu") -> Findings:
        """Segment the lungs; "nothing found" (no findings) when the volume holds no lung."""
        t0 = time.perf_counter()
        fields = segment_lungs(volume)
        findings = lung_findings(volume, fields)
        result = Findings(pipeline=self.name, version=self.version, findings=findings)
        if not findings:
            result.conclusions.append("No aerated lung found in this CT volume.")
        else:
            total = sum(f.measurement(Quantity.VOLUME) or 0.0 for f in findings) / 1000.0
            result.conclusions.append(f"Aerated lung field: {total:.0f} mL in {len(findings)} lung(s).")
        result.timings["segment_s"] = time.perf_counter() - t0
        return result
