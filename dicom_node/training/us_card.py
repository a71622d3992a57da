"""The lung-US model card (docs/README.md), rendered from measured numbers only."""

# ruff: noqa: E501

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

_INIT_NAMES = {
    "scratch": "scratch (random init)",
    "encoder": "encoder transfer (photograph recognition)",
    "whole": "whole-network transfer (salient objects)",
}


def _f(value: object, digits: int = 3) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def render_card(
    metrics: Mapping[str, object],
    table: Sequence[Mapping[str, object]],
    classifier_rows: Sequence[Mapping[str, object]],
    budget: Mapping[str, object],
    version: str,
) -> str:
    """Markdown model card with the evaluation metrics and the transfer-learning tables."""

    def target(value: object, goal: float, higher: bool = True) -> str:
        if not isinstance(value, float) or math.isnan(value):
            return "n/a"
        met = value >= goal if higher else value <= goal
        return "met" if met else "NOT met"

    m = metrics
    lines = [
        "# us_lung: lung-ultrasound rib / pleural-line segmentation and frame classification",
        "",
        f"Version {version}. **Research use only, not for diagnosis.** Trained and evaluated on synthetic",
        "lung-ultrasound frames only (`dicom_node.synth.us_lung`); there is no public lung-US DICOM to test on,",
        "and performance on real patients is unknown. On non-lung ultrasound the pipeline answers",
        '"not applicable" (plausibility check) instead of reporting findings.',
        "",
        "## What it does",
        "",
        "- MONAI `UNet` (2-D, channels 8-16-32-64-128, 1 residual unit, about 0.2 M parameters) on frames",
        f"  resized to {budget.get('input_size', '128x128')}: labels background, rib with acoustic shadow, pleural line, B-line.",
        "- Hierarchical classifier on the U-Net's encoder (transferred from the segmentation network):",
        "  level 1 normal vs abnormal, level 2 B-lines / consolidation / effusion; per-cine mean probabilities,",
        "  B-line count (maximum over frames) and worst frame.",
        '- Pre-training without downloads: ImageNet cannot be fetched here, so the "natural image" sources are',
        "  the 14 photographs scikit-image ships (`skimage.data`: camera, moon, brick, grass, gravel, coins,",
        "  clock, cell, astronaut, coffee, chelsea, rocket, immunohistochemistry, hubble_deep_field):",
        "  *encoder transfer* = the U-Net encoder pre-trained to recognise which photograph a random crop came",
        "  from (V-Unet analogue); *whole-network transfer* = the whole U-Net pre-trained on generated grayscale",
        "  salient-object segmentation (textured blob on a textured background; X-Unet analogue), all layers",
        "  whose shapes match are transferred (the output layer is re-initialised).",
        "",
        "## Held-out synthetic evaluation (`dicom-node evaluate us-lung`, seed 1234)",
        "",
        f"{m.get('eval_frames')} frames at 256x256 (equal numbers of the four patterns, linear and convex probes),",
        "through the same inference code as the pipeline (resize to the network size, logits resized back).",
        "Dice is the mean per frame over frames whose ground truth contains the label.",
        "",
        "| metric | value | target |",
        "|---|---|---|",
        f"| rib (+ shadow) Dice | {_f(m.get('rib_dice'))} | >= 0.87: {target(m.get('rib_dice'), 0.87)} |",
        f"| pleural-line Dice | {_f(m.get('pleura_dice'))} | >= 0.80: {target(m.get('pleura_dice'), 0.80)} |",
        f"| B-line Dice | {_f(m.get('b_line_dice'))} | - |",
        f"| level-1 accuracy (normal vs abnormal) | {_f(m.get('level1_accuracy'))} | >= 0.90: "
        f"{target(m.get('level1_accuracy'), 0.90)} |",
        f"| level-2 accuracy (abnormal frames) | {_f(m.get('level2_accuracy'))} | - |",
        f"| four-class accuracy | {_f(m.get('four_class_accuracy'))} | - |",
        f"| B-line count per cine, mean abs. error ({m.get('eval_cines', '')} cines) | "
        f"{_f(m.get('b_line_count_mae_cine'), 2)} | - |",
        f"| B-line count per cine exactly right | {_f(m.get('b_line_count_exact_cine'), 2)} | - |",
        f"| ms per 256x256 frame (one frame, CPU, {m.get('torch_threads')} thread(s)) | "
        f"{_f(m.get('ms_per_frame_256'), 1)} | <= 30: {target(m.get('ms_per_frame_256'), 30.0, False)} |",
        f"| s per 100-frame 256x256 cine (whole pipeline run) | {_f(m.get('seconds_per_100_frame_cine'), 2)} | "
        f"<= 5: {target(m.get('seconds_per_100_frame_cine'), 5.0, False)} |",
        "",
        f"Best initialisation in the table (chosen for the shipped model): **{m.get('best_init')}**. Total training",
        f"time {_f(m.get('training_seconds'), 0)} s on 1 CPU thread (shared 2-core machine, `nice`).",
        "",
        "## Transfer-learning comparison (segmentation)",
        "",
        f"Every run: {budget.get('table_steps')} optimiser steps (batch {budget.get('batch')}, AdamW, one-cycle LR,",
        "Dice + cross-entropy), training frames are the first n of one synthetic pool, scored on the same",
        f"{budget.get('val_frames')} synthetic validation frames at 128x128. Freezing: part = first half of the",
        "encoder blocks fixed, all = the whole encoder fixed (decoder trained). Augmentation: flips, zoom/shift,",
        "gain, gamma, noise.",
        "",
        "| initialisation | freeze | n train | augmentation | rib Dice | pleural-line Dice | B-line Dice | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(
            f"| {_INIT_NAMES.get(str(r['init']), r['init'])} | {r['freeze']} | {r['n_train']} | "
            f"{'yes' if r['augmentation'] else 'no'} | {_f(r['rib_dice'])} | {_f(r['pleura_dice'])} | "
            f"{_f(r['b_line_dice'])} | {_f(r['seconds'], 0)} |"
        )
    lines += [
        "",
        "## Classifier: transfer from the segmentation encoder",
        "",
        f"Same step budget as the table, n train frames, on the {budget.get('val_frames')} validation frames.",
        "",
        "| encoder init | n train | level-1 acc. | level-2 acc. | four-class acc. |",
        "|---|---|---|---|---|",
    ]
    for c in classifier_rows:
        lines.append(
            f"| {c['encoder']} | {c['n_train']} | {_f(c['level1_accuracy'])} | {_f(c['level2_accuracy'])} | "
            f"{_f(c['four_class_accuracy'])} |"
        )
    lines += [
        "",
        "## Limits",
        "",
        "- Synthetic data only; the generator's idea of ribs, pleura, A/B-lines, consolidation and effusion is",
        "  simple. Numbers here say the pipeline works as built, not that it works on patients.",
        "- Consolidation and effusion are classified per frame but not segmented.",
        "- Frames are resized to the network size regardless of their physical spacing.",
        "- Reproduce: `dicom-node train us-lung` (writes this bundle), `dicom-node evaluate us-lung`.",
        "",
    ]
    return "\n".join(lines)
