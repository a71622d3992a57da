"""Deployment: the systemd unit verifies, and the package carries what it needs outside the checkout."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "dicom-node.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """``systemd-analyze verify`` on the shipped unit, its ExecStart pointed at this install's entry point
    (verify checks that the program exists): no error and no unknown or ignored setting."""
    entry = Path(sys.executable).parent / "dicom-node"
    assert entry.exists(), f"no dicom-node entry point beside {sys.executable}"
    text = UNIT.read_text().replace("/opt/dicom-node/venv/bin/dicom-node", str(entry))
    unit = tmp_path / "dicom-node.service"
    unit.write_text(text)
    run = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "Unknown" not in out and "ignoring" not in out, out
    for setting in ("User=dicom-node", "ProtectSystem=strict", "ReadWritePaths=/var/lib/dicom-node", "NoNewPrivileges"):
        assert setting in text


def test_version_and_example_config_come_from_the_package(tmp_path: Path) -> None:
    """``--version`` and ``init`` work from any folder: the example config is package data."""
    entry = Path(sys.executable).parent / "dicom-node"
    version = subprocess.run([str(entry), "--version"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("dicom-node "), version.stderr
    init = subprocess.run([str(entry), "init", "node.toml"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert init.returncode == 0, init.stderr
    written = (tmp_path / "node.toml").read_text().splitlines()
    example = (REPO / "dicom_node" / "node.example.toml").read_text().splitlines()
    assert written[:3] == example[:3] and len(written) == len(example)
    check = subprocess.run(
        [str(entry), "check-config", "--no-load", "--config", "node.toml"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert (REPO / "config" / "node.example.toml").resolve() == (REPO / "dicom_node" / "node.example.toml")


@pytest.mark.slow
def test_wheel_installs_and_serves_from_any_folder(tmp_path: Path) -> None:
    """Build the wheel, install it (with its dependencies) into a fresh venv, and run it outside the checkout:
    --version, init, check-config, and serve until every routed pipeline has warmed up on its shipped bundle."""
    import torch

    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "--no-deps", "-q", "-w", str(wheels), str(REPO)], check=True, timeout=600)
    wheel = next(wheels.glob("dicom_node-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    torch_spec = f"torch=={torch.__version__.split('+')[0]}"
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", torch_spec, str(wheel)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    node = str(venv / "bin" / "dicom-node")
    site = tmp_path / "site"
    site.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([node, *args], capture_output=True, text=True, cwd=site, timeout=300)

    assert run("--version").stdout.startswith("dicom-node ")
    assert run("init", "node.toml", "--storage", "storage").returncode == 0
    config = site / "node.toml"
    config.write_text(config.read_text().replace("port = 11112", "port = 0", 1).replace("port = 8088", "port = 0", 1))
    check = run("check-config", "--config", "node.toml")
    assert check.returncode == 0, check.stdout + check.stderr
    log = site / "serve.log"
    with log.open("w") as out:
        serve = subprocess.Popen(
            [node, "serve", "--config", "node.toml"], cwd=site, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and serve.poll() is None:
                text = log.read_text()
                if "did not warm up" in text or all(f"pipeline {p} " in text for p in ("ct_lung_nodule", "us_lung")):
                    break
                time.sleep(1)
        finally:
            serve.send_signal(signal.SIGTERM)
            serve.wait(timeout=120)
    text = log.read_text()
    assert "did not warm up" not in text, text[-3000:]
    for name in ("ct_lung_nodule", "us_lung"):
        assert re.search(rf"pipeline {name} \(route [^)]*\) ready on cpu", text), text[-3000:]
    assert str(REPO) not in text  # nothing came from the checkout
