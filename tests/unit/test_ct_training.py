"""Lung-nodule training: metric helpers, and a seconds-long smoke run that writes a loadable bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dicom_node.findings import Category, Evaluation
from dicom_node.imaging.ct import load_ct_series
from dicom_node.pipelines.ct_lung_nodule import CtLungNodule
from dicom_node.training.ct_lung_nodule.evaluation import auc, froc
from dicom_node.training.ct_lung_nodule.recipe import train

ROOT = Path(__file__).resolve().parents[2]
LIDC = (ROOT / ".." / "shared" / "data" / "real" / "ct_lidc0002_slab12" / "dicom").resolve()


def test_froc_counts_false_positives_per_scan() -> None:
    # 2 scans, 4 true nodules; scores interleave TPs and FPs.
    dets = [(0.9, 0, 1), (0.8, 0, 0), (0.7, 1, 1), (0.6, 1, 0), (0.5, 1, 0), (0.4, 0, 2), (0.3, 1, 0)]
    s = froc(dets, n_positive=4, n_scans=2, rates=(0.25, 0.5, 1.0, 2.0))
    assert s == {"0.25": 0.25, "0.5": 0.5, "1.0": 0.5, "2.0": 0.75}


def test_auc() -> None:
    assert auc(np.array([0.9, 0.8, 0.1]), np.array([1, 1, 0])) == 1.0
    assert auc(np.array([0.1, 0.9]), np.array([1, 0])) == 0.0
    assert np.isnan(auc(np.array([0.5]), np.array([1])))


@pytest.mark.slow
@pytest.mark.skipif(not LIDC.is_dir(), reason="shared real data not present")
def test_quick_training_writes_a_bundle_the_pipeline_runs(tmp_path: Path) -> None:
    summary = train(tmp_path, seed=3, quick=True, progress=False)
    assert summary["quick"] is True and summary["nodules"] > 0
    meta = json.loads((tmp_path / "configs" / "metadata.json").read_text())
    assert meta["networks"] == ["unet", "resmtnet", "fpr3d", "fpr3d_2"] and "not for diagnosis" in meta["intended_use"]
    assert meta["training"]["fpr3d_2"]["levels"][-1] == [0.03, 0.02]  # the second member's low seed level
    from dicom_node.networks.bundle import load_bundle

    assert sorted(load_bundle(tmp_path).networks) == ["fpr3d", "fpr3d_2", "resmtnet", "unet"]
    assert (tmp_path / "models" / "model.pt").stat().st_size < 5_000_000
    assert "not for diagnosis" in (tmp_path / "docs" / "README.md").read_text()
    pipe = CtLungNodule(bundle=str(tmp_path))
    vol = load_ct_series(sorted(LIDC.glob("*.dcm")))
    result = pipe.run(vol, "cpu")
    assert result.pipeline == "ct_lung_nodule" and result.version == meta["version"]
    assert result.conclusions
    for f in result.findings:  # an untrained model may or may not find anything; the contract must hold
        assert f.category in (Category.NODULE, Category.MASS) and f.mask.shape == vol.shape
        if f.category is Category.MASS:  # outside the classifier's range: not graded
            assert not f.evaluations
            continue
        assert f.evaluations[Evaluation.COMPOSITION] in ("solid", "part_solid", "ground_glass")
        assert f.evaluations[Evaluation.MALIGNANCY_LIKELIHOOD] in ("low", "intermediate", "high")
