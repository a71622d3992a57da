"""Inserts that cannot race: ``INSERT ... ON CONFLICT DO NOTHING`` on PostgreSQL and SQLite.

A ``SELECT ... FOR UPDATE`` of a row that does not exist yet locks nothing, so two processes that both
find a study missing both insert it and one fails on the unique key. These helpers let the database
decide instead: the conflicting insert does nothing (on PostgreSQL it waits for the other transaction
and then does nothing), and the caller learns which rows it created.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Column, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection


def _on_conflict_do_nothing(conn: Connection, table: Table, columns: list[Column[Any]]) -> Any:
    name = conn.dialect.name
    if name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=columns)
    if name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=columns)
    raise NotImplementedError(f"insert_ignore on {name}")  # pragma: no cover - the two supported databases


def insert_ignore(conn: Connection, table: Table, rows: Sequence[dict[str, Any]], key: str) -> set[Any]:
    """Insert ``rows`` into ``table``, skipping those whose unique column ``key`` is already taken.

    Returns the ``key`` values of the rows this call inserted; the others existed (or were inserted by
    a concurrent transaction, which on PostgreSQL this call waited for).
    """
    if not rows:
        return set()
    column: Column[Any] = table.c[key]
    stmt = _on_conflict_do_nothing(conn, table, [column])
    result = conn.execute(stmt.returning(column), list(rows))
    return set(result.scalars())


def insert_missing(conn: Connection, table: Table, rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> None:
    """Insert ``rows`` whose unique (or primary) key ``keys`` is not taken yet; the others are left as they are."""
    if rows:
        conn.execute(_on_conflict_do_nothing(conn, table, [table.c[k] for k in keys]), list(rows))


__all__ = ["insert_ignore", "insert_missing"]
