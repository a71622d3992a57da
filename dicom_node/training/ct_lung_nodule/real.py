"""The CT nodule pipeline on the real chest CT in ``shared/data/real``: lesions found, false positives, time.

Each scan goes through :class:`~dicom_node.pipelines.ct_lung_nodule.CtLungNodule` exactly as the node runs
it (lung fields, detection, masses, refusal). Reference per scan:

- ``ct_lung_pet_ct_dx/*``: whole-chest CT of lung adenocarcinoma, the tumour boxed on every slice that shows it
  (PASCAL VOC XML per SOP Instance UID). A finding that touches a box has found the tumour; every other
  finding is counted as a false positive (the data set's readers boxed only the tumour, so a small real
  nodule elsewhere would count as one too: the count is an upper bound).
- ``ct_lidc0002_slab12``: 12 slices with the LIDC readers' outline of a nodule's tip; Dice against it.

Which scan tuned what is written in the model card: ``A0001`` (5 mm, whole chest) is the tuning scan, the
LIDC slab the check; ``A0002`` (8 mm) is outside the model's range and must be refused.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dicom_node.findings import Category, Findings
from dicom_node.imaging.ct import load_ct_series
from dicom_node.imaging.volume import Volume
from dicom_node.pipelines.ct_lung_field import segment_lungs
from dicom_node.pipelines.ct_lung_nodule.scope import inside_lungs
from dicom_node.training.ct_lidc import lidc_nodule_masks

PET_CT_DX = "ct_lung_pet_ct_dx"
LIDC_SLAB = "ct_lidc0002_slab12"


@dataclass
class RealScan:
    """A real CT series with its reference: tumour boxes (``kind`` "boxes") or a reader outline ("outline")."""

    name: str
    volume: Volume
    lesion: np.ndarray  # bool, volume shape
    kind: str


def voc_boxes(annotations: Path, volume: Volume) -> np.ndarray:
    """The PASCAL VOC boxes of ``annotations/<SOPInstanceUID>.xml`` painted onto ``volume``'s grid."""
    mask = np.zeros(volume.shape, dtype=bool)
    slice_of = {str(ds.SOPInstanceUID): k for k, ds in enumerate(volume.sources)}
    for xml in sorted(annotations.glob("*.xml")):
        k = slice_of.get(xml.stem)
        if k is None:
            continue
        for box in ET.parse(xml).getroot().iter("bndbox"):
            v = {child.tag: int(float(child.text or 0)) for child in box}
            mask[k, v["ymin"] : v["ymax"] + 1, v["xmin"] : v["xmax"] + 1] = True
    return mask


def real_scans(real_dir: Path) -> list[RealScan]:
    """Every real chest CT with a lesion reference under ``real_dir`` (missing folders are skipped)."""
    out: list[RealScan] = []
    for case in sorted((real_dir / PET_CT_DX).glob("*/dicom")):
        vol = load_ct_series(sorted(case.glob("*.dcm")))
        out.append(RealScan(case.parent.name, vol, voc_boxes(case.parent / "annotations", vol), "boxes"))
    slab = real_dir / LIDC_SLAB
    if (slab / "dicom").is_dir():
        vol = load_ct_series(sorted((slab / "dicom").glob("*.dcm")))
        out.append(
            RealScan("lidc0002_slab12", vol, lidc_nodule_masks(slab / "annotations" / "071.xml", vol), "outline")
        )
    return out


def score_scan(scan: RealScan, result: Findings, seconds: float) -> dict[str, Any]:
    """Per-scan numbers: refused (with the reason) or lesion found, Dice, false positives, nodules outside lung."""
    entry: dict[str, Any] = {"slices": scan.volume.shape[0], "slice_mm": scan.volume.spacing[0], "seconds": seconds}
    if result.not_applicable:
        entry["not_applicable"] = result.not_applicable
        return entry
    lung = segment_lungs(scan.volume).both
    hits = [f for f in result.findings if (f.mask & scan.lesion).any()]
    entry["lesion_found"] = bool(hits)
    entry["false_positives"] = len(result.findings) - len(hits)
    # Nodules are judged on their outline; a mass's outline is grown into the solid tissue the lung field
    # leaves out, so it is judged where the detector found it (inside the lungs, or it was dropped).
    entry["nodules_outside_lung"] = sum(
        not inside_lungs(f.mask, lung, scan.volume.spacing) for f in result.findings if f.category is Category.NODULE
    )
    entry["findings"] = [
        {
            "label": f.label,
            "score": round(f.score, 3),
            "key_slice": f.key_slice,
            "long_axis_mm": round(f.measurement("long_axis") or 0.0, 1),
            "on_lesion": any(f is h for h in hits),
        }
        for f in result.findings
    ]
    if hits and scan.kind == "outline":
        m = np.any([f.mask for f in hits], axis=0)
        entry["dice"] = round(2 * float((m & scan.lesion).sum()) / float(m.sum() + scan.lesion.sum()), 3)
    if hits and scan.kind == "boxes":
        m = np.any([f.mask for f in hits], axis=0)
        entry["share_in_box"] = round(float((m & scan.lesion).sum()) / float(m.sum()), 3)
    return entry


def overlay_png(scan: RealScan, result: Findings, path: Path) -> None:
    """One tile per finding (its key slice, lung window): finding outline magenta, reference green."""
    from PIL import Image, ImageDraw
    from scipy import ndimage as ndi

    tiles = []
    for f in result.findings:
        k = int(f.key_slice or 0)
        gray = np.clip((scan.volume.pixels[k] + 1000.0) / 1400.0 * 255.0, 0, 255).astype(np.uint8)
        rgb = np.stack([gray] * 3, axis=-1)
        for mask, colour in ((scan.lesion[k], (0, 255, 0)), (f.mask[k], (255, 0, 255))):
            rgb[mask & ~ndi.binary_erosion(mask)] = colour
        tile = Image.fromarray(rgb).resize((384, 384))
        ImageDraw.Draw(tile).text((6, 6), f"{f.label} {f.score:.2f} slice {k}", fill=(255, 255, 0))
        tiles.append(tile)
    if not tiles:
        return
    sheet = Image.new("RGB", (384 * len(tiles), 384))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (384 * i, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def evaluate_real_scans(
    pipeline: Any, real_dir: Path, device: str = "cpu", png_dir: Path | None = None
) -> dict[str, Any]:
    """Run ``pipeline`` (a CtLungNodule) on every real scan; per-scan numbers, PNG overlays in ``png_dir``."""
    out: dict[str, Any] = {}
    for scan in real_scans(real_dir):
        t0 = time.perf_counter()
        result = pipeline.run(scan.volume, device)
        out[scan.name] = score_scan(scan, result, round(time.perf_counter() - t0, 1))
        if png_dir is not None:
            overlay_png(scan, result, png_dir / f"{scan.name}.png")
    return out
