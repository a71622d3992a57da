"""Rendering of a slice with the findings' outlines: the PNG preview and the overlay pixels."""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image, ImageDraw

from dicom_node.findings import Category, Finding, Findings
from dicom_node.imaging.volume import Volume
from dicom_node.outputs.common import full_mask
from dicom_node.outputs.contours import outline

logger = logging.getLogger(__name__)

CT_WINDOW: tuple[float, float] = (-600.0, 1500.0)
"""(centre, width) of the lung window used for CT renderings."""

PET_SUV_WHITE = 10.0
"""PET previews show SUVbw 0 (black) to this value (white)."""

COLORS: dict[Category, tuple[int, int, int]] = {
    Category.LUNG: (80, 160, 255),
    Category.NODULE: (255, 215, 0),
    Category.MASS: (255, 90, 200),
    Category.RIB: (200, 200, 200),
    Category.PLEURAL_LINE: (0, 220, 120),
    Category.B_LINE: (255, 120, 0),
    Category.CONSOLIDATION: (255, 60, 60),
    Category.EFFUSION: (180, 90, 255),
    Category.TUMOUR: (255, 40, 40),
}


def grayscale(volume: Volume, index: int) -> np.ndarray:
    """Slice ``index`` as uint8 on the stored image grid (CT in the lung window, US scaled 0..1)."""
    plane = volume.pixels[index].astype(np.float32)
    if volume.modality.upper() == "CT":
        centre, width = CT_WINDOW
        scaled = (plane - (centre - width / 2.0)) / width
    elif volume.modality.upper() == "PT":
        scaled = plane / PET_SUV_WHITE
    else:
        scaled = plane
    gray = (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if volume.crop is None:
        return gray
    full = np.zeros(volume.full_shape[1:], dtype=np.uint8)
    r0, c0, r1, c1 = volume.crop
    full[r0:r1, c0:c1] = gray
    return full


def primary_finding(findings: Findings) -> Finding | None:
    """The finding a viewer should open on: not the lung mask if anything else exists, highest score."""
    candidates = [f for f in findings.findings if f.key_slice is not None and f.mask.any()]
    if not candidates:
        return None
    return max(candidates, key=lambda f: (f.category is not Category.LUNG, f.score, int(f.mask.sum())))


def render_rgb(findings: Findings, volume: Volume, index: int, caption: str | None = None) -> np.ndarray:
    """Slice ``index`` as RGB uint8 (rows, columns, 3) with the outline and label of every finding on it."""
    gray = grayscale(volume, index)
    image = Image.fromarray(gray, mode="L").convert("RGB")
    draw = ImageDraw.Draw(image)
    width = max(1, round(min(gray.shape) / 256))
    for finding in findings.findings:
        mask = full_mask(finding, volume)[index]
        points = outline(mask, max_points=256)
        if points is None:
            continue
        color = COLORS.get(finding.category, (255, 255, 0))
        xy = [(float(x) - 0.5, float(y) - 0.5) for x, y in points]
        draw.line(xy, fill=color, width=width)
        x0 = max(0.0, float(points[:, 0].min()))
        y0 = max(0.0, float(points[:, 1].min()) - 12.0)
        draw.text((x0, y0), label_text(finding), fill=color)
    draw.text(
        (4, 4),
        caption or f"AI {findings.pipeline} {findings.version} - not for diagnosis",
        fill=(255, 255, 0),
    )
    return np.asarray(image, dtype=np.uint8)


def label_text(finding: Finding) -> str:
    """Short label of a finding: its label, largest size and detection confidence (not a chance of cancer)."""
    text = finding.label
    for q in ("long_axis", "diameter", "length"):
        value = finding.measurement(q)
        if value is not None:
            text += f" {value:.0f} mm"
            break
    if finding.category is not Category.LUNG:
        text += f", detection {finding.score:.0%}"
    return text[:64]


def status_text(findings: Findings) -> str:
    """One line saying what the AI concluded (shown where there is nothing to outline)."""
    if findings.not_applicable:
        return f"AI {findings.pipeline}: not applicable ({findings.not_applicable})"[:120]
    if not findings.findings:
        return f"AI {findings.pipeline} {findings.version}: no findings"
    return f"AI {findings.pipeline} {findings.version}: {findings.summary().split(': ', 1)[-1]}"[:120]


def render_preview(findings: Findings, volume: Volume) -> bytes:
    """PNG of the key slice (of the primary finding, else the middle slice) with outlines and labels."""
    primary = primary_finding(findings)
    index = int(primary.key_slice) if primary is not None and primary.key_slice is not None else volume.shape[0] // 2
    rgb = render_rgb(findings, volume, index, caption=status_text(findings) + " - not for diagnosis")
    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()
