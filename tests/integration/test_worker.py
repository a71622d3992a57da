"""The worker warms up its encoders and keeps one warmed-up instance of each routed pipeline."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dicom_node.config import parse_config
from dicom_node.db.engine import connect
from dicom_node.store import Store
from dicom_node.worker import Worker
from tests.nodes import node_config_text
from tests.peers.orthanc import free_port

BROKEN_ROUTE = """
[[routes]]
name = "broken"
pipelines = ["ct_lung_nodule"]
[routes.match]
Modality = "MR"
[routes.options.ct_lung_nodule]
bundle = "{bundle}"
"""


def test_warm_up_loads_each_routed_model_once_and_a_broken_one_only_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "no-such-bundle"
    text = node_config_text(
        tmp_path / "storage", pipelines='["ct_lung_nodule", "ct_lung_field"]', dest_port=free_port()
    )
    config = parse_config(text + BROKEN_ROUTE.format(bundle=missing))
    worker = Worker(config, connect(config.node.database_url()), Store(config.node.storage))
    with caplog.at_level(logging.INFO, logger="dicom_node.worker"):
        worker.warm_up()

    nodule = worker.pipeline("ct_lung_nodule", {})
    assert nodule is worker.pipeline("ct_lung_nodule", {})  # kept between jobs
    assert getattr(nodule, "_model", None) is not None  # its networks were loaded by the warm-up
    assert worker.pipeline("ct_lung_nodule", {"bundle": str(missing)}) is not nodule  # other options, other instance
    messages = [r.getMessage() for r in caplog.records]
    assert any("ct_lung_nodule (route chest-ct) ready on cpu" in m for m in messages)
    assert any("ct_lung_field (route chest-ct) ready on cpu" in m for m in messages)
    assert any("encoders (seg, sr) ready" in m for m in messages)  # the destination's kinds, encoded once
    broken = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(broken) == 1 and "route broken" in broken[0].getMessage() and str(missing) in broken[0].getMessage()


@pytest.mark.slow  # a whole node: two spawned workers import torch and warm up their pipelines
def test_the_node_knows_when_its_workers_are_ready(tmp_path: Path) -> None:
    from dicom_node.serve import Node

    config = parse_config(node_config_text(tmp_path / "storage", pipelines='["ct_lung_field"]', workers=2))
    node = Node(config, log_level="WARNING")
    node.start()
    try:
        assert node.wait_ready(120)  # each spawned worker warmed up and said so
        assert len(node.workers) == 2 and all(p.is_alive() for p in node.workers)
    finally:
        node.stop()


def test_a_sites_own_bundle_in_node_models_comes_first(tmp_path: Path) -> None:
    """``[node] models`` (relative to the config file): ``<models>/<pipeline>`` is used when it exists, the
    shipped bundle otherwise, and a route's own ``bundle`` option wins over both."""
    import json
    import shutil

    from dicom_node.config import load_config
    from dicom_node.pipelines.ct_lung_nodule import DEFAULT_BUNDLE

    site = tmp_path / "site-models" / "ct_lung_nodule"
    shutil.copytree(DEFAULT_BUNDLE, site)
    meta = json.loads((site / "configs" / "metadata.json").read_text())
    (site / "configs" / "metadata.json").write_text(json.dumps({**meta, "version": "9.9.9-site"}))
    config_file = tmp_path / "node.toml"
    config_file.write_text('[node]\nstorage = "storage"\nmodels = "site-models"\n')
    config = load_config(config_file)
    assert config.node.models == tmp_path / "site-models"
    worker = Worker(config, connect(config.node.database_url()), Store(config.node.storage))
    assert worker.pipeline("ct_lung_nodule", {}).version == "9.9.9-site"
    assert worker.pipeline("ct_lung_field", {}).name == "ct_lung_field"  # no site folder: unchanged
    assert worker.pipeline("ct_lung_nodule", {"bundle": str(DEFAULT_BUNDLE)}).version == meta["version"]
