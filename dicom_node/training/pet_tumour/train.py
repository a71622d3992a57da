"""Training the 2.5-D tumour U-Net on synthetic PET/CT phantoms (CPU-sized: minutes, not hours).

Batches of 64 x 64 crops of whole slices: 40% centred near a tumour, 30% on physiological uptake (SUV >= 2.5
outside tumours: the hard negatives), the rest anywhere in the body; loss = binary cross-entropy + soft Dice.
The hard negatives are drawn tissue by tissue (each hot tissue of the scan equally likely), so the small ones
that are false calls in practice (brown fat, the injection site and the arm around it) are seen as often as
the liver or the bladder, whose hot voxels outnumber theirs a hundredfold; the tumour crops likewise tumour by
tumour (each tumour of the scan equally likely), so a 6 mm node is seen as often as a 4 cm mass.
No left-right flips: where the heart, liver and bladder lie is part of what tells physiological uptake apart.
The bundle is written every ``save_every`` steps, so an interrupted run leaves a usable network.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dicom_node.pipelines.pet_tumour.model import BUILDER, CHANNELS, CONTEXT, UNET_CHANNELS, ct_channel, suv_channel
from dicom_node.training.pet_tumour.data import TRAIN_SEEDS, load_case, seed_ranges

log = logging.getLogger(__name__)
CROP = 64
LESION_SHARE = 0.4  # crops around a tumour
HOT_SHARE = 0.3  # crops around physiological uptake (SUV >= HOT_SUV outside tumours); the rest anywhere in the body
HOT_SUV = 2.5
VERSION = "1.4.0"


class _Pool:
    """The training cases as float16 channels, with their tumour slices listed."""

    def __init__(self, seeds: Sequence[int], progress: Callable[[str], None]) -> None:
        self.suv: list[np.ndarray] = []
        self.ct: list[np.ndarray] = []
        self.truth: list[np.ndarray] = []
        self.body: list[np.ndarray] = []
        self.hot: list[list[np.ndarray]] = []
        self.tumours: list[list[np.ndarray]] = []
        for seed in seeds:
            case = load_case(seed)
            self.suv.append(suv_channel(case.suv).astype(np.float16))
            self.ct.append(ct_channel(case.ct).astype(np.float16))
            self.truth.append(case.lesions > 0)
            self.tumours.append([np.argwhere(case.lesions == i) for i in np.unique(case.lesions) if i > 0])
            self.body.append(np.argwhere(case.ct > -500)[::50])
            self.hot.append(_hot_by_tissue(case.suv, case.lesions, case.organs) or [self.body[-1]])
            progress(f"case {seed}")

    def sample(self, rng: np.random.Generator, batch: int) -> tuple[np.ndarray, np.ndarray]:
        xs = np.zeros((batch, CHANNELS, CROP, CROP), dtype=np.float32)
        ys = np.zeros((batch, 1, CROP, CROP), dtype=np.float32)
        for b in range(batch):
            i = int(rng.integers(len(self.suv)))
            truth = self.truth[i]
            draw = rng.random()
            if draw < LESION_SHARE and self.tumours[i]:
                pts = self.tumours[i][int(rng.integers(len(self.tumours[i])))]
            elif draw < LESION_SHARE + HOT_SHARE:
                tissues = self.hot[i]  # physiological uptake, one tissue at a time: the hard negatives
                pts = tissues[int(rng.integers(len(tissues)))]
            else:
                pts = self.body[i]
            k, r, c = pts[int(rng.integers(len(pts)))]
            n, rows, cols = truth.shape
            r0 = int(np.clip(r - CROP // 2 + rng.integers(-20, 21), 0, rows - CROP))
            c0 = int(np.clip(c - CROP // 2 + rng.integers(-20, 21), 0, cols - CROP))
            idx = np.clip(np.arange(k - CONTEXT, k + CONTEXT + 1), 0, n - 1)
            window = (slice(r0, r0 + CROP), slice(c0, c0 + CROP))
            xs[b, : 2 * CONTEXT + 1] = self.suv[i][idx][:, window[0], window[1]]
            xs[b, 2 * CONTEXT + 1 :] = self.ct[i][idx][:, window[0], window[1]]
            ys[b, 0] = truth[k][window]
        scale = rng.uniform(0.9, 1.1, size=(batch, 1, 1, 1)).astype(np.float32)  # calibration spread
        xs[:, : 2 * CONTEXT + 1] += np.log(scale) / 3.0
        return xs, ys


def _hot_by_tissue(suv: np.ndarray, lesions: np.ndarray, organs: np.ndarray) -> list[np.ndarray]:
    """Voxels of SUV >= :data:`HOT_SUV` outside tumours, one array per tissue under them (at most 2000 each)."""
    hot = (suv >= HOT_SUV) & (lesions == 0)
    out = []
    for organ in np.unique(organs[hot]):
        pts = np.argwhere(hot & (organs == organ))
        out.append(pts[:: max(1, len(pts) // 2000)])
    return out


def _loss(logits: Any, target: Any) -> Any:
    import torch
    import torch.nn.functional as F

    bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=torch.tensor(3.0))
    p = torch.sigmoid(logits)
    inter = (p * target).sum()
    dice = 1.0 - (2.0 * inter + 1.0) / (p.sum() + target.sum() + 1.0)
    return bce + dice


def save_bundle(bundle: Path, net: Any, meta: dict[str, Any]) -> None:
    """Write ``models/model.pt`` and ``configs/metadata.json`` of the bundle."""
    from dicom_node.networks.bundle import save_state

    kwargs = {"in_channels": CHANNELS, "out_channels": 1, "channels": list(UNET_CHANNELS)}
    save_state(bundle / "models" / "model.pt", {"unet": (BUILDER, kwargs, net)})
    (bundle / "configs").mkdir(parents=True, exist_ok=True)
    (bundle / "configs" / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")


def metadata(steps: int, seconds: float, seeds: Sequence[int], batch: int, history: str = "") -> dict[str, Any]:
    """The bundle's metadata (version, inputs, training record; ``history`` the stages that led to it)."""
    return {
        "name": "pet_tumour",
        "version": VERSION,
        "task": "FDG PET/CT tumour segmentation that leaves physiological uptake out",
        "intended_use": "Research use only, not for diagnosis. FDG PET/CT, adult torso.",
        "networks": ["unet"],
        "threshold": 0.5,
        "inputs": (
            f"{2 * CONTEXT + 1} adjacent axial slices of SUVbw (log1p/3) and of CT on the PET grid "
            "(HU clipped to [-1000, 1000], /500), 4 mm voxels"
        ),
        "training": {
            "data": "synthetic PET/CT phantoms (dicom_node.synth.pet_phantom)",
            "seeds": seed_ranges(seeds),
            "steps": steps,
            "batch": batch,
            "crop": CROP,
            "seconds": round(seconds, 1),
            "history": history,
        },
    }


def train(
    bundle: str | Path,
    *,
    minutes: float = 25.0,
    batch: int = 12,
    seeds: Sequence[int] = TRAIN_SEEDS,
    save_every: int = 100,
    seed: int = 0,
    lr: float = 2e-3,
    resume: str | Path | None = None,
    note: str = "",
    progress: Callable[[str], None] = print,
) -> Path:
    """Train for ``minutes`` of wall time and write the bundle to ``bundle``; ``resume`` (a bundle folder)
    starts from that bundle's weights and adds its steps, seconds and history to the record; ``note`` describes
    this stage in the history."""
    import torch

    from dicom_node.networks.unet2d import build_unet2d
    from dicom_node.training.ct_lung_nodule.runtime import pick_device

    device = pick_device()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    bundle = Path(bundle)
    pool = _Pool(seeds, progress)
    net = build_unet2d(in_channels=CHANNELS, out_channels=1, channels=UNET_CHANNELS).to(device)
    prior_steps, prior_s = 0, 0.0
    if resume is not None:
        from dicom_node.networks.bundle import load_bundle

        before = load_bundle(resume, device)
        net.load_state_dict(before.networks["unet"].state_dict())
        prior_steps = int(before.metadata.get("training", {}).get("steps", 0))
        prior_s = float(before.metadata.get("training", {}).get("seconds", 0.0))
        history = str(before.metadata.get("training", {}).get("history", ""))
    else:
        history = ""
    history = f"{history} {note}".strip()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    start = time.monotonic() - prior_s
    budget = minutes * 60.0 + prior_s
    step = prior_steps
    running = 0.0
    while time.monotonic() - start < budget:
        frac = (time.monotonic() - start - prior_s) / (budget - prior_s)
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * frac)) + 5e-5
        xs, ys = pool.sample(rng, batch)
        net.train()
        logits = net(torch.from_numpy(xs).to(device))
        loss = _loss(logits, torch.from_numpy(ys).to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        value = float(loss.item())
        running = 0.98 * running + 0.02 * value if step > 1 else value
        if step % 25 == 0:
            progress(
                f"step {step} loss {running:.4f} lr {opt.param_groups[0]['lr']:.2e} {time.monotonic() - start:.0f}s"
            )
        if step % save_every == 0:
            save_bundle(bundle, net.eval(), metadata(step, time.monotonic() - start, seeds, batch, history))
    save_bundle(bundle, net.eval(), metadata(step, time.monotonic() - start, seeds, batch, history))
    progress(f"done: {step} steps in {time.monotonic() - start:.0f}s -> {bundle}")
    return bundle
