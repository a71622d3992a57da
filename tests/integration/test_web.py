"""The web face of a running node: /healthz, /readyz (503 until warm, then 200), /metrics counting a push."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dicom_node.config import default_config_text, parse_config
from dicom_node.serve import Node
from tests.peers.dicomfiles import CT_LIDC_SLAB, require
from tests.peers.scu import c_store


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    text = default_config_text()
    text = text.replace("port = 11112", "port = 0", 1).replace("port = 8088", "port = 0", 1)
    text = text.replace('host = "0.0.0.0"', 'host = "127.0.0.1"', 1)
    config = parse_config(text, tmp_path / "node.toml")
    config = config.model_copy(
        update={
            "node": config.node.model_copy(update={"storage": tmp_path / "storage", "workers": 1}),
            "routes": [],  # no pipeline to warm up: the test is about the web face, not the models
            "destinations": config.destinations,
        }
    )
    running = Node(config)
    running.start()
    yield running
    running.stop()


@pytest.mark.slow
def test_probes_and_metrics(node: Node) -> None:
    base = f"http://127.0.0.1:{node.web.port}"
    status, body = _get(base + "/healthz")
    health = json.loads(body)
    assert status == 200 and health["receiver_listening"] and health["version"]
    assert node.wait_ready(120)
    deadline = time.monotonic() + 30
    while (ready := _get(base + "/readyz"))[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ready[0] == 200 and json.loads(ready[1])["ready"], ready
    files = sorted(require(CT_LIDC_SLAB / "dicom").glob("*.dcm"))
    datasets = [pydicom.dcmread(f) for f in files]
    assert all(s == 0 for s in c_store(datasets, node.receiver.port, called_aet="DICOM_NODE", calling_aet="STORESCU"))
    deadline = time.monotonic() + 30
    received = 0.0
    while time.monotonic() < deadline:
        status, body = _get(base + "/metrics")
        families = {f.name: f for f in text_string_to_metric_families(body)}
        received = families["dicom_node_instances_received"].samples[0].value
        if received >= len(files):
            break
        time.sleep(0.5)
    assert status == 200 and received == len(files)
    assert families["dicom_node_storage_free_bytes"].samples[0].value > 0
    assert "dicom_node_jobs" in families and "dicom_node_deliveries" in families


@pytest.mark.slow
def test_readyz_says_why_not(node: Node) -> None:
    node.listening = False  # as during shutdown
    status, body = _get(f"http://127.0.0.1:{node.web.port}/readyz")
    assert status == 503 and "the DICOM receiver is not listening" in json.loads(body)["problems"]
