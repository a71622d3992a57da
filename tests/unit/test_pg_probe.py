"""A PostgreSQL server that is not there skips the postgres tests with the reason, except under CI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_postgres

REPO = Path(__file__).resolve().parents[2]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens there once the socket is closed


def test_a_missing_server_skips_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    port = _closed_port()
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception) as info:
        require_postgres(f"postgresql://postgres@127.0.0.1:{port}/postgres")
    assert str(info.value).startswith(f"PostgreSQL not reachable at 127.0.0.1:{port}: "), str(info.value)


def test_a_missing_server_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    port = _closed_port()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=f"PostgreSQL not reachable at 127.0.0.1:{port}: .*CI=true"):
        require_postgres(f"postgresql://postgres@127.0.0.1:{port}/postgres")


FIXTURE_USER = """
def test_uses_the_database(db_url):
    assert db_url
"""


@pytest.mark.parametrize(("ci", "outcome"), [("", "1 passed, 1 skipped"), ("true", "1 passed, 1 error")])
def test_the_db_url_fixture_follows_the_env_override(tmp_path: Path, ci: str, outcome: str) -> None:
    """End to end: DICOM_NODE_TEST_PG at a closed port; the sqlite case runs, the postgres case skips
    (or errors under CI)."""
    (tmp_path / "test_user.py").write_text(FIXTURE_USER)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env["DICOM_NODE_TEST_PG"] = f"postgresql://postgres@127.0.0.1:{_closed_port()}/postgres"
    if ci:
        env["CI"] = ci
    options = [
        "-q",
        "-rs",
        "-p",
        "tests.conftest",
        "-p",
        "no:cacheprovider",
        "--rootdir",
        str(tmp_path),
        "-c",
        os.devnull,
    ]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *options, str(tmp_path / "test_user.py")],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )
    assert outcome in result.stdout, result.stdout + result.stderr
    assert "PostgreSQL not reachable at 127.0.0.1:" in result.stdout, result.stdout
