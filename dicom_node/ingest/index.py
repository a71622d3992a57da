"""The index of kept instances: their identity, their rows, and the duplicates counted against them.

:func:`describe` turns a parsed header into the validated metadata every later step carries (the
journal record's header, the rows). :func:`record` writes the rows of a batch of kept instances: a
few statements per study and series, not per instance. :class:`Index` answers the keep path's and
the materializer's questions (which of these instances are indexed?) on a read-only engine.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

from sqlalchemy import Engine, select, update
from sqlalchemy.engine import Connection

from dicom_node.db import instances, now, series, studies
from dicom_node.db.engine import log_event, reader
from dicom_node.db.upsert import insert_ignore
from dicom_node.ingest.header import Header
from dicom_node.store import check_uid

DUPLICATE_KEPT_FIRST = "duplicate SOP instance kept as first received"

Meta = dict[str, Any]  # what :func:`describe` returns
Row = tuple[Meta, str, int]  # (meta, path relative to the store, size)
OnKnown = Literal["overwrite", "skip", "duplicate"]  # what :func:`record` does with an instance already recorded


def describe(header: Header, calling_ae: str, called_ae: str) -> Meta:
    """The validated identity of an instance and what its rows need (raises InvalidUID)."""
    return {
        "sop_uid": check_uid(header.sop_uid, "SOPInstanceUID"),
        "series_uid": check_uid(header.series_uid, "SeriesInstanceUID"),
        "study_uid": check_uid(header.study_uid, "StudyInstanceUID"),
        "sop_class": check_uid(header.sop_class or header.meta_sop_class, "SOPClassUID"),
        "transfer_syntax": check_uid(header.transfer_syntax, "TransferSyntaxUID"),
        "calling_ae": calling_ae,
        "called_ae": called_ae,
        "received_at": now(),
        "patient_id": header.patient_id[:64] or None,
        "accession": header.accession[:64] or None,
        "modality": header.modality[:16] or None,
        "description": header.description[:128] or None,
    }


class Index:
    """The instances table as the receive path reads it, and the duplicates it counts there."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.reader = reader(engine)

    def recorded(self, sop_uids: list[str]) -> set[str]:
        """Those of ``sop_uids`` the index holds."""
        with self.reader.connect() as conn:
            return set(conn.execute(select(instances.c.sop_uid).where(instances.c.sop_uid.in_(sop_uids))).scalars())

    def count_duplicate(self, sop_uid: str) -> None:
        """One more copy of an indexed instance arrived (in its own transaction)."""
        with self.engine.begin() as conn:
            add_duplicates(conn, sop_uid, 1)

    def log_duplicate(self, sop_uid: str, calling_ae: str) -> None:
        log_event(self.engine, "duplicate", DUPLICATE_KEPT_FIRST, calling_ae=calling_ae, sop_uid=sop_uid)


def add_duplicates(conn: Connection, sop_uid: str, count: int) -> None:
    """Add ``count`` to the duplicates of an indexed instance."""
    conn.execute(
        update(instances).where(instances.c.sop_uid == sop_uid).values(duplicates=instances.c.duplicates + count)
    )


def record(conn: Connection, rows: list[Row], *, on_known: OnKnown) -> list[Meta]:
    """Rows for a batch of kept instances: a few statements per study and series, not per instance.

    ``rows`` holds (meta from :func:`describe`, path relative to the store, size). An instance that
    is already recorded is, by ``on_known``: updated in place ("overwrite": the overwrite policy),
    skipped ("skip": a journal replay re-applying its own records), or left as it is and returned
    with the conflicts ("duplicate": keep-first, the row written first wins, whichever transaction
    wrote it). An instance of a series that was already routed opens a new revision of it.

    Studies, series and instances are created with inserts that cannot race (:func:`insert_ignore`),
    in a fixed order (by UID), so receiver processes writing the same new study neither fail on a
    unique key nor deadlock. Returns the meta of instances another transaction recorded between the
    lookup and the insert (copies handled by another process): the caller counts them as duplicates.
    """
    latest: dict[str, Row] = {}
    for row in rows:  # the same instance twice in one batch: the later one wins
        latest[row[0]["sop_uid"]] = row
    known = {
        r.sop_uid: r.id
        for r in conn.execute(select(instances.c.sop_uid, instances.c.id).where(instances.c.sop_uid.in_(list(latest))))
    }
    duplicates: list[Meta] = []
    if on_known != "overwrite":
        if on_known == "duplicate":
            duplicates = [row[0] for uid, row in latest.items() if uid in known]
        latest = {uid: row for uid, row in latest.items() if uid not in known}
    if not latest:
        return duplicates
    by_study: dict[str, list[Meta]] = {}
    by_series: dict[str, list[Meta]] = {}
    for m, _, _ in latest.values():
        m.setdefault("received_at", now())
        by_study.setdefault(m["study_uid"], []).append(m)
        by_series.setdefault(m["series_uid"], []).append(m)
    _record_studies(conn, by_study)
    revisions = _record_series(conn, by_series)
    inserted, conflicts = _record_instances(conn, latest, known, revisions)
    for series_uid, count in Counter(latest[uid][0]["series_uid"] for uid in inserted).items():
        conn.execute(
            update(series)
            .where(series.c.series_uid == series_uid)
            .values(instance_count=series.c.instance_count + count)
        )
    return duplicates + conflicts


def _record_studies(conn: Connection, by_study: dict[str, list[Meta]]) -> None:
    """Create each study, or move its last-seen time on."""
    for study_uid in sorted(by_study):
        metas = by_study[study_uid]
        t = max(float(m["received_at"]) for m in metas)
        first = metas[0]
        values = dict(
            study_uid=study_uid,
            patient_id=first.get("patient_id"),
            accession=first.get("accession"),
            first_seen=t,
            last_seen=t,
        )
        if not insert_ignore(conn, studies, [values], "study_uid"):
            conn.execute(
                update(studies).where(studies.c.study_uid == study_uid, studies.c.last_seen < t).values(last_seen=t)
            )


def _record_series(conn: Connection, by_series: dict[str, list[Meta]]) -> dict[str, int]:
    """Create or update each series (receiving again, last seen now); returns its revision.

    The instance count grows once the instances are inserted (:func:`record`).
    """
    revisions: dict[str, int] = {}
    for series_uid in sorted(by_series):
        metas = by_series[series_uid]
        t = max(float(m["received_at"]) for m in metas)
        first = metas[0]
        values = dict(
            series_uid=series_uid,
            study_uid=first["study_uid"],
            modality=first.get("modality"),
            description=first.get("description"),
            calling_ae=first["calling_ae"],
            called_ae=first["called_ae"],
            instance_count=0,
            first_seen=t,
            last_seen=t,
            state="receiving",
            revision=1,
        )
        if insert_ignore(conn, series, [values], "series_uid"):
            revisions[series_uid] = 1
            continue
        current = conn.execute(
            select(series.c.id, series.c.state, series.c.revision, series.c.last_seen)
            .where(series.c.series_uid == series_uid)
            .with_for_update()
        ).one()
        # An instance after the series was routed starts a new revision: new jobs, not a silent drop.
        revisions[series_uid] = current.revision if current.state == "receiving" else current.revision + 1
        conn.execute(
            update(series)
            .where(series.c.id == current.id)
            .values(last_seen=max(t, float(current.last_seen)), state="receiving", revision=revisions[series_uid])
        )
    return revisions


def _record_instances(
    conn: Connection, latest: dict[str, Row], known: dict[str, int], revisions: dict[str, int]
) -> tuple[set[str], list[Meta]]:
    """Insert the new instances' rows in one statement; update those already indexed in place.

    Returns the SOP UIDs inserted, and the meta of those another transaction inserted first.
    """
    inserts: list[dict[str, Any]] = []
    updates: list[tuple[int, dict[str, Any]]] = []
    for uid, (m, relative, size) in latest.items():
        values = dict(
            series_uid=m["series_uid"],
            study_uid=m["study_uid"],
            sop_class_uid=m["sop_class"],
            transfer_syntax=m["transfer_syntax"],
            path=relative,
            size=size,
            received_at=float(m["received_at"]),
            revision=revisions[m["series_uid"]],
            calling_ae=m["calling_ae"],
        )
        if uid in known:
            updates.append((known[uid], values))
        else:
            inserts.append(dict(sop_uid=uid, duplicates=0, **values))
    inserted = insert_ignore(conn, instances, inserts, "sop_uid")
    conflicts = [latest[row["sop_uid"]][0] for row in inserts if row["sop_uid"] not in inserted]
    for row_id, values in updates:
        conn.execute(update(instances).where(instances.c.id == row_id).values(**values))
    return inserted, conflicts
