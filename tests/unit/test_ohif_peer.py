"""The OHIF viewer test's own rules (tests/peers/ohif.py): a missing npm is a clear skip locally and a
failure under CI, and the viewer's configuration names no origin but the loopback proxy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.peers.ohif import OHIF_VERSION, OhifUnavailable, app_config, ohif_dist, require_peer


def test_without_npm_the_build_is_unavailable_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm on it
    with pytest.raises(OhifUnavailable, match="npm is not installed"):
        ohif_dist(OHIF_VERSION, cache=tmp_path / "cache")


def test_a_cached_build_is_used_without_npm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dist = tmp_path / OHIF_VERSION / "dist"
    dist.mkdir(parents=True)
    (dist / "index.html").write_text("<html></html>")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert ohif_dist(OHIF_VERSION, cache=tmp_path) == dist


def test_missing_peer_skips_locally_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    require_peer(True, "never raised")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="npm is not installed"):
        require_peer(False, "npm is not installed")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"npm is not installed \(CI=true requires it\)"):
        require_peer(False, "npm is not installed")


def test_app_config_names_only_the_proxy() -> None:
    origin = "http://127.0.0.1:4321"
    config = app_config(origin)
    urls = re.findall(r"https?://[^\"']+", config)
    assert urls and all(u.startswith(origin + "/dicom-web") for u in urls)
    assert '"defaultDataSourceName": "orthanc"' in config
