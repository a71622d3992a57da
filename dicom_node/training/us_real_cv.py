"""Grouped cross-validation of the clip-level normal-vs-abnormal rule on the TRAIN part of the real clips.

``python -m dicom_node.training.us_real_cv [--bundle DIR]`` runs the gate and the network on every
train-part clip (never the check part), then compares clip-level rules, each one threshold on one
per-clip feature, by leave-one-group-out cross-validation over the split's patient groups (the
charlotte patients, and every other source as one group): the threshold is chosen on the other
groups (the middle of the best interval) and scored on the left-out group. Refused clips count as
wrong, as in :func:`dicom_node.training.us_real_eval.summarise`.

The features: ``mean_p`` (mean probability of abnormal over the lung-like frames: the pipeline's
rule), ``frac_p`` (fraction of lung-like frames with p >= 0.5) and ``b_max`` (most B-lines in one
frame). Caveat, printed with the result: the bundle's classifier was fine-tuned on these clips'
labels, so its probabilities are in-sample here; the B-line count comes from the segmentation
network, which saw no B-line labels of real clips.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dicom_node.imaging.us import load_us
from dicom_node.pipelines.us_lung import DEFAULT_BUNDLE, UsLungPipeline, check_lung, count_b_lines
from dicom_node.training.us_real_data import REAL_LUNG_US, SPLIT_FILE, read_clips, write_clip

FEATURES = ("mean_p", "frac_p", "b_max")


@dataclass
class ClipFeatures:
    """One train-part clip: its group, truth, whether the gate analyses it and its clip features."""

    name: str
    group: str
    abnormal: bool
    analysed: bool
    values: dict[str, float]


def _groups(split_file: Path = SPLIT_FILE) -> dict[str, str]:
    import csv

    with open(split_file, newline="") as fh:
        return {Path(row["file"]).name: row["patient_group"] for row in csv.DictReader(fh)}


def clip_features(pipeline: UsLungPipeline, root: Path, work: Path, frames: int = 16) -> list[ClipFeatures]:
    """Features of every rated train-part clip (network run once per clip)."""
    from dicom_node.networks.us_infer import LungUsModel

    model = pipeline._model("cpu")
    assert isinstance(model, LungUsModel)
    groups = _groups()
    rows: list[ClipFeatures] = []
    for clip in read_clips(root):
        if clip.part != "train" or clip.abnormal is None:
            continue
        volume = load_us([write_clip(clip, work, frames)])
        pred = model.predict(volume.pixels)
        check = check_lung(volume, pred.labels, pred.confidence)
        ok = np.asarray(check.frame_ok) if check.plausible else np.ones(len(pred.labels), dtype=bool)
        p_abnormal = 1.0 - pred.classes[ok, 0]
        values = {
            "mean_p": float(p_abnormal.mean()),
            "frac_p": float((p_abnormal >= 0.5).mean()),
            "b_max": float(max(count_b_lines(pred.labels[i]) for i in np.flatnonzero(ok))),
        }
        rows.append(ClipFeatures(clip.name, groups[clip.name], bool(clip.abnormal), check.plausible, values))
    return rows


def best_threshold(values: np.ndarray, truth: np.ndarray) -> float:
    """The threshold t (abnormal when value >= t) with the most right answers: the middle of the best gap."""
    points = np.unique(values)
    cands = np.concatenate([[points[0] - 1.0], (points[:-1] + points[1:]) / 2, [points[-1] + 1.0]])
    scores = [int(((values >= t) == truth).sum()) for t in cands]
    best = np.flatnonzero(np.asarray(scores) == max(scores))
    return float(cands[best[len(best) // 2]])


def grouped_cv(rows: list[ClipFeatures], feature: str, rule: Callable[[np.ndarray, np.ndarray], float]) -> int:
    """Right answers over the left-out groups (refused clips are wrong)."""
    right = 0
    for group in sorted({r.group for r in rows}):
        fit = [r for r in rows if r.group != group and r.analysed]
        threshold = rule(np.array([r.values[feature] for r in fit]), np.array([r.abnormal for r in fit]))
        right += sum(r.analysed and (r.values[feature] >= threshold) == r.abnormal for r in rows if r.group == group)
    return right


def main(argv: list[str] | None = None) -> int:
    """Print the per-clip features and the CV score of each rule (and of the fixed 0.5 on ``mean_p``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    parser.add_argument("--real", default=str(REAL_LUNG_US))
    args = parser.parse_args(argv)
    rows = clip_features(UsLungPipeline(bundle_dir=args.bundle), Path(args.real), Path(tempfile.mkdtemp()))
    for r in rows:
        print(f"{r.group:28s} {r.name:45s} abnormal={r.abnormal!s:5s} analysed={r.analysed!s:5s} {r.values}")
    scores = {f: grouped_cv(rows, f, best_threshold) for f in FEATURES}
    scores["mean_p >= 0.5 (fixed)"] = grouped_cv(rows, "mean_p", lambda v, t: 0.5)
    scores["b_max >= 3 (fixed, clinical)"] = grouped_cv(rows, "b_max", lambda v, t: 3.0)
    summary = {
        "clips": len(rows),
        "groups": len({r.group for r in rows}),
        "analysed": sum(r.analysed for r in rows),
        "cv_right": scores,
        "caveat": "classifier fine-tuned on these clips: mean_p / frac_p are in-sample",
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
