"""What the CT nodule model is made for, and what it must never report.

- **Series it was made for.** Slices at most :data:`MAX_SLICE_SPACING_MM` apart (the range it was trained
  and checked on: on thicker slices a nodule under 10 mm shows on one slice or none, and partial volume
  blurs vessels into nodule-like blobs), and a chest: a slice with at least :data:`MIN_LUNG_CM2` of
  aerated lung. Anything else gets "not applicable" with the reason, never a guess.
- **Images it can read.** Lung noise over :data:`~dicom_node.pipelines.ct_lung_nodule.noise.MAX_NOISE_HU`
  (working grid) is a gross artefact or a dose far below any chest protocol: not applicable. Noise between
  the phantoms' range and that limit is smoothed away first (:mod:`~dicom_node.pipelines.ct_lung_nodule.noise`).
- **Without contrast.** Lung vessels brighter than
  :data:`~dicom_node.pipelines.ct_lung_nodule.contrast.ENHANCED_VESSEL_HU` mean intravenous contrast, which
  the model never saw and which turns enhanced vessels into false positives: not applicable
  (:mod:`~dicom_node.pipelines.ct_lung_nodule.contrast`).
- **Inside the lungs.** A candidate is a lung lesion when at least :data:`MIN_LUNG_FRACTION` of its voxels
  lie in the lung field (closed by :data:`LUNG_CLOSING_MM`), or when lung surrounds at least
  :data:`MIN_LUNG_CONTACT` of its in-plane rim: a juxtapleural nodule lies in a notch of the lung's
  outline (the lung field leaves solid tissue touching the chest wall out), but lung surrounds it on the
  inner side. Anything else is mediastinum, aorta, heart, liver or spleen under the diaphragm's dome, or
  chest wall, and is dropped. On the real whole-chest CT in ../shared this removed 10 of the 13 false
  positives at the old operating point (0.25), and of the tumour only two pieces the detector had
  outlined outside the lung field; on 32 validation phantoms (seed 777) it dropped no nodule (the
  juxtapleural ones with under half of their voxels in the lung field had 0.77-0.81 of their rim in
  lung, the real aortic-arch candidate 0.45, the liver-dome ones 0.13-0.28).
- **Masses are not nodules.** A lesion whose long axis is :data:`MASS_MM` or more is a mass
  (Fleischner Society glossary), reported as such.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from dicom_node.imaging.volume import Volume
from dicom_node.pipelines.ct_lung_nodule.contrast import ENHANCED_VESSEL_HU
from dicom_node.pipelines.ct_lung_nodule.noise import MAX_NOISE_HU

MAX_SLICE_SPACING_MM = 5.0
MIN_LUNG_CM2 = 20.0
MIN_LUNG_FRACTION = 0.5
MIN_LUNG_CONTACT = 0.55
LUNG_CLOSING_MM = 5.0
MASS_MM = 30.0


def out_of_range(volume: Volume) -> str | None:
    """The reason the model was not made for ``volume``'s geometry, or None."""
    dz = float(volume.spacing[0])
    if dz > MAX_SLICE_SPACING_MM + 0.01:
        return (
            f"slices are {dz:g} mm apart; this model was made for chest CT with slices at most "
            f"{MAX_SLICE_SPACING_MM:g} mm apart (thicker slices hide small nodules and blur vessels into them)"
        )
    return None


def too_noisy(noise_hu: float | None) -> str | None:
    """The reason a series whose lung noise (working grid, see
    :func:`~dicom_node.pipelines.ct_lung_nodule.noise.lung_noise` on
    :func:`~dicom_node.pipelines.ct_lung_nodule.noise.on_working_grid`) is ``noise_hu`` cannot be read, or None."""
    if noise_hu is None or noise_hu <= MAX_NOISE_HU:
        return None
    return (
        f"image noise in the lungs is {noise_hu:.0f} HU (this model reads up to {MAX_NOISE_HU:.0f} HU): gross "
        "artefacts or a dose far below a chest protocol would make small nodules and noise look alike"
    )


def contrast_enhanced(vessel_hu: float | None) -> str | None:
    """The reason a series whose lung vessels' cores measure ``vessel_hu`` (see
    :func:`~dicom_node.pipelines.ct_lung_nodule.contrast.vessel_core_hu`) is not read, or None."""
    if vessel_hu is None or vessel_hu <= ENHANCED_VESSEL_HU:
        return None
    return (
        f"the lung vessels measure {vessel_hu:.0f} HU: the series looks contrast-enhanced, and this model was "
        "made for chest CT without intravenous contrast (enhanced vessels look like nodules to it)"
    )


def not_a_chest(lung: np.ndarray, spacing: tuple[float, float, float]) -> str | None:
    """The reason a volume whose lung field is ``lung`` is not a chest CT, or None.

    Judged on the largest cross-section, not the volume, so that a partial chest (a slab of a few slices,
    lung bases at the top of an abdominal CT) still counts.
    """
    per_slice = lung.reshape(lung.shape[0], -1).sum(axis=1) if lung.size else np.zeros(1)
    cm2 = float(per_slice.max()) * spacing[1] * spacing[2] / 100.0
    if cm2 < MIN_LUNG_CM2:
        return (
            f"no slice shows more than {cm2:.0f} cm2 of aerated lung (a chest CT shows {MIN_LUNG_CM2:.0f} cm2 "
            "or more): not a chest CT"
        )
    return None


def _disc(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (yy * yy + xx * xx) <= radius * radius


def lung_fraction(
    mask: np.ndarray,
    lung: np.ndarray,
    spacing: tuple[float, float, float],
    closing_mm: float = LUNG_CLOSING_MM,
) -> float:
    """Share of ``mask``'s voxels inside ``lung`` closed slice by slice with a disc of ``closing_mm``.

    The closing is done in the mask's bounding box (plus the disc), so a candidate costs milliseconds.
    """
    idx = np.nonzero(mask)
    if idx[0].size == 0:
        return 0.0
    r = max(1, round(closing_mm / float(min(spacing[1], spacing[2]))))
    z0, z1 = int(idx[0].min()), int(idx[0].max()) + 1
    y0, y1 = max(int(idx[1].min()) - 2 * r, 0), int(idx[1].max()) + 2 * r + 1
    x0, x1 = max(int(idx[2].min()) - 2 * r, 0), int(idx[2].max()) + 2 * r + 1
    sub_lung = lung[z0:z1, y0:y1, x0:x1]
    sub_mask = mask[z0:z1, y0:y1, x0:x1]
    disc = _disc(r)
    inside = 0
    for k in range(sub_lung.shape[0]):
        if not sub_mask[k].any():
            continue
        closed = ndi.binary_closing(np.pad(sub_lung[k], r), disc)[r:-r, r:-r] if sub_lung[k].any() else sub_lung[k]
        inside += int((sub_mask[k] & closed).sum())
    return inside / float(idx[0].size)


def lung_contact(mask: np.ndarray, lung: np.ndarray, rim_px: int = 2) -> float:
    """Share of ``mask``'s in-plane rim (``rim_px`` pixels wide, outside the mask) that lies in ``lung``."""
    idx = np.nonzero(mask)
    if idx[0].size == 0:
        return 0.0
    pad = rim_px + 1
    box = (
        slice(int(idx[0].min()), int(idx[0].max()) + 1),
        slice(max(int(idx[1].min()) - pad, 0), int(idx[1].max()) + pad + 1),
        slice(max(int(idx[2].min()) - pad, 0), int(idx[2].max()) + pad + 1),
    )
    sub = mask[box]
    rim = ndi.binary_dilation(sub, np.ones((1, 3, 3), dtype=bool), iterations=rim_px) & ~sub
    return float((rim & lung[box]).sum()) / float(max(int(rim.sum()), 1))


def inside_lungs(mask: np.ndarray, lung: np.ndarray, spacing: tuple[float, float, float]) -> bool:
    """Whether a candidate is a lung lesion by the rule above (lung fraction, else lung contact)."""
    return lung_fraction(mask, lung, spacing) >= MIN_LUNG_FRACTION or lung_contact(mask, lung) >= MIN_LUNG_CONTACT


def inside_lungs_local(
    box: tuple[slice, slice, slice], local: np.ndarray, lung: np.ndarray, spacing: tuple[float, float, float]
) -> bool:
    """:func:`inside_lungs` for a mask given as ``local`` inside ``box`` of ``lung``'s grid (a candidate on
    the working grid), computed in that box widened by what the closing and the rim can reach."""
    pad = 2 * max(1, round(LUNG_CLOSING_MM / float(min(spacing[1], spacing[2])))) + 4
    zs, ys, xs = box
    y0, x0 = max(ys.start - pad, 0), max(xs.start - pad, 0)
    y1, x1 = min(ys.stop + pad, lung.shape[1]), min(xs.stop + pad, lung.shape[2])
    sub = np.zeros((zs.stop - zs.start, y1 - y0, x1 - x0), dtype=bool)
    sub[:, ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0] = local
    return inside_lungs(sub, lung[zs, y0:y1, x0:x1], spacing)


def is_mass(long_axis_mm: float) -> bool:
    """Whether a lesion of this long axis is a mass rather than a nodule."""
    return long_axis_mm >= MASS_MM
