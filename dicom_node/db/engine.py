"""Engines for SQLite (WAL, durable commits) and PostgreSQL, with the schema migrated on connect."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, insert
from sqlalchemy.engine import Connection

log = logging.getLogger(__name__)


def now() -> float:
    """Wall-clock time as stored in every table."""
    return time.time()


def connect(url: str, *, migrate: bool = True, synchronous: str = "FULL") -> Engine:
    """Create an engine for ``url`` and bring its schema up to date.

    SQLite files get WAL journaling, ``synchronous=FULL`` (a commit is on disk when it returns) and a
    generous busy timeout so receiver threads, the scheduler and worker processes can share the file.
    Transactions take the write lock at once (``BEGIN IMMEDIATE``) unless the connection carries the
    execution option ``readonly=True`` (see :func:`reader`): readers never wait for writers in WAL mode.
    ``synchronous="NORMAL"`` is for writers whose durability comes from elsewhere (the ingest journal).
    """
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False}, hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy's BEGIN take the write lock at once: no deadlocks on lock upgrade.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={synchronous}")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("readonly") else "BEGIN IMMEDIATE")

    else:
        # hide_parameters: an error's message must not carry a row's patient ID or accession into a log.
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, hide_parameters=True)
    if migrate:
        from dicom_node.db.migrate import upgrade

        upgrade(engine)
    return engine


def reader(engine: Engine) -> Engine:
    """The same engine for read-only work: on SQLite its transactions do not take the write lock."""
    return engine.execution_options(readonly=True)


def record_event(
    conn: Connection,
    kind: str,
    message: str,
    *,
    level: str = "INFO",
    calling_ae: str | None = None,
    sop_uid: str | None = None,
    **details: Any,
) -> None:
    """Append one row to the events table inside the caller's transaction."""
    from dicom_node.db.tables import events

    conn.execute(
        insert(events).values(
            at=now(),
            level=level,
            kind=kind,
            message=message,
            calling_ae=calling_ae,
            sop_uid=sop_uid[:128] if sop_uid else None,
            details=details or None,
        )
    )


def log_event(engine: Engine, kind: str, message: str, **kwargs: Any) -> None:
    """Record an event in its own transaction; never raises (an event must not break the caller)."""
    try:
        with engine.begin() as conn:
            record_event(conn, kind, message, **kwargs)
    except Exception as exc:  # the database itself may be what failed
        from dicom_node.db.errors import describe_error

        log.error("could not record event %s: %s (%s)", kind, message, describe_error(exc))


__all__ = ["connect", "log_event", "now", "reader", "record_event"]
