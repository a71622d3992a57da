"""Training and evaluation cases: synthetic PET/CT phantoms with the CT on the PET grid, cached as .npz.

The CT goes onto the PET grid through the two grids' geometry (the same trilinear resampling the pipeline
applies to the DICOM series), then both go to the network's 4 mm working grid.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from dicom_node.pipelines.pet_tumour.model import to_work_grid
from dicom_node.synth.pet_phantom import Grid, make_pet_ct_phantom

TRAIN_SEEDS = tuple(range(0, 24))
VALIDATION_SEEDS = tuple(range(24, 31))  # never trained on: where the thresholds are chosen
HELDOUT_SEEDS = tuple(range(5000, 5012))  # never used in training nor in choosing anything
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
    """The phantom of ``seed`` on the working grid (cached under :data:`CACHE`)."""
    path = CACHE / f"petct-{seed}.npz"
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
