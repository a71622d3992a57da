"""``dicom-node train pet-tumour`` and ``dicom-node evaluate pet-tumour``: the CLI's calls, in the shape the
other trainable models have (``train(out, seed=, quick=, progress=)``, ``evaluate(bundle, seed=)``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

QUICK_SEEDS = (0, 1)  # --quick: two phantoms, a few seconds of training, no tuning (a smoke test)
QUICK_MINUTES = 0.1


def _say(progress: bool) -> Any:
    return (lambda message: print(message, flush=True)) if progress else (lambda message: None)


def train(
    out: Path,
    seed: int = 0,
    quick: bool = False,
    progress: bool = True,
    minutes: float = 25.0,
    resume: str | Path | None = None,
) -> dict[str, Any]:
    """Train into ``out`` (from ``resume``'s weights when given), then choose the thresholds on the validation
    seeds; ``quick`` trains a few seconds on two phantoms and skips the tuning. Returns the bundle's metadata."""
    from dicom_node.training.pet_tumour.data import TRAIN_SEEDS
    from dicom_node.training.pet_tumour.train import train as train_bundle
    from dicom_node.training.pet_tumour.tune import tune

    say = _say(progress)
    seeds = QUICK_SEEDS if quick else TRAIN_SEEDS
    train_bundle(out, minutes=QUICK_MINUTES if quick else minutes, seeds=seeds, seed=seed, resume=resume, progress=say)
    if not quick:
        tune(out, progress=say)
    meta: dict[str, Any] = json.loads((Path(out) / "configs" / "metadata.json").read_text())
    return meta


def evaluate(bundle: Path, seed: int = 0, seeds: Sequence[int] | None = None, progress: bool = False) -> dict[str, Any]:
    """The held-out evaluation (:func:`~dicom_node.training.pet_tumour.evaluate.evaluate`) of ``bundle``; ``seeds``
    other than the held-out set give the numbers without touching the bundle's card. ``seed`` is unused (the
    phantoms are fixed by their seeds)."""
    from dicom_node.training.pet_tumour.data import HELDOUT_SEEDS
    from dicom_node.training.pet_tumour.evaluate import evaluate as evaluate_bundle

    del seed
    chosen = tuple(seeds) if seeds else HELDOUT_SEEDS
    return evaluate_bundle(bundle, seeds=chosen, progress=_say(progress), write=chosen == HELDOUT_SEEDS)
