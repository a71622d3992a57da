"""``python -m dicom_node.training.pet_tumour train|tune|evaluate --bundle DIR``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Command line of the PET tumour training."""
    parser = argparse.ArgumentParser(prog="python -m dicom_node.training.pet_tumour")
    parser.add_argument("command", choices=["train", "tune", "evaluate"])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--minutes", type=float, default=25.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--resume", default=None, help="a bundle whose weights training starts from")
    parser.add_argument(
        "--seeds", default=None, help="training phantom seeds, e.g. 0-23,32,33 (default: the data module's)"
    )
    parser.add_argument("--note", default="", help="this stage, for the training history in the card")
    args = parser.parse_args(argv)
    if args.command == "train":
        from dicom_node.training.pet_tumour.data import TRAIN_SEEDS, parse_seeds
        from dicom_node.training.pet_tumour.train import train

        train(
            args.bundle,
            seeds=parse_seeds(args.seeds) if args.seeds else TRAIN_SEEDS,
            note=args.note,
            minutes=args.minutes,
            seed=args.seed,
            lr=args.lr,
            resume=args.resume,
            progress=lambda m: print(m, flush=True),
        )
        return 0
    if args.command == "tune":
        from dicom_node.training.pet_tumour.tune import tune

        tune(args.bundle, progress=lambda m: print(m, flush=True))
        return 0
    from dicom_node.training.pet_tumour.evaluate import evaluate

    evaluate(args.bundle, progress=lambda m: print(m, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
