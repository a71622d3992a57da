"""Live configuration of a real `dicom-node serve`: SIGHUP reloads the peers (an open association carries on),
a bad file changes nothing and the error names its line, `status` and `/api/config` say when the file on disk
differs from the running config, and SIGTERM after all this leaves no process of the group behind."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from pynetdicom import AE

from tests.e2e.test_dashboard import PASSWORD, web_section
from tests.nodes import ServeProcess, node_config_text, tcp_env, wait_for
from tests.peers.dicomfiles import CT_LIDC_SLAB, require
from tests.peers.orthanc import free_port

pytestmark = pytest.mark.slow


def _echo(port: int, aet: str) -> bool:
    args = ["echoscu", "-aet", aet, "-aec", "NODE", "127.0.0.1", str(port)]
    return subprocess.run(args, capture_output=True, env=tcp_env(), timeout=30).returncode == 0


def _status(config: Path) -> str:
    args = [sys.executable, "-m", "dicom_node.cli", "status", "--config", str(config)]
    return subprocess.run(args, capture_output=True, text=True, timeout=60).stdout


def _api_config(web_port: int, user: str = "ops", password: str = PASSWORD) -> dict[str, object]:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{web_port}/api/config", headers={"Authorization": f"Basic {auth}"}
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        return dict(json.loads(reply.read()))


def _alive_in_group(pgid: int) -> list[str]:
    """The processes of group ``pgid`` that still run (a zombie has ended: whether it is reaped depends on the
    container's init, not on the node)."""
    ps = subprocess.run(["ps", "-o", "pid=,stat=,args=", "-g", str(pgid)], capture_output=True, text=True)
    return [line for line in ps.stdout.splitlines() if line.split()[1:2] and not line.split()[1].startswith("Z")]


def test_sighup_reloads_peers_keeps_associations_and_refuses_a_bad_file(tmp_path: Path) -> None:
    port, web_port = free_port(), free_port()
    config = tmp_path / "node.toml"
    text = node_config_text(tmp_path / "storage", port=port, workers=0) + web_section(web_port)
    config.write_text(text)
    node = ServeProcess(config, tmp_path / "node.log")
    node.start()
    assert node.proc is not None
    try:
        wait_for(lambda: _echo(port, "ECHOSCU"), timeout=60, what=f"C-ECHO\n{node.log_tail()}")
        status = _status(config)
        assert f"up: pid {node.proc.pid}" in status and "differs" not in status

        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", port, ae_title="NODE")
        assert assoc.is_established

        config.write_text(text.replace('[[peers]]\nae_title = "ECHOSCU"\n', ""))  # ECHOSCU no longer allowed
        assert "differs from the running config" in _status(config)
        assert _api_config(web_port)["file_differs"] is True
        assert _echo(port, "ECHOSCU")  # nothing changes before the reload

        os.kill(node.proc.pid, signal.SIGHUP)
        wait_for(lambda: "config reloaded (SIGHUP): peers applied" in node.log_tail(200), timeout=30, what="reload")
        assert not _echo(port, "ECHOSCU")
        assert _echo(port, "STORESCU")
        assert assoc.send_c_echo().Status == 0  # the association opened before the reload carries on
        assoc.release()
        assert _api_config(web_port)["file_differs"] is False
        assert "differs" not in _status(config)

        add = [sys.executable, "-m", "dicom_node.cli", "user", "add", "eve", "--config", str(config)]
        assert subprocess.run(add, input="eve-pw\n", capture_output=True, text=True, timeout=60).returncode == 0
        with pytest.raises(urllib.error.HTTPError, match="401"):
            _api_config(web_port, "eve", "eve-pw")  # not before the reload
        os.kill(node.proc.pid, signal.SIGHUP)
        wait_for(lambda: "web.users applied" in node.log_tail(200), timeout=30, what="users reload")
        assert _api_config(web_port, "eve", "eve-pw")["file_differs"] is False
        text = config.read_text()

        lines = config.read_text().splitlines()
        bad_line = next(i for i, line in enumerate(lines, 1) if line.startswith("quiet_period_s"))
        lines[bad_line - 1] = "quiet_period_s = -3"
        config.write_text("\n".join(lines) + "\n")
        os.kill(node.proc.pid, signal.SIGHUP)
        wait_for(lambda: "config NOT reloaded" in node.log_tail(200), timeout=30, what="refused reload")
        assert f"node.toml:{bad_line}: intake.quiet_period_s" in node.log_tail(200)
        assert _echo(port, "STORESCU") and not _echo(port, "ECHOSCU")  # still the last good config
        state = _api_config(web_port)
        assert state["file_differs"] is True and f":{bad_line}:" in str(state["file_error"])
        assert node.proc.poll() is None
        config.write_text(text)  # a good file again (`status` itself needs a loadable config)
    finally:
        node.stop()
    assert node.proc.returncode == 0, node.log_tail()
    wait_for(lambda: not _alive_in_group(node.proc.pid), timeout=10, what="the node's processes to end")
    assert "NOT running" in _status(config)


def test_sighup_reloads_routes_and_replaces_the_workers(tmp_path: Path) -> None:
    port = free_port()
    storage = tmp_path / "storage"
    config = tmp_path / "node.toml"
    text = node_config_text(storage, port=port, workers=1)
    config.write_text(text)
    node = ServeProcess(config, tmp_path / "node.log")
    node.start()
    assert node.proc is not None
    try:
        wait_for(lambda: "ready on cpu" in node.log_tail(200), timeout=120, what=f"worker warm\n{node.log_tail()}")
        config.write_text(text.replace('Modality = "CT"', 'Modality = "MR"'))
        os.kill(node.proc.pid, signal.SIGHUP)
        wait_for(lambda: "config reloaded (SIGHUP): routes applied" in node.log_tail(200), timeout=30, what="reload")
        wait_for(
            lambda: node.log_tail(400).count("worker-0 dicom_node.worker: worker ") >= 2, timeout=60, what="new worker"
        )
        files = sorted((require(CT_LIDC_SLAB) / "dicom").iterdir())[:4]
        push = ["storescu", "-aet", "STORESCU", "-aec", "NODE", "127.0.0.1", str(port), *map(str, files)]
        assert subprocess.run(push, capture_output=True, env=tcp_env(), timeout=120).returncode == 0
        wait_for(
            lambda: "unrouted series" in _status(config), timeout=30, what="the CT to be unrouted under the new route"
        )
        assert "Modality='CT' does not match 'MR'" in _status(config)
    finally:
        node.stop()
    wait_for(lambda: not _alive_in_group(node.proc.pid), timeout=10, what="the node's processes to end")  # retired too
