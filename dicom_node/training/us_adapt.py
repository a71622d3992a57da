"""Adapt the lung-US bundle to real frames: pseudo-labelled segmentation and weakly labelled classes.

Only the ``train`` part of the real split is used. The U-Net is fine-tuned from the shipped weights
on a mix of real frames (labels from :func:`dicom_node.training.us_pseudo.pseudo_label`,
cross-entropy that ignores the unlabelled pixels) and synthetic frames (Dice + cross-entropy, so the
synthetic skills - ribs, B-lines - are kept). The classifier is then fine-tuned on real frames that
carry their clip's labels (weak labels: every frame of a clip gets the clip's class; level 2 only
where the clip says which abnormality) mixed with synthetic frames.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import UNet

from dicom_node.imaging.us import load_us
from dicom_node.networks.us_lung import HierarchicalClassifier
from dicom_node.synth.us_lung import generate_set
from dicom_node.training.us_lung import _batches, _optimiser, augment
from dicom_node.training.us_pseudo import IGNORE, pseudo_label
from dicom_node.training.us_real_data import RealClip, read_clips, write_clip

logger = logging.getLogger(__name__)

NO_LABEL = -1


@dataclass
class RealSet:
    """Real training frames at the network size: images (n, 1, H, W), pseudo-labels, level-1/-2 targets."""

    images: np.ndarray
    labels: np.ndarray
    has_labels: np.ndarray
    level1: np.ndarray
    level2: np.ndarray


COMMENT_LABELS: dict[str, tuple[int, int]] = {
    "Cov_Oliviera_2020_Fig14.jpg": (1, 1),  # "Pleural thickening and irregularities, subpleural consolidation"
    "Cov_Oliviera_2020_Fig5A.jpg": (1, 0),  # "B-lines"
    "Cov_Oliviera_2020_Fig16.jpg": (1, -1),  # "Quite zoomed indeed. Irregular pleura"
    "Pneu_emdocs_1.png": (1, 1),  # "Consolidation, highly artefacted"
}
"""Training-part images whose label columns are empty but whose physician comment names the finding
(used for training only; the evaluation's truth comes from the label columns alone)."""


def clip_targets(clip: RealClip) -> tuple[int, int]:
    """(level 1, level 2) of a clip: 0 normal / 1 abnormal, and 0 B-lines / 1 consolidation / 2 effusion.

    :data:`NO_LABEL` where the labels do not say (e.g. an abnormal clip with only pleural irregularity).
    """
    if clip.part == "train" and clip.name in COMMENT_LABELS:
        return COMMENT_LABELS[clip.name]
    abnormal = clip.abnormal
    if abnormal is None:
        return NO_LABEL, NO_LABEL
    if not abnormal:
        return 0, NO_LABEL
    for index, key in enumerate(("b_lines", "consolidation", "effusion")):
        if clip.findings[key] == 1:
            return 1, index
    return 1, NO_LABEL


def _resize(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))[:, None]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).numpy()


def real_set(dicom_dir: Path, size: tuple[int, int] = (128, 128), frames: int = 16, part: str = "train") -> RealSet:
    """Frames of every clip of ``part``, loaded like the pipeline loads them, with pseudo- and clip labels."""
    images, labels, has, l1, l2 = [], [], [], [], []
    for clip in read_clips():
        if clip.part != part:
            continue
        x = _resize(load_us([write_clip(clip, dicom_dir, frames)]).pixels, size)
        target1, target2 = clip_targets(clip)
        below_clear = clip.findings["b_lines"] == 0 and clip.abnormal is False
        for frame in x:
            lab = pseudo_label(frame[0], below_is_background=below_clear)
            images.append(frame)
            labels.append(lab if lab is not None else np.full(size, IGNORE, dtype=np.uint8))
            has.append(lab is not None)
            l1.append(target1)
            l2.append(target2)
    return RealSet(
        np.stack(images).astype(np.float32),
        np.stack(labels).astype(np.int64),
        np.asarray(has),
        np.asarray(l1, dtype=np.int64),
        np.asarray(l2, dtype=np.int64),
    )


def _say(progress: bool, message: str) -> None:
    logger.info(message)
    if progress:
        print(f"[us-adapt] {message}", file=sys.stderr, flush=True)


def adapt_segmentation(
    unet: UNet, real: RealSet, synth: tuple[np.ndarray, np.ndarray], steps: int, batch: int, seed: int, progress: bool
) -> None:
    """Fine-tune ``unet`` in place on half real (pseudo-labelled) and half synthetic frames per batch."""
    from monai.losses import DiceCELoss

    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
    weights = torch.tensor([1.0, 1.0, 3.0, 1.0])
    idx_real = np.flatnonzero(real.has_labels)
    rx, ry = torch.from_numpy(real.images[idx_real]), torch.from_numpy(real.labels[idx_real])
    sx, sy = torch.from_numpy(synth[0]), torch.from_numpy(synth[1])
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    opt, sched = _optimiser(unet.parameters(), steps, 1e-3)
    half = batch // 2
    unet.train()
    real_batches = iter(_batches(len(rx), half, steps, rng))
    for step, s_idx in enumerate(_batches(len(sx), half, steps, rng)):
        r_idx = next(real_batches)
        xr, yr = augment(rx[r_idx], ry[r_idx], gen)
        xs, ys = augment(sx[s_idx], sy[s_idx], gen)
        assert yr is not None and ys is not None
        loss = F.cross_entropy(unet(xr), yr, weight=weights, ignore_index=IGNORE) + dice_ce(unet(xs), ys[:, None])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()  # type: ignore[attr-defined]
        if step % 50 == 0:
            _say(progress, f"segmentation step {step}/{steps}: loss {float(loss.detach()):.3f}")
    unet.eval()


def adapt_classifier(
    model: HierarchicalClassifier,
    real: RealSet,
    synth: tuple[np.ndarray, np.ndarray],
    steps: int,
    batch: int,
    seed: int,
    progress: bool,
) -> None:
    """Fine-tune the hierarchical classifier in place on weakly labelled real frames plus synthetic frames."""
    keep = np.flatnonzero(real.level1 != NO_LABEL)
    rx = torch.from_numpy(real.images[keep])
    r1, r2 = torch.from_numpy(real.level1[keep]), torch.from_numpy(real.level2[keep])
    sx, sc = torch.from_numpy(synth[0]), synth[1]
    s1 = torch.from_numpy((sc > 0).astype(np.int64))
    s2 = torch.from_numpy(np.where(sc > 0, sc - 1, NO_LABEL).astype(np.int64))
    counts = np.bincount(real.level1[keep], minlength=2).astype(float)
    w1 = torch.tensor(counts.sum() / (2.0 * np.maximum(counts, 1.0)), dtype=torch.float32)
    rng = np.random.default_rng(seed + 1)
    gen = torch.Generator().manual_seed(seed + 1)
    opt, sched = _optimiser(model.parameters(), steps, 1e-3)
    half = batch // 2
    model.train()
    real_batches = iter(_batches(len(rx), half, steps, rng))
    for step, s_idx in enumerate(_batches(len(sx), half, steps, rng)):
        r_idx = torch.from_numpy(next(real_batches))
        s_idx_t = torch.from_numpy(s_idx)
        x, _ = augment(torch.cat([rx[r_idx], sx[s_idx_t]]), None, gen)
        t1 = torch.cat([r1[r_idx], s1[s_idx_t]])
        t2 = torch.cat([r2[r_idx], s2[s_idx_t]])
        l1, l2 = model(x)
        real_part = slice(0, len(r_idx))
        loss = F.cross_entropy(l1[real_part], t1[real_part], weight=w1) + F.cross_entropy(
            l1[len(r_idx) :], t1[len(r_idx) :]
        )
        if (t2 != NO_LABEL).any():
            loss = loss + F.cross_entropy(l2, t2, ignore_index=NO_LABEL)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()  # type: ignore[attr-defined]
        if step % 50 == 0:
            _say(progress, f"classifier step {step}/{steps}: loss {float(loss.detach()):.3f}")
    model.eval()


def synthetic_set(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic frames (images, labels, classes) as in the shipped training."""
    return generate_set(n, seed=seed)


ADAPTED_VERSION = "0.2.0"


def adapt_bundle(
    source: Path,
    out: Path,
    dicom_dir: Path,
    seg_steps: int = 400,
    cls_steps: int = 300,
    batch: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Fine-tune the bundle in ``source`` on the real training part and write the result to ``out``.

    ``out`` gets the source's configs/ and docs/ (the card is rewritten separately) and new weights;
    its metadata version becomes :data:`ADAPTED_VERSION`.
    """
    import copy
    import json
    import shutil

    from dicom_node.networks.us_infer import METADATA_FILE, MODEL_FILE, LungUsModel

    torch.manual_seed(seed)
    source, out = Path(source), Path(out)
    model = LungUsModel.load(source, "cpu")
    size = model.config.input_size
    real = real_set(Path(dicom_dir), size)
    _say(progress, f"real training frames: {len(real.images)}, pseudo-labelled {int(real.has_labels.sum())}")
    sx, sy, sc = synthetic_set(400, seed=seed + 3)
    unet = model.unet.train()
    adapt_segmentation(unet, real, (sx, sy), seg_steps, batch, seed, progress)
    classifier = model.classifier
    adapt_classifier(classifier, real, (sx, sc), cls_steps, batch, seed, progress)
    if out.resolve() != source.resolve():
        shutil.copytree(source, out, dirs_exist_ok=True)
    state = {
        "config": model.config.to_json(),
        "unet": copy.deepcopy(unet.state_dict()),
        "classifier": copy.deepcopy(classifier.state_dict()),
    }
    torch.save(state, out / MODEL_FILE)
    meta_path = out / METADATA_FILE
    meta = json.loads(meta_path.read_text())
    meta["version"] = ADAPTED_VERSION
    meta["description"] = (
        "Trained on synthetic lung-US frames, then fine-tuned on the training part of the real POCUS clips "
        "(pseudo-labelled pleural line, clip-level weak labels). Research use, not for diagnosis."
    )
    history = list(meta.get("adaptation", [])) if isinstance(meta.get("adaptation"), list) else []
    history.append({"from": str(source), "seg_steps": seg_steps, "cls_steps": cls_steps, "batch": batch, "seed": seed})
    meta["adaptation"] = history
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return out
