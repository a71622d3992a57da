"""The ingest journal: group-committed appends, replay after a crash, torn tails ignored."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import Engine, select

from dicom_node.db import instances
from dicom_node.ingest.buffers import InstanceBuffer
from dicom_node.ingest.header import read_header
from dicom_node.ingest.index import describe
from dicom_node.ingest.ingestor import Ingestor
from dicom_node.ingest.journal import Journal
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


def test_records_of_the_previous_format_are_replayed(tmp_path: Path) -> None:
    """A node upgraded with DNJ2 segments (zlib CRC-32) on disk replays them; their torn tail is ignored."""
    import json
    import zlib

    from dicom_node.ingest.buffers import HEAD_ROOM, round_up
    from dicom_node.ingest.journal import HEAD, MAGIC_V2

    def record(meta: dict[str, int], data: bytes, crc_ok: bool = True) -> bytes:
        header = json.dumps(meta).encode()
        crc = zlib.crc32(data, zlib.crc32(header)) ^ (0 if crc_ok else 1)
        head = HEAD.pack(MAGIC_V2, len(header), crc, len(data), 7) + header
        return head.ljust(HEAD_ROOM, b"\0") + data.ljust(round_up(len(data)), b"\0")

    folder = tmp_path / "j"
    folder.mkdir()
    segment = record({"a": 1}, b"first") + record({"a": 2}, b"second") + record({"a": 3}, b"torn", crc_ok=False)
    (folder / "seg-00000007.log").write_bytes(segment + bytes(4096))
    journal = Journal(folder)
    assert journal.current == 8
    assert [(r.meta, bytes(r.data), r.segment) for r in journal.replay()] == [
        ({"a": 1}, b"first", 7),
        ({"a": 2}, b"second", 7),
    ]
    journal.close()


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


def _ingestor(tmp_path: Path, sqlite_url: str, **kwargs: object) -> tuple[Ingestor, Store, Engine]:
    from dicom_node.db import connect

    config = make_config(tmp_path / "storage", db_url=sqlite_url, port=0, **kwargs)
    store = Store(config.node.storage)
    engine = connect(sqlite_url)
    return Ingestor(config, engine, store), store, engine


def test_replay_restores_a_file_whose_row_survived_the_crash(tmp_path: Path, sqlite_url: str) -> None:
    """Rows are committed before the checkpoint flushes the files: a crash can keep the row, lose the file."""
    data = sorted((require(CT_LIDC_SLAB) / "dicom").iterdir())[0].read_bytes()
    ingestor, store, engine = _ingestor(tmp_path, sqlite_url)
    assert ingestor.keep(data, calling_ae="STORESCU", called_ae="NODE").status == 0
    assert ingestor.flush()
    with engine.connect() as conn:
        path = store.absolute(conn.execute(select(instances.c.path)).scalar_one())
    # The crash: the journal and the row are durable, the file's creation never reached the disk.
    ingestor.materializer._thread = None  # type: ignore[union-attr]  # no final checkpoint: the journal keeps its records
    ingestor.journal.close()  # type: ignore[union-attr]
    path.unlink()
    again, _, _ = _ingestor(tmp_path, sqlite_url)  # the restart replays the journal
    try:
        assert path.read_bytes() == data
    finally:
        again.close()


def test_a_copy_waiting_on_a_failed_first_copy_is_kept_itself(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resend that arrives while the first copy is being journaled must not be answered 'duplicate'
    if that first copy then fails: it is journaled instead."""
    data = sorted((require(CT_LIDC_SLAB) / "dicom").iterdir())[0].read_bytes()
    ingestor, _, engine = _ingestor(tmp_path, sqlite_url)
    journal = ingestor.journal
    assert journal is not None
    real_append = journal.append_at
    release = threading.Event()
    calls: list[int] = []

    def append_at(meta: dict[str, object], buf: InstanceBuffer) -> tuple[int, int]:
        calls.append(1)
        if len(calls) == 1:  # the first copy's disk fails, after the second copy arrived
            release.wait(10)
            raise OSError(5, "Input/output error")
        return real_append(meta, buf)

    monkeypatch.setattr(journal, "append_at", append_at)
    outcomes: dict[str, int] = {}
    first = threading.Thread(
        target=lambda: outcomes.update(first=ingestor.keep(data, calling_ae="A", called_ae="NODE").status)
    )
    first.start()
    while not calls:
        time.sleep(0.01)
    second = threading.Thread(
        target=lambda: outcomes.update(second=ingestor.keep(data, calling_ae="B", called_ae="NODE").status)
    )
    second.start()
    time.sleep(0.2)
    assert "second" not in outcomes  # it waits for the first copy's outcome
    release.set()
    first.join(10)
    second.join(10)
    try:
        assert outcomes == {"first": 0xA700, "second": 0x0000}
        assert ingestor.flush()
        with engine.connect() as conn:
            assert conn.execute(select(instances.c.calling_ae, instances.c.duplicates)).one() == ("B", 0)
    finally:
        ingestor.close()


def test_segments_are_retired_under_sustained_traffic(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node that is never idle still checkpoints: the journal does not grow without end."""
    import functools

    import numpy as np

    import dicom_node.ingest.ingestor as ingestor_module
    import dicom_node.ingest.materialize as materialize_module
    from dicom_node.synth.dicom_series import write_ct_series

    monkeypatch.setattr(ingestor_module, "Journal", functools.partial(Journal, segment_bytes=64 * 1024))
    monkeypatch.setattr(materialize_module, "BACKLOG_BYTES", 64 * 1024)
    monkeypatch.setattr(materialize_module, "CHECKPOINT_EVERY_S", 0.2)
    files = write_ct_series(np.zeros((200, 16, 16)), (1.0, 1.0, 1.0), tmp_path / "series")
    payloads = [f.read_bytes() for f in files]
    ingestor, store, _ = _ingestor(tmp_path, sqlite_url, extra_node='duplicate_policy = "overwrite"')
    folder = store.root / "journal" / "r0"
    stop = time.monotonic() + 4.0

    def send(chunk: list[bytes]) -> None:
        while time.monotonic() < stop:
            for p in chunk:
                assert ingestor.keep(p, calling_ae="STORESCU", called_ae="NODE").status == 0

    senders = [threading.Thread(target=send, args=(payloads[i::2],)) for i in range(2)]
    for t in senders:
        t.start()
    oldest: list[int] = []
    while any(t.is_alive() for t in senders):
        oldest.append(min((int(p.stem.split("-")[1]) for p in folder.glob("seg-*.log")), default=0))
        time.sleep(0.05)
    try:
        assert ingestor.journal is not None and ingestor.journal.current > 60  # hundreds of 64 KiB segments
        assert oldest[len(oldest) // 2] > 1  # retired while the traffic went on: no idle moment needed
        assert oldest[-1] > oldest[len(oldest) // 2]
    finally:
        ingestor.close()


def test_no_acknowledged_record_is_lost_under_concurrency_failures_and_recycling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six appenders, small segments recycled by a checkpointer, and 2% of writes failing (each leaves
    a gap a replay stops at): every acknowledged record is either replayed or was materialized before
    its segment was retired."""
    import random

    import dicom_node.ingest.journal as journal_module

    real_write = journal_module.pwrite_direct
    chaos = random.Random(0)
    failing = threading.Event()  # only while the appenders run: opening a journal zero-fills a segment

    def flaky_write(fd: int, direct: bool, data: memoryview, offset: int) -> tuple[int, bool]:
        if failing.is_set() and len(data) < journal_module.ZERO_CHUNK and chaos.random() < 0.02:
            time.sleep(0.005)  # a slow failure: records reserved after this one finish first
            raise OSError(5, "injected write failure")
        return real_write(fd, direct, data, offset)

    monkeypatch.setattr(journal_module, "pwrite_direct", flaky_write)
    monkeypatch.setattr(journal_module, "PREPARE_IDLE_S", 0.01)
    journal = Journal(tmp_path / "j", segment_bytes=128 * 1024)
    lock = threading.Lock()
    acknowledged: list[tuple[int, str]] = []
    to_materialize: list[tuple[int, str]] = []
    materialized: set[str] = set()
    recycled: list[str] = []
    failures = 0
    real_rename = os.rename

    def rename(src: str | Path, dst: str | Path) -> None:
        retired_spare = Path(src).name.startswith("spare-") and not Path(src).name.startswith("spare-00000000")
        if retired_spare and Path(dst).name.startswith("seg-"):
            recycled.append(Path(dst).name)
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    stop = time.monotonic() + 3.0

    def append(k: int) -> None:
        nonlocal failures
        rnd = random.Random(k)
        i = 0
        while time.monotonic() < stop:
            name = f"{k}-{i}"
            i += 1
            try:
                segment = journal.append({"id": name}, InstanceBuffer.from_bytes(bytes([k]) * rnd.randint(0, 30000)))
            except OSError:
                with lock:
                    failures += 1
                continue
            with lock:
                acknowledged.append((segment, name))
                to_materialize.append((segment, name))

    def checkpoint() -> None:  # stops 1.5 s before the appenders: what they acknowledge then must replay
        while time.monotonic() < stop - 1.5:
            time.sleep(0.05)
            with lock:
                batch = to_materialize[:]
                to_materialize.clear()
            for segment, name in batch:  # the materializer's files and rows
                materialized.add(name)
                journal.materialized(segment)
            journal.retire(journal.retirable(journal.rotate()))

    threads = [threading.Thread(target=append, args=(k,)) for k in range(6)] + [threading.Thread(target=checkpoint)]
    failing.set()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    failing.clear()
    assert not any(t.is_alive() for t in threads)  # no deadlock
    journal.close()
    replayed = {r.meta["id"] for r in Journal(tmp_path / "j", segment_bytes=128 * 1024).replay()}
    assert failures > 0 and len(acknowledged) > 200
    assert [name for _, name in acknowledged if name not in replayed and name not in materialized] == []
    assert len(recycled) > 10  # segments were reused (with older records in them) along the way


def test_records_are_read_back_from_their_segments_in_journal_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The materializer reads acknowledged records back from the journal (their buffers are reused at
    once): every byte comes back, in journal order, across rotations, reads split at READ_CHUNK."""
    from dicom_node.ingest import journal as journal_module
    from dicom_node.ingest.buffers import write_file
    from dicom_node.ingest.journal import Record

    monkeypatch.setattr(journal_module, "READ_CHUNK", 1 << 20)
    journal = Journal(tmp_path / "j", segment_bytes=4 << 20)
    payloads = [os.urandom(100_000 + 4093 * i) for i in range(30)] + [os.urandom(1_500_000), os.urandom(7)]
    records = []
    for i, payload in enumerate(payloads):
        buf = InstanceBuffer.from_bytes(payload)
        segment, offset = journal.append_at({"i": i}, buf)
        buf.release()  # its memory goes to the next instance
        records.append(Record({"i": i}, None, segment, offset, len(payload)))
    assert len({rec.segment for rec in records}) > 1  # rotated at 4 MiB
    files = tmp_path / "files"
    got = []
    for rec, data in journal.read_records(list(reversed(records))):
        got.append(rec.meta["i"])
        assert write_file(files / f"{rec.meta['i']}.dcm", data) == len(payloads[rec.meta["i"]])
    assert got == list(range(len(payloads)))
    assert all((files / f"{i}.dcm").read_bytes() == payload for i, payload in enumerate(payloads))
    journal.close()


def test_a_record_that_does_not_read_back_intact_is_refused(tmp_path: Path) -> None:
    """Once the buffer is reused the disk holds the only copy: a flipped byte stops the read-back at that
    record with an error (the materializer then keeps the segment), and nothing damaged is yielded."""
    from dicom_node.ingest.journal import HEAD_ROOM, Record

    journal = Journal(tmp_path / "j")
    payloads = [os.urandom(50_000), os.urandom(60_000)]
    records = []
    for i, payload in enumerate(payloads):
        buf = InstanceBuffer.from_bytes(payload)
        segment, offset = journal.append_at({"i": i}, buf)
        buf.release()
        records.append(Record({"i": i}, None, segment, offset, len(payload)))
    second = records[1]
    fd = os.open(tmp_path / "j" / f"seg-{second.segment:08d}.log", os.O_RDWR)
    try:
        at = second.offset + HEAD_ROOM + 1234
        os.pwrite(fd, bytes([os.pread(fd, 1, at)[0] ^ 0xFF]), at)
        os.fsync(fd)
    finally:
        os.close(fd)
    got = []
    with pytest.raises(OSError, match="does not read back intact"):
        for rec, data in journal.read_records(records):
            got.append((rec.meta["i"], bytes(data)))
    assert got == [(0, payloads[0])]
    journal.close()
