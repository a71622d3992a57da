"""``dicom-node evaluate us-lung --real [DIR]``: per-clip lines, per-part summaries, non-lung refusals.

With a folder holding ``labels.csv`` (the POCUS collection layout) every labelled clip is scored
against its labels and the train / check parts are summed separately. Any other folder is taken as
unlabelled: every video, image or DICOM file in it is run and only the verdicts are printed.
``--png DIR`` writes one overlay per clip (the frame with the widest pleural line; red pleural line,
blue rib and shadow, yellow B-lines; the network's own labels beside the labels the pipeline reports)
to check by eye what is called pleura.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from dicom_node.imaging.us import load_us
from dicom_node.pipelines.us_lung import UsLungPipeline
from dicom_node.training.us_real_data import REAL_LUNG_US, clip_dataset, clip_frames
from dicom_node.training.us_real_eval import (
    as_dicts,
    evaluate_real_clips,
    non_lung_refusals,
    summarise,
)

MEDIA = {".mp4", ".mpeg", ".mpg", ".mov", ".avi", ".png", ".jpg", ".jpeg"}
_COLOURS = {1: (0.2, 0.4, 1.0), 2: (1.0, 0.15, 0.15), 3: (1.0, 0.9, 0.1)}


def overlay_png(pipeline: UsLungPipeline, dicom: Path, out: Path) -> None:
    """Save the frame with the most reported pleural-line pixels as a PNG of three panels: the frame, the
    network's own labels, and the labels the pipeline reports (corrected by the anatomy)."""
    from PIL import Image

    volume = load_us([dicom])
    pred, labels = pipeline.segment(volume.pixels, "cpu")
    key = int(np.argmax((labels == 2).reshape(len(labels), -1).sum(axis=1)))
    gray = volume.pixels[key]
    panels = [np.repeat(gray[..., None], 3, axis=-1)]
    for label_map in (pred.labels[key], labels[key]):
        rgb = np.repeat(gray[..., None], 3, axis=-1)
        for label, colour in _COLOURS.items():
            mask = label_map == label
            rgb[mask] = 0.45 * rgb[mask] + 0.55 * np.asarray(colour)
        panels.append(rgb)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(np.concatenate(panels, axis=1), 0, 1) * 255).astype(np.uint8)).save(out)


def _unlabelled(pipeline: UsLungPipeline, folder: Path, work: Path, png_dir: Path | None) -> int:
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in MEDIA | {".dcm"}):
        dicom = path
        if path.suffix.lower() != ".dcm":
            dicom = work / (path.stem + ".dcm")
            clip_dataset(clip_frames(path), path.name).save_as(dicom, enforce_file_format=True)
        result = pipeline.run(load_us([dicom]), "cpu")
        if result.not_applicable:
            print(f"{path.name}: REFUSED ({result.not_applicable})")
        else:
            cls = {k: v for k, v in result.classification.items() if k != "abnormal"}
            top = max(cls, key=lambda k: cls[k]) if cls else "-"
            abnormal = result.classification.get("abnormal", float("nan"))
            print(f"{path.name}: {result.summary()}; cine result {top}, abnormal p={abnormal:.2f}")
        if png_dir is not None:
            overlay_png(pipeline, dicom, png_dir / (path.stem + ".png"))
    return 0


def evaluate_real_command(real: str | None, bundle: str | Path, png: str | None) -> int:
    """The command's body; returns the exit status."""
    folder = Path(real) if real else REAL_LUNG_US
    if not folder.is_dir():
        print(f"error: no real lung-US folder at {folder}")
        return 2
    pipeline = UsLungPipeline(bundle_dir=bundle)
    work = Path(tempfile.mkdtemp(prefix="dicom-node-us-real-"))
    png_dir = Path(png) if png else None
    if not (folder / "labels.csv").is_file():
        return _unlabelled(pipeline, folder, work, png_dir)
    results = evaluate_real_clips(pipeline, folder, dicom_dir=work)
    for r in results:
        print(r.line())
        if png_dir is not None:
            overlay_png(pipeline, work / (Path(r.name).stem + ".dcm"), png_dir / f"{r.part}_{Path(r.name).stem}.png")
    summary = {part: summarise([r for r in results if r.part == part]) for part in ("train", "check")}
    refusals = non_lung_refusals(pipeline, folder.parent)
    for name, verdict in refusals:
        print(f"[non-lung] {name}: {verdict}")
    summary["non_lung_refused"] = {
        "right": sum(v.startswith("refused") for _, v in refusals),
        "of": len(refusals),
    }
    for part, values in summary.items():
        print(f"{part}: {json.dumps(values)}")
    print(json.dumps({"summary": summary, "clips": as_dicts(results)}, indent=2, default=str))
    return 0
