"""Benchmark studies: synthetic chest CTs (512 x 512, 16-bit) written once and cached on disk."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CACHE_VERSION = 1
SIZE = 512
PHANTOM_SIZE = 288  # the phantom's body fits in 288 mm; padded with air to 512 x 512 at 1 mm pixels


@dataclass(frozen=True)
class Study:
    """A cached single-series CT study."""

    name: str
    folder: Path
    files: list[Path]
    thickness: float

    @property
    def slices(self) -> int:
        return len(self.files)

    @property
    def bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


def chest_ct(slices: int, thickness: float, cache: Path, seed: int = 11) -> Study:
    """A synthetic chest CT of ``slices`` axial 512 x 512 slices, from the cache or written now.

    The HU content is :func:`dicom_node.synth.ct_phantom.make_phantom` (lungs, vessels, two nodules)
    padded with air to 512 x 512, written by :func:`dicom_node.synth.dicom_series.write_ct_series`.
    """
    name = f"chest-{slices}x{SIZE}-t{thickness:g}-s{seed}-v{CACHE_VERSION}"
    folder = cache / name
    marker = folder / ".complete"
    if not marker.exists():
        _write(folder, slices, thickness, seed)
    files = sorted(f for f in folder.iterdir() if f.suffix == ".dcm")
    if len(files) != slices:
        raise RuntimeError(f"{folder}: expected {slices} files, found {len(files)}; delete it and rerun")
    return Study(name=name, folder=folder, files=files, thickness=thickness)


def pet_ct(cache: Path, seed: int = 5001) -> Study:
    """A synthetic FDG PET/CT (:mod:`dicom_node.synth.pet_phantom`): 150 PT slices (128 x 128, 4 mm) and 200 CT
    slices (256 x 256, 3 mm) in one flat folder, as the ``pet_tumour`` pipeline gets them (PT plus the paired CT)."""
    from dicom_node.synth.pet_dicom import write_pet_ct_study
    from dicom_node.synth.pet_phantom import make_pet_ct_phantom

    name = f"petct-s{seed}-v{CACHE_VERSION}"
    folder = cache / name
    marker = folder / ".complete"
    if not marker.exists():
        shutil.rmtree(folder, ignore_errors=True)
        ct, pt = write_pet_ct_study(make_pet_ct_phantom(seed), folder / "series", seed=seed)
        for f in [*ct, *pt]:
            f.rename(folder / f.name)
        marker.touch()
    files = sorted(f for f in folder.iterdir() if f.suffix == ".dcm")
    return Study(name=name, folder=folder, files=files, thickness=4.0)


REAL_CHEST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real" / "ct_lung_pet_ct_dx"


def real_chest_ct(case: str = "A0001_chest_5mm_lung_kernel") -> Study | None:
    """A real whole-chest CT (Lung-PET-CT-Dx, 5 mm, an adenocarcinoma) from ../shared, or None when absent."""
    folder = REAL_CHEST / case / "dicom"
    files = sorted(folder.glob("*.dcm")) if folder.is_dir() else []
    if not files:
        return None
    return Study(name=f"real-{case}", folder=folder, files=files, thickness=5.0)


def _write(folder: Path, slices: int, thickness: float, seed: int) -> None:
    from dicom_node.synth.ct_phantom import make_phantom
    from dicom_node.synth.dicom_series import write_ct_series

    t0 = time.perf_counter()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        phantom = make_phantom(
            np.random.default_rng(seed),
            n_nodules=2,
            thickness=thickness,
            size=PHANTOM_SIZE,
            extent_mm=slices * thickness,
        )
        hu = phantom.hu[:slices]
        if hu.shape[0] != slices:
            raise RuntimeError(f"phantom gave {hu.shape[0]} slices, wanted {slices}")
        padded = np.full((slices, SIZE, SIZE), -1000.0, dtype=np.float32)
        off = (SIZE - PHANTOM_SIZE) // 2
        padded[:, off : off + PHANTOM_SIZE, off : off + PHANTOM_SIZE] = hu
        write_ct_series(
            padded,
            phantom.spacing,
            tmp,
            seed=seed * 1000 + slices,
            patient_id=f"BENCH-{slices}",
            series_description=f"Chest CT {thickness:g}mm (synthetic, benchmark)",
            accession=f"BENCH{slices}",
        )
        (tmp / ".complete").write_text("ok\n")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote %d slices to %s in %.1f s", slices, folder, time.perf_counter() - t0)


def warm_page_cache(files: list[Path]) -> None:
    """Read every file once so the sender never waits on the disk."""
    for f in files:
        f.read_bytes()
