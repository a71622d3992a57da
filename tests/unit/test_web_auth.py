"""Password hashes and sessions of the web face, and the OpenAPI document against the app's routes."""

from __future__ import annotations

import base64
import hashlib

import pytest
from sqlalchemy import create_engine
from starlette.routing import Route

from dicom_node.config import ConfigError, WebUser, parse_config
from dicom_node.web import NodeFacts, build_app
from dicom_node.web.auth import Accounts, hash_password, verify_password
from dicom_node.web.openapi import openapi_document


def test_scrypt_hash_round_trip_and_salted() -> None:
    first, second = hash_password("correct horse"), hash_password("correct horse")
    assert first != second and first.startswith("scrypt$")
    assert verify_password("correct horse", first) and verify_password("correct horse", second)
    assert not verify_password("correct hors", first)
    assert not verify_password("correct horse", "scrypt$not$a$hash")
    assert not verify_password("x", "md5$whatever")


def test_pbkdf2_hashes_are_accepted() -> None:
    salt = b"0123456789abcdef"
    digest = hashlib.pbkdf2_hmac("sha256", b"pw", salt, 100_000)
    stored = f"pbkdf2_sha256$100000${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
    assert verify_password("pw", stored) and not verify_password("pW", stored)


def test_sessions_basic_credentials_and_lockout() -> None:
    accounts = Accounts([WebUser(name="ops", password_hash=hash_password("pw"))], session_hours=1, max_failed=2)
    assert accounts.check("ops", "pw") and not accounts.check("ops", "nope") and not accounts.check("nobody", "pw")
    token, session = accounts.login("ops")
    assert accounts.session(token) == session and accounts.session("forged") is None
    accounts.logout(token)
    assert accounts.session(token) is None
    token, _ = accounts.login("ops")
    accounts.users = {}  # a config reload removed the user: the session ends
    assert accounts.session(token) is None
    accounts.users = {"ops": hash_password("pw")}
    assert accounts.basic("Basic " + base64.b64encode(b"ops:pw").decode()) == "ops"
    assert accounts.basic("Basic " + base64.b64encode(b"ops:bad").decode()) is None
    assert accounts.basic("Basic !!!") is None
    accounts.failed("10.0.0.1")
    assert not accounts.locked_out("10.0.0.1")
    accounts.failed("10.0.0.1")
    assert accounts.locked_out("10.0.0.1") and not accounts.locked_out("10.0.0.2")


def test_config_refuses_a_user_without_a_known_hash_format() -> None:
    with pytest.raises(ConfigError, match=r":5: web\.users\.0\.password_hash"):
        parse_config('[web]\nenabled = true\n[[web.users]]\nname = "a"\npassword_hash = "plaintext"\n')


def test_openapi_document_names_every_route_and_only_those() -> None:
    doc = openapi_document()
    assert doc["openapi"].startswith("3.") and doc["info"]["version"]
    app = build_app(parse_config(""), create_engine("sqlite://"), NodeFacts(lambda: True, list))
    served = {
        (r.path, m.lower())
        for r in app.routes
        if isinstance(r, Route) and (r.path.startswith("/api/") or r.path in ("/healthz", "/readyz", "/metrics"))
        for m in (r.methods or set()) - {"HEAD"}
    }
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert served == documented
    for path, ops in doc["paths"].items():
        for op in ops.values():
            names = {p["name"] for p in op["parameters"] if p["in"] == "path"}
            assert names == {part[1:-1] for part in path.split("/") if part.startswith("{")}, path
            assert "200" in op["responses"]


def test_redirects_stay_on_this_server() -> None:
    from dicom_node.web.pages import local_path

    assert local_path("/jobs?state=dead") == "/jobs?state=dead"
    for bad in ("//evil.example", "/\\evil.example", "https://evil.example", "jobs", "/x\r\nSet-Cookie: a=b", ""):
        assert local_path(bad) == "/", bad
