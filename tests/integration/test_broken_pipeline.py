"""A routed pipeline whose bundle cannot load: `check-config` fails and names it, and a running node's
`/readyz` stays 503 with the reason instead of reporting ready."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dicom_node.cli import main
from dicom_node.config import parse_config
from dicom_node.serve import Node
from tests.nodes import node_config_text


def _config_text(tmp_path: Path) -> str:
    empty = tmp_path / "empty-bundle"
    empty.mkdir()
    text = node_config_text(tmp_path / "storage", port=0, pipelines='["ct_lung_field", "ct_lung_nodule"]')
    return text + f'\n[routes.options.ct_lung_nodule]\nbundle = "{empty}"\n\n[web]\nenabled = true\nport = 0\n'


def test_check_config_loads_every_routed_pipeline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "node.toml"
    path.write_text(_config_text(tmp_path))
    assert main(["check-config", "--config", str(path)]) == 1
    out = capsys.readouterr().out
    assert "pipeline  ct_lung_field (route chest-ct): loaded in" in out
    assert "pipeline  ct_lung_nodule (route chest-ct): CANNOT LOAD: FileNotFoundError" in out
    assert main(["check-config", "--no-load", "--config", str(path)]) == 0


@pytest.mark.slow
def test_readyz_names_a_pipeline_that_did_not_load(tmp_path: Path) -> None:
    node = Node(parse_config(_config_text(tmp_path), tmp_path / "node.toml"))
    node.start()
    try:
        assert node.wait_ready(180)
        url = f"http://127.0.0.1:{node.web.port}/readyz"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url, timeout=10)
                status, body = 200, {}
            except urllib.error.HTTPError as exc:
                status, body = exc.code, json.loads(exc.read())
            problems = body.get("problems", [])
            if any("ct_lung_nodule" in p for p in problems) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert status == 503
        assert any(p.startswith("pipeline ct_lung_nodule of route chest-ct: FileNotFoundError") for p in problems)
        assert not any("ct_lung_field" in p for p in problems)
    finally:
        node.stop()
