"""The ingest journal: group-committed appends, replay after a crash, torn tails ignored."""

from __future__ import annotations

import threading
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import select

from dicom_node.buffers import InstanceBuffer
from dicom_node.db import instances
from dicom_node.journal import Journal
from dicom_node.net.header import read_header
from dicom_node.net.ingest import Ingestor, describe
from dicom_node.store import Store
from tests.nodes import make_config
from tests.peers.dicomfiles import CT_LIDC_SLAB, require


def test_concurrent_appends_replay_in_full(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j", segment_bytes=64 * 1024)
    payloads = [bytes([i]) * (5000 + i) for i in range(40)]

    def append(chunk: list[bytes]) -> None:
        for p in chunk:
            journal.append({"n": len(p)}, InstanceBuffer.from_bytes(p))

    threads = [threading.Thread(target=append, args=(payloads[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(journal.segments()) > 1  # rotated at 64 KiB
    replayed = sorted(bytes(r.data) for r in journal.replay())
    assert replayed == sorted(payloads)
    closed = journal.rotate()
    journal.retire(closed)
    assert list(journal.replay()) == []


def test_torn_tail_is_ignored(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    journal.append({"a": 1}, InstanceBuffer.from_bytes(b"first"))
    journal.append({"a": 2}, InstanceBuffer.from_bytes(b"second"))
    path = tmp_path / "j" / f"seg-{journal.current:08d}.log"
    journal.close()
    raw = bytearray(path.read_bytes())
    end = raw.find(b"second") + len(b"second")
    raw[end - 3 : end] = b"XXX"  # the last record's bytes were only half written when the power went
    path.write_bytes(bytes(raw))
    again = Journal(tmp_path / "j")
    assert [bytes(r.data) for r in again.replay()] == [b"first"]


def test_instances_journaled_before_a_crash_are_materialized_on_restart(tmp_path: Path, sqlite_url: str) -> None:
    config = make_config(tmp_path / "storage", db_url=sqlite_url, port=0)
    store = Store(config.node.storage)
    files = sorted((require(CT_LIDC_SLAB) / "dicom").iterdir())[:3]
    # What a receiver had made durable and acknowledged when it was killed: journal records, no files, no rows.
    journal = Journal(store.root / "journal" / "r0")
    for f in files:
        data = f.read_bytes()
        journal.append(describe(read_header(data), "STORESCU", "NODE"), InstanceBuffer.from_bytes(data))
    journal.close()

    from dicom_node.db import connect

    engine = connect(sqlite_url)
    ingestor = Ingestor(config, engine, store)  # starting the receiver replays the journal
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(instances.c.sop_uid, instances.c.path)).all()
        assert sorted(r.sop_uid for r in rows) == sorted(str(dcmread(f).SOPInstanceUID) for f in files)
        for row in rows:
            assert store.absolute(row.path).read_bytes() in [f.read_bytes() for f in files]
        assert list((store.root / "journal" / "r0").glob("seg-*.log")) == [
            store.root / "journal" / "r0" / f"seg-{ingestor.journal.current:08d}.log"  # type: ignore[union-attr]
        ]
    finally:
        ingestor.close()


def test_recycled_segments_never_replay_their_old_records(tmp_path: Path) -> None:
    folder = tmp_path / "j"
    journal = Journal(folder, segment_bytes=64 * 1024)
    for i in range(12):  # 12 KiB records: several segments
        journal.append({"old": i}, InstanceBuffer.from_bytes(bytes([i + 1]) * 9000))
    journal.retire(journal.rotate())  # all materialized: segments become spares
    spares = sorted(int(p.stem.split("-")[1]) for p in folder.glob("spare-*.log"))
    assert spares and max(spares) > 0 and not list(journal.replay())
    journal.append({"new": 1}, InstanceBuffer.from_bytes(b"fresh"))
    journal.rotate()  # the next segment is a recycled one
    journal.append({"new": 2}, InstanceBuffer.from_bytes(b"fresh"))
    recycled = folder / f"seg-{journal.current:08d}.log"
    journal.close()
    stale = recycled.read_bytes()
    assert any(bytes([i + 1]) * 9000 in stale for i in range(12))  # old records still lie after the new one
    again = Journal(folder, segment_bytes=64 * 1024)  # a restart: numbering stays above every spare
    try:
        assert [r.meta for r in again.replay()] == [{"new": 1}, {"new": 2}]
        assert again.current > max(spares)
    finally:
        again.close()
