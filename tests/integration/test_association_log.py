"""One log line and one event per association (calling AE, address, instances, outcome), counted by
`/metrics` as `dicom_node_associations_total{outcome}` with each rejection reason; no patient data in them."""

from __future__ import annotations

import logging
import subprocess
import time
import urllib.request
from pathlib import Path

import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dicom_node.config import parse_config
from dicom_node.serve import Node
from tests.nodes import node_config_text, tcp_env
from tests.peers.dicomfiles import CT_LIDC_SLAB, require
from tests.peers.scu import c_store


def _echo(port: int, aet: str) -> int:
    args = ["echoscu", "-aet", aet, "-aec", "NODE", "127.0.0.1", str(port)]
    return subprocess.run(args, capture_output=True, env=tcp_env(), timeout=30).returncode


def _associations(web_port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/metrics", timeout=10) as reply:
        families = {f.name: f for f in text_string_to_metric_families(reply.read().decode())}
    return {s.labels["outcome"]: s.value for s in families["dicom_node_associations"].samples}


@pytest.mark.parametrize("receiver", ["native", "pynetdicom"])
def test_each_association_is_logged_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, receiver: str
) -> None:
    text = node_config_text(tmp_path / "storage", port=0, workers=0, extra_node=f'receiver = "{receiver}"')
    text += "\n[web]\nenabled = true\nport = 0\n"
    node = Node(parse_config(text))
    node.start()
    caplog.set_level(logging.INFO, logger="dicom_node.net.outcomes")
    try:
        port = node.receiver.port
        assert _echo(port, "ECHOSCU") == 0
        assert _echo(port, "NOBODY") != 0
        files = sorted((require(CT_LIDC_SLAB) / "dicom").iterdir())[:3]
        datasets = [pydicom.dcmread(f) for f in files]
        assert c_store(datasets, port, called_aet="NODE", calling_aet="STORESCU") == [0, 0, 0]
        deadline = time.monotonic() + 10
        while (counts := _associations(node.web.port)).get("released", 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        node.stop()
    assert counts == {"released": 2.0, "rejected: unknown calling AE": 1.0}
    lines = [r.getMessage() for r in caplog.records if r.name == "dicom_node.net.outcomes"]
    assert any(line.startswith("association from STORESCU (127.0.0.1): 3 instance(s) in ") for line in lines)
    assert any(line.startswith("association from ECHOSCU (127.0.0.1): 0 instance(s)") for line in lines)
    assert any(line.startswith("association from NOBODY (127.0.0.1)") and line.endswith("rejected") for line in lines)
    patient = str(datasets[0].PatientID)
    assert all(patient not in r.getMessage() for r in caplog.records)  # no patient ID in any log line at INFO
