"""Table definitions. Times are UNIX seconds (float) so both databases compare them the same way.

Changing a table means adding a migration under ``db/migrations/versions``.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

UID = String(64)

studies = Table(
    "studies",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("study_uid", UID, nullable=False, unique=True),
    Column("patient_id", String(64)),
    Column("accession", String(64)),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
)

series = Table(
    "series",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("series_uid", UID, nullable=False, unique=True),
    Column("study_uid", UID, nullable=False, index=True),
    Column("modality", String(16)),
    Column("description", String(128)),
    Column("calling_ae", String(16)),
    Column("called_ae", String(16)),
    Column("instance_count", Integer, nullable=False, default=0),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    # receiving -> routed | unrouted | returned (all its instances are the node's own results, sent back);
    # a later instance bumps revision and goes back to receiving
    Column("state", String(16), nullable=False, default="receiving"),
    Column("revision", Integer, nullable=False, default=1),
    Column("routed_at", Float),
    Column("routing_note", Text),
    Index("ix_series_state_last_seen", "state", "last_seen"),
)

instances = Table(
    "instances",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("sop_uid", UID, nullable=False, unique=True),
    Column("series_uid", UID, nullable=False, index=True),
    Column("study_uid", UID, nullable=False),
    Column("sop_class_uid", UID, nullable=False),
    Column("transfer_syntax", UID, nullable=False),
    Column("path", String(512), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("received_at", Float, nullable=False),
    Column("revision", Integer, nullable=False),
    Column("calling_ae", String(16)),
    Column("duplicates", Integer, nullable=False, default=0),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("series_uid", UID, nullable=False, index=True),
    Column("study_uid", UID, nullable=False),
    Column("route", String(64), nullable=False),
    Column("pipeline", String(64), nullable=False),
    Column("revision", Integer, nullable=False),
    # queued -> running -> succeeded | failed (waits run_after) -> ... -> dead; cancelled by an admin
    Column("state", String(16), nullable=False, default="queued"),
    Column("attempts", Integer, nullable=False, default=0),
    Column("max_attempts", Integer, nullable=False),
    Column("run_after", Float, nullable=False),
    Column("lease_until", Float),
    Column("worker", String(128)),
    Column("last_error", Text),
    Column("summary", Text),
    Column("timings", JSON),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
    UniqueConstraint("series_uid", "route", "pipeline", "revision", name="uq_jobs_work"),
    Index("ix_jobs_state_run_after", "state", "run_after"),
)

results = Table(
    "results",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("job_id", Integer, ForeignKey("jobs.id"), nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("sop_uid", UID, nullable=False, unique=True),
    Column("sop_class_uid", UID, nullable=False),
    Column("path", String(512), nullable=False),
    Column("created_at", Float, nullable=False),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("result_id", Integer, ForeignKey("results.id"), nullable=False),
    Column("destination", String(64), nullable=False),
    # pending -> sent | dead
    Column("state", String(16), nullable=False, default="pending"),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_try", Float, nullable=False),
    Column("give_up_at", Float, nullable=False),
    Column("last_error", Text),
    Column("created_at", Float, nullable=False),
    Column("sent_at", Float),
    UniqueConstraint("result_id", "destination", name="uq_deliveries_target"),
    Index("ix_deliveries_state_next_try", "state", "next_try"),
)

# Series with instances journaled by a receiver (any process) and not yet materialized into rows: the
# stability sweep does not route them. One row per (receiver journal, series); see ingest/pending.py.
ingest_pending = Table(
    "ingest_pending",
    metadata,
    Column("receiver", String(64), primary_key=True),
    Column("series_uid", UID, primary_key=True),
    Column("study_uid", UID, nullable=False, index=True),
    Column("since", Float, nullable=False),
    Column("error", Text),  # the last materialization failure, if any (no patient data)
    Index("ix_ingest_pending_series_uid", "series_uid"),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", Float, nullable=False, index=True),
    Column("level", String(8), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("message", Text, nullable=False),
    Column("calling_ae", String(16)),
    Column("sop_uid", String(128)),
    Column("details", JSON),
)
