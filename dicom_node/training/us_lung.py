"""Train and evaluate the lung-US bundle, including the transfer-learning comparison.

``train`` (1) pre-trains the two source models on scikit-image's bundled photographs (whole U-Net on
salient-object segmentation; encoder on photograph recognition), (2) runs the comparison table
(scratch / encoder transfer / whole-network transfer, freezing none / part / all of the encoder,
training sets of 25 / 50 / 100 / 200 synthetic frames, with and without augmentation; every run
has the same number of optimiser steps and is scored on the same synthetic validation frames),
(3) trains the shipped U-Net with the best initialisation on more frames, (4) trains the
hierarchical classifier from that U-Net's encoder, and (5) writes the bundle and its model card
with the numbers that :func:`evaluate` measures on held-out synthetic frames and cines.
"""

from __future__ import annotations

import copy
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import UNet
from torch import nn

from dicom_node.networks.us_infer import CLASS_NAMES, METADATA_FILE, MODEL_FILE, LungUsModel
from dicom_node.networks.us_lung import (
    Encoder,
    HierarchicalClassifier,
    NetConfig,
    build_unet,
    classifier_from_unet,
    encoder_blocks,
    encoder_parameter_names,
    freeze_encoder,
)
from dicom_node.synth.us_lung import PATTERNS, generate, generate_set
from dicom_node.synth.us_salient import recognition_set, salient_set

logger = logging.getLogger(__name__)

VERSION = "0.1.0"
INITS = ("scratch", "encoder", "whole")


@dataclass(frozen=True)
class Budget:
    """Sizes and step counts; ``quick`` shrinks everything to a seconds-long smoke run."""

    pretrain_steps: int = 400
    table_steps: int = 200
    long_steps: int = 600
    table_sizes: tuple[int, ...] = (25, 50, 100, 200)
    val_frames: int = 120
    final_frames: int = 800
    final_steps: int = 1200
    cls_frames: int = 800
    cls_steps: int = 900
    batch: int = 16
    eval_frames: int = 200
    eval_cines: int = 12
    cine_frames: int = 16


QUICK = Budget(
    pretrain_steps=3,
    table_steps=3,
    long_steps=6,
    table_sizes=(8, 16),
    val_frames=8,
    final_frames=16,
    final_steps=4,
    cls_frames=16,
    cls_steps=4,
    batch=4,
    eval_frames=8,
    eval_cines=2,
    cine_frames=4,
)


def _say(progress: bool, message: str) -> None:
    logger.info(message)
    if progress:
        print(f"[us-lung] {message}", file=sys.stderr, flush=True)


def augment(x: torch.Tensor, y: torch.Tensor | None, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Flip, zoom/shift, gain, gamma and noise on a batch (labels follow the geometry)."""
    n = x.shape[0]
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if y is not None:
        y = torch.where(flip[:, None, None], y.flip(-1), y)
    scale = 1.0 - 0.25 * torch.rand(n, generator=gen)
    shift = (torch.rand(n, 2, generator=gen) - 0.5) * 0.2
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = scale
    theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if y is not None:
        y = F.grid_sample(y[:, None].float(), grid, mode="nearest", align_corners=False)[:, 0].long()
    gain = 0.7 + 0.6 * torch.rand(n, 1, 1, 1, generator=gen)
    gamma = 0.7 + 0.7 * torch.rand(n, 1, 1, 1, generator=gen)
    noise = 0.04 * torch.rand(n, 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen)
    x = (x.clamp(0, 1) ** gamma * gain + noise).clamp(0, 1)
    return x, y


def _batches(n: int, batch: int, steps: int, rng: np.random.Generator) -> Iterable[np.ndarray]:
    order = np.array([], dtype=np.int64)
    for _ in range(steps):
        if len(order) < batch:
            order = np.concatenate([order, rng.permutation(n)])
        idx, order = order[:batch], order[batch:]
        yield idx


def _optimiser(params: Iterable[nn.Parameter], steps: int, lr: float) -> tuple[torch.optim.Optimizer, object]:
    opt = torch.optim.AdamW([p for p in params if p.requires_grad], lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 2), pct_start=0.15)
    return opt, sched


def train_segmentation(
    unet: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    steps: int,
    batch: int,
    seed: int,
    augmentation: bool = True,
    lr: float = 3e-3,
) -> list[float]:
    """Optimise a U-Net with Dice + cross-entropy; returns the loss per step."""
    from monai.losses import DiceCELoss

    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    opt, sched = _optimiser(unet.parameters(), steps, lr)
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels)
    unet.train()
    losses: list[float] = []
    for idx in _batches(len(images), batch, steps, rng):
        x, y = x_all[idx], y_all[idx]
        if augmentation:
            x, y_aug = augment(x, y, gen)
            assert y_aug is not None
            y = y_aug
        loss = loss_fn(unet(x), y[:, None])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()  # type: ignore[attr-defined]
        losses.append(float(loss.detach()))
    unet.eval()
    return losses


def dice_scores(pred: np.ndarray, truth: np.ndarray, labels: Iterable[int] = (1, 2, 3)) -> dict[int, float]:
    """Mean per-frame Dice of each label over the frames whose ground truth contains it."""
    out: dict[int, float] = {}
    for label in labels:
        scores = []
        for p, t in zip(pred, truth, strict=True):
            tm = t == label
            if not tm.any():
                continue
            pm = p == label
            scores.append(2.0 * float((pm & tm).sum()) / float(pm.sum() + tm.sum()))
        out[label] = float(np.mean(scores)) if scores else float("nan")
    return out


@torch.no_grad()
def _segment(unet: nn.Module, images: np.ndarray, batch: int = 32) -> np.ndarray:
    unet.eval()
    out = [unet(torch.from_numpy(images[i : i + batch])).argmax(1).numpy() for i in range(0, len(images), batch)]
    return np.concatenate(out).astype(np.uint8)


def pretrain_whole(
    config: NetConfig, budget: Budget, seed: int, progress: bool
) -> tuple[dict[str, torch.Tensor], float]:
    """Whole U-Net on grayscale salient-object segmentation (3 labels); its state dict and object Dice."""
    images, labels = salient_set(max(64, budget.table_sizes[-1] * 2), seed=seed + 11)
    unet = build_unet(config, out_channels=3)
    losses = train_segmentation(unet, images, labels, budget.pretrain_steps, budget.batch, seed, True)
    val_x, val_y = salient_set(32, seed=seed + 12)
    d = dice_scores(_segment(unet, val_x), val_y, (1, 2))
    _say(progress, f"pre-trained whole U-Net (salient objects): loss {losses[-1]:.3f}, object Dice {d[1]:.3f}")
    return unet.state_dict(), d[1]


def pretrain_encoder(
    config: NetConfig, budget: Budget, seed: int, progress: bool
) -> tuple[dict[str, torch.Tensor], float]:
    """U-Net encoder on photograph recognition; a U-Net state dict (encoder entries only) and accuracy."""
    images, classes = recognition_set(max(64, budget.table_sizes[-1] * 3), seed=seed + 21)
    n_classes = int(classes.max()) + 1
    unet = build_unet(config)
    encoder = Encoder(encoder_blocks(unet))
    head = nn.Linear(encoder.out_channels, n_classes)
    model = nn.Sequential(encoder, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    opt, sched = _optimiser(model.parameters(), budget.pretrain_steps, 3e-3)
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(classes)
    model.train()
    for idx in _batches(len(images), budget.batch, budget.pretrain_steps, rng):
        x, _ = augment(x_all[idx], None, gen)
        loss = F.cross_entropy(model(x), y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()  # type: ignore[attr-defined]
    model.eval()
    vx, vy = recognition_set(64, seed=seed + 22)
    with torch.no_grad():
        acc = float((model(torch.from_numpy(vx)).argmax(1).numpy() == vy).mean())
    _say(progress, f"pre-trained encoder (photograph recognition, {n_classes} classes): accuracy {acc:.3f}")
    names = encoder_parameter_names(unet)
    return {k: v for k, v in unet.state_dict().items() if k in names}, acc


def transfer(unet: UNet, source: dict[str, torch.Tensor]) -> int:
    """Copy every tensor of ``source`` whose name and shape match; returns how many were copied."""
    target = unet.state_dict()
    matched = {k: v for k, v in source.items() if k in target and target[k].shape == v.shape}
    target.update(matched)
    unet.load_state_dict(target)
    return len(matched)


@dataclass
class TableRow:
    init: str
    freeze: str
    n_train: int
    augmentation: bool
    rib_dice: float
    pleura_dice: float
    b_line_dice: float
    seconds: float


def _table_specs(sizes: tuple[int, ...]) -> list[tuple[str, str, int, bool]]:
    biggest = sizes[-1]
    specs = [(init, "none", n, True) for n in sizes for init in INITS]
    specs += [(init, freeze, biggest, True) for init in ("encoder", "whole") for freeze in ("part", "all")]
    specs += [(init, "none", biggest, False) for init in INITS]
    return specs


def _initialised(config: NetConfig, init: str, freeze: str, sources: dict[str, dict[str, torch.Tensor]]) -> UNet:
    unet = build_unet(config)
    if init != "scratch":
        transfer(unet, sources[init])
        freeze_encoder(unet, freeze)
    return unet


def comparison_table(
    config: NetConfig,
    budget: Budget,
    seed: int,
    sources: dict[str, dict[str, torch.Tensor]],
    progress: bool,
    specs: list[tuple[str, str, int, bool]] | None = None,
    steps: int | None = None,
) -> list[TableRow]:
    """Every run: same steps, training frames from one pool (the first n), scored on the same validation.

    ``specs`` (init, freeze, n, augmentation) default to the full comparison; ``steps`` to the table's.
    """
    pool_x, pool_y, _ = generate_set(budget.table_sizes[-1], seed=seed + 1)
    val_x, val_y, _ = generate_set(budget.val_frames, seed=seed + 2)
    rows: list[TableRow] = []
    for init, freeze, n, aug in specs if specs is not None else _table_specs(budget.table_sizes):
        start = time.perf_counter()
        unet = _initialised(config, init, freeze, sources)
        train_segmentation(unet, pool_x[:n], pool_y[:n], steps or budget.table_steps, budget.batch, seed, aug)
        d = dice_scores(_segment(unet, val_x), val_y)
        row = TableRow(init, freeze, n, aug, d[1], d[2], d[3], time.perf_counter() - start)
        rows.append(row)
        _say(
            progress,
            f"table {init:8s} freeze={freeze:4s} n={n:3d} aug={aug!s:5s}: rib {d[1]:.3f} "
            f"pleura {d[2]:.3f} b-line {d[3]:.3f} ({row.seconds:.0f} s)",
        )
    return rows


def train_classifier(
    unet: UNet | None,
    config: NetConfig,
    images: np.ndarray,
    classes: np.ndarray,
    steps: int,
    batch: int,
    seed: int,
) -> HierarchicalClassifier:
    """Hierarchical classifier; its encoder starts from ``unet``'s (or from scratch when ``None``)."""
    source = unet if unet is not None else build_unet(config)
    model = classifier_from_unet(source, hidden=config.hidden)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    enc = list(model.encoder.parameters())
    enc_ids = {id(p) for p in enc}
    heads = [p for p in model.parameters() if id(p) not in enc_ids]
    lr = 2e-3
    opt = torch.optim.AdamW([{"params": enc, "lr": lr / 3}, {"params": heads, "lr": lr}], weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[lr / 3, lr], total_steps=max(steps, 2))
    x_all = torch.from_numpy(images)
    abnormal = torch.from_numpy(classes > 0).long()
    sub = torch.from_numpy(np.clip(classes - 1, 0, None))
    model.train()
    for idx in _batches(len(images), batch, steps, rng):
        x, _ = augment(x_all[idx], None, gen)
        l1, l2 = model(x)
        loss = F.cross_entropy(l1, abnormal[idx])
        mask = abnormal[idx] == 1
        if mask.any():
            loss = loss + F.cross_entropy(l2[mask], sub[idx][mask])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return model


def classification_scores(probs: np.ndarray, classes: np.ndarray) -> dict[str, float]:
    """Level-1 (normal vs abnormal), level-2 (among truly abnormal frames) and 4-class accuracy."""
    pred = probs.argmax(1)
    level1 = float(((pred > 0) == (classes > 0)).mean())
    ab = classes > 0
    level2 = float((probs[ab][:, 1:].argmax(1) == classes[ab] - 1).mean()) if ab.any() else float("nan")
    return {
        "level1_accuracy": level1,
        "level2_accuracy": level2,
        "four_class_accuracy": float((pred == classes).mean()),
    }


TABLE_CONFIG = NetConfig(strides=(2, 2, 2, 2))
"""The comparison table's network: the shipped one with a stride-2 first level (4x cheaper per step)."""


def train(
    bundle_dir: Path, seed: int = 0, quick: bool = False, progress: bool = True, reuse_table: bool = False
) -> dict[str, object]:
    """Pre-train, compare transfer strategies, train the shipped models and write the bundle.

    The comparison table runs on :data:`TABLE_CONFIG`; the shipped U-Net (:class:`NetConfig`
    defaults, full-resolution first level) starts from the table's best initialisation at the
    largest training size (pre-trained again for its own shape when that is not "scratch").

    Args:
        bundle_dir: the bundle folder (``models/us_lung``); configs/, models/ and docs/ are written.
        seed: seeds data generation, initialisation and batching.
        quick: a seconds-long smoke run with tiny sets (for CI; not a usable model).
        progress: print progress lines to stderr.
        reuse_table: keep the comparison already in ``docs/table.json`` instead of re-running it.

    Returns:
        The evaluation metrics (as :func:`evaluate` returns them) plus ``table`` and timings.
    """
    torch.manual_seed(seed)
    budget = QUICK if quick else Budget()
    config = NetConfig()
    bundle_dir = Path(bundle_dir)
    record_path = bundle_dir / "docs" / "table.json"
    t0 = time.perf_counter()
    reused = reuse_table and record_path.is_file()
    if reused:
        table, long_rows, pretraining, table_seconds = _previous_table(record_path, progress)
    else:
        table, long_rows, pretraining = _run_table(budget, seed, progress)
        table_seconds = time.perf_counter() - t0
    biggest = [r for r in table if r.n_train == budget.table_sizes[-1] and r.augmentation and r.freeze == "none"]
    best = max(biggest, key=lambda r: r.rib_dice + r.pleura_dice)
    _say(progress, f"best initialisation at n={best.n_train}: {best.init}")
    final_sources: dict[str, dict[str, torch.Tensor]] = {}
    if best.init == "whole":
        final_sources["whole"] = pretrain_whole(config, budget, seed, progress)[0]
    elif best.init == "encoder":
        final_sources["encoder"] = pretrain_encoder(config, budget, seed, progress)[0]
    x, y, c = generate_set(budget.final_frames, seed=seed + 3)
    unet = _initialised(config, best.init, "none", final_sources)
    train_segmentation(unet, x, y, budget.final_steps, budget.batch, seed, True)
    val_x, val_y, val_c = generate_set(budget.val_frames, seed=seed + 2)
    d = dice_scores(_segment(unet, val_x), val_y)
    _say(progress, f"final U-Net: validation rib {d[1]:.3f} pleura {d[2]:.3f} b-line {d[3]:.3f}")
    cls_rows = _classifier_comparison(unet, config, budget, seed, (x, c), (val_x, val_c), progress)
    classifier = train_classifier(unet, config, x, c, budget.cls_steps, budget.batch, seed)
    _write_bundle(bundle_dir, unet, classifier, config, seed, quick)
    record = {
        "segmentation": [asdict(r) for r in table],
        "segmentation_long": [asdict(r) for r in long_rows],
        "classifier": cls_rows,
        "best_init": best.init,
        "budget": asdict(budget),
        "table_network": TABLE_CONFIG.to_json(),
        "network": config.to_json(),
        "table_seconds": table_seconds,
        "pretraining": pretraining,
        "training_seconds": time.perf_counter() - t0 + (table_seconds if reuse_table else 0.0),
        "final_validation_dice": {"rib": d[1], "pleura": d[2], "b_line": d[3]},
        "table_reused": reused,
        "quick": quick,
    }
    record_path.parent.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    metrics = write_card(bundle_dir, progress=progress)
    metrics["table"] = record["segmentation"]
    return metrics


def _previous_table(record_path: Path, progress: bool) -> tuple[list[TableRow], list[TableRow], dict, float]:
    """The comparison (table, longer-schedule rows, pre-training scores, seconds) of an earlier run."""
    previous = json.loads(record_path.read_text())
    table = [TableRow(**row) for row in previous["segmentation"]]
    table_seconds = float(previous.get("table_seconds", 0.0))
    pretraining = previous.get("pretraining", {})
    long_rows = [TableRow(**row) for row in previous.get("segmentation_long", [])]
    _say(progress, f"reusing the comparison table in {record_path} ({len(table)} runs)")
    return table, long_rows, pretraining, table_seconds


def _run_table(budget: Budget, seed: int, progress: bool) -> tuple[list[TableRow], list[TableRow], dict]:
    """Pre-train both transfer sources, then run the comparison and its longer-schedule rows."""
    whole, whole_dice = pretrain_whole(TABLE_CONFIG, budget, seed, progress)
    encoder, encoder_acc = pretrain_encoder(TABLE_CONFIG, budget, seed, progress)
    pretraining = {"salient_object_dice": whole_dice, "photo_recognition_accuracy": encoder_acc}
    sources = {"whole": whole, "encoder": encoder}
    table = comparison_table(TABLE_CONFIG, budget, seed, sources, progress)
    long_rows = comparison_table(TABLE_CONFIG, budget, seed, sources, progress, _long_specs(budget), budget.long_steps)
    return table, long_rows, pretraining


def _classifier_comparison(
    unet: UNet,
    config: NetConfig,
    budget: Budget,
    seed: int,
    train_set: tuple[np.ndarray, np.ndarray],
    val_set: tuple[np.ndarray, np.ndarray],
    progress: bool,
) -> list[dict[str, object]]:
    """Classifiers from scratch and from the segmentation encoder on the table's largest size."""
    (x, c), (val_x, val_c) = train_set, val_set
    cls_rows: list[dict[str, object]] = []
    small = budget.table_sizes[-1]
    for name, source in (("scratch", None), ("segmentation encoder", unet)):
        model = train_classifier(source, config, x[:small], c[:small], budget.table_steps, budget.batch, seed)
        scores = classification_scores(_classify(model, val_x), val_c)
        cls_rows.append({"encoder": name, "n_train": small, **scores})
        _say(progress, f"classifier from {name} (n={small}): {scores}")
    return cls_rows


def _long_specs(budget: Budget) -> list[tuple[str, str, int, bool]]:
    return [(init, "none", budget.table_sizes[-1], True) for init in INITS]


def extend_table(bundle_dir: Path, seed: int = 0, quick: bool = False, progress: bool = True) -> dict[str, object]:
    """Add the longer-schedule runs (scratch / encoder / whole at the largest size) to an existing record.

    Pre-trains the sources again exactly as :func:`train` does (same seed, same order), runs
    :data:`Budget.long_steps` steps per initialisation, stores the rows in ``docs/table.json``
    and rewrites the card.
    """
    torch.manual_seed(seed)
    budget = QUICK if quick else Budget()
    record_path = Path(bundle_dir) / "docs" / "table.json"
    record = json.loads(record_path.read_text())
    whole, _ = pretrain_whole(TABLE_CONFIG, budget, seed, progress)
    encoder, _ = pretrain_encoder(TABLE_CONFIG, budget, seed, progress)
    sources = {"whole": whole, "encoder": encoder}
    rows = comparison_table(TABLE_CONFIG, budget, seed, sources, progress, _long_specs(budget), budget.long_steps)
    record["segmentation_long"] = [asdict(r) for r in rows]
    record["budget"] = {**record.get("budget", {}), "long_steps": budget.long_steps}
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return write_card(Path(bundle_dir), progress=progress)


def write_card(bundle_dir: Path, progress: bool = False) -> dict[str, object]:
    """Evaluate the bundle and (re)write its model card and metadata metrics from ``docs/table.json``."""
    from dicom_node.training.us_card import render_card

    bundle_dir = Path(bundle_dir)
    record = json.loads((bundle_dir / "docs" / "table.json").read_text())
    metrics = evaluate(bundle_dir, seed=1234, quick=bool(record.get("quick", False)))
    metrics["training_seconds"] = record.get("training_seconds", float("nan"))
    metrics["best_init"] = record.get("best_init", "")
    _say(
        progress,
        "evaluation: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()),
    )
    real = real_data_check(bundle_dir)
    meta_path = bundle_dir / METADATA_FILE
    meta = json.loads(meta_path.read_text())
    card = render_card(metrics, {**record, "real_data": real}, str(meta.get("version", VERSION)))
    (bundle_dir / "docs" / "README.md").write_text(card)
    meta["metrics"] = {k: v for k, v in metrics.items() if isinstance(v, int | float | str)}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return metrics


REAL_US = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real"


def real_data_check(bundle_dir: Path, root: Path = REAL_US) -> list[dict[str, str]]:
    """Run the pipeline on the real (non-lung) ultrasound files, if present: file and verdict per row."""
    from dicom_node.imaging.us import load_us
    from dicom_node.pipelines.us_lung import UsLungPipeline

    pipeline = UsLungPipeline(bundle_dir=bundle_dir)
    rows: list[dict[str, str]] = []
    for path in sorted(root.resolve().glob("us_*/*.dcm")) if root.exists() else []:
        try:
            result = pipeline.run(load_us([path]), "cpu")
        except ValueError as exc:
            rows.append({"file": f"{path.parent.name}/{path.name}", "verdict": f"load error: {exc}"})
            continue
        verdict = f"not applicable: {result.not_applicable}" if result.not_applicable else result.summary()
        rows.append({"file": f"{path.parent.name}/{path.name}", "verdict": verdict})
    return rows


@torch.no_grad()
def _classify(model: HierarchicalClassifier, images: np.ndarray, batch: int = 32) -> np.ndarray:
    return np.concatenate(
        [model.probabilities(torch.from_numpy(images[i : i + batch])).numpy() for i in range(0, len(images), batch)]
    )


def _write_bundle(
    bundle_dir: Path,
    unet: UNet,
    classifier: HierarchicalClassifier,
    config: NetConfig,
    seed: int,
    quick: bool,
) -> None:
    (bundle_dir / MODEL_FILE).parent.mkdir(parents=True, exist_ok=True)
    (bundle_dir / METADATA_FILE).parent.mkdir(parents=True, exist_ok=True)
    state = {
        "config": config.to_json(),
        "unet": copy.deepcopy(unet.state_dict()),
        "classifier": copy.deepcopy(classifier.state_dict()),
    }
    torch.save(state, bundle_dir / MODEL_FILE)
    meta = {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": VERSION + ("-quick" if quick else ""),
        "name": "us_lung",
        "task": "Lung ultrasound: rib/pleural-line/B-line segmentation and hierarchical frame classification",
        "description": "Trained on synthetic lung-US frames only. Research use, not for diagnosis.",
        "authors": "dicom-node",
        "monai_version": _version("monai"),
        "pytorch_version": _version("torch"),
        "training_seed": seed,
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "num_channels": 1,
                    "spatial_shape": list(config.input_size),
                    "dtype": "float32",
                    "value_range": [0, 1],
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "labels",
                    "num_channels": 4,
                    "channel_def": {
                        "0": "background",
                        "1": "rib with acoustic shadow",
                        "2": "pleural line",
                        "3": "B-line",
                    },
                },
                "classes": {"type": "probabilities", "channel_def": dict(enumerate(CLASS_NAMES))},
            },
        },
    }
    (bundle_dir / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def evaluate(
    bundle_dir: Path, seed: int = 1234, quick: bool = False, timing: Callable[[], float] = time.perf_counter
) -> dict[str, object]:
    """Score a bundle on held-out synthetic frames and cines (deterministic for a seed).

    Frames are generated at 256x256 and go through the same inference code as the pipeline
    (resize to the network size, segment, resize the logits back), so Dice is measured at 256x256.

    Returns:
        rib / pleural-line / B-line Dice, level-1 / level-2 / four-class accuracy, the B-line count
        error on cines, and timings (ms per 256x256 frame, seconds per 100-frame cine).
    """
    budget = QUICK if quick else Budget()
    model = LungUsModel.load(Path(bundle_dir), device="cpu")
    size = (256, 256)
    frames, truth, classes, spacing = [], [], [], []
    for i in range(budget.eval_frames):
        sample = generate(seed * 100_003 + i, size=size, pattern=PATTERNS[i % len(PATTERNS)])
        labels = np.zeros(size, dtype=np.uint8)
        labels[sample.b_lines[0]] = 3
        labels[sample.rib[0]] = 1
        labels[sample.pleura[0]] = 2
        frames.append(sample.image[0])
        spacing.append(sample.spacing_mm)
        truth.append(labels)
        classes.append(PATTERNS.index(sample.pattern))
    x = np.stack(frames)
    pred = model.predict(x)
    from pydicom.dataset import Dataset

    from dicom_node.imaging.volume import Volume
    from dicom_node.pipelines.us_lung import check_lung

    header = Dataset()
    header.Modality = "US"
    lung_like = [
        check_lung(
            Volume(x[i : i + 1], (0.0, spacing[i], spacing[i]), "US", [header], frame_numbers=[1]),
            pred.labels[i : i + 1],
            pred.confidence[i : i + 1],
        ).plausible
        for i in range(len(x))
    ]
    d = dice_scores(pred.labels, np.stack(truth))
    metrics: dict[str, object] = {
        "rib_dice": d[1],
        "pleura_dice": d[2],
        "b_line_dice": d[3],
        **classification_scores(pred.classes, np.asarray(classes)),
        "lung_like_fraction": float(np.mean(lung_like)),
        "eval_frames": budget.eval_frames,
        "eval_seed": seed,
    }
    from dicom_node.pipelines.us_lung import count_b_lines

    errors = []
    for j in range(budget.eval_cines):
        cine = generate(seed * 7919 + j, size=size, frames=budget.cine_frames, pattern=PATTERNS[j % 2])
        cp = model.predict(cine.image)
        counted = max(count_b_lines(lab) for lab in cp.labels)
        errors.append(abs(counted - cine.b_line_count))
    metrics["b_line_count_mae_cine"] = float(np.mean(errors))
    metrics["b_line_count_exact_cine"] = float(np.mean(np.asarray(errors) == 0))
    metrics["eval_cines"] = budget.eval_cines
    metrics.update(measure_speed(bundle_dir, x[:4], 100 if not quick else 4, timing))
    return metrics


def measure_speed(
    bundle_dir: Path, frames: np.ndarray, cine_frames: int, timing: Callable[[], float] = time.perf_counter
) -> dict[str, float]:
    """ms per single frame (model only) and seconds per ``cine_frames`` cine (whole pipeline run)."""
    from pydicom.dataset import Dataset

    from dicom_node.imaging.volume import Volume
    from dicom_node.pipelines.us_lung import UsLungPipeline

    pipeline = UsLungPipeline(bundle_dir=bundle_dir)
    model = LungUsModel.load(Path(bundle_dir), device="cpu")
    one = frames[:1]
    model.predict(one)
    reps = 20
    start = timing()
    for _ in range(reps):
        model.predict(one)
    per_frame = (timing() - start) / reps * 1000.0
    header = Dataset()
    header.Modality = "US"
    header.Rows, header.Columns = frames.shape[1:]
    pixels = np.resize(frames, (cine_frames, *frames.shape[1:])).astype(np.float32)
    volume = Volume(pixels, (0.0, 0.2, 0.2), "US", [header], frame_numbers=list(range(1, cine_frames + 1)))
    pipeline.run(volume, "cpu")  # warm (loads the model)
    start = timing()
    pipeline.run(volume, "cpu")
    cine_s = (timing() - start) * (100 / cine_frames)
    import os

    return {
        "ms_per_frame_256": per_frame,
        "seconds_per_100_frame_cine": cine_s,
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],
    }
