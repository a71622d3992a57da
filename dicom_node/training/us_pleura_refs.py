"""Pleural-line localisation on real frames against hand-checked depths (TRAIN part only).

``python -m dicom_node.training.us_pleura_refs [--bundle DIR] [--synthetic]`` reads ``us_pleura_refs.csv`` (beside
this module; how it was made is written at its top), runs the bundle's network on each referenced
frame and reports, for the network's own pleural-line label and for the label corrected by the
anatomy (:func:`dicom_node.pipelines.us_pleura.refine_labels`), the row error of the pleural line the
pipeline reports (:func:`dicom_node.pipelines.us_lung.pleura_geometry`) at the reference column, as a
fraction of the depth: median |error| and the fraction of frames within 5 % of the depth. A frame
whose reported line does not reach within 10 % of the width of the reference column counts as an
error of 1.0 (missed). Rib shadows likewise against ``us_rib_refs.csv`` (:func:`rib_agreement`: hand
shadows covered by the rib label, and the share of rib-labelled columns outside every hand shadow, over all
reference frames and over those with a shadow; frames marked without a shadow count whole when labelled).
``--synthetic`` adds the synthetic Dice with and without the correction
(:func:`synthetic_dice`: the correction must not cost the synthetic skills).
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from dicom_node.imaging.us import load_us
from dicom_node.pipelines.us_lung import DEFAULT_BUNDLE, UsLungPipeline, imaged_field, pleura_geometry
from dicom_node.pipelines.us_pleura import refine_labels, sector_mask
from dicom_node.training.us_real_data import read_clips, write_clip

if TYPE_CHECKING:
    from dicom_node.networks.us_infer import Prediction

REFS_FILE = Path(__file__).with_name("us_pleura_refs.csv")
RIB_REFS_FILE = Path(__file__).with_name("us_rib_refs.csv")
MISSED = 1.0


@dataclass(frozen=True)
class PleuraRef:
    """One hand-checked frame: file, frame index (of 16), column and row as fractions of the frame."""

    file: str
    frame: int
    col: float
    row: float
    confidence: str


def read_refs(path: Path = REFS_FILE) -> list[PleuraRef]:
    """The references (comment lines starting with ``#`` skipped)."""
    with open(path, newline="") as fh:
        lines = [line for line in fh if not line.startswith("#")]
    return [
        PleuraRef(r["file"], int(r["frame"]), float(r["col"]), float(r["row"]), r["confidence"])
        for r in csv.DictReader(lines)
    ]


@dataclass(frozen=True)
class RibRef:
    """One hand-checked frame: file, frame index (of 16) and its rib shadows as (first, last) column fractions."""

    file: str
    frame: int
    shadows: tuple[tuple[float, float], ...]


def read_rib_refs(path: Path = RIB_REFS_FILE) -> list[RibRef]:
    """The rib-shadow references (comment lines starting with ``#`` skipped)."""
    with open(path, newline="") as fh:
        lines = [line for line in fh if not line.startswith("#")]
    refs = []
    for r in csv.DictReader(lines):
        spans = tuple(
            (float(a), float(b)) for a, b in (span.split("-") for span in r["shadows"].split(";") if span.strip())
        )
        refs.append(RibRef(r["file"], int(r["frame"]), spans))
    return refs


def rib_agreement(labels: np.ndarray, ref: RibRef, margin: float = 0.05) -> tuple[int, int, float]:
    """(shadows hit, shadows, share of rib-labelled columns outside every shadow widened by ``margin``).

    A shadow is hit when the rib label covers at least half of its columns; the columns counted are those
    with a rib label in the upper 60 % of the frame (where the ribs' shadows begin)."""
    rows, cols = labels.shape
    rib_cols = (labels[: int(0.6 * rows)] == 1).any(axis=0)
    x = (np.arange(cols) + 0.5) / cols
    hit = sum(bool(rib_cols[(x >= a) & (x <= b)].mean() >= 0.5) for a, b in ref.shadows)
    inside = np.zeros(cols, dtype=bool)
    for a, b in ref.shadows:
        inside |= (x >= a - margin) & (x <= b + margin)
    false_share = float((rib_cols & ~inside).sum() / max(int(rib_cols.sum()), 1))
    return hit, len(ref.shadows), false_share


def snap_row(frame: np.ndarray, col: float, row: float, window: float = 0.03) -> float:
    """A hand reading ``row`` (fraction) snapped to the brightest row of a column band around ``col``."""
    rows, cols = frame.shape
    c, hw = int(col * cols), max(2, int(window * cols))
    profile = ndimage.gaussian_filter1d(frame[:, max(0, c - hw) : c + hw + 1].mean(axis=1), rows / 256)
    h, win = int(row * rows), int(window * rows)
    lo = max(0, h - win)
    return (lo + int(np.argmax(profile[lo : h + win + 1]))) / rows


def row_error(labels: np.ndarray, confidence: np.ndarray, field: np.ndarray, ref: PleuraRef) -> float:
    """|reported pleural-line row - reference row| / depth at the reference column (``MISSED`` if absent)."""
    rows, cols = labels.shape
    geo = pleura_geometry(labels, confidence, field)
    if geo.cols.size == 0:
        return MISSED
    target = ref.col * cols
    near = np.abs(geo.cols - target) <= 0.1 * cols
    if not near.any():
        return MISSED
    closest = np.abs(geo.cols - target) <= np.abs(geo.cols - target)[near].min() + 0.02 * cols
    return float(abs(np.median(geo.rows[closest]) / rows - ref.row))


def measure(bundle: Path = DEFAULT_BUNDLE, dicom_dir: Path | None = None) -> dict[str, object]:
    """Per-reference errors before (network label) and after (anatomy-refined label), with summaries."""
    from dicom_node.networks.us_infer import LungUsModel

    pipeline = UsLungPipeline(bundle_dir=bundle)
    model = pipeline._model("cpu")
    assert isinstance(model, LungUsModel)
    folder = Path(dicom_dir) if dicom_dir else Path(tempfile.gettempdir()) / "dicom-node-us-real-16"
    clips = {c.file: c for c in read_clips()}
    cines: dict[str, np.ndarray] = {}

    def labelled(file: str, frame: int) -> tuple[np.ndarray, Prediction, np.ndarray]:
        """A train-part frame's cine (read once per file), the network's prediction and the refined labels."""
        if clips[file].part != "train":
            raise ValueError(f"{file} is not in the train part: references are for the train part only")
        if file not in cines:
            cines[file] = load_us([write_clip(clips[file], folder, 16)]).pixels
        pixels = cines[file]
        pred = model.predict(pixels[frame : frame + 1])
        refined = refine_labels(pixels[frame], pred.labels[0], pred.confidence[0], sector_mask(pixels))
        return pixels, pred, refined

    rows: list[dict[str, object]] = []
    for ref in read_refs():
        pixels, pred, refined = labelled(ref.file, ref.frame)
        field = imaged_field(pixels)
        rows.append(
            {
                "file": Path(ref.file).name,
                "frame": ref.frame,
                "confidence": ref.confidence,
                "before": row_error(pred.labels[0], pred.confidence[0], field, ref),
                "after": row_error(refined, pred.confidence[0], field, ref),
            }
        )
    errors = {k: [float(str(r[k])) for r in rows] for k in ("before", "after")}
    ribs: dict[str, list[tuple[int, int, float]]] = {"before": [], "after": []}
    for rib_ref in read_rib_refs():
        _, pred, refined = labelled(rib_ref.file, rib_ref.frame)
        ribs["before"].append(rib_agreement(pred.labels[0], rib_ref))
        ribs["after"].append(rib_agreement(refined, rib_ref))
    rib_summary = {
        k: {
            "frames": len(v),
            "shadows_hit": sum(h for h, _, _ in v),
            "shadows": sum(n for _, n, _ in v),
            "false_rib_column_share": float(np.mean([f for _, _, f in v])) if v else float("nan"),
            "false_rib_column_share_with_shadows": _mean([f for _, n, f in v if n]),
            "frames_without_shadow_with_rib_label": sum(bool(f > 0) for _, n, f in v if not n),
            "frames_without_shadow": sum(not n for _, n, _ in v),
        }
        for k, v in ribs.items()
    }
    return {
        "frames": rows,
        "summary": {k: summary(v) for k, v in errors.items()},
        "ribs": rib_summary,
    }


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def summary(errors: list[float]) -> dict[str, float]:
    """Median |row error| (fraction of the depth), fraction within 5 % of the depth, frames missed."""
    e = np.asarray(errors, dtype=float)
    return {
        "n": int(e.size),
        "median_abs_error": float(np.median(e)) if e.size else float("nan"),
        "within_5pct": float(np.mean(e <= 0.05)) if e.size else float("nan"),
        "missed": int(np.sum(e >= MISSED)),
    }


def synthetic_dice(bundle: Path = DEFAULT_BUNDLE, seed: int = 1234, frames: int = 200) -> dict[str, dict[str, float]]:
    """Rib / pleural-line / B-line Dice on the held-out synthetic frames of ``dicom-node evaluate us-lung``
    (same seed, size and patterns), for the network's labels and for the anatomy-corrected labels."""
    from dicom_node.networks.us_infer import LungUsModel
    from dicom_node.synth.us_lung import PATTERNS, generate
    from dicom_node.training.us_lung import dice_scores

    model = LungUsModel.load(Path(bundle), "cpu")
    images, truth = [], []
    for i in range(frames):
        sample = generate(seed * 100_003 + i, size=(256, 256), pattern=PATTERNS[i % len(PATTERNS)])
        labels = np.zeros((256, 256), dtype=np.uint8)
        labels[sample.b_lines[0]], labels[sample.rib[0]], labels[sample.pleura[0]] = 3, 1, 2
        images.append(sample.image[0])
        truth.append(labels)
    x, t = np.stack(images), np.stack(truth)
    pred = model.predict(x)
    refined = np.stack(
        [refine_labels(x[i], pred.labels[i], pred.confidence[i], sector_mask(x[i : i + 1])) for i in range(len(x))]
    )
    names = {1: "rib", 2: "pleura", 3: "b_line"}
    return {
        kind: {names[k]: v for k, v in dice_scores(labels, t).items()}
        for kind, labels in (("network", pred.labels), ("anatomy", refined))
    }


def main(argv: list[str] | None = None) -> int:
    """Print one line per reference frame and the before / after summaries."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    parser.add_argument(
        "--synthetic", action="store_true", help="also the synthetic Dice with and without the anatomy correction"
    )
    args = parser.parse_args(argv)
    if args.synthetic:
        print(json.dumps({"synthetic_dice": synthetic_dice(Path(args.bundle))}))
    result = measure(Path(args.bundle))
    frames = result["frames"]
    assert isinstance(frames, list)
    for r in frames:
        print(f"{r['file']} f{r['frame']} ({r['confidence']}): before {r['before']:.3f} after {r['after']:.3f}")
    print(json.dumps(result["summary"]))
    print(json.dumps({"ribs": result["ribs"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
