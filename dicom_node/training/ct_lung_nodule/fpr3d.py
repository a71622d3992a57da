"""Training data and training for FPR3D, the 3-D false-positive reduction network of the CT nodule bundle.

Samples are the U-Net candidates of calibration-style cases at two seed levels (the bundle's own and a
low one, so that faint nodules the U-Net barely sees are in the data too), labelled nodule / false
positive by their overlap with the truth, plus every truth mask as an ideal candidate.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dicom_node.networks.fpr3d import FPR3DEnsemble, build_fpr3d
from dicom_node.pipelines.ct_lung_nodule import Candidate, NoduleModel, extract_patch3d, load_model
from dicom_node.training.ct_lung_nodule.bundle import FPR3D_KWARGS, save_networks
from dicom_node.training.ct_lung_nodule.data import Case, calibration_cases, match_truths, phantom_case
from dicom_node.training.ct_lung_nodule.runtime import pick_device, progress_bar

SEED_LEVELS = ((0.5, 0.35), (0.12, 0.08))  # (seed, grow) U-Net probability levels for the candidates
# The ensemble's members (since 1.4.0): (network seed, candidate levels). The second also learns from the
# components seeded at U-Net probability 0.03: more faint nodules, and the vessels and fissures beside them.
MEMBERS: tuple[tuple[int, tuple[tuple[float, float], ...]], ...] = (
    (0, SEED_LEVELS),
    (1, (*SEED_LEVELS, (0.03, 0.02))),
)
# Sample sets for FPR3D: (seed, phantoms, real-inserted), generated as the calibration cases are. Not the
# calibration seed (555), nor training (0, 101-104), validation (777) or test (1234).
FPR3D_SETS = ((556, 60, 8), (557, 60, 10), (558, 64, 8))
# Phantoms with large hilar vessel trunks and lobar branches (make_phantom(hilar=True)) for fine-tuning the
# FPR3D members (:func:`hilar_samples`): (seed, phantoms, minimum nodule diameter, label kept). 570 gives
# the false positives (the hilar vessels among them); 571, nodules and masses of 25-40 mm, some beside the
# hilar vessels, so that a large mass is not taken for one. Not any seed above.
HILAR_SETS = ((570, 40, 3.0, 0), (571, 30, 25.0, 1))


def truth_candidate(case: Case, index: int) -> Candidate:
    """Truth nodule ``index`` of ``case`` as a candidate (its mask, on the working grid)."""
    gt = case.labels == index
    zz, yy, xx = np.nonzero(gt)
    box = (
        slice(int(zz.min()), int(zz.max()) + 1),
        slice(int(yy.min()), int(yy.max()) + 1),
        slice(int(xx.min()), int(xx.max()) + 1),
    )
    areas = gt[box].reshape(box[0].stop - box[0].start, -1).sum(axis=1)
    k = int(np.argmax(areas)) + box[0].start
    shape = (int(gt.shape[0]), int(gt.shape[1]), int(gt.shape[2]))
    return Candidate(
        box=box,
        local=gt[box],
        shape=shape,
        prob_max=1.0,
        prob_mean=1.0,
        key_slice=k,
        center=(k, int(yy.mean()), int(xx.mean())),
    )


def fpr3d_samples(
    cases: Sequence[Case],
    model: NoduleModel,
    probs: Sequence[np.ndarray] | None = None,
    levels: Sequence[tuple[float, float]] = SEED_LEVELS,
) -> tuple[np.ndarray, np.ndarray]:
    """(patches float16 (N, 2, 32, 32, 32), labels (N,)) from ``cases``: candidates at each (seed, grow)
    of ``levels`` and every truth; ``probs`` are the U-Net probabilities of each case when already computed."""
    xs: list[np.ndarray] = []
    ys: list[int] = []
    for i, case in enumerate(cases):
        if probs is not None:
            prob = probs[i].astype(np.float32)
        else:
            slices = [int(k) for k in np.nonzero(case.region.any(axis=(1, 2)))[0]]
            prob = model.probabilities(case.norm, slices)
        seen: set[tuple[int, ...]] = set()
        for level in levels:
            cands = model.components(prob, case.region, case.spacing, level)
            model.refine(case.norm, case.region, cands)
            for c, m in zip(cands, match_truths(cands, case), strict=True):
                key = (c.box[0].start, c.box[1].start, c.box[2].start, int(c.local.sum()))
                if m < 0 or key in seen:
                    continue
                seen.add(key)
                xs.append(extract_patch3d(case.norm, c, case.spacing[0]).astype(np.float16))
                ys.append(int(m > 0))
        for t in case.truths:
            xs.append(extract_patch3d(case.norm, truth_candidate(case, t.index), case.spacing[0]).astype(np.float16))
            ys.append(1)
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def _augment3d(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """Random flips along each axis and a random in-plane transpose of a batch (B, C, Z, Y, X)."""
    for axis in (2, 3, 4):
        if rng.random() < 0.5:
            x = np.flip(x, axis=axis)
    if rng.random() < 0.5:
        x = np.swapaxes(x, 3, 4)
    shift = rng.integers(-2, 3, size=3)
    x = np.roll(x, tuple(int(s) for s in shift), axis=(2, 3, 4))
    return np.ascontiguousarray(x, dtype=np.float32)


def _step(net: Any, opt: Any, sched: Any, xb: np.ndarray, yb: np.ndarray, device: str) -> None:
    """One optimiser step of binary cross-entropy on a batch of augmented cubes and their labels."""
    logits = net(torch.from_numpy(xb).to(device))
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, torch.from_numpy(yb.astype(np.float32)).to(device)
    )
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()


def train_fpr3d(
    x: np.ndarray,
    y: np.ndarray,
    steps: int = 4000,
    batch: int = 32,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> Any:
    """FPR3D trained for ``steps`` batches, half nodules each (one class only when the other is absent, as in
    smoke runs), with flips, in-plane transposes and shifts; AdamW, one-cycle."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    net = build_fpr3d(**FPR3D_KWARGS).to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=max(steps, 1), pct_start=0.1)
    pools = [p for p in (np.nonzero(y == 1)[0], np.nonzero(y == 0)[0]) if len(p)]  # both, unless a class is absent
    if not pools:
        raise ValueError("no FPR3D samples")
    shares = [batch // len(pools)] * len(pools)
    shares[0] += batch - sum(shares)
    for _ in progress_bar(range(steps), progress, desc="fpr3d"):
        idx = np.concatenate([rng.choice(pool, share) for pool, share in zip(pools, shares, strict=True)])
        _step(net, opt, sched, _augment3d(rng, x[idx]), y[idx], device)
    return net.eval()


def add_fpr3d(
    bundle_dir: Path,
    sets: Sequence[tuple[int, int, int]] = FPR3D_SETS,
    steps: int = 4000,
    progress: bool = True,
    *,
    seed: int = 0,
    levels: Sequence[tuple[float, float]] = SEED_LEVELS,
    member: bool = False,
) -> dict[str, Any]:
    """Train FPR3D on candidates (at ``levels``) of ``bundle_dir``'s own U-Net and put it in the bundle's
    weights (the U-Net and Res-MTNet are kept): in place of its FPR3D networks, or with ``member`` as one
    more member of their ensemble. Run :func:`dicom_node.training.ct_lung_nodule.calibration.calibrate` afterwards:
    the detection calibrator reads the logit. Returns a summary for the metadata."""
    t0 = time.perf_counter()
    device = pick_device()
    model, _ = load_model(bundle_dir, device)
    if model.resmtnet is None:
        raise ValueError(f"{bundle_dir}: no resmtnet to keep")
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for one in sets:  # one set at a time: the cases of all sets at once would need about 12 GB
        x, y = fpr3d_samples(calibration_cases((one,)), model, levels=levels)
        xs.append(x)
        ys.append(y)
    x, y = np.concatenate(xs), np.concatenate(ys)
    net = train_fpr3d(x, y, steps=steps, seed=seed, device=device, progress=progress)
    members = list(model.fpr3d.members) if member and model.fpr3d is not None else []
    save_networks(bundle_dir, model.unet, model.resmtnet, FPR3DEnsemble([*members, net]))
    return {
        "sets": [list(s) for s in sets],
        "levels": [list(level) for level in levels],
        "seed": seed,
        "samples": len(y),
        "nodule_samples": int(y.sum()),
        "steps": steps,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def hilar_samples(
    model: NoduleModel,
    level_sets: Sequence[Sequence[tuple[float, float]]],
    sets: Sequence[tuple[int, int, float, int]] = HILAR_SETS,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """FPR3D (patches float16, labels) from phantoms with large hilar vessels (:data:`HILAR_SETS`), one pair
    per candidate levels of ``level_sets``: of each set only the samples labelled ``keep`` (0: the false
    positives, 1: the nodules and masses, drawn no smaller than the set's minimum diameter)."""
    out: list[tuple[list[np.ndarray], list[np.ndarray]]] = [([], []) for _ in level_sets]
    for seed, n, min_diameter, keep in sets:
        rng = np.random.default_rng(seed)
        for i in range(n):
            case = phantom_case(rng, f"hilar{seed}_{i}", (2, 5), hilar=True, min_diameter=min_diameter)
            slices = [int(k) for k in np.nonzero(case.region.any(axis=(1, 2)))[0]]
            prob = model.probabilities(case.norm, slices)
            for j, levels in enumerate(level_sets):
                x, y = fpr3d_samples([case], model, [prob], levels)
                out[j][0].append(x[y == keep])
                out[j][1].append(y[y == keep])
    return [(np.concatenate(xs), np.concatenate(ys)) for xs, ys in out]


def finetune_fpr3d(
    net: Any,
    x: np.ndarray,
    y: np.ndarray,
    hard: np.ndarray,
    steps: int = 600,
    batch: int = 32,
    lr: float = 3e-4,
    hard_share: int = 6,
    seed: int = 0,
    device: str = "cpu",
) -> Any:
    """Fine-tune a trained FPR3D ``net`` on (``x``, ``y``) as :func:`train_fpr3d` trains (half nodules, same
    augmentation) for ``steps`` batches, with ``hard_share`` of each batch's negatives drawn from the samples
    flagged in ``hard`` (hard negatives, e.g. hilar vessels); AdamW, one-cycle up to ``lr``."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    net = net.to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    pos, neg, hard_neg = np.nonzero(y == 1)[0], np.nonzero((y == 0) & ~hard)[0], np.nonzero((y == 0) & hard)[0]
    if not (len(pos) and len(neg) and len(hard_neg)):
        raise ValueError("finetune_fpr3d needs nodules, negatives and hard negatives")
    shares = (batch // 2, batch - batch // 2 - hard_share, hard_share)
    for _ in range(steps):
        idx = np.concatenate([rng.choice(p, k) for p, k in zip((pos, neg, hard_neg), shares, strict=True)])
        _step(net, opt, sched, _augment3d(rng, x[idx]), y[idx], device)
    return net.eval()


def finetune_with_hilar(
    bundle_dir: Path,
    replay_sets: Sequence[tuple[int, int, int]] = FPR3D_SETS[:2],
    steps: int = 600,
    lr: float = 2e-4,
    hard_share: int = 4,
    hard_logit: float = -1.0,
    blend: float = 0.5,
) -> dict[str, Any]:
    """The 1.10.0 FPR3D fine-tune, in place on ``bundle_dir`` (U-Net and Res-MTNet kept): each member of
    :data:`MEMBERS` is fine-tuned (:func:`finetune_fpr3d`, network seed 10 + member) on its own candidates of
    ``replay_sets`` plus :func:`hilar_samples`, the hilar false positives it gives a logit >= ``hard_logit``
    being the hard negatives; its weights then move only ``blend`` of the way from the old ones to the
    fine-tuned ones. Returns a summary for the metadata."""
    t0 = time.perf_counter()
    device = pick_device()
    model, _ = load_model(bundle_dir, device)
    if model.resmtnet is None or model.fpr3d is None:
        raise ValueError(f"{bundle_dir}: no resmtnet or fpr3d to fine-tune")
    level_sets = [levels for _, levels in MEMBERS]
    extra = hilar_samples(model, level_sets)
    replay: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in MEMBERS]
    for one in replay_sets:
        for case in calibration_cases((one,)):
            slices = [int(k) for k in np.nonzero(case.region.any(axis=(1, 2)))[0]]
            prob = model.probabilities(case.norm, slices)
            for j, levels in enumerate(level_sets):
                replay[j].append(fpr3d_samples([case], model, [prob], levels))
    members = []
    summary: dict[str, Any] = {
        "replay_sets": [list(s) for s in replay_sets],
        "hilar_sets": [list(s) for s in HILAR_SETS],
    }
    for j, old in enumerate(model.fpr3d.members):
        xs, ys = [x for x, _ in replay[j]] + [extra[j][0]], [y for _, y in replay[j]] + [extra[j][1]]
        x, y = np.concatenate(xs), np.concatenate(ys)
        xe, ye = extra[j]
        with torch.no_grad():
            logit = np.concatenate(
                [
                    old.eval()(torch.from_numpy(xe[i : i + 256].astype(np.float32)).to(device)).cpu().numpy()
                    for i in range(0, len(xe), 256)
                ]
            )
        n_hilar_neg = int((ye == 0).sum())
        hard = np.zeros(len(y), dtype=bool)
        hard[len(y) - len(ye) :] = (ye == 0) & (logit >= hard_logit)
        start = {k: v.detach().clone() for k, v in old.state_dict().items()}
        net = finetune_fpr3d(old, x, y, hard, steps, lr=lr, hard_share=hard_share, seed=10 + j, device=device)
        tuned = net.state_dict()
        net.load_state_dict(
            {k: start[k] + blend * (tuned[k] - start[k]) if start[k].is_floating_point() else tuned[k] for k in start}
        )
        members.append(net.eval())
        summary[f"member_{j}"] = {
            "samples": len(y),
            "nodule_samples": int(y.sum()),
            "hilar_negatives": n_hilar_neg,
            "hard_negatives": int(hard.sum()),
        }
    save_networks(bundle_dir, model.unet, model.resmtnet, FPR3DEnsemble(members))
    summary.update(
        steps=steps,
        lr=lr,
        hard_share=hard_share,
        hard_logit=hard_logit,
        blend=blend,
        seconds=round(time.perf_counter() - t0, 1),
    )
    return summary
