"""Lung ultrasound: ribs, pleural line and B-lines per frame, frame classes per cine.

Runs the ``models/us_lung`` bundle (U-Net + hierarchical classifier) on every frame of an
ultrasound volume. Before reporting anything it checks that the frames look like lung ultrasound
(a confident, roughly horizontal pleural line across most of the field, ribs or pleura explaining
the width, a plausible pleural depth, tissue imaged above the line). The frame classifier takes no
part in that gate: a lung clip whose pattern it is unsure of is analysed, and its result says
"abnormal, type uncertain" (:func:`dicom_node.outputs.codes.clinical_result`). If the frames do not
look like lung, the result is ``not_applicable`` with the reasons, and no findings are invented.
The pleural line and rib shadows reported are the network's labels corrected by the anatomy
(:mod:`dicom_node.pipelines.us_pleura`: one pleural line where the rib shadows begin, not fascia above
it nor A-lines below it; no rib label on the sector's dark edges; rib shadows the network missed added along
the probe's beams, :mod:`dicom_node.pipelines.us_ribs`); the gate reads the network's own, except that
the reported pleural line at a plausible depth clears the depth check (the network may take the skin line
for the pleura).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset
from scipy import ndimage

from dicom_node.bundles import shipped_bundle
from dicom_node.findings import Category, Evaluation, Finding, Findings, Measurement, Quantity
from dicom_node.imaging.us import load_us, spacing_known
from dicom_node.imaging.volume import Volume
from dicom_node.outputs.codes import clinical_result
from dicom_node.pipelines.base import register
from dicom_node.pipelines.us_pleura import refine_labels, sector_mask

if TYPE_CHECKING:
    from dicom_node.networks.us_infer import Prediction

logger = logging.getLogger(__name__)

DEFAULT_BUNDLE = shipped_bundle("us_lung")
RIB, PLEURA, B_LINE = 1, 2, 3
MIN_PLEURA_CONFIDENCE = 0.7
"""Mean soft-max on the pleural line below which a frame is not lung-like. Calibrated (bundle 0.2.0) on
the real training clips (1st percentile 0.72, median 0.87); it does not separate the real non-lung
files (0.80-0.90), which the chest-wall check (:data:`MIN_WALL_ECHO`) and the depth checks do."""
MIN_WALL_ECHO = 0.05
"""Median brightness (0..1) of the chest wall, i.e. of the pixels above the pleural line in the columns it
covers, below which a frame is not lung-like: lung ultrasound always images skin, fat and muscle above
the pleura, a probe in air or an empty sector images nothing there. Positive evidence of non-lung,
independent of the classifier. Calibrated (bundle 0.3.0) on the real training clips' frames that pass
the other checks (357 frames: minimum 0.16 per clip, 1st percentile 0.22, median 0.40) and the real
non-lung files (0.000-0.008)."""
DEPTH_RANGE = (0.03, 0.6)
"""Pleural-line depth as a fraction of the imaged depth (real clips with a thin chest wall: 5th
percentile 0.036; the real non-lung files: 0.05-0.61)."""
MAX_SPREAD = 0.35
"""Largest row range of the pleural line, as a fraction of the depth (convex probes curve the line:
real training clips 75th percentile 0.16, 90th 0.34)."""
_RESULT_TEXT = {
    "normal": "normal lung",
    "b_lines": "B-lines",
    "consolidation": "consolidation",
    "effusion": "pleural effusion",
    "abnormal": "abnormal, type uncertain",
}
LINE_BAND = 0.12
"""Pleural-line components further than this fraction of the depth from the largest one are left out."""
_NOT_CHEST = {"ABDOMEN", "PELVIS", "HEART", "NECK", "THYROID", "ELBOW", "KNEE", "SHOULDER", "BREAST", "LIVER"}


def count_b_lines(labels: np.ndarray, min_extent: float = 0.3) -> int:
    """B-lines in one frame's label map: B-line components spanning >= ``min_extent`` of the rows."""
    comps, n = ndimage.label(labels == B_LINE)
    if n == 0:
        return 0
    count = 0
    for sl in ndimage.find_objects(comps):
        if sl is not None and (sl[0].stop - sl[0].start) >= min_extent * labels.shape[0]:
            count += 1
    return count


@dataclass
class PleuraGeometry:
    """The pleural line of one frame: columns covered and its centre-line rows."""

    cols: np.ndarray
    rows: np.ndarray
    coverage: float
    confidence: float

    def length_mm(self, row_mm: float, col_mm: float) -> float:
        """Length along the centre line, bridging gaps (under ribs) by straight segments."""
        if len(self.cols) < 2:
            return 0.0
        dx = np.diff(self.cols) * col_mm
        dy = np.diff(self.rows) * row_mm
        return float(np.hypot(dx, dy).sum())

    def residual_mm(self, row_mm: float, col_mm: float) -> float:
        """RMS distance (mm) of the centre line from a quadratic fit: 0 for a smooth line."""
        if len(self.cols) < 5:
            return float("nan")
        x = self.cols * col_mm
        y = self.rows * row_mm
        fit = np.polyval(np.polyfit(x, y, 2), x)
        return float(np.sqrt(np.mean((y - fit) ** 2)))


def imaged_field(pixels: np.ndarray) -> np.ndarray:
    """(rows, cols) mask of where any frame shows signal (a sector's outside stays empty)."""
    return np.asarray(ndimage.binary_closing(pixels.max(axis=0) > 0.01, iterations=2))


def field_span(field: np.ndarray, row: int) -> int:
    """Width in columns of the imaged field around ``row`` (first to last signal column)."""
    band = field[max(0, row - 2) : row + 3].any(axis=0)
    cols = np.flatnonzero(band)
    return int(cols[-1] - cols[0] + 1) if cols.size else field.shape[1]


def pleura_geometry(labels: np.ndarray, confidence: np.ndarray, field: np.ndarray) -> PleuraGeometry:
    """Centre line of the pleural-line label in one frame: the largest component within the plausible
    depth (:data:`DEPTH_RANGE`; the largest of all when none is) and the large ones within
    :data:`LINE_BAND` of its depth (one line; a bright echo far above or below is not part of it).

    ``coverage`` is the fraction of the imaged field's width at the line's depth that it spans.
    """
    mask = labels == PLEURA
    comps, n = ndimage.label(mask)
    if n > 1:
        index = np.arange(1, n + 1)
        sizes = ndimage.sum(mask, comps, index=index)
        rows_of = np.asarray(ndimage.mean(np.indices(mask.shape)[0], comps, index=index))
        plausible = rows_of <= DEPTH_RANGE[1] * mask.shape[0]
        main = int(np.argmax(np.where(plausible, sizes, 0.0))) if plausible.any() else int(np.argmax(sizes))
        near = np.abs(rows_of - rows_of[main]) <= LINE_BAND * mask.shape[0]
        keep = np.flatnonzero((sizes >= 0.1 * sizes.max()) & near) + 1
        mask = np.isin(comps, keep)
    cols = np.flatnonzero(mask.any(axis=0))
    if cols.size == 0:
        return PleuraGeometry(cols, np.zeros(0), 0.0, 0.0)
    rows_idx = np.arange(mask.shape[0])[:, None]
    counts = mask[:, cols].sum(axis=0)
    centre = (mask[:, cols] * rows_idx).sum(axis=0) / np.maximum(counts, 1)
    conf = float(confidence[mask].mean())
    span = field_span(field, int(np.median(centre)))
    return PleuraGeometry(cols.astype(float), centre.astype(float), min(1.0, cols.size / max(span, 1)), conf)


MIN_RIB_SHARE = 0.002
"""A rib region smaller than this share of the frame's pixels is not counted as a rib (a speck of rib label)."""


def rib_finding(
    labels: np.ndarray, network_labels: np.ndarray, confidence: np.ndarray, ok: np.ndarray
) -> tuple[Finding, str] | None:
    """The rib finding of a cine (ribs with their acoustic shadows, as anatomy) and a sentence about it.

    ``labels`` are the anatomy-corrected labels (rib shadows the network missed added along the probe's
    beams, :mod:`dicom_node.pipelines.us_ribs`), ``network_labels`` the network's own. The count is the
    number of rib regions of at least :data:`MIN_RIB_SHARE` of the frame in the frame with the most rib
    pixels; the score is the network's confidence on the rib pixels it labelled rib itself, pixels added
    by the anatomy counting 0 (the network gave another label there), so it never claims more than the
    network said. ``None`` when no frame that looks like lung has a rib region that large.
    """
    rib = (labels == RIB) & ok[:, None, None]
    if not rib.any():
        return None
    key = int(np.argmax(rib.reshape(len(rib), -1).sum(axis=1)))
    comps, n = ndimage.label(rib[key])
    sizes = np.asarray(ndimage.sum(rib[key], comps, np.arange(1, n + 1)))
    big = np.flatnonzero(sizes >= MIN_RIB_SHARE * rib[key].size) + 1
    if big.size == 0:
        return None
    by_network = sum(bool((network_labels[key][comps == k] == RIB).any()) for k in big)
    own = rib & (network_labels == RIB)
    score = float(np.where(own, confidence, 0.0)[rib].mean())
    finding = Finding(
        category=Category.RIB,
        mask=rib,
        label="rib with acoustic shadow",
        measurements=[Measurement(Quantity.COUNT, float(big.size))],
        score=score,
        key_slice=key,
    )
    text = (
        f"Ribs with acoustic shadow (anatomy, not a finding): {big.size} in the frame with the most rib pixels "
        f"({len(big) - by_network} of them found along the probe's beams below an interrupted pleural line, "
        "not labelled by the network)."
    )
    return finding, text


@dataclass
class Plausibility:
    """Why a volume does or does not look like lung ultrasound."""

    plausible: bool
    reasons: list[str] = field(default_factory=list)
    frame_ok: list[bool] = field(default_factory=list)


def wall_echo(frame: np.ndarray, geo: PleuraGeometry) -> float:
    """Median brightness of the chest wall: the pixels above the pleural line (2 rows clear of it) in
    the columns the line covers; 0 when nothing lies above it."""
    if geo.cols.size == 0:
        return 0.0
    top = int(np.median(geo.rows)) - 2
    above = frame[: max(0, top), int(geo.cols.min()) : int(geo.cols.max()) + 1]
    return float(np.median(above)) if above.size else 0.0


def check_lung(
    volume: Volume, labels: np.ndarray, confidence: np.ndarray, reported: np.ndarray | None = None
) -> Plausibility:
    """Frame-wise plausibility; the volume is lung-like when at least half of its frames are.

    Only the image and the segmentation decide (pleural line, its depth and shape, ribs and pleura
    across the width, a chest wall above the line); the frame classifier does not: a lung whose
    pattern the classifier is unsure of is still lung, and is reported with an uncertain type.
    ``labels`` are the network's (the checks are calibrated on them); ``reported``, the corrected labels
    the findings come from, may clear the depth check when the network took the skin line for the pleura
    but the reported pleural line lies at a plausible depth.
    """
    n = labels.shape[0]
    field = imaged_field(volume.pixels)
    oks: list[bool] = []
    tally: dict[str, int] = {}
    for i in range(n):
        depth_ok = reported is not None and _plausible_depth(reported[i])
        why = _frame_reasons(volume, i, labels[i], confidence[i], field, depth_ok)
        oks.append(not why)
        for reason in why:
            tally[reason] = tally.get(reason, 0) + 1
    plausible = sum(oks) >= max(1, math.ceil(n / 2))
    reasons = [f"{reason} ({count}/{n} frames)" for reason, count in sorted(tally.items(), key=lambda kv: -kv[1])]
    return Plausibility(plausible, reasons, oks)


def _plausible_depth(labels: np.ndarray) -> bool:
    """Does the pleural line of a label map lie within :data:`DEPTH_RANGE` of the depth?"""
    rows = np.nonzero(labels == PLEURA)[0]
    return bool(rows.size) and DEPTH_RANGE[0] <= float(np.median(rows)) / labels.shape[0] <= DEPTH_RANGE[1]


def _frame_reasons(
    volume: Volume, index: int, labels: np.ndarray, confidence: np.ndarray, field: np.ndarray, depth_ok: bool
) -> list[str]:
    """Why one frame does not look like lung (empty when it does); ``depth_ok``: the reported pleural line lies
    at a plausible depth, so the network's line is not judged on its depth."""
    rows = labels.shape[0]
    reasons: list[str] = []
    geo = pleura_geometry(labels, confidence, field)
    if geo.coverage < 0.2:
        return ["no pleural line found"]
    if geo.confidence < MIN_PLEURA_CONFIDENCE:
        reasons.append(f"pleural line not confident ({geo.confidence:.2f})")
    span = field_span(field, int(np.median(geo.rows)))
    explained = min(1.0, float(((labels == PLEURA) | (labels == RIB)).any(axis=0).sum()) / span)
    if explained < 0.6:
        reasons.append(f"pleura and ribs cover only {explained:.0%} of the width")
    depth_frac = float(np.median(geo.rows)) / rows
    if not depth_ok and not DEPTH_RANGE[0] <= depth_frac <= DEPTH_RANGE[1]:
        reasons.append(f"pleural line at {depth_frac:.0%} of the depth")
    spread = float(np.ptp(geo.rows)) / rows
    if spread > MAX_SPREAD:
        reasons.append("pleural line not horizontal")
    if spacing_known(volume):
        depth_mm = float(np.median(geo.rows)) * volume.spacing[1]
        if not 4.0 <= depth_mm <= 60.0:
            reasons.append(f"pleural line depth {depth_mm:.0f} mm implausible")
    if wall_echo(volume.pixels[index], geo) < MIN_WALL_ECHO:
        reasons.append("no tissue imaged above the pleural line (probe in air or no chest wall)")
    above = labels[: max(1, int(np.median(geo.rows)) - 2)]
    if (above == B_LINE).mean() > 0.05:
        reasons.append("B-line pattern above the pleural line")
    return reasons


@register("us_lung")
class UsLungPipeline:
    """Lung-US segmentation and classification (research use, not for diagnosis)."""

    name = "us_lung"

    def __init__(self, bundle_dir: str | Path | None = None, **options: object) -> None:
        self.bundle_dir = Path(bundle_dir) if bundle_dir else DEFAULT_BUNDLE
        self.options = options
        self.version = _bundle_version(self.bundle_dir)
        self._models: dict[str, object] = {}

    def applies_to(self, series: Sequence[Dataset]) -> str | None:
        """``None`` for ultrasound images; a reason for other modalities or a non-chest body part."""
        if not series:
            return "empty series"
        modality = str(series[0].get("Modality", "")).upper()
        if modality != "US":
            return f"modality {modality or 'unknown'} is not US"
        part = str(series[0].get("BodyPartExamined", "")).upper()
        if part in _NOT_CHEST:
            return f"body part {part} is not the chest"
        if "Rows" not in series[0]:
            return "ultrasound without an image"
        return None

    def load(self, paths: Sequence[str]) -> Volume:
        return load_us(paths)

    def _model(self, device: str) -> object:
        from dicom_node.networks.us_infer import LungUsModel

        if device not in self._models:
            self._models[device] = LungUsModel.load(self.bundle_dir, device)
        return self._models[device]

    def warm_up(self, device: str) -> None:
        """Load the bundle for ``device`` ahead of the first study."""
        from dicom_node.networks.us_infer import pick_device

        self._model(pick_device(device))

    def segment(self, pixels: np.ndarray, device: str = "cpu") -> tuple[Prediction, np.ndarray]:
        """The network's prediction for frames (n, rows, cols) and its label maps corrected by the anatomy:
        one pleural line (not fascia above it nor A-lines below it), rib shadows only where the image shows
        them (:func:`dicom_node.pipelines.us_pleura.refine_labels`).

        The lung-US gate (:func:`check_lung`, calibrated on the network's own labels) reads the
        prediction; the findings, their masks and the pleural line reported are the corrected labels.
        """
        from dicom_node.networks.us_infer import LungUsModel, pick_device

        model = self._model(pick_device(device))
        assert isinstance(model, LungUsModel)
        pred = model.predict(pixels)
        sector = sector_mask(pixels)
        labels = np.stack(
            [refine_labels(pixels[i], pred.labels[i], pred.confidence[i], sector) for i in range(len(pixels))]
        )
        return pred, labels

    def run(self, volume: Volume, device: str) -> Findings:
        """Segment ribs / pleural line / B-lines and classify every frame; see the module docstring."""
        from dicom_node.networks.us_infer import CLASS_NAMES

        start = time.perf_counter()
        result = Findings(pipeline=self.name, version=self.version)
        pred, labels = self.segment(volume.pixels, device)
        result.timings["inference_s"] = time.perf_counter() - start
        check = check_lung(volume, pred.labels, pred.confidence, labels)
        if not check.plausible:
            result.not_applicable = "image does not look like lung ultrasound (" + "; ".join(check.reasons[:3]) + ")"
            result.timings["total_s"] = time.perf_counter() - start
            logger.info("us_lung not applicable", extra={"reasons": check.reasons})
            return result
        ok = np.asarray(check.frame_ok)
        probs = pred.classes[ok].mean(axis=0)
        result.classification = {name: float(p) for name, p in zip(CLASS_NAMES, probs, strict=True)}
        result.classification["abnormal"] = float(1.0 - probs[0])
        self._segment_findings(volume, labels, pred.labels, pred.confidence, ok, result)
        top = clinical_result(result.classification) or "normal"
        self._b_lines(volume, labels, pred.classes, ok, result, top)
        p_top = result.classification["abnormal"] if top == "abnormal" else result.classification[top]
        result.conclusions.append(
            f"Cine result: {_RESULT_TEXT[top]} (p={p_top:.2f}); abnormal p={1.0 - probs[0]:.2f} "
            "(ribs and the pleural line are anatomy, not findings)."
        )
        if int((~ok).sum()):
            result.conclusions.append(
                f"{int((~ok).sum())} of {len(ok)} frames did not look like lung and were ignored."
            )
        result.conclusions.append(
            "Research use only, not for diagnosis (model trained on synthetic images, adapted on few real clips)."
        )
        result.timings["total_s"] = time.perf_counter() - start
        return result

    def _segment_findings(
        self,
        volume: Volume,
        labels: np.ndarray,
        network_labels: np.ndarray,
        confidence: np.ndarray,
        ok: np.ndarray,
        result: Findings,
    ) -> None:
        frames_ok = ok[:, None, None]
        pleura = (labels == PLEURA) & frames_ok
        rib = rib_finding(labels, network_labels, confidence, ok)
        if rib is not None:
            result.findings.append(rib[0])
            result.conclusions.append(rib[1])
        if not pleura.any():
            result.conclusions.append("No pleural line segmented.")
            return
        field = imaged_field(volume.pixels)
        geos = [pleura_geometry(labels[i], confidence[i], field) if ok[i] else None for i in range(len(ok))]
        key = int(np.argmax([g.coverage if g is not None else -1.0 for g in geos]))
        geo = geos[key]
        assert geo is not None
        measurements: list[Measurement] = []
        if spacing_known(volume):
            row_mm, col_mm = volume.spacing[1], volume.spacing[2]
            length = geo.length_mm(row_mm, col_mm)
            residual = geo.residual_mm(row_mm, col_mm)
            measurements.append(Measurement(Quantity.LENGTH, length))
            if math.isfinite(residual):
                regularity = 1.0 / (1.0 + residual)
                measurements.append(Measurement(Quantity.REGULARITY, regularity))
                result.conclusions.append(
                    f"Pleural line: length {length:.1f} mm, regularity {regularity:.2f} "
                    f"(RMS deviation from a smooth curve {residual:.2f} mm)."
                )
        else:
            result.conclusions.append("Pleural line found; pixel spacing unknown, so no length in mm.")
        result.findings.append(
            Finding(
                category=Category.PLEURAL_LINE,
                mask=pleura,
                measurements=measurements,
                score=float(geo.confidence),
                key_slice=key,
            )
        )

    def _b_lines(
        self, volume: Volume, labels: np.ndarray, classes: np.ndarray, ok: np.ndarray, result: Findings, top: str
    ) -> None:
        counts = [count_b_lines(labels[i]) if ok[i] else 0 for i in range(len(ok))]
        worst = int(np.argmax(counts))  # the first frame with the most B-lines
        worst_abnormal = int(np.argmax(np.where(ok, 1.0 - classes[:, 0], -1.0)))
        most = counts[worst]
        mask = (labels == B_LINE) & ok[:, None, None]
        if most > 0:
            result.findings.append(
                Finding(
                    category=Category.B_LINE,
                    mask=mask,
                    label="B-lines",
                    measurements=[Measurement(Quantity.COUNT, float(most))],
                    evaluations={Evaluation.FRAME_CLASS: "b_lines" if most >= 3 else "few_b_lines"},
                    key_slice=worst,
                )
            )
        numbers = volume.frame_numbers or list(range(1, len(ok) + 1))

        def frame_no(i: int) -> int:
            return numbers[i]

        if most == 0 and top == "b_lines":
            # The classifier reads the pattern of whole frames; the count needs single lines traced from the
            # pleura downwards, which confluent or faint B-lines ("white lung") do not give.
            result.conclusions.append(
                "B-lines: a B-line pattern by the frame classifier, but no single B-line traced to count "
                f"(confluent or faint lines are not counted); most abnormal-looking frame: {frame_no(worst_abnormal)}."
            )
        else:
            result.conclusions.append(
                f"B-lines: at most {most} in one frame (frame {frame_no(worst)}); "
                f"most abnormal-looking frame: {frame_no(worst_abnormal)}."
            )
        if len(ok) > 1:
            shown = [f"{frame_no(i)}:{c}" for i, c in enumerate(counts) if ok[i]][:60]
            result.conclusions.append("B-lines per frame (frame:count): " + ", ".join(shown) + ".")


def _bundle_version(bundle_dir: Path) -> str:
    import json

    meta = bundle_dir / "configs" / "metadata.json"
    try:
        return str(json.loads(meta.read_text()).get("version", "untrained"))
    except (OSError, ValueError):
        return "untrained"
