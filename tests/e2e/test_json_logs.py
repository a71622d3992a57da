"""`serve --log-format json`: every line the node and its worker write is one JSON object."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_live_config import _echo
from tests.nodes import ServeProcess, node_config_text, wait_for
from tests.peers.orthanc import free_port

pytestmark = pytest.mark.slow


def test_json_log_lines(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "node.toml"
    config.write_text(node_config_text(tmp_path / "storage", port=port, workers=1))
    node = ServeProcess(config, tmp_path / "node.log")
    log = node.log_path.open("ab")
    cmd = [sys.executable, "-m", "dicom_node.cli", "serve", "--config", str(config), "--log-format", "json"]
    node.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: _echo(port, "ECHOSCU"), timeout=60, what=f"C-ECHO\n{node.log_tail()}")
        wait_for(lambda: "ready on cpu" in node.log_tail(100), timeout=120, what=f"worker warm\n{node.log_tail()}")
    finally:
        node.stop()
    records = [json.loads(line) for line in node.log_path.read_text().splitlines() if line.strip()]
    assert {"time", "level", "process", "logger", "message"} <= set(records[0])
    assert any(r["process"] == "MainProcess" and r["message"].startswith("node NODE up") for r in records)
    assert any(r["process"] == "worker-0" and "ready on cpu" in r["message"] for r in records)
