"""Held-out evaluation of a ``pet_tumour`` bundle against the threshold baselines; writes the metrics and card.

Every method is scored on the same held-out phantoms (``HELDOUT_SEEDS`` of the data module, never used in
training), through the same lesion extraction (``lesion_labels`` of the pipeline's ``detect`` module).
The PERCIST-style baseline gets its liver sphere at the phantom's known liver position (an advantage the
others do not have).
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dicom_node.pipelines.pet_tumour.baselines import liver_reference, percist
from dicom_node.pipelines.pet_tumour.detect import lesion_labels, method_mask
from dicom_node.pipelines.pet_tumour.model import load_net
from dicom_node.synth.pet_phantom import VERSION as PHANTOM_VERSION
from dicom_node.training.pet_tumour.data import HELDOUT_SEEDS, load_case
from dicom_node.training.pet_tumour.metrics import ScanScore, score_scan, summarize

METHODS = ("network", "suv25", "percent40", "percist")


def evaluate(
    bundle: str | Path,
    *,
    seeds: Sequence[int] = HELDOUT_SEEDS,
    progress: Callable[[str], None] = print,
    write: bool = True,
) -> dict[str, Any]:
    """Score the bundle's network and the baselines; write ``docs/metrics.json`` and ``docs/README.md`` (unless
    ``write`` is false)."""
    from dicom_node.training.ct_lung_nodule.runtime import pick_device
    from dicom_node.training.pet_tumour.card import write_card

    device = pick_device()
    net = load_net(bundle, device)
    scores: dict[str, list[ScanScore]] = {m: [] for m in METHODS}
    seconds: list[float] = []
    for seed in seeds:
        case = load_case(seed)
        for method in METHODS:
            t = time.perf_counter()
            if method == "percist":
                mean, sd = liver_reference(case.suv, case.liver_voi, case.spacing)
                mask = percist(case.suv, mean, sd)
            else:
                mask = method_mask(method, case.suv, case.ct, case.spacing, net)
            labels, _ = lesion_labels(mask, case.suv)
            if method == "network":
                seconds.append(time.perf_counter() - t)
            scores[method].append(score_scan(labels, case.lesions, case.organs, case.suv))
        net_score = scores["network"][-1]
        progress(
            f"seed {seed}: network dice {net_score.dice:.3f}, {net_score.found}/{net_score.lesions} found, "
            f"{net_score.false_calls} false"
        )
    metrics: dict[str, Any] = {
        "heldout_seeds": [int(s) for s in seeds],
        "phantom_version": PHANTOM_VERSION,
        "methods": {m: summarize(s) for m, s in scores.items()},
        "per_scan_dice": {m: [round(x.dice, 4) for x in s] for m, s in scores.items()},
        "network_seconds_per_scan": round(float(np.mean(seconds)), 2),
        "machine": f"{platform.machine()}, {device}",
        "bundle_version": net.version,
    }
    if not write:
        return metrics
    docs = Path(bundle) / "docs"
    metrics["previous"] = _previous(docs / "metrics.json", net.version, seeds)
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_card(Path(bundle))
    return metrics


def _previous(path: Path, version: str, seeds: Sequence[int]) -> list[dict[str, Any]]:
    """The network's numbers of the earlier bundle versions, and of this version on another held-out set or
    generator version (kept in ``metrics.json`` for the card), newest first."""
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    earlier: list[dict[str, Any]] = list(old.get("previous", []))
    same_set = old.get("heldout_seeds") == [int(s) for s in seeds] and old.get("phantom_version", 1) == PHANTOM_VERSION
    if (old.get("bundle_version") != version or not same_set) and "network" in old.get("methods", {}):
        entry = {
            "version": old.get("bundle_version"),
            "heldout_seeds": old.get("heldout_seeds"),
            "phantom_version": old.get("phantom_version", 1),
        }
        earlier.insert(0, {**entry, "network": old["methods"]["network"]})
    return earlier
