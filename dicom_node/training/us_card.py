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


def render_card(metrics: Mapping[str, object], record: Mapping[str, object], version: str) -> str:
    """Markdown model card from the evaluation metrics and the training record (docs/table.json)."""
    table: Sequence[Mapping[str, object]] = record["segmentation"]  # type: ignore[assignment]
    classifier_rows: Sequence[Mapping[str, object]] = record["classifier"]  # type: ignore[assignment]
    budget: Mapping[str, object] = record["budget"]  # type: ignore[assignment]
    network: Mapping[str, object] = record.get("network", {})  # type: ignore[assignment]
    table_network: Mapping[str, object] = record.get("table_network", {})  # type: ignore[assignment]
    final_val: Mapping[str, object] = record.get("final_validation_dice", {})  # type: ignore[assignment]
    pretrain: Mapping[str, object] = record.get("pretraining", {})  # type: ignore[assignment]

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
        f"- MONAI `UNet` (2-D, channels {network.get('channels')}, strides {network.get('strides')}, "
        f"{network.get('num_res_units')} residual unit(s), about 0.2 M parameters) on frames resized to",
        f"  {network.get('input_size')}: labels background, rib with acoustic shadow, pleural line, B-line.",
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
        f"  Source-task quality (table network): salient-object Dice "
        f"{_f(pretrain.get('salient_object_dice'))}, photograph-recognition accuracy "
        f"{_f(pretrain.get('photo_recognition_accuracy'))} (14 classes).",
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
        f"| frames judged lung-like by the plausibility check (single frames) | {_f(m.get('lung_like_fraction'))} | - |",
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
        f"Timings were taken on the shared 2-core machine with a 1-minute load average of "
        f"{_f(m.get('load_average_1min'), 1)} (other jobs running); they vary by about +-50 % with that load.",
        "",
        f"Best initialisation in the table at the largest size (chosen for the shipped model): **{m.get('best_init')}**;",
        f"the shipped U-Net was then trained on {budget.get('final_frames')} frames for {budget.get('final_steps')} steps",
        f"(validation Dice at 128x128: rib {_f(final_val.get('rib'))}, pleural line {_f(final_val.get('pleura'))},",
        f"B-line {_f(final_val.get('b_line'))}), the classifier on the same frames for {budget.get('cls_steps')} steps.",
        f"Total training time {_f(m.get('training_seconds'), 0)} s on 1 CPU thread (shared 2-core machine under",
        f"load from other jobs, `nice`), of which the table {_f(record.get('table_seconds'), 0)} s.",
        "",
        "## Transfer-learning comparison (segmentation)",
        "",
        f"Network of the table: strides {table_network.get('strides')} (the shipped network's first level runs at",
        "full resolution instead, about 4x the training cost per step; too dear for 19 runs on this CPU).",
        f"Every run: {budget.get('table_steps')} optimiser steps (batch {budget.get('batch')}, AdamW, one-cycle LR,",
        "Dice + cross-entropy), training frames are the first n of one synthetic pool, scored on the same",
        f"{budget.get('val_frames')} synthetic validation frames at 128x128. Freezing: part = first half of the",
        "encoder blocks fixed, all = the whole encoder fixed (decoder trained). Augmentation: flips, zoom/shift,",
        "gain, gamma, noise.",
        *(
            [
                "The table was measured by a first `train(seed=0)` run (its progress log is where these rows come",
                "from); that run was stopped after the table to switch the shipped network to a full-resolution",
                "first level, and `train(reuse_table=True)` then trained the shipped models on top of it.",
            ]
            if record.get("table_reused")
            else []
        ),
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
    long_rows: Sequence[Mapping[str, object]] = record.get("segmentation_long", [])  # type: ignore[assignment]
    if long_rows:
        lines += [
            "",
            f"Longer schedule: the same comparison at the largest size with {budget.get('long_steps')} steps instead of "
            f"{budget.get('table_steps')} (is a transfer only slower to converge?).",
            "",
            "| initialisation | freeze | n train | augmentation | rib Dice | pleural-line Dice | B-line Dice | s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in long_rows:
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
    real: Sequence[Mapping[str, str]] = record.get("real_data", [])  # type: ignore[assignment]
    if real:
        lines += [
            "",
            "## Real ultrasound in shared/ (none of it is lung): what the pipeline answers",
            "",
            "| file | result |",
            "|---|---|",
        ]
        lines += [f"| {row['file']} | {row['verdict'].replace('|', '/')} |" for row in real]
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
