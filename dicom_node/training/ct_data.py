"""Training and evaluation cases for the lung-nodule networks, all on the 1 mm working grid.

Sources: synthetic chest phantoms (:mod:`dicom_node.synth.ct_phantom`), synthetic nodules inserted
into the real lung parenchyma of the chest CT in ``shared/data/real`` (LIDC slab and single chest
slice), and the real LIDC nodule tip with the readers' outlines.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from dicom_node.imaging.ct import load_ct_series
from dicom_node.imaging.series import normalize_hu, resample_inplane
from dicom_node.imaging.volume import Volume
from dicom_node.pipelines.ct_lung_field import segment_lungs
from dicom_node.pipelines.ct_lung_nodule import WORK_MM, long_short_axes, search_region
from dicom_node.synth.ct_nodule import COMPOSITIONS, blend, random_spec, render_occupancy
from dicom_node.synth.ct_phantom import make_phantom

logger = logging.getLogger(__name__)

REAL_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real"


@dataclass
class NoduleTruth:
    """Ground truth of one nodule in a case (label value ``index`` in ``Case.labels``)."""

    index: int
    diameter: float  # long axis on the largest slice, mm
    malignant: int  # 1, 0, or -1 when unknown (real)
    composition: int  # index into COMPOSITIONS, -1 when unknown
    key_slice: int
    center: tuple[int, int, int]


@dataclass
class Case:
    """A volume on the working grid with its lung region, nodule labels and nodule truths."""

    name: str
    norm: np.ndarray  # normalized HU (slices, rows, cols)
    hu: np.ndarray
    spacing: tuple[float, float, float]
    region: np.ndarray
    labels: np.ndarray  # 0 background, i > 0 nodule i, -1 ignored (unlabelled real nodule)
    truths: list[NoduleTruth] = field(default_factory=list)


def _truths(labels: np.ndarray, spacing: tuple[float, float, float], meta: list[tuple[int, int]]) -> list[NoduleTruth]:
    out = []
    for i, (malignant, comp) in enumerate(meta, start=1):
        m = labels == i
        if not m.any():
            continue
        areas = m.reshape(m.shape[0], -1).sum(axis=1)
        k = int(np.argmax(areas))
        long_ax, _ = long_short_axes(m[k], (spacing[1], spacing[2]))
        rr, cc = np.nonzero(m[k])
        out.append(NoduleTruth(i, long_ax, malignant, comp, k, (k, int(rr.mean()), int(cc.mean()))))
    return out


def phantom_case(
    rng: np.random.Generator, name: str, n_nodules: int | tuple[int, int] = (1, 4), **phantom_kw: Any
) -> Case:
    """A synthetic phantom case (already on the 1 mm grid); region from the classical lung fields.

    ``phantom_kw`` goes to :func:`dicom_node.synth.ct_phantom.make_phantom` (size, extent_mm, thickness).
    """
    ph = make_phantom(rng, n_nodules=n_nodules, **phantom_kw)
    vol = phantom_volume(ph.hu, ph.spacing)
    fields = segment_lungs(vol)
    region = search_region(fields.both, fields.left, fields.right)
    meta = [(int(n.malignant), COMPOSITIONS.index(n.composition)) for n in ph.nodules]
    return Case(name, normalize_hu(ph.hu), ph.hu, ph.spacing, region, ph.labels, _truths(ph.labels, ph.spacing, meta))


def phantom_volume(hu: np.ndarray, spacing: tuple[float, float, float]) -> Volume:
    """Wrap an HU array as a :class:`Volume` with minimal axial CT headers (for the pipelines)."""
    from pydicom.dataset import Dataset

    sources = []
    for k in range(hu.shape[0]):
        ds = Dataset()
        ds.Modality = "CT"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [
            -hu.shape[2] * spacing[2] / 2,
            -hu.shape[1] * spacing[1] / 2,
            k * spacing[0],
        ]
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.Rows, ds.Columns = int(hu.shape[1]), int(hu.shape[2])
        sources.append(ds)
    return Volume(pixels=hu.astype(np.float32), spacing=spacing, modality="CT", sources=sources)


def _to_working(vol: Volume) -> tuple[np.ndarray, tuple[float, float, float], tuple[float, float]]:
    zoom = (vol.spacing[1] / WORK_MM, vol.spacing[2] / WORK_MM)
    hu = resample_inplane(vol.pixels, zoom, order=1)
    spacing = (
        vol.spacing[0],
        vol.shape[1] * vol.spacing[1] / hu.shape[1],
        vol.shape[2] * vol.spacing[2] / hu.shape[2],
    )
    return hu, spacing, zoom


def real_volumes(real_dir: Path = REAL_DIR) -> list[tuple[str, Volume, np.ndarray | None]]:
    """Real chest CT available here: (name, volume, real nodule mask or None)."""
    out: list[tuple[str, Volume, np.ndarray | None]] = []
    lidc = real_dir / "ct_lidc0002_slab12"
    if (lidc / "dicom").is_dir():
        vol = load_ct_series(sorted((lidc / "dicom").glob("*.dcm")))
        truth = None
        xml = lidc / "annotations" / "071.xml"
        if xml.exists():
            from dicom_node.training.ct_lidc import lidc_nodule_masks

            truth = lidc_nodule_masks(xml, vol)
        out.append(("lidc0002_slab12", vol, truth))
    single = real_dir / "ct_chest_slice_transfer_syntaxes" / "CTImage.dcm"
    if single.exists():
        out.append(("chest_slice", load_ct_series([single]), None))
    return out


def _render_box(
    z: np.ndarray, y: np.ndarray, x: np.ndarray, center: np.ndarray, half_mm: float
) -> tuple[slice, slice, slice]:
    """The voxels within ``half_mm`` of ``center`` along each axis (coordinates in mm)."""
    zi, yi, xi = (np.nonzero(np.abs(axis - c) <= half_mm)[0] for axis, c in zip((z, y, x), center, strict=True))
    return slice(zi[0], zi[-1] + 1), slice(yi[0], yi[-1] + 1), slice(xi[0], xi[-1] + 1)


def inserted_case(
    rng: np.random.Generator,
    name: str,
    vol: Volume,
    truth: np.ndarray | None,
    n_nodules: tuple[int, int] = (2, 4),
) -> Case:
    """Synthetic nodules rendered into the real lung parenchyma of ``vol`` (working grid)."""
    hu, spacing, zoom, lung, left, right = _working_lungs(vol)
    labels = np.zeros(hu.shape, dtype=np.int16)
    meta: list[tuple[int, int]] = []
    if truth is not None and truth.any():
        # The real nodule is kept out of training (it is the real test): its surroundings are ignored (-1).
        t = resample_inplane(truth.astype(np.float32), zoom, order=1) >= 0.5
        labels[ndi.binary_dilation(t, iterations=6)] = -1
    inside = ndi.distance_transform_edt(lung, sampling=spacing)
    z = (np.arange(hu.shape[0]) + 0.5) * spacing[0]
    y = (np.arange(hu.shape[1]) + 0.5) * spacing[1]
    x = (np.arange(hu.shape[2]) + 0.5) * spacing[2]
    count = int(rng.integers(n_nodules[0], n_nodules[1] + 1))
    placed: list[np.ndarray] = []
    for _ in range(count * 10):
        if len(placed) >= count:
            break
        spec = random_spec(rng, (0.0, 0.0, 0.0))
        r = spec.radius
        juxta = rng.random() < 0.3
        cand = np.nonzero((inside > 0.75 * r) & (inside < r + 0.5)) if juxta else np.nonzero(inside > r * 0.6 + 1.0)
        if cand[0].size == 0:
            continue
        i = int(rng.integers(cand[0].size))
        cen = np.array([z[cand[0][i]], y[cand[1][i]], x[cand[2][i]]])
        if hu.shape[0] <= 2:
            cen[0] = z[cand[0][i]] + rng.uniform(-0.3, 0.3) * spacing[0]
        if any(np.linalg.norm(cen - p) < r * 2 + 10 for p in placed):
            continue
        if labels[cand[0][i], cand[1][i], cand[2][i]]:
            continue
        spec.center = (float(cen[0]), float(cen[1]), float(cen[2]))
        box = _render_box(z, y, x, cen, r * 2.8 + 2.0)
        occ, core, calc = render_occupancy(spec, z[box[0]], y[box[1]], x[box[2]], spacing[0])
        allowed = ndi.binary_dilation(lung[box], iterations=1).astype(np.float32)
        occ, core, calc = occ * allowed, core * allowed, calc * allowed
        if (occ >= 0.5).sum() == 0:
            continue
        before = hu[box].copy()
        hu[box] = blend(hu[box], spec, occ, core, calc)
        # Real images carry noise; the blended nodule interior gets noise of the background's level.
        noise_sd = float(np.std(before[(occ < 0.05)] - ndi.median_filter(before, size=(1, 3, 3))[(occ < 0.05)]))
        hu[box] += (rng.normal(0.0, min(noise_sd, 40.0), size=occ.shape) * occ).astype(np.float32)
        meta.append((int(spec.malignant), COMPOSITIONS.index(spec.composition)))
        lab = labels[box]
        lab[(occ >= 0.5) & (lab == 0)] = len(meta)
        placed.append(cen)
    region = search_region(lung, left, right)
    return Case(name, normalize_hu(hu), hu, spacing, region, labels, _truths(labels, spacing, meta))


def _working_lungs(
    vol: Volume,
) -> tuple[np.ndarray, tuple[float, float, float], tuple[float, float], np.ndarray, np.ndarray, np.ndarray]:
    """``vol`` on the working grid (HU, spacing, zoom) with its lung fields (both, left, right) resampled."""
    fields = segment_lungs(vol)
    hu, spacing, zoom = _to_working(vol)
    both, left, right = (
        resample_inplane(mask.astype(np.float32), zoom, order=1) >= 0.5
        for mask in (fields.both, fields.left, fields.right)
    )
    return hu, spacing, zoom, both, left, right


def real_case(name: str, vol: Volume, truth: np.ndarray | None) -> Case:
    """A real volume on the working grid with the readers' nodule mask as label 1 (no class truth)."""
    hu, spacing, zoom, lung, left, right = _working_lungs(vol)
    labels = np.zeros(hu.shape, dtype=np.int16)
    meta: list[tuple[int, int]] = []
    if truth is not None and truth.any():
        labels[resample_inplane(truth.astype(np.float32), zoom, order=1) >= 0.5] = 1
        meta.append((-1, -1))
    region = search_region(lung, left, right)
    return Case(name, normalize_hu(hu), hu, spacing, region, labels, _truths(labels, spacing, meta))


def add_nodules(
    case: Case,
    rng: np.random.Generator,
    n: int,
    max_diameter: float = 16.0,
    juxtapleural: float = 0.0,
    min_diameter: float = 4.0,
    compositions: tuple[float, float, float] | None = None,
) -> Case:
    """Render ``n`` more (mostly small: ``min_diameter`` to ``max_diameter``) nodules into ``case`` in place.

    A share ``juxtapleural`` of them touches the pleura (the lung = the search region below -400 HU);
    the rest sits inside the parenchyma. ``compositions`` = probabilities of solid / part-solid /
    ground-glass (default: :func:`random_spec`'s). Returns ``case``.
    """
    from dicom_node.imaging.series import normalize_hu

    dz, dy, dx = case.spacing
    lung = case.region & (case.hu < -400)
    inside = ndi.distance_transform_edt(lung & (case.labels == 0), sampling=case.spacing)
    free = ndi.distance_transform_edt(case.labels == 0, sampling=case.spacing)
    z = (np.arange(case.hu.shape[0]) + 0.5) * dz
    y = (np.arange(case.hu.shape[1]) + 0.5) * dy
    x = (np.arange(case.hu.shape[2]) + 0.5) * dx
    added = 0
    for _ in range(n * 10):
        if added >= n:
            break
        d = float(np.exp(rng.uniform(np.log(min_diameter), np.log(max_diameter))))
        comp = str(rng.choice(COMPOSITIONS, p=compositions)) if compositions is not None else None
        spec = random_spec(rng, (0.0, 0.0, 0.0), diameter=d, composition=comp)
        if comp is not None and comp != "solid" and spec.shape == "calcified":
            spec = random_spec(rng, (0.0, 0.0, 0.0), diameter=d, shape="smooth", composition=comp)
        r = spec.radius
        if rng.random() < juxtapleural:
            cand = np.nonzero((inside > 0.75 * r) & (inside < r * 1.05 + 0.5) & (free > r * 2 + 4))
        else:
            cand = np.nonzero((inside > r + 3.0) & (case.hu > -950) & (free > r * 2 + 4))
        if cand[0].size == 0:
            continue
        i = int(rng.integers(cand[0].size))
        cen = np.array([z[cand[0][i]] + rng.uniform(-0.4, 0.4) * dz, y[cand[1][i]], x[cand[2][i]]])
        spec.center = (float(cen[0]), float(cen[1]), float(cen[2]))
        box = _render_box(z, y, x, cen, r * 2.8 + 2.0)
        if (case.labels[box] != 0).any():
            continue
        occ, core, calc = render_occupancy(spec, z[box[0]], y[box[1]], x[box[2]], dz)
        allowed = ndi.binary_dilation(lung[box], iterations=1).astype(np.float32)
        occ, core, calc = (a * allowed for a in (occ, core, calc))
        gt = occ >= 0.5
        if not gt.any():
            continue
        hu = blend(case.hu[box], spec, occ, core, calc)
        hu += (rng.normal(0.0, rng.uniform(5.0, 30.0), size=hu.shape) * occ).astype(np.float32)
        case.hu[box] = hu
        case.norm[box] = normalize_hu(hu)
        index = int(case.labels.max()) + 1
        case.labels[box][gt] = index
        case.truths.extend(
            _truths(case.labels == index, case.spacing, [(int(spec.malignant), COMPOSITIONS.index(spec.composition))])
        )
        case.truths[-1].index = index
        inside[box][ndi.binary_dilation(gt, iterations=3)] = 0
        free[box][ndi.binary_dilation(gt, iterations=3)] = 0
        added += 1
    return case
