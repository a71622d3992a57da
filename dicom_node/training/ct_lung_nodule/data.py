"""Training and evaluation cases for the lung-nodule networks, all on the 1 mm working grid.

Sources: synthetic chest phantoms (:mod:`dicom_node.synth.ct_phantom`), synthetic nodules inserted
into the real lung parenchyma of the chest CT in ``shared/data/real`` (LIDC slab and single chest
slice), and the real LIDC nodule tip with the readers' outlines. Also what the networks' trainings
share: which truth a candidate overlaps, and flips of 2-D patches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from scipy import ndimage as ndi

from dicom_node.imaging.ct import load_ct_series
from dicom_node.imaging.series import normalize_hu, resample_inplane
from dicom_node.imaging.volume import Volume
from dicom_node.pipelines.ct_lung_field import segment_lungs
from dicom_node.pipelines.ct_lung_nodule import WORK_MM, Candidate, long_short_axes, search_region
from dicom_node.synth.ct_nodule import COMPOSITIONS, blend, random_spec, render_occupancy
from dicom_node.synth.ct_phantom import make_phantom
from dicom_node.training.ct_lidc import lidc_nodule_masks
from dicom_node.training.ct_lung_nodule.runtime import progress_bar

REAL_DIR = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "real"


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
    lung: np.ndarray | None = None  # the lung field (phantoms), for the pipeline's inside-the-lung rule


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
    truths = _truths(ph.labels, ph.spacing, meta)
    return Case(name, normalize_hu(ph.hu), ph.hu, ph.spacing, region, ph.labels, truths, lung=fields.both)


def phantom_volume(hu: np.ndarray, spacing: tuple[float, float, float]) -> Volume:
    """Wrap an HU array as a :class:`Volume` with minimal axial CT headers (for the pipelines)."""
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


def _lung_reals() -> list[tuple[str, Volume, np.ndarray | None]]:
    """The real volumes of :func:`real_volumes` with enough lung (> 50 ml) to insert nodules into."""
    return [r for r in real_volumes() if segment_lungs(r[1]).both.sum() * np.prod(r[1].spacing) > 50_000]


def build_cases(
    rng: np.random.Generator, n_phantoms: int, n_inserted: int, progress: bool, **phantom_kw: Any
) -> list[Case]:
    """Phantom cases plus real-inserted cases (the real slices of shared/data/real)."""
    cases: list[Case] = []
    for i in progress_bar(range(n_phantoms), progress, desc="phantoms", leave=False):
        cases.append(phantom_case(rng, f"phantom{i}", n_nodules=(2, 5), **phantom_kw))
    reals = _lung_reals()
    for i in progress_bar(range(n_inserted), progress and bool(reals), desc="real+inserted", leave=False):
        if not reals:
            break
        name, vol, truth = reals[i % len(reals)]
        cases.append(inserted_case(rng, f"{name}+ins{i}", vol, truth))
    return cases


def calibration_cases(sets: Sequence[tuple[int, int, int]]) -> list[Case]:
    """Fresh phantoms (2-5 nodules) and real-inserted cases for fitting the calibrators (and FPR3D): for
    each (seed, phantoms, inserted) of ``sets``, that many of each from one generator seeded ``seed``."""
    reals = _lung_reals()
    cases: list[Case] = []
    for seed, n_phantoms, n_inserted in sets:
        rng = np.random.default_rng(seed)
        cases += [phantom_case(rng, f"cal{seed}_{i}", n_nodules=(2, 5)) for i in range(n_phantoms)]
        for i in range(n_inserted if reals else 0):
            name, vol, truth = reals[i % len(reals)]
            cases.append(inserted_case(rng, f"{name}+cal{seed}_{i}", vol, truth))
    return cases


def match_truths(cands: list[Candidate], case: Case) -> list[int]:
    """Index of the truth each candidate overlaps most (0 = none, -1 = ignored region)."""
    out = []
    for c in cands:
        labs = case.labels[c.box][c.local]
        pos = labs[labs > 0]
        if pos.size:
            out.append(int(np.bincount(pos).argmax()))
        elif (labs < 0).mean() > 0.3 if labs.size else False:
            out.append(-1)
        else:
            out.append(0)
    return out


def augment2d(rng: np.random.Generator, *arrays: np.ndarray) -> list[np.ndarray]:
    """The same random flips (last axis, second-last axis) and transpose of the last two axes for each array."""
    flips = rng.random(3) < 0.5
    out = []
    for a in arrays:
        if flips[0]:
            a = a[..., ::-1]
        if flips[1]:
            a = a[..., ::-1, :]
        if flips[2]:
            a = np.swapaxes(a, -1, -2)
        out.append(np.ascontiguousarray(a))
    return out
