"""The training recipe of the CT nodule bundle: data, U-Net, Res-MTNet, both FPR3D members, calibrators
and the model card, written into one bundle folder."""

from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np

from dicom_node.networks.fpr3d import member_name
from dicom_node.pipelines.ct_lung_nodule import NoduleModel
from dicom_node.training.ct_lung_nodule.bundle import write_bundle
from dicom_node.training.ct_lung_nodule.calibration import GROW_THRESHOLD, calibrate
from dicom_node.training.ct_lung_nodule.card import write_card
from dicom_node.training.ct_lung_nodule.data import Case, build_cases, calibration_cases
from dicom_node.training.ct_lung_nodule.fpr3d import FPR3D_SETS, MEMBERS, add_fpr3d
from dicom_node.training.ct_lung_nodule.resmtnet import mtnet_samples, synthetic_nodule_patches, train_resmtnet
from dicom_node.training.ct_lung_nodule.runtime import pick_device
from dicom_node.training.ct_lung_nodule.unet import train_unet


def train(bundle_dir: Path, seed: int = 0, quick: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train all networks, fit the calibrators and write the bundle to ``bundle_dir``.

    Args:
        bundle_dir: bundle folder (``configs/``, ``models/``, ``docs/`` are created).
        seed: seeds the data generation and the networks.
        quick: a seconds-long smoke run (tiny data, a few steps): for CI, not for use.
        progress: show progress bars.

    Returns:
        A summary dict (cases, steps, seconds, device, losses are not tracked).
    """
    t0 = time.perf_counter()
    device = pick_device()
    rng = np.random.default_rng(seed)
    n_ph, n_ins = (1, 1) if quick else (int(os.environ.get("CT_NODULE_PHANTOMS", 36)), 16)
    unet_steps = 4 if quick else int(os.environ.get("CT_NODULE_UNET_STEPS", 1500))
    mt_steps = 4 if quick else int(os.environ.get("CT_NODULE_MT_STEPS", 1200))
    small = {"size": 192, "extent_mm": 16.0, "thickness": 2.0} if quick else {}
    cases = _training_cases(rng, n_ph, n_ins, progress, small)
    t_data = time.perf_counter() - t0
    unet = train_unet(cases, unet_steps, seed, device, progress)
    t_unet = time.perf_counter() - t0 - t_data
    miner = NoduleModel(unet, None, device=device)
    n_extra = 8 if quick else int(os.environ.get("CT_NODULE_EXTRA_NODULES", 2500))
    patches, targets, n_rendered = _resmtnet_data(cases, miner, seed, n_extra, progress)
    resmtnet = train_resmtnet(patches, targets, mt_steps, seed, device, progress, stem_stride=2)
    elapsed = time.perf_counter() - t0
    summary = {
        "seed": seed,
        "quick": quick,
        "device": device,
        "cases": {"phantoms": n_ph, "real_inserted": len(cases) - n_ph},
        "nodules": int(sum(len(c.truths) for c in cases)),
        "unet_steps": unet_steps,
        "resmtnet_steps": mt_steps,
        "resmtnet_patches": {
            "nodule": int((targets["nodule"] > 0).sum()),
            "false_positive": int((targets["nodule"] == 0).sum()),
            "extra_rendered_nodules": n_rendered,
        },
        "seconds": {"data": round(t_data, 1), "unet": round(t_unet, 1), "total": round(elapsed, 1)},
    }
    write_bundle(bundle_dir, unet, resmtnet, summary)
    fpr_sets = ((556, 1, 0),) if quick else FPR3D_SETS
    for i, (fpr_seed, levels) in enumerate(MEMBERS):
        summary[member_name(i)] = add_fpr3d(
            bundle_dir, fpr_sets, 4 if quick else 4000, progress, seed=fpr_seed, levels=levels, member=i > 0
        )
    meta_path = Path(bundle_dir) / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["training"] = summary
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    cal_cases = calibration_cases(((555, 1, 0),)) if quick else None
    calibrate(bundle_dir, cal_cases, grow_threshold=GROW_THRESHOLD)
    write_card(bundle_dir)
    return summary


def _training_cases(
    rng: np.random.Generator, n_phantoms: int, n_inserted: int, progress: bool, phantom_kw: dict[str, Any]
) -> list[Case]:
    """:func:`build_cases`, or the cases pickled at $CT_NODULE_CASE_CACHE (written there when it is set and
    the file is not there yet), to reuse generated cases between runs."""
    cache = os.environ.get("CT_NODULE_CASE_CACHE")
    if cache and Path(cache).exists():
        with open(cache, "rb") as fh:
            cases: list[Case] = pickle.load(fh)  # our own file, written below
        return cases
    cases = build_cases(rng, n_phantoms, n_inserted, progress, **phantom_kw)
    if cache:
        with open(cache, "wb") as fh:
            pickle.dump(cases, fh)
    return cases


def _resmtnet_data(
    cases: list[Case], miner: NoduleModel, seed: int, n_extra: int, progress: bool
) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
    """Res-MTNet's patches and targets: the ``miner``'s candidates and jittered truth masks of ``cases``,
    then ``n_extra`` nodules rendered into them; and how many of those were rendered."""
    mt_rng = np.random.default_rng(seed + 3)
    patches, targets = mtnet_samples(cases, miner, mt_rng, progress)
    extra, extra_t = synthetic_nodule_patches(cases, mt_rng, n_extra, progress)
    patches = np.concatenate([patches, extra])
    targets = {k: np.concatenate([v, extra_t[k]]) for k, v in targets.items()}
    return patches, targets, len(extra)
