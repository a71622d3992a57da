"""Reloading the config file: what is applied live, what needs a restart, and a bad file changing nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dicom_node.config import load_config
from dicom_node.live_config import LiveConfig, running_node

BASE = """
[node]
port = 11112
storage = "{storage}"

[[peers]]
ae_title = "CT1"
"""


def test_reload_applies_peers_names_restart_sections_and_keeps_a_bad_file_out(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(BASE.format(storage=tmp_path / "s"))
    (tmp_path / "s").mkdir()
    live = LiveConfig(path, load_config(path), tmp_path / "s")
    live.write_marker()
    assert live.state()["file_differs"] is False
    applied: list[dict[str, Any]] = []

    path.write_text(BASE.format(storage=tmp_path / "s").replace("11112", "11113") + '[[peers]]\nae_title = "MR1"\n')
    assert live.state()["file_differs"] is True
    ok, message = live.reload(applied.append, "test")
    assert ok and message == "config reloaded (test): peers applied; node changed and need(s) a restart"
    assert [p.ae_title for p in applied[0]["peers"]] == ["CT1", "MR1"] and set(applied[0]) == {"peers"}
    assert live.state()["file_differs"] is True  # the port change still waits for a restart

    good = path.read_text()
    path.write_text(good.replace('ae_title = "MR1"', 'ae_title = "BAD\\\\AE"'))
    ok, message = live.reload(applied.append, "test")
    assert not ok and len(applied) == 1 and f"{path}:9: peers.1.ae_title" in message
    assert live.state()["last_reload"]["ok"] is False and "file_error" in live.state()

    running = running_node(tmp_path / "s")
    assert running is not None and running["config_path"] == str(path.resolve()) and running["file_differs"] is True
    live.remove_marker()
    assert running_node(tmp_path / "s") is None
