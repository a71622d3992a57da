"""The CT nodule bundle's model card (docs/README.md), rendered from configs/metadata.json and, when
present, docs/metrics.json through the fragments of ``card.md.tmpl``."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

from dicom_node.networks.boosted import BoostedTrees

TEMPLATE = "card.md.tmpl"
_MARKER = re.compile(r"^<!-- fragment: (\w+) -->\n", re.MULTILINE)
_OMIT = "\0"  # a block left out: its line is dropped


def _fragments() -> dict[str, str]:
    """The template's fragments by name (see the head of the template)."""
    text = (resources.files(__package__) / TEMPLATE).read_text(encoding="utf-8")
    parts = _MARKER.split(text)[1:]  # [name, body, name, body, ...], the head dropped
    return {name: body.removesuffix("\n") for name, body in zip(parts[::2], parts[1::2], strict=True)}


def _fill(fragments: dict[str, str], name: str, fields: dict[str, Any]) -> str:
    """Fragment ``name`` with ``fields`` filled in, and the lines of blocks left out dropped."""
    text = fragments[name].format_map(fields)
    return "\n".join(line for line in text.split("\n") if line != _OMIT)


def render_card(meta: dict[str, Any], metrics: dict[str, Any] | None) -> str:
    """The card's text from the bundle's metadata and its evaluation metrics (None: not evaluated)."""
    frags = _fragments()
    tr = meta.get("training", {})
    cases = tr.get("cases", {})
    if metrics:
        measured = _metrics_block(frags, metrics)
    else:
        measured = _fill(frags, "not_evaluated", {})
    bench = meta.get("benchmark")
    speed = _OMIT
    if isinstance(bench, dict):
        speed = _fill(frags, "speed", {"items": "\n".join(f"- {k}: {v}" for k, v in bench.items())})
    fields = {
        "version": meta["version"],
        "calibration": _calibration_block(frags, meta),
        "phantoms": cases.get("phantoms", "?"),
        "real_inserted": cases.get("real_inserted", "?"),
        "unet_steps": tr.get("unet_steps", "?"),
        "resmtnet_steps": tr.get("resmtnet_steps", "?"),
        "extra_rendered_nodules": tr.get("resmtnet_patches", {}).get("extra_rendered_nodules", 0),
        "fpr3d": _fpr3d_block(frags, tr),
        "seed": tr.get("seed", "?"),
        "device": tr.get("device", "?"),
        "seconds_total": tr.get("seconds", {}).get("total", "?"),
        "history": _fill(frags, "history", {"history": tr["history"]}) if tr.get("history") else _OMIT,
        "measured": measured,
        "speed": speed,
    }
    return _fill(frags, "card", fields)


def write_card(bundle_dir: Path) -> None:
    """docs/README.md from metadata.json and (when present) docs/metrics.json."""
    bundle_dir = Path(bundle_dir)
    meta = json.loads((bundle_dir / "configs" / "metadata.json").read_text())
    metrics_path = bundle_dir / "docs" / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else None
    (bundle_dir / "docs").mkdir(parents=True, exist_ok=True)
    (bundle_dir / "docs" / "README.md").write_text(render_card(meta, metrics))


def _calibration_block(frags: dict[str, str], meta: dict[str, Any]) -> str:
    inf = meta.get("inference", {})
    cal = inf.get("calibrators")
    if not isinstance(cal, dict):
        return _OMIT
    info = inf.get("calibration", {})
    faint, val = inf.get("faint_levels"), info.get("validation")
    faint_line = _OMIT
    if faint:
        faint_fields = {"seed_level": faint[0], "grow_level": faint[1], "faint_min_logit": inf.get("faint_min_logit")}
        faint_line = _fill(frags, "faint", faint_fields)
    flips_line = _OMIT
    if inf.get("fpr3d_flips"):
        flips_fields = {
            "fpr3d_screen_logit": inf.get("fpr3d_screen_logit"),
            "second_screen": inf.get("fpr3d_second_screen_logit", "-"),
            "faint_second_screen": inf.get("faint_second_screen_logit", "-"),
        }
        flips_line = _fill(frags, "flips", flips_fields)
    validation_line = _OMIT
    if isinstance(val, dict):
        numbers = json.dumps({k: v for k, v in val.items() if k not in ("seed", "scans")})
        validation_line = _fill(
            frags, "validation", {"seed": val.get("seed"), "scans": val.get("scans"), "numbers": numbers}
        )
    fields = {
        "threshold": inf.get("threshold"),
        "grow_threshold": inf.get("grow_threshold", inf.get("threshold")),
        "faint": faint_line,
        "flips": flips_line,
        "detection_features": ", ".join(cal.get("detection", {}).get("features", [])),
        "malignancy": _malignancy_line(frags, cal.get("malignancy", {}), info),
        "diameter_features": ", ".join(cal.get("diameter", {}).get("features", [])),
        "l2": info.get("l2"),
        **{k: info.get(k, "?") for k in ("cases", "sets", "candidates", "nodule_candidates")},
        "validation": validation_line,
    }
    return _fill(frags, "calibration", fields)


def _malignancy_line(frags: dict[str, str], mal: dict[str, Any], info: dict[str, Any]) -> str:
    names = ", ".join(mal.get("features", []))
    if mal.get("kind") != BoostedTrees.kind:
        return _fill(frags, "malignancy_logistic", {"features": names})
    return _fill(
        frags,
        "malignancy_trees",
        {
            "trees": len(mal.get("leaf", [])),
            "depth": mal.get("depth"),
            "features": names,
            "nodule_candidates": info.get("malignancy_nodule_candidates", "?"),
            "extra_sets": info.get("malignancy_extra_sets", "?"),
        },
    )


def _fpr3d_block(frags: dict[str, str], training: dict[str, Any]) -> str:
    from dicom_node.networks.fpr3d import member_name  # here: that module imports torch, this one need not

    members = [training[k] for k in map(member_name, range(8)) if isinstance(training.get(k), dict)]
    blocks = [
        _fill(
            frags,
            "fpr3d_member",
            {
                "member": f" member {i}" if len(members) > 1 else "",
                "steps": info.get("steps", "?"),
                "samples": info.get("samples", "?"),
                "nodule_samples": info.get("nodule_samples", "?"),
                "levels": " and ".join(str(level[0]) for level in info.get("levels", [[0.5], [0.12]])),
                "sets": info.get("sets", "?"),
                "seed": info.get("seed", 0),
            },
        )
        for i, info in enumerate(members, start=1)
    ]
    return "\n".join(blocks) if blocks else _OMIT


def _metrics_block(frags: dict[str, str], metrics: dict[str, Any]) -> str:
    sub = metrics.get("first_16_scans")
    first16 = _fill(frags, "first16", {**sub, "scans": metrics["scans"]}) if isinstance(sub, dict) else _OMIT
    froc = metrics["froc_sensitivity_ge_6mm"]
    return _fill(
        frags,
        "metrics",
        {
            **metrics,
            "froc": ", ".join(f"{froc[k]:.2f}" for k in froc),
            "first16": first16,
            "real": _real_rows(metrics.get("real", {})),
        },
    )


def _real_rows(real: dict[str, Any]) -> str:
    """One table row per real scan of :func:`~dicom_node.training.ct_lung_nodule.real.evaluate_real_scans`."""
    rows = []
    for name, e in real.items():
        if not isinstance(e, dict) or "slices" not in e:
            continue
        head = f"| {name} | {e['slices']} x {e.get('slice_mm', '?')} mm |"
        if e.get("not_applicable"):
            rows.append(f"{head} not applicable: {e['not_applicable']} | | | | | {e['seconds']} |")
            continue
        overlap = f"Dice {e['dice']}" if "dice" in e else f"{e.get('share_in_box', 0):.0%} of outline in box"
        labels = ", ".join(f["label"] for f in e.get("findings", [])) or "nothing found"
        rows.append(
            f"{head} {labels} | {'yes' if e.get('lesion_found') else 'no'} | {e.get('false_positives')} | "
            f"{e.get('nodules_outside_lung')} | {overlap} | {e['seconds']} |"
        )
    return "\n".join(rows) or "| (no real scans found) | | | | | | | |"
