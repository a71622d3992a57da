"""The lung-US model card template renders the shipped card byte for byte from the shipped numbers."""

from __future__ import annotations

import json
from pathlib import Path

from dicom_node.training.us_card import render_card

BUNDLE = Path(__file__).resolve().parents[2] / "models" / "us_lung"


def _real_rows(card: str) -> list[dict[str, str]]:
    """The real-data verdicts (measured on files outside the repository) as the shipped card lists them."""
    section = card.split("## Real ultrasound in shared/")[1].split("## Limits")[0]
    rows = [line[2:-2].split(" | ", 1) for line in section.splitlines() if line.startswith("| us_")]
    return [{"file": file, "verdict": verdict} for file, verdict in rows]


def test_shipped_card_renders_identically() -> None:
    shipped = (BUNDLE / "docs" / "README.md").read_text()
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    record = json.loads((BUNDLE / "docs" / "table.json").read_text())
    card = render_card(meta["metrics"], {**record, "real_data": _real_rows(shipped)}, meta["version"])
    assert card == shipped


def test_optional_sections_leave_no_blank_lines() -> None:
    record = {"segmentation": [], "classifier": [], "budget": {}, "table_reused": False}
    card = render_card({"rib_dice": float("nan")}, record, "9")
    assert "Version 9." in card and "| rib (+ shadow) Dice | n/a | >= 0.87: n/a |" in card
    assert "Longer schedule" not in card and "## Real ultrasound" not in card and "The table was measured" not in card
    assert "|---|---|---|---|---|---|---|---|\n\n## Classifier" in card
    assert "|---|---|---|---|---|\n\n## Limits" in card and card.endswith("`dicom-node evaluate us-lung`.\n")
