"""The REST API over real HTTP (uvicorn on loopback) and a real database: login, 401 without it, CSRF on
POST, job retry and delivery retry-now with their audit rows, lockout after failed logins."""

from __future__ import annotations

import base64
import http.cookiejar
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select

from dicom_node.config import NodeConfig, parse_config
from dicom_node.db import connect, deliveries, events, jobs, results, studies
from dicom_node.web import NodeFacts, WebServer
from dicom_node.web.auth import hash_password
from tests.peers.dicomfiles import CT_LIDC_SLAB, require
from tests.peers.orthanc import free_port

PASSWORD = "Tr0ub4dor&3"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Engine]]:
    text = f"""
[node]
storage = "{tmp_path / "storage"}"
[web]
enabled = true
port = 0
max_failed_logins = 3
[[web.users]]
name = "ops"
password_hash = "{hash_password(PASSWORD)}"

[[destinations]]
name = "closed"
ae_title = "NOBODY"
host = "127.0.0.1"
port = {free_port()}
"""
    config: NodeConfig = parse_config(text)
    (tmp_path / "storage").mkdir()
    engine = connect(config.node.database_url())
    _seed(engine)
    server = WebServer(config, engine, NodeFacts(lambda: True, list))
    server.start()
    yield f"http://127.0.0.1:{server.port}", engine
    server.stop()
    engine.dispose()


def _seed(engine: Engine) -> None:
    """One study with a dead job and a succeeded job whose result waits for a delivery."""
    t = time.time()
    with engine.begin() as conn:
        conn.execute(
            insert(studies).values(study_uid="1.2.3", patient_id="PAT-7", accession="ACC-9", first_seen=t, last_seen=t)
        )
        common = dict(
            series_uid="1.2.3.4",
            study_uid="1.2.3",
            route="chest",
            revision=1,
            max_attempts=2,
            run_after=t,
            created_at=t,
        )
        conn.execute(insert(jobs).values(id=1, pipeline="p1", state="dead", attempts=2, last_error="boom", **common))
        conn.execute(insert(jobs).values(id=2, pipeline="p2", state="succeeded", attempts=1, **common))
        conn.execute(
            insert(results).values(
                id=1, job_id=2, kind="sr", sop_uid="1.2.3.9", sop_class_uid="1.2", path="r/x.dcm", created_at=t
            )
        )
        conn.execute(
            insert(deliveries).values(
                id=1,
                result_id=1,
                destination="pacs",
                state="pending",
                attempts=3,
                next_try=t + 3600,
                give_up_at=t + 7200,
                last_error="Connection refused",
                created_at=t,
            )
        )


def _call(
    opener: urllib.request.OpenerDirector, url: str, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=data, headers=headers or {}, method="POST" if data is not None else "GET"
    )
    try:
        with opener.open(request, timeout=30) as reply:
            body = reply.read().decode()
            return reply.status, json.loads(body) if reply.headers.get_content_type() == "application/json" else body
    except urllib.error.HTTPError as exc:
        body = exc.read().decode()
        return exc.code, json.loads(body) if exc.headers.get_content_type() == "application/json" else body


def _login(base: str, password: str = PASSWORD) -> tuple[urllib.request.OpenerDirector, http.cookiejar.CookieJar, int]:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    status, _ = _call(opener, base + "/login", data=f"user=ops&password={urllib.parse.quote(password)}&next=/".encode())
    return opener, jar, status


def test_api_needs_a_login_and_serves_the_status_to_a_user(served: tuple[str, Engine]) -> None:
    base, _ = served
    plain = urllib.request.build_opener()
    for path in ("/api/status", "/api/jobs", "/api/openapi.json"):
        assert _call(plain, base + path)[0] == 401
    assert _call(plain, base + "/healthz")[0] == 200  # probes stay open
    basic = {"Authorization": "Basic " + base64.b64encode(f"ops:{PASSWORD}".encode()).decode()}
    status, body = _call(plain, base + "/api/status", headers=basic)
    assert status == 200 and body["jobs"] == {"dead": 1, "succeeded": 1} and body["node"]["version"]
    status, body = _call(plain, base + "/api/jobs?state=dead", headers=basic)
    assert [(j["id"], j["patient_id"], j["accession"]) for j in body] == [(1, "PAT-7", "ACC-9")]
    assert _call(plain, base + "/api/jobs?state=bogus", headers=basic)[0] == 400
    assert _call(plain, base + "/api/studies/9.9", headers=basic)[0] == 404
    status, body = _call(plain, base + "/api/studies/1.2.3", headers=basic)
    assert status == 200 and len(body["jobs"]) == 2 and body["deliveries"][0]["last_error"] == "Connection refused"


def test_session_cookie_csrf_and_audited_actions(served: tuple[str, Engine]) -> None:
    base, engine = served
    opener, jar, status = _login(base)
    assert status == 200  # the redirect to the overview was followed
    (cookie,) = list(jar)
    assert cookie.has_nonstandard_attr("HttpOnly") and cookie.get_nonstandard_attr("SameSite") == "strict"
    assert _call(opener, base + "/api/jobs/1/retry", data=b"")[0] == 403  # no CSRF token
    csrf = _call(opener, base + "/api/me")[1]["csrf_token"]
    token = {"X-CSRF-Token": csrf}
    assert _call(opener, base + "/api/jobs/1/retry", data=b"", headers=token) == (200, {"done": True, "was": "dead"})
    assert _call(opener, base + "/api/jobs/2/retry", data=b"", headers=token)[0] == 409  # succeeded
    assert _call(opener, base + "/api/jobs/2/rerun", data=b"", headers=token) == (
        200,
        {"done": True, "was": "succeeded"},
    )
    assert _call(opener, base + "/api/jobs/77/cancel", data=b"", headers=token)[0] == 404
    before = time.time()
    assert _call(opener, base + "/api/deliveries/1/retry-now", data=b"", headers=token)[0] == 200
    with engine.connect() as conn:
        assert conn.execute(select(jobs.c.state).where(jobs.c.id.in_((1, 2)))).scalars().all() == ["queued", "queued"]
        assert before <= conn.execute(select(deliveries.c.next_try)).scalar_one() <= time.time()  # was an hour away
        audit = [r.message for r in conn.execute(select(events).where(events.c.kind == "admin").order_by(events.c.id))]
    assert audit == [
        "ops: job 1 retry: done",
        "ops: job 2 retry: refused (state succeeded)",
        "ops: job 2 rerun: done",
        "ops: job 77 cancel: no such item",
        "ops: delivery 1 retry-now: done",
    ]
    status, page = _call(opener, base + "/events?kind=admin")
    assert status == 200 and "ops: job 1 retry: done" in page


def test_config_read_out_and_destination_echo(served: tuple[str, Engine]) -> None:
    base, engine = served
    opener, _, _ = _login(base)
    token = {"X-CSRF-Token": _call(opener, base + "/api/me")[1]["csrf_token"]}
    status, body = _call(opener, base + "/api/config")
    assert status == 200 and [d["name"] for d in body["running"]["destinations"]] == ["closed"]
    assert _call(opener, base + "/api/destinations/nowhere/echo", data=b"", headers=token)[0] == 404
    status, body = _call(opener, base + "/api/destinations/closed/echo", data=b"", headers=token)
    assert status == 200 and body["done"] is False and "Connection refused" in body["message"]
    with engine.connect() as conn:
        audit = conn.execute(select(events.c.message).where(events.c.kind == "admin")).scalars().all()
    assert audit == ["ops: echo closed: failed"]


def test_route_test_of_an_uploaded_file(served: tuple[str, Engine]) -> None:
    base, _ = served
    plain = urllib.request.build_opener()
    basic = {"Authorization": "Basic " + base64.b64encode(f"ops:{PASSWORD}".encode()).decode()}
    dicom = sorted((require(CT_LIDC_SLAB) / "dicom").iterdir())[0].read_bytes()
    assert _call(plain, base + "/api/route-test", data=dicom)[0] == 401
    status, body = _call(plain, base + "/api/route-test", data=dicom, headers=basic)
    assert status == 200 and body == {"matches": [], "routes": []}  # this config has no routes
    status, body = _call(plain, base + "/api/route-test", data=b"not dicom at all", headers=basic)
    assert status == 400 and body["error"].startswith("not readable as DICOM")


def test_wrong_password_is_refused_and_repeated_failures_lock_out(served: tuple[str, Engine]) -> None:
    base, _ = served
    for _ in range(3):
        _, jar, status = _login(base, "wrong")
        assert status == 401 and not list(jar)
    assert _login(base)[2] == 429  # the right password, but this address is locked out for the window
