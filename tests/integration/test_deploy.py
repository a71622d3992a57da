"""Deployment: the systemd unit verifies, and the package carries what it needs outside the checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
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
        [str(entry), "check-config", "--config", "node.toml"], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert (REPO / "config" / "node.example.toml").resolve() == (REPO / "dicom_node" / "node.example.toml")
