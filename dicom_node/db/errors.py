"""Database errors as one log line without patient data.

A SQLAlchemy error prints the statement's parameters (patient ID, accession) and the driver's detail
lines (PostgreSQL's ``DETAIL: Failing row contains (...)`` lists every column of the row). Engines
are created with ``hide_parameters``; :func:`describe_error` keeps only the driver error's class and
first line, which name the constraint or condition, not the values.
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, StatementError


def describe_error(exc: BaseException) -> str:
    """``ExceptionClass: first line of its message``, for database errors without the row's values."""
    if isinstance(exc, StatementError) and exc.orig is not None:
        orig = exc.orig
        first = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
        kind = type(orig).__name__
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            kind += " (connection lost)"
        return f"{kind}: {first}" if first else kind
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


__all__ = ["describe_error"]
