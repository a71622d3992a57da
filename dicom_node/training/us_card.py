"""The lung-US model card (docs/README.md), rendered from measured numbers only.

The text is the template ``us_card.md.tmpl`` beside this module (:class:`string.Template` placeholders).
Its first part is the card; ``@@ name`` lines start the optional sections and row templates. A
placeholder alone on its line whose value is empty (a section left out, a table without rows)
removes that line.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from importlib.resources import files
from string import Template

TEMPLATE = "us_card.md.tmpl"

_INIT_NAMES = {
    "scratch": "scratch (random init)",
    "encoder": "encoder transfer (photograph recognition)",
    "whole": "whole-network transfer (salient objects)",
}
_SECTION = re.compile(r"^@@ (\w+)\n", re.MULTILINE)


def _f(value: object, digits: int = 3) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _target(value: object, goal: float, higher: bool = True) -> str:
    if not isinstance(value, float) or math.isnan(value):
        return "n/a"
    met = value >= goal if higher else value <= goal
    return "met" if met else "NOT met"


@functools.cache
def _templates() -> dict[str, str]:
    """The card (``card``) and the named sections of the template file."""
    text = (files("dicom_node.training") / TEMPLATE).read_text(encoding="utf-8")
    pieces = _SECTION.split(text)
    parts = {"card": pieces[0]}
    parts.update({name: body.removesuffix("\n") for name, body in zip(pieces[1::2], pieces[2::2], strict=True)})
    return parts


def _fill(name: str, values: Mapping[str, object]) -> str:
    """Template part ``name`` with ``values``; an empty value alone on its line removes the line."""
    text = _templates()[name]
    for key, value in values.items():
        if value == "":
            text = re.sub(rf"^\$\{{{key}\}}(\n|\Z)", "", text, flags=re.MULTILINE)
    return Template(text).substitute(values)


def _segmentation_rows(rows: Sequence[Mapping[str, object]]) -> str:
    return "\n".join(
        _fill(
            "segmentation_row",
            {
                "init": _INIT_NAMES.get(str(r["init"]), r["init"]),
                "freeze": r["freeze"],
                "n_train": r["n_train"],
                "augmentation": "yes" if r["augmentation"] else "no",
                **{k: _f(r[k]) for k in ("rib_dice", "pleura_dice", "b_line_dice")},
                "seconds": _f(r["seconds"], 0),
            },
        )
        for r in rows
    )


def _evaluation(m: Mapping[str, object]) -> dict[str, object]:
    """The held-out evaluation's numbers, with their targets."""
    three_digits = ("rib_dice", "pleura_dice", "b_line_dice", "lung_like_fraction", "level1_accuracy")
    values: dict[str, object] = {k: _f(m.get(k)) for k in (*three_digits, "level2_accuracy", "four_class_accuracy")}
    values.update({k: _f(m.get(k), 2) for k in ("b_line_count_mae_cine", "b_line_count_exact_cine")})
    values.update(
        eval_frames=m.get("eval_frames"),
        eval_cines=m.get("eval_cines", ""),
        torch_threads=m.get("torch_threads"),
        ms_per_frame_256=_f(m.get("ms_per_frame_256"), 1),
        seconds_per_100_frame_cine=_f(m.get("seconds_per_100_frame_cine"), 2),
        rib_dice_target=_target(m.get("rib_dice"), 0.87),
        pleura_dice_target=_target(m.get("pleura_dice"), 0.80),
        level1_accuracy_target=_target(m.get("level1_accuracy"), 0.90),
        ms_per_frame_256_target=_target(m.get("ms_per_frame_256"), 30.0, False),
        seconds_per_100_frame_cine_target=_target(m.get("seconds_per_100_frame_cine"), 5.0, False),
        load_average_1min=_f(m.get("load_average_1min"), 1),
        best_init=m.get("best_init"),
        training_seconds=_f(m.get("training_seconds"), 0),
    )
    return values


def _training(record: Mapping[str, object]) -> dict[str, object]:
    """The networks, the training budget and the final validation from the training record."""
    budget: Mapping[str, object] = record["budget"]  # type: ignore[assignment]
    network: Mapping[str, object] = record.get("network", {})  # type: ignore[assignment]
    table_network: Mapping[str, object] = record.get("table_network", {})  # type: ignore[assignment]
    final_val: Mapping[str, object] = record.get("final_validation_dice", {})  # type: ignore[assignment]
    pretrain: Mapping[str, object] = record.get("pretraining", {})  # type: ignore[assignment]
    return {
        **{k: network.get(k) for k in ("channels", "strides", "num_res_units", "input_size")},
        **{k: _f(pretrain.get(k)) for k in ("salient_object_dice", "photo_recognition_accuracy")},
        **{k: budget.get(k) for k in ("final_frames", "final_steps", "cls_steps", "table_steps", "batch")},
        **{k: budget.get(k) for k in ("val_frames", "long_steps")},
        **{f"final_{k}": _f(final_val.get(k)) for k in ("rib", "pleura", "b_line")},
        "table_seconds": _f(record.get("table_seconds"), 0),
        "table_strides": table_network.get("strides"),
    }


def render_card(metrics: Mapping[str, object], record: Mapping[str, object], version: str) -> str:
    """Markdown model card from the evaluation metrics and the training record (docs/table.json)."""
    values = {"version": version, **_evaluation(metrics), **_training(record)}
    table: Sequence[Mapping[str, object]] = record["segmentation"]  # type: ignore[assignment]
    long_rows: Sequence[Mapping[str, object]] = record.get("segmentation_long", [])  # type: ignore[assignment]
    classifier_rows: Sequence[Mapping[str, object]] = record["classifier"]  # type: ignore[assignment]
    real: Sequence[Mapping[str, str]] = record.get("real_data", [])  # type: ignore[assignment]
    values["table_reused"] = _fill("table_reused", {}) if record.get("table_reused") else ""
    values["segmentation_rows"] = _segmentation_rows(table)
    values["segmentation_long"] = (
        _fill("segmentation_long", {**values, "segmentation_long_rows": _segmentation_rows(long_rows)})
        if long_rows
        else ""
    )
    values["classifier_rows"] = "\n".join(
        _fill(
            "classifier_row",
            {
                "encoder": c["encoder"],
                "n_train": c["n_train"],
                **{k: _f(c[k]) for k in ("level1_accuracy", "level2_accuracy", "four_class_accuracy")},
            },
        )
        for c in classifier_rows
    )
    rows = "\n".join(_fill("real_data_row", {**row, "verdict": row["verdict"].replace("|", "/")}) for row in real)
    values["real_data"] = _fill("real_data", {"real_data_rows": rows}) if real else ""
    values.update(_real_clips(record.get("real_clips")))  # type: ignore[arg-type]
    return _fill("card", values)


def _rate(entry: Mapping[str, object]) -> str:
    return f"{entry['right']}/{entry['of']} ({_f(entry['rate'], 2)})" if entry.get("of") else "n/a"


def _real_clips(real: Mapping[str, object] | None) -> dict[str, object]:
    """Intro, limits and the real-clip table; the synthetic-only wording when there are no real numbers."""
    if not real:
        return {
            "intro": _fill("intro_synthetic", {}),
            "limits_data": _fill("limits_synthetic", {}),
            "real_clips": "",
        }
    rows: Sequence[Mapping[str, object]] = real["rows"]  # type: ignore[assignment]
    table = "\n".join(
        _fill(
            "real_clips_row",
            {
                "model": r["model"],
                "part": r["part"],
                "clips": r["clips"],
                "analysed": _rate(r["analysed"]),  # type: ignore[arg-type]
                "pleura": _f(r["pleura_frames_normal_clips"], 2),
                "normal_abnormal": _rate(r["normal_vs_abnormal"]),  # type: ignore[arg-type]
                "b_lines": _rate(r["b_lines_present"]),  # type: ignore[arg-type]
            },
        )
        for r in rows
    )
    section = {
        "real_frames": real["frames"],
        "real_check_groups": real["check_groups"],
        "real_train_groups": real["train_groups"],
        "real_clips_rows": table,
        "non_lung_refused": real["non_lung_refused"],
        "real_notes": "".join(f"\n\n{note}" for note in real.get("notes", [])),  # type: ignore[attr-defined]
    }
    return {
        "intro": _fill("intro_real", {}),
        "limits_data": _fill("limits_real", {"real_check_clips": real["check_clips"]}),
        "real_clips": _fill("real_clips", section),
    }
