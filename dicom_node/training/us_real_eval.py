"""The lung-US pipeline on the real clips: per-clip verdicts and the summary of one split part.

Each clip is wrapped as US multi-frame DICOM (:mod:`dicom_node.training.us_real_data`), loaded with
the project's loader (:func:`dicom_node.imaging.us.load_us`) and run through
:class:`~dicom_node.pipelines.us_lung.UsLungPipeline` exactly as a worker would. Measured per clip:
analysed or refused (and why), the fraction of frames with a pleural line, normal vs abnormal (cine
probability of abnormal >= 0.5) and B-lines present / absent (a B-line finding, or B-lines as the
coded clip result, :func:`~dicom_node.outputs.codes.clinical_result`) against the physicians' labels. The non-lung
ultrasound in ``shared/`` (:func:`non_lung_refusals`) must still be refused.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from dicom_node.findings import Category, Findings
from dicom_node.imaging.us import load_us
from dicom_node.outputs.codes import clinical_result
from dicom_node.pipelines.us_lung import PLEURA, UsLungPipeline, imaged_field, pleura_geometry
from dicom_node.training.us_real_data import REAL_LUNG_US, RealClip, read_clips, write_clip

logger = logging.getLogger(__name__)

NON_LUNG_FOLDERS = ("us_clinical_samples", "us_vendor_deid_phantom")


@dataclass
class ClipResult:
    """What the pipeline said about one real clip, beside the clip's labels."""

    name: str
    part: str
    source: str
    analysed: bool
    reason: str
    frames: int
    pleura_fraction: float
    abnormal_truth: bool | None
    abnormal_pred: bool | None
    p_abnormal: float
    b_lines_truth: bool | None
    b_lines_pred: bool | None
    b_line_max: int
    top_class: str
    seconds: float

    def line(self) -> str:
        """One human-readable line."""
        verdict = "analysed" if self.analysed else f"REFUSED ({self.reason})"

        def mark(truth: bool | None, pred: bool | None) -> str:
            if truth is None or pred is None:
                return "-"
            return "ok" if truth == pred else "WRONG"

        return (
            f"[{self.part:5s}] {self.name}: {verdict}; pleura {self.pleura_fraction:.0%} of {self.frames} frames; "
            f"abnormal p={self.p_abnormal:.2f} truth={self.abnormal_truth} "
            f"{mark(self.abnormal_truth, self.abnormal_pred)}; "
            f"B-lines max {self.b_line_max} truth={self.b_lines_truth} {mark(self.b_lines_truth, self.b_lines_pred)}; "
            f"top {self.top_class} ({self.seconds:.1f} s)"
        )


def pleura_frames(pipeline: UsLungPipeline, pixels: np.ndarray) -> np.ndarray:
    """Per frame: does the pipeline segment a pleural line spanning >= 20 % of the imaged width?"""
    pred, labels = pipeline.segment(pixels, "cpu")
    field = imaged_field(pixels)
    return np.array(
        [
            bool((labels[i] == PLEURA).any()) and pleura_geometry(labels[i], pred.confidence[i], field).coverage >= 0.2
            for i in range(len(pixels))
        ]
    )


def _b_line_max(result: Findings) -> int:
    for finding in result.findings:
        if finding.category == Category.B_LINE and finding.measurements:
            return int(finding.measurements[0].value)
    return 0


def evaluate_clip(pipeline: UsLungPipeline, clip: RealClip, dicom_dir: Path, frames: int = 16) -> ClipResult:
    """Wrap, load and run one clip; compare with its labels."""
    start = time.perf_counter()
    volume = load_us([write_clip(clip, dicom_dir, frames)])
    result = pipeline.run(volume, "cpu")
    pleura = pleura_frames(pipeline, volume.pixels)
    analysed = result.not_applicable is None
    cls = result.classification or {}
    p_abnormal = float(cls.get("abnormal", float("nan")))
    b_max = _b_line_max(result)
    b_truth = clip.findings["b_lines"]
    top = clinical_result(cls) or "-"
    return ClipResult(
        name=clip.name,
        part=clip.part,
        source=clip.source,
        analysed=analysed,
        reason=result.not_applicable or "",
        frames=int(volume.pixels.shape[0]),
        pleura_fraction=float(pleura.mean()),
        abnormal_truth=clip.abnormal,
        abnormal_pred=(p_abnormal >= 0.5) if analysed else None,
        p_abnormal=p_abnormal,
        b_lines_truth=None if b_truth is None else bool(b_truth),
        b_lines_pred=(b_max > 0 or top == "b_lines") if analysed else None,
        b_line_max=b_max,
        top_class=top,
        seconds=time.perf_counter() - start,
    )


def _rate(hits: list[bool]) -> dict[str, float | int]:
    return {"right": int(sum(hits)), "of": len(hits), "rate": float(np.mean(hits)) if hits else float("nan")}


def summarise(results: list[ClipResult]) -> dict[str, object]:
    """Analysed fraction, pleura on normal clips' frames, normal/abnormal and B-line agreement.

    A refused clip counts as wrong for normal vs abnormal and for B-lines (the user gets no answer).
    """
    normal = [r for r in results if r.abnormal_truth is False]
    rated_ab = [r for r in results if r.abnormal_truth is not None]
    rated_b = [r for r in results if r.b_lines_truth is not None]
    return {
        "clips": len(results),
        "analysed": _rate([r.analysed for r in results]),
        "pleura_frames_normal_clips": float(np.mean([r.pleura_fraction for r in normal])) if normal else float("nan"),
        "normal_vs_abnormal": _rate([r.abnormal_pred == r.abnormal_truth for r in rated_ab]),
        "b_lines_present": _rate([r.b_lines_pred == r.b_lines_truth for r in rated_b]),
    }


def evaluate_real_clips(
    pipeline: UsLungPipeline,
    root: Path = REAL_LUNG_US,
    dicom_dir: Path | None = None,
    parts: tuple[str, ...] = ("train", "check"),
    frames: int = 16,
) -> list[ClipResult]:
    """Every clip of the chosen split parts; DICOM files are written to (and reused from) ``dicom_dir``."""
    import tempfile

    folder = Path(dicom_dir) if dicom_dir else Path(tempfile.gettempdir()) / f"dicom-node-us-real-{frames}"
    results = []
    for clip in read_clips(root):
        if clip.part in parts:
            results.append(evaluate_clip(pipeline, clip, folder, frames))
    return results


def non_lung_refusals(pipeline: UsLungPipeline, real_root: Path | None = None) -> list[tuple[str, str]]:
    """(file, verdict) for every non-lung US file in ``shared/``; the verdict starts with "refused" when right."""
    root = Path(real_root) if real_root else REAL_LUNG_US.parent
    rows: list[tuple[str, str]] = []
    for folder in NON_LUNG_FOLDERS:
        for path in sorted((root / folder).glob("*.dcm")):
            try:
                result = pipeline.run(load_us([path]), "cpu")
            except ValueError as exc:
                rows.append((f"{folder}/{path.name}", f"refused (load error: {exc})"))
                continue
            verdict = f"refused ({result.not_applicable})" if result.not_applicable else "ANALYSED: " + result.summary()
            rows.append((f"{folder}/{path.name}", verdict))
    return rows


def as_dicts(results: list[ClipResult]) -> list[dict[str, object]]:
    """Results as plain dicts (JSON)."""
    return [asdict(r) for r in results]
