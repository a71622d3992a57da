"""Training and evaluation cases: synthetic PET/CT phantoms with the CT on the PET grid, cached as .npz.

The CT goes onto the PET grid through the two grids' geometry (the same trilinear resampling the pipeline
applies to the DICOM series), then both go to the network's 4 mm working grid.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from dicom_node.pipelines.pet_tumour.model import to_work_grid
from dicom_node.synth.pet_phantom import VERSION as PHANTOM_VERSION
from dicom_node.synth.pet_phantom import Grid, make_pet_ct_phantom

VALIDATION_SEEDS = (*range(24, 31), 61, 65, 67, 71, 73, *range(100, 148))
"""Never trained on: where the thresholds and the boundary refinement are chosen. 24-30 hold no brown fat (it is
drawn in 30% of the phantoms), so five phantoms that have it (61-73) are added; 100-147 since 1.2.0 (twelve
phantoms left the choice to a scan or two)."""
TRAIN_SEEDS = tuple(s for s in range(0, 100) if s not in VALIDATION_SEEDS)
"""Every seed below 100 but the validation ones (88 phantoms, 1.4.0); 1.0.0-1.3.0 trained on 0-23 and ten more
that draw brown fat (32, 33, 38, 41-44, 51-53)."""
HELDOUT_SEEDS = tuple(range(5000, 5060))
"""Never used in training nor in choosing anything. 60 phantoms since 1.4.0 (5000-5011 before: with twelve, one
scan moved the mean Dice by 0.05)."""


def seed_ranges(seeds: Sequence[int]) -> str:
    """``seeds`` written compactly: runs of consecutive seeds as ``a-b`` (``0-23, 32, 40-41``)."""
    parts: list[str] = []
    ordered = sorted({int(s) for s in seeds})
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ", ".join(parts)


def parse_seed_list(text: str) -> tuple[int, ...]:
    """Seeds from ``"0-23,32,40-41"``."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        lo, _, hi = part.partition("-")
        seeds.extend(range(int(lo), int(hi or lo) + 1))
    return tuple(seeds)


def parse_seeds(text: str) -> tuple[int, ...]:
    """Training seeds from ``"0-23,32,40-41"``; refuses validation and held-out seeds (never trained on)."""
    seeds = parse_seed_list(text)
    reserved = sorted(set(seeds) & (set(VALIDATION_SEEDS) | set(HELDOUT_SEEDS)))
    if reserved:
        raise ValueError(f"seeds {reserved} are validation or held-out seeds, never trained on")
    return seeds


CACHE = Path(os.environ.get("DICOM_NODE_PET_CACHE", "/tmp/dicom-node-pet-cache"))


@dataclass
class Case:
    """One phantom on the working grid: SUV, CT (HU), truth lesion labels, organ labels, liver VOI index."""

    seed: int
    suv: np.ndarray
    ct: np.ndarray
    lesions: np.ndarray
    organs: np.ndarray
    liver_voi: tuple[float, float, float]
    spacing: tuple[float, float, float]


def grid_to_grid(values: np.ndarray, moving: Grid, fixed: Grid, fill: float, order: int = 1) -> np.ndarray:
    """``values`` on ``moving`` resampled onto ``fixed`` (both axis-aligned)."""
    scale = [f / m for f, m in zip(fixed.spacing, moving.spacing, strict=True)]
    fo, mo = fixed.origin, moving.origin
    offset = [
        (fo[2] - mo[2]) / moving.spacing[0],
        (fo[1] - mo[1]) / moving.spacing[1],
        (fo[0] - mo[0]) / moving.spacing[2],
    ]
    out = ndi.affine_transform(
        values.astype(np.float32), scale, offset=offset, output_shape=fixed.shape, order=order, cval=fill
    )
    return np.asarray(out, dtype=np.float32)


def load_case(seed: int) -> Case:
    """The phantom of ``seed`` on the working grid (cached under :data:`CACHE`, keyed by the generator's version)."""
    path = CACHE / f"petct-v{PHANTOM_VERSION}-{seed}.npz"
    if path.exists():
        z = np.load(path)
        return Case(seed, z["suv"], z["ct"], z["lesions"], z["organs"], tuple(z["voi"]), tuple(z["spacing"]))  # type: ignore[arg-type]
    p = make_pet_ct_phantom(seed)
    ct = grid_to_grid(p.ct_hu, p.ct_grid, p.pet_grid, fill=-1000.0)
    spacing = p.pet_grid.spacing
    suv = to_work_grid(p.suv, spacing)
    ct = to_work_grid(ct, spacing)
    x0, y0, z0 = p.pet_grid.origin
    vx, vy, vz = p.liver_voi
    voi = ((vz - z0) / spacing[0], (vy - y0) / spacing[1], (vx - x0) / spacing[2])
    case = Case(seed, suv, ct, p.lesion_labels, p.organ_labels, voi, spacing)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez_compressed(
        tmp, suv=suv, ct=ct, lesions=case.lesions, organs=case.organs, voi=np.asarray(voi), spacing=np.asarray(spacing)
    )
    tmp.replace(path)
    return case
