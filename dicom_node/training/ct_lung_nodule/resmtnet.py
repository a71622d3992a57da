"""Res-MTNet of the CT nodule bundle: its training patches (U-Net candidates, jittered truth masks and
extra rendered nodules) and its joint training (nodule vs. false positive, malignancy, composition, diameter)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from dicom_node.imaging.series import normalize_hu
from dicom_node.networks.resmtnet import build_resmtnet
from dicom_node.pipelines.ct_lung_nodule import COMPOSITIONS, PATCH, NoduleModel, extract_patch, long_short_axes
from dicom_node.synth.ct_nodule import blend, random_spec, render_occupancy
from dicom_node.training.ct_lung_nodule.data import Case, augment2d, match_truths
from dicom_node.training.ct_lung_nodule.runtime import progress_bar


def _jittered_mask(gt: np.ndarray, key_slice: int, rng: np.random.Generator) -> np.ndarray:
    """``gt`` as an imperfect outline would give it: dilated (1 in 4), eroded (1 in 4, unless that
    empties the key slice) or as is."""
    r = rng.random()
    if r < 0.25:
        return np.asarray(ndi.binary_dilation(gt))
    if r < 0.5:
        eroded = np.asarray(ndi.binary_erosion(gt))
        return eroded if eroded[key_slice].any() else gt
    return gt


def mtnet_samples(
    cases: list[Case], model: NoduleModel, rng: np.random.Generator, progress: bool
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Patches and targets for Res-MTNet: U-Net candidates (hard negatives and detected nodules) and the
    truth masks (jittered) of every nodule."""
    patches: list[np.ndarray] = []
    targets: dict[str, list[float]] = {"nodule": [], "malignant": [], "composition": [], "diameter": []}

    def add(p: np.ndarray, nodule: int, mal: float, comp: float, diam: float) -> None:
        patches.append(p)
        targets["nodule"].append(nodule)
        targets["malignant"].append(mal)
        targets["composition"].append(comp)
        targets["diameter"].append(diam)

    for case in progress_bar(cases, progress, desc="mining", leave=False):
        cands = model.detect(case.norm, case.region, case.spacing, exact=True)
        truth_by_index = {t.index: t for t in case.truths}
        for c, m in zip(cands, match_truths(cands, case), strict=True):
            if m < 0:
                continue
            p = extract_patch(case.norm, c.plane(c.center[0]), *c.center)
            if m == 0:
                add(p, 0, -1, -1, 0.0)
            else:
                t = truth_by_index[m]
                add(p, 1, t.malignant, t.composition, t.diameter)
        for t in case.truths:
            gt = case.labels == t.index
            for _ in range(3):
                mask = _jittered_mask(gt, t.key_slice, rng)
                k = t.key_slice
                cy = t.center[1] + int(rng.integers(-2, 3))
                cx = t.center[2] + int(rng.integers(-2, 3))
                add(extract_patch(case.norm, mask[k], k, cy, cx), 1, t.malignant, t.composition, t.diameter)
    arr = np.stack(patches) if patches else np.zeros((0, 4, PATCH, PATCH), np.float32)
    return arr, {k: np.asarray(v, dtype=np.float32) for k, v in targets.items()}


def synthetic_nodule_patches(
    cases: list[Case], rng: np.random.Generator, n: int, progress: bool = False
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``n`` extra Res-MTNet training patches: a random nodule rendered into the lung of a random case
    (phantom or real-inserted background), its truth mask on the key slice as the mask channel."""
    patches: list[np.ndarray] = []
    targets: dict[str, list[float]] = {"nodule": [], "malignant": [], "composition": [], "diameter": []}
    free = [np.argwhere(c.region & (c.labels == 0) & (c.hu < -500)) for c in cases]
    bar = progress_bar(range(n * 3), progress, desc="nodule patches", leave=False)
    for _ in bar:
        if len(patches) >= n:
            break
        ci = int(rng.integers(len(cases)))
        case = cases[ci]
        if len(free[ci]) == 0:
            continue
        k, cy, cx = (int(v) for v in free[ci][int(rng.integers(len(free[ci])))])
        spec = random_spec(rng, (0.0, 0.0, 0.0))
        dz, dy, dx = case.spacing
        half_z = int(np.ceil((spec.radius * 1.5 + dz) / dz)) + 1
        z0, z1 = max(k - half_z, 0), min(k + half_z + 1, case.hu.shape[0])
        y0, y1 = max(cy - PATCH // 2, 0), min(cy + PATCH // 2, case.hu.shape[1])
        x0, x1 = max(cx - PATCH // 2, 0), min(cx + PATCH // 2, case.hu.shape[2])
        z = (np.arange(z0, z1) + 0.5) * dz
        y = (np.arange(y0, y1) + 0.5) * dy
        x = (np.arange(x0, x1) + 0.5) * dx
        spec.center = (
            float((k + 0.5) * dz + rng.uniform(-0.4, 0.4) * dz),
            float((cy + 0.5) * dy),
            float((cx + 0.5) * dx),
        )
        occ, core, calc = render_occupancy(spec, z, y, x, dz)
        box = (slice(z0, z1), slice(y0, y1), slice(x0, x1))
        lung = ndi.binary_dilation(case.region[box], iterations=1).astype(np.float32)
        occ, core, calc = occ * lung, core * lung, calc * lung
        gt = occ >= 0.5
        if not gt.any():
            continue
        hu = blend(case.hu[box].copy(), spec, occ, core, calc)
        hu += (rng.normal(0.0, rng.uniform(5.0, 30.0), size=hu.shape) * occ).astype(np.float32)
        areas = gt.reshape(gt.shape[0], -1).sum(axis=1)
        kk = int(np.argmax(areas))
        rr, cc = np.nonzero(gt[kk])
        mask = _jittered_mask(gt, kk, rng)
        patch = extract_patch(normalize_hu(hu), mask[kk], kk, int(rr.mean()), int(cc.mean()))
        patches.append(patch)
        targets["nodule"].append(1)
        targets["malignant"].append(int(spec.malignant))
        targets["composition"].append(COMPOSITIONS.index(spec.composition))
        targets["diameter"].append(long_short_axes(gt[kk], (dy, dx))[0])
    arr = np.stack(patches) if patches else np.zeros((0, 4, PATCH, PATCH), np.float32)
    return arr, {k: np.asarray(v, dtype=np.float32) for k, v in targets.items()}


def train_resmtnet(
    patches: np.ndarray,
    targets: dict[str, np.ndarray],
    steps: int,
    seed: int,
    device: str,
    progress: bool,
    stem_stride: int = 1,
) -> Any:
    """Joint training: nodule-vs-FP and malignancy (BCE), composition (CE), diameter (smooth L1)."""
    torch.manual_seed(seed)
    net = build_resmtnet(stem_stride=stem_stride).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=max(steps, 1), pct_start=0.1)
    rng = np.random.default_rng(seed + 2)
    n = len(patches)
    pos = np.nonzero(targets["nodule"] > 0)[0]
    neg = np.nonzero(targets["nodule"] == 0)[0]
    net.train()
    for _ in progress_bar(range(steps), progress, desc="Res-MTNet", leave=False):
        if n == 0:
            break
        half = 32
        idx = np.concatenate(
            [
                rng.choice(pos, half) if len(pos) else rng.integers(n, size=half),
                rng.choice(neg, half) if len(neg) else rng.integers(n, size=half),
            ]
        )
        batch = np.stack([augment2d(rng, patches[i])[0] for i in idx])
        batch[:, :3] = batch[:, :3] * rng.uniform(0.95, 1.05) + rng.normal(0, 0.01, size=batch[:, :3].shape)
        x = torch.from_numpy(batch.astype(np.float32)).to(device)
        t = {k: torch.from_numpy(v[idx]).to(device) for k, v in targets.items()}
        out = net(x)
        loss = F.binary_cross_entropy_with_logits(out["nodule"], t["nodule"])
        known = (t["nodule"] > 0) & (t["malignant"] >= 0)
        if known.any():
            loss = loss + F.binary_cross_entropy_with_logits(out["malignancy"][known], t["malignant"][known])
        known_c = (t["nodule"] > 0) & (t["composition"] >= 0)
        if known_c.any():
            loss = loss + F.cross_entropy(out["composition"][known_c], t["composition"][known_c].long())
        known_d = t["nodule"] > 0
        if known_d.any():
            loss = loss + 0.5 * F.smooth_l1_loss(out["diameter"][known_d] / 5.0, t["diameter"][known_d] / 5.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()
