"""The dashboard of a real `dicom-node serve`, driven in headless Chromium (Debian's, via Playwright).

A CT slab pushed with storescu becomes a job whose results cannot be delivered (the destination's port is
closed, and it gives up within seconds): the admin logs in, finds the study and its job, presses "Retry now"
on the dead delivery and sees it pending again, with the action in the audit trail. A wrong password is
refused, and the API answers 401 without a session.
"""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import create_engine, select

from dicom_node.db import deliveries
from dicom_node.web.auth import hash_password
from tests.nodes import ServeProcess, node_config_text, tcp_env, wait_for
from tests.peers.dicomfiles import CT_LIDC_SLAB, require
from tests.peers.orthanc import free_port

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "dashboard-pw-1"


def web_section(port: int, password: str = PASSWORD) -> str:
    """The ``[web]`` tables appended to a test config: one user, ``ops``."""
    return f"""
[web]
enabled = true
port = {port}

[[web.users]]
name = "ops"
password_hash = "{hash_password(password)}"
"""


@pytest.fixture
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def test_login_see_the_job_and_retry_a_dead_delivery(tmp_path: Path, browser: object) -> None:
    port, web_port = free_port(), free_port()
    storage = tmp_path / "storage"
    text = node_config_text(storage, port=port, dest_port=free_port(), retry_for_hours=0.0005) + web_section(web_port)
    (tmp_path / "node.toml").write_text(text)
    node = ServeProcess(tmp_path / "node.toml", tmp_path / "node.log")
    node.start()
    base = f"http://127.0.0.1:{web_port}"
    try:
        wait_for(lambda: _status(base + "/readyz") == 200, timeout=120, what=f"readyz 200\n{node.log_tail()}")
        assert _status(base + "/api/status") == 401
        files = sorted((require(CT_LIDC_SLAB) / "dicom").iterdir())
        push = ["storescu", "-aet", "STORESCU", "-aec", "NODE", "127.0.0.1", str(port), *map(str, files)]
        assert subprocess.run(push, capture_output=True, env=tcp_env(), timeout=300).returncode == 0
        engine = create_engine(f"sqlite:///{storage / 'node.db'}")

        def dead_deliveries() -> list[int]:
            with engine.connect() as conn:
                return [r.id for r in conn.execute(select(deliveries.c.id).where(deliveries.c.state == "dead"))]

        dead = wait_for(dead_deliveries, timeout=180, what=f"dead deliveries\n{node.log_tail()}")
        assert isinstance(dead, list)
        header = dcmread(files[0], stop_before_pixels=True)
        log_text = node.log_path.read_text()
        assert f"association from STORESCU (127.0.0.1): {len(files)} instance(s) in " in log_text
        for identifying in (str(header.PatientID), str(header.PatientName), str(header.AccessionNumber)):
            assert not identifying or identifying not in log_text  # no patient data in the log at INFO

        page = browser.new_page()  # type: ignore[attr-defined]
        page.goto(base + "/jobs")  # not logged in: sent to the login page
        assert "/login" in page.url
        page.fill("#user", "ops")
        page.fill("#password", "not the password")
        page.click("#login")
        assert "wrong user name or password" in page.inner_text("#error")
        page.fill("#user", "ops")
        page.fill("#password", PASSWORD)
        page.click("#login")
        assert page.url.endswith("/jobs")
        assert "chest-ct" in page.inner_text("main") and "succeeded" in page.inner_text("main")

        page.click("text=Studies")
        page.click("text=timeline")
        timeline = page.inner_text("main")
        assert "Series (received, routed)" in timeline and "chest-ct" in timeline and "succeeded" in timeline
        assert "association with ORTHANC@127.0.0.1" in timeline and "Connection refused" in timeline  # the real cause

        page.click("text=Deliveries")
        row = page.locator("tr", has=page.locator(f"td:text-is('{dead[0]}')"))
        assert "dead" in row.inner_text()
        row.locator("button", has_text="Retry now").click()
        assert f"delivery {dead[0]}: retry-now done (was dead)" in page.inner_text("#message")
        with engine.connect() as conn:
            state = conn.execute(select(deliveries.c.state).where(deliveries.c.id == dead[0])).scalar_one()
            attempts = conn.execute(select(deliveries.c.attempts).where(deliveries.c.id == dead[0])).scalar_one()
        assert state == "pending" or attempts > 0  # pending again (it may already have failed once more)

        page.click("text=Events")
        page.click("text=audit trail only")
        assert f"ops: delivery {dead[0]} retry-now: done" in page.inner_text("main")

        config = tmp_path / "node.toml"
        config.write_text(config.read_text() + '\n[[peers]]\nae_title = "NEWMODALITY"\n')
        page.click("text=Config")
        page.set_input_files("#rt-file", str(files[0]))
        page.fill("#rt-ae", "STORESCU")
        page.click("#rt-go")
        page.wait_for_function("document.getElementById('rt-out').textContent.length > 0")
        assert page.inner_text("#rt-out").startswith("-> chest-ct")
        page.locator("tr", has=page.locator("td:text-is('pacs')")).locator("button", has_text="Echo").click()
        assert "pacs (ORTHANC@127.0.0.1" in page.inner_text("#message")
        assert "cannot connect: Connection refused" in page.inner_text("#message")
        page.click("text=Overview")
        assert "the file on disk differs from the running config" in page.inner_text("#config-state")
        page.click("text=Reload config")
        assert "config reloaded (ops): peers applied" in page.inner_text("#message")
        assert "differs" not in page.inner_text("#config-state")
        shots = os.environ.get("DICOM_NODE_SCREENSHOTS")  # docs/: `DICOM_NODE_SCREENSHOTS=docs pytest ...`
        if shots:
            page.screenshot(path=str(Path(shots) / "dashboard-overview.png"), full_page=True)
            page.goto(base + "/deliveries")
            page.screenshot(path=str(Path(shots) / "dashboard-deliveries.png"), full_page=True)
    finally:
        node.stop()
