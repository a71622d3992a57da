"""The 2.5-D U-Net of the CT nodule bundle: positive-aware patch sampling, loss and training."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dicom_node.imaging.series import stack_25d
from dicom_node.networks.unet2d import build_unet2d
from dicom_node.training.ct_lung_nodule.data import Case, augment2d
from dicom_node.training.ct_lung_nodule.runtime import progress_bar

UNET_PATCH = 96


def _patch2d(arr: np.ndarray, cy: int, cx: int, size: int) -> np.ndarray:
    """(C, size, size) crop of (C, H, W) centred at (cy, cx), zero padded."""
    c, h, w = arr.shape
    out = np.zeros((c, size, size), dtype=arr.dtype)
    y0, x0 = cy - size // 2, cx - size // 2
    ys, xs, ye, xe = max(y0, 0), max(x0, 0), min(y0 + size, h), min(x0 + size, w)
    if ye > ys and xe > xs:
        out[:, ys - y0 : ye - y0, xs - x0 : xe - x0] = arr[:, ys:ye, xs:xe]
    return out


class UnetSampler:
    """Positive-aware 2.5-D patch sampler: a share of patches centred near nodules, the rest in the lungs
    (half of those on dense structures: vessels, fissures, the heart border)."""

    def __init__(self, cases: list[Case], rng: np.random.Generator, positive_fraction: float = 0.5) -> None:
        self.cases = cases
        self.rng = rng
        self.positive_fraction = positive_fraction
        self.region_idx = [np.argwhere(c.region) for c in cases]
        self.dense_idx = [np.argwhere(c.region & (c.hu > -500)) for c in cases]
        self.inputs = [stack_25d(c.norm) for c in cases]
        self.positives = [{t.index: np.argwhere(c.labels == t.index) for t in c.truths} for c in cases]

    def sample(self, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(inputs (B, 3, P, P), targets (B, 1, P, P), weights (B, 1, P, P))."""
        xs: list[np.ndarray] = []
        ys: list[np.ndarray] = []
        ws: list[np.ndarray] = []
        rng = self.rng
        while len(xs) < batch:
            ci = int(rng.integers(len(self.cases)))
            case = self.cases[ci]
            if case.truths and rng.random() < self.positive_fraction:
                t = case.truths[int(rng.integers(len(case.truths)))]
                vox = self.positives[ci][t.index]
                k, cy, cx = vox[int(rng.integers(len(vox)))]
                cy += int(rng.integers(-30, 31))
                cx += int(rng.integers(-30, 31))
            else:
                pool = self.dense_idx[ci] if rng.random() < 0.5 and len(self.dense_idx[ci]) else self.region_idx[ci]
                if len(pool) == 0:
                    continue
                k, cy, cx = pool[int(rng.integers(len(pool)))]
            x = _patch2d(self.inputs[ci][k], int(cy), int(cx), UNET_PATCH)
            lab = _patch2d(case.labels[k][None], int(cy), int(cx), UNET_PATCH)
            x, lab = augment2d(rng, x, lab)
            x = x * rng.uniform(0.94, 1.06) + rng.uniform(-0.03, 0.03)
            x = x + rng.normal(0.0, rng.uniform(0.0, 0.02), size=x.shape)
            xs.append(x.astype(np.float32))
            ys.append((lab > 0).astype(np.float32))
            ws.append((lab >= 0).astype(np.float32))
        return np.stack(xs), np.stack(ys), np.stack(ws)


def _seg_loss(logits: Any, target: Any, weight: Any) -> Any:
    """Focal BCE + soft Dice, both masked by ``weight`` (0 = ignore)."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    pt = p * target + (1 - p) * (1 - target)
    alpha = 0.75 * target + 0.25 * (1 - target)
    focal = (alpha * (1 - pt) ** 2 * bce * weight).sum() / weight.sum().clamp(min=1.0)
    inter = (p * target * weight).sum()
    denom = (p * weight).sum() + (target * weight).sum()
    dice = 1 - (2 * inter + 1.0) / (denom + 1.0)
    return 10.0 * focal + dice


def train_unet(cases: list[Case], steps: int, seed: int, device: str, progress: bool) -> Any:
    """Train the 2.5-D U-Net on positive-aware patches; returns the network (eval mode)."""
    torch.manual_seed(seed)
    net = build_unet2d().to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=max(steps, 1), pct_start=0.1)
    sampler = UnetSampler(cases, np.random.default_rng(seed + 1))
    scaler = torch.amp.GradScaler("cuda", enabled=device == "cuda")
    net.train()
    bar = progress_bar(range(steps), progress, desc="U-Net", leave=False)
    ema = None
    for _ in bar:
        x, y, w = (torch.from_numpy(a).to(device) for a in sampler.sample(16))
        with torch.autocast("cuda", enabled=device == "cuda"):
            logits = net(x)
        loss = _seg_loss(logits.float(), y, w)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        ema = float(loss) if ema is None else 0.98 * ema + 0.02 * float(loss)
        if progress and hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{ema:.3f}")
    return net.eval()
