"""Smoke test of the lung-US training loop (seconds, tiny sets): bundle layout, card, reproducibility."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from dicom_node.networks.us_infer import LungUsModel
from dicom_node.training.us_lung import evaluate, train

pytestmark = pytest.mark.slow  # the fixture trains a (quick) bundle: about 10 s


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("us_lung_bundle")
    return folder, train(folder, seed=0, quick=True, progress=False)


def test_bundle_layout_and_card(bundle: tuple[Path, dict[str, object]]) -> None:
    folder, metrics = bundle
    weights = folder / "models" / "model.pt"
    assert weights.is_file() and weights.stat().st_size < 5_000_000
    meta = json.loads((folder / "configs" / "metadata.json").read_text())
    assert meta["name"] == "us_lung" and meta["version"].endswith("-quick")
    card = (folder / "docs" / "README.md").read_text()
    assert "not for diagnosis" in card and "whole-network transfer" in card
    table = json.loads((folder / "docs" / "table.json").read_text())
    inits = {row["init"] for row in table["segmentation"]}
    freezes = {row["freeze"] for row in table["segmentation"]}
    assert inits == {"scratch", "encoder", "whole"} and freezes == {"none", "part", "all"}
    assert {row["augmentation"] for row in table["segmentation"]} == {True, False}
    for key in ("rib_dice", "pleura_dice", "level1_accuracy", "ms_per_frame_256"):
        value = metrics[key]
        assert isinstance(value, float) and math.isfinite(value)
    assert f"{metrics['rib_dice']:.3f}" in card
    LungUsModel.load(folder)  # the written bundle loads


def test_evaluate_reproduces_the_recorded_metrics(bundle: tuple[Path, dict[str, object]]) -> None:
    folder, metrics = bundle
    again = evaluate(folder, seed=1234, quick=True)
    for key in ("rib_dice", "pleura_dice", "b_line_dice", "level1_accuracy", "b_line_count_mae_cine"):
        assert again[key] == pytest.approx(metrics[key], abs=1e-6)
    meta = json.loads((folder / "configs" / "metadata.json").read_text())
    assert meta["metrics"]["rib_dice"] == pytest.approx(metrics["rib_dice"], abs=1e-9)
