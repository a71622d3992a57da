"""``python -m dicom_node.training.ct_lung_nodule train|calibrate|evaluate``: prints the JSON summary.

``train`` and ``calibrate`` need ``--bundle`` (the folder they write), so that they never overwrite the
shipped bundle unless it is named; ``evaluate`` reads the shipped bundle by default (and writes its
docs/metrics.json and card there).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from dicom_node.pipelines.ct_lung_nodule import DEFAULT_BUNDLE
from dicom_node.training.ct_lung_nodule.calibration import calibrate
from dicom_node.training.ct_lung_nodule.card import write_card
from dicom_node.training.ct_lung_nodule.evaluation import evaluate
from dicom_node.training.ct_lung_nodule.recipe import train

WRITES_BUNDLE = ("train", "calibrate")


def main(argv: Sequence[str] | None = None) -> int:
    """``train``, ``calibrate`` or ``evaluate`` from the command line (prints the JSON summary)."""
    parser = argparse.ArgumentParser(prog="python -m dicom_node.training.ct_lung_nodule")
    parser.add_argument("command", choices=["train", "calibrate", "evaluate"])
    parser.add_argument("--seed", type=int, default=None, help="train: 0, evaluate: 1234 (the test seed)")
    parser.add_argument(
        "--bundle", type=Path, help=f"bundle folder (needed for train and calibrate; evaluate: {DEFAULT_BUNDLE})"
    )
    parser.add_argument("--quick", action="store_true", help="train: a tiny smoke run, for CI")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.bundle is None and args.command in WRITES_BUNDLE:
        parser.error(f"{args.command} needs --bundle DIR (the folder it writes)")
    progress = not args.no_progress
    if args.command == "train":
        out = train(args.bundle, seed=0 if args.seed is None else args.seed, quick=args.quick, progress=progress)
    elif args.command == "calibrate":
        out = calibrate(args.bundle, progress=progress)
        write_card(args.bundle)
    else:
        out = evaluate(args.bundle or DEFAULT_BUNDLE, seed=1234 if args.seed is None else args.seed)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
