"""Shared fixtures: a fresh database per test on SQLite and on the real PostgreSQL server."""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

# The server the postgres tests use; DICOM_NODE_TEST_PG points them elsewhere (a test points it at a closed port).
PG_ADMIN = os.environ.get("DICOM_NODE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_PROBE_TIMEOUT_S = 3


@functools.cache
def pg_probe(admin_url: str = PG_ADMIN) -> str | None:
    """Why the PostgreSQL server at ``admin_url`` cannot be used (``None``: it can); asked once per session."""
    try:
        import psycopg

        with psycopg.connect(admin_url, connect_timeout=PG_PROBE_TIMEOUT_S):
            return None
    except Exception as exc:
        return f"{type(exc).__name__}: {' '.join(str(exc).split()) or 'no detail'}"  # one line


def require_postgres(admin_url: str = PG_ADMIN) -> str:
    """``admin_url`` if its server answers; else skip the test with the reason, or fail it under ``CI``
    (CI must run the postgres tests, so a missing server there is an error, not a skip)."""
    error = pg_probe(admin_url)
    if error is None:
        return admin_url
    where = urlsplit(admin_url)
    message = f"PostgreSQL not reachable at {where.hostname}:{where.port or 5432}: {error}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI={os.environ['CI']} requires the server)", pytrace=False)
    pytest.skip(message)


def _database_url(admin_url: str, name: str) -> str:
    """The SQLAlchemy URL of database ``name`` on the server of ``admin_url``."""
    base = admin_url.rsplit("/", 1)[0]
    return base.replace("postgresql://", "postgresql+psycopg://", 1) + "/" + name


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'node.db'}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A new, empty PostgreSQL database, dropped after the test (skipped when there is no server)."""
    admin = require_postgres()
    import psycopg

    name = f"dn_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _database_url(admin, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each database test runs on both SQLite and PostgreSQL."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url"))
