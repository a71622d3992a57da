"""The database: tables, engine and sessions, migrations. SQLite (WAL) by default, PostgreSQL by URL."""

from dicom_node.db.engine import connect, now
from dicom_node.db.tables import (
    deliveries,
    events,
    ingest_pending,
    instances,
    jobs,
    metadata,
    results,
    series,
    studies,
)

__all__ = [
    "connect",
    "deliveries",
    "events",
    "ingest_pending",
    "instances",
    "jobs",
    "metadata",
    "now",
    "results",
    "series",
    "studies",
]
