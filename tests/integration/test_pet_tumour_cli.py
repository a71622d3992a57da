"""``dicom-node evaluate pet-tumour`` and ``dicom-node train pet-tumour`` run from the command line: the
evaluation scores the network against the baselines on the seeds asked for (without touching the bundle's
card when they are not the held-out set), and a quick training writes a bundle the pipeline loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dicom_node.cli import main
from dicom_node.pipelines.pet_tumour.model import DEFAULT_BUNDLE, load_net

pytestmark = pytest.mark.slow


def _json_out(text: str) -> dict:
    return json.loads(text[text.index("{") :])


def test_evaluate_pet_tumour_on_one_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not (DEFAULT_BUNDLE / "models" / "model.pt").exists():
        pytest.skip("the shipped pet_tumour bundle is not in this checkout")
    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    card = (bundle / "docs" / "README.md").read_text()
    assert main(["evaluate", "pet-tumour", "--bundle", str(bundle), "--seeds", "5000"]) == 0
    metrics = _json_out(capsys.readouterr().out)
    assert metrics["heldout_seeds"] == [5000]
    net, suv25 = metrics["methods"]["network"], metrics["methods"]["suv25"]
    assert net["scans"] == 1 and net["lesions"] >= 2 and net["detectable_lesions"] <= net["lesions"]
    assert net["false_calls_per_scan"] < suv25["false_calls_per_scan"]
    assert net["dice_mean"] > suv25["dice_mean"]
    assert (bundle / "docs" / "README.md").read_text() == card  # one seed never rewrites the card


def test_train_pet_tumour_quick_writes_a_loadable_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "quick"
    assert main(["train", "pet-tumour", "--quick", "--quiet", "--out", str(out)]) == 0
    meta = _json_out(capsys.readouterr().out)
    assert meta["name"] == "pet_tumour" and meta["training"]["steps"] >= 1 and meta["training"]["seeds"] == "0-1"
    assert load_net(out, "cpu").threshold == meta["threshold"]
