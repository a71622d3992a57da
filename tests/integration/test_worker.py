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
