"""A full disk under the journal (issue 18 C), on a real small file system (tmpfs, mounted as root).

The free-disk watermark counts what is acknowledged but not yet written as files; no new journal
segment is made while the disk is short; a materializer that hits ENOSPC catches up once space is
freed; a restart on a full disk replays before it makes any segment.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, func, select

import dicom_node.ingest.ingestor as ingestor_module
import dicom_node.ingest.materialize as materialize_module
from dicom_node.db import connect, events, instances
from dicom_node.ingest.buffers import InstanceBuffer
from dicom_node.ingest.header import read_header
from dicom_node.ingest.index import describe
from dicom_node.ingest.ingestor import Ingestor
from dicom_node.ingest.journal import Journal
from dicom_node.store import Store
from dicom_node.synth.dicom_series import write_ct_series
from tests.nodes import make_config, wait_for

MIB = 1024 * 1024
SEGMENT = 4 * MIB
WATERMARK_MB = 4
OUT_OF_RESOURCES = 0xA700


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 40 MiB tmpfs: a disk that really fills up (ENOSPC)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def payloads(tmp_path: Path) -> list[bytes]:
    """120 CT slices of about 130 KB: 15 MiB."""
    files = write_ct_series(np.zeros((120, 256, 256)), (1.0, 1.0, 1.0), tmp_path / "series")
    return [f.read_bytes() for f in files]


@pytest.fixture(autouse=True)
def small_journal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingestor_module, "Journal", functools.partial(Journal, segment_bytes=SEGMENT))
    monkeypatch.setattr(materialize_module, "RETRY_BASE_S", 0.05)
    monkeypatch.setattr(materialize_module, "RETRY_MAX_S", 0.3)
    monkeypatch.setattr(materialize_module, "CHECKPOINT_EVERY_S", 0.2)


def _fill(path: Path, leave_mb: float) -> None:
    """A ballast file that leaves ``leave_mb`` MiB free (0: fill until ENOSPC)."""
    free = os.statvfs(path.parent).f_bavail * os.statvfs(path.parent).f_frsize
    size = max(int(free - leave_mb * MIB), 0)
    with open(path, "wb") as fh:
        chunk = bytes(MIB)
        try:
            while size > 0:
                size -= fh.write(chunk[: min(size, MIB)])
            if leave_mb == 0:
                while True:
                    fh.write(chunk)
                    fh.flush()
        except OSError:
            pass


def _ingestor(disk: Path, tmp_path: Path) -> tuple[Ingestor, Store, Engine]:
    url = f"sqlite:///{tmp_path / 'node.db'}"  # the database is on another disk
    config = make_config(disk / "storage", db_url=url, port=0, min_free_disk_mb=WATERMARK_MB)
    store = Store(config.node.storage)
    engine = connect(url)
    ingestor = Ingestor(config, engine, store)
    folder = store.root / "journal" / "r0"  # its spare segments are ready before the disk fills
    wait_for(lambda: len(list(folder.glob("spare-*.log"))) >= 2, 20, 0.05, "spare segments prepared")
    return ingestor, store, engine


def _uid(data: bytes) -> str:
    return str(describe(read_header(data), "A", "B")["sop_uid"])


def _check_kept(store: Store, engine: Engine, payloads: dict[str, bytes], *, exact: bool = True) -> None:
    """Every one of ``payloads`` (by SOP UID) has its row and its file: byte for byte when ``exact``,
    else the same data set (sent over the network, the file meta is the sender's own)."""
    from pydicom import dcmread

    with engine.connect() as conn:
        rows = dict(conn.execute(select(instances.c.sop_uid, instances.c.path)).all())
    missing = sorted(set(payloads) - set(rows))
    assert not missing, f"{len(missing)} acknowledged instance(s) have no row"
    for uid, data in payloads.items():
        kept = store.absolute(rows[uid]).read_bytes()
        if exact:
            assert kept == data
        else:
            ds = dcmread(store.absolute(rows[uid]))
            assert ds.SOPInstanceUID == uid and ds.PixelData == dcmread(io.BytesIO(data)).PixelData


def test_the_watermark_counts_what_is_not_yet_written(
    disk: Path, tmp_path: Path, payloads: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """With 12 MiB free over a 4 MiB watermark, a 15 MiB burst is acknowledged only as far as its files
    fit; the rest is refused with 0xA700, one log line and one event each; every acknowledged instance
    gets its file and row; freed space takes the rest."""
    ingestor, store, engine = _ingestor(disk, tmp_path)
    try:
        _fill(disk / "ballast", leave_mb=WATERMARK_MB + 8)
        gate = threading.Event()  # the materializer lags behind the burst
        real = materialize_module.Materializer.materialize

        def slow(self: materialize_module.Materializer, *args: object, **kwargs: object) -> None:
            gate.wait(30)
            real(self, *args, **kwargs)  # type: ignore[arg-type]

        materialize_module.Materializer.materialize = slow  # type: ignore[method-assign]
        try:
            caplog.set_level(logging.WARNING)
            caplog.clear()
            acked: dict[str, bytes] = {}
            refused: list[bytes] = []
            for data in payloads:
                status = ingestor.keep(data, calling_ae="STORESCU", called_ae="NODE").status
                assert status in (0, OUT_OF_RESOURCES)
                (refused.append(data) if status else acked.update({_uid(data): data}))
            refusals = [r for r in caplog.records if "refused with 0xA700" in r.getMessage()]
        finally:
            materialize_module.Materializer.materialize = real  # type: ignore[method-assign]
            gate.set()
        assert acked and refused, (len(acked), len(refused))
        assert sum(map(len, acked.values())) <= 9 * MIB  # what fitted over the watermark
        assert len(refusals) == len(refused)
        assert not any(r.exc_info for r in caplog.records)  # one line each, no traceback
        assert ingestor.flush(30)
        _check_kept(store, engine, acked)
        with engine.connect() as conn:
            count = conn.execute(select(func.count()).select_from(events).where(events.c.kind == "disk_full"))
            assert count.scalar_one() == len(refused)
        (disk / "ballast").unlink()  # space freed: the refused ones are taken now
        for data in refused:
            assert ingestor.keep(data, calling_ae="STORESCU", called_ae="NODE").status == 0
            acked[_uid(data)] = data
        assert ingestor.flush(30)
        _check_kept(store, engine, acked)
    finally:
        ingestor.close()


def test_the_materializer_catches_up_once_space_is_freed(disk: Path, tmp_path: Path, payloads: list[bytes]) -> None:
    """Something else fills the disk after instances were acknowledged: their files fail with ENOSPC,
    are retried, and written once the space is back; no new journal segment took it meanwhile."""
    ingestor, store, engine = _ingestor(disk, tmp_path)
    folder = store.root / "journal" / "r0"
    try:
        gate = threading.Event()
        real = materialize_module.Materializer.materialize

        def held(self: materialize_module.Materializer, *args: object, **kwargs: object) -> None:
            gate.wait(30)
            real(self, *args, **kwargs)  # type: ignore[arg-type]

        materialize_module.Materializer.materialize = held  # type: ignore[method-assign]
        try:
            acked = {_uid(d): d for d in payloads[:60]}
            for data in acked.values():
                assert ingestor.keep(data, calling_ae="STORESCU", called_ae="NODE").status == 0
            _fill(disk / "ballast", leave_mb=0)  # another program takes every block
        finally:
            materialize_module.Materializer.materialize = real  # type: ignore[method-assign]
            gate.set()
        wait_for(lambda: ingestor.materializer._failures >= 2, 20, 0.05, "materializer retries")  # type: ignore[union-attr]
        assert ingestor.keep(payloads[60], calling_ae="STORESCU", called_ae="NODE").status == OUT_OF_RESOURCES
        # A spare being prepared when the disk filled is given up, not finished.
        wait_for(lambda: not list(folder.glob(".prepare-*")), 5, 0.05, "the half-prepared spare given up")
        (disk / "ballast").unlink()
        assert ingestor.flush(30)
        _check_kept(store, engine, acked)
    finally:
        ingestor.close()


def test_a_restart_on_a_full_disk_replays(disk: Path, tmp_path: Path, payloads: list[bytes]) -> None:
    """Acknowledged records in the journal, the disk full but for their files: the start replays them
    without making a segment first, leaves no partial segment, and refuses new instances until space is freed."""
    url = f"sqlite:///{tmp_path / 'node.db'}"
    config = make_config(disk / "storage", db_url=url, port=0, min_free_disk_mb=WATERMARK_MB)
    store = Store(config.node.storage)
    journal = Journal(store.root / "journal" / "r0", segment_bytes=SEGMENT)  # what a killed receiver left
    acked = {_uid(d): d for d in payloads[:50]}  # about 6 MiB
    for data in acked.values():
        journal.append(describe(read_header(data), "STORESCU", "NODE"), InstanceBuffer.from_bytes(data))
    journal.close()
    for spare in (store.root / "journal" / "r0").glob("spare-*.log"):
        spare.unlink()  # none prepared yet: the start would have to make its segment
    _fill(disk / "ballast", leave_mb=7.5)  # the files fit; a 4 MiB segment on top would not
    engine = connect(url)
    ingestor = Ingestor(config, engine, store)  # used to exit: the new segment was zero-filled first
    try:
        _check_kept(store, engine, acked)
        folder = store.root / "journal" / "r0"
        assert not list(folder.glob(".prepare-*.tmp"))
        for seg in folder.glob("seg-*.log"):
            assert seg.stat().st_size == SEGMENT  # whole segments only, never a partial one
        assert ingestor.keep(payloads[50], calling_ae="STORESCU", called_ae="NODE").status == OUT_OF_RESOURCES
        (disk / "ballast").unlink()
        assert ingestor.keep(payloads[50], calling_ae="STORESCU", called_ae="NODE").status == 0
        assert ingestor.flush(30)
        _check_kept(store, engine, {**acked, _uid(payloads[50]): payloads[50]})
    finally:
        ingestor.close()


@pytest.mark.parametrize("receiver", ["native", "pynetdicom"])
def test_a_burst_over_the_network_fills_the_disk(
    disk: Path, tmp_path: Path, payloads: list[bytes], receiver: str, caplog: pytest.LogCaptureFixture
) -> None:
    """storescu over loopback until refused: each 0xA700 is one log line (no traceback) and one event;
    every instance answered Success has its file and row; after the ballast goes, the rest are taken.

    (dcmtk's storescu, not pynetdicom's SCU: pynetdicom sporadically drops a response that arrives as
    fast as a refusal does, "Received unexpected C-STORE service message", pydicom/pynetdicom#875.)"""
    from dicom_node.net.receivers import make_receiver
    from tests.integration.test_receiver import storescu

    url = f"sqlite:///{tmp_path / 'node.db'}"
    config = make_config(
        disk / "storage",
        db_url=url,
        port=0,
        min_free_disk_mb=WATERMARK_MB,
        extra_node=f'receiver = "{receiver}"\ndurability = "journal"',
    )
    engine = connect(url)
    store = Store(config.node.storage)
    node = make_receiver(config, engine, store)
    node.start()
    try:
        folder = store.root / "journal" / "r0"
        wait_for(lambda: len(list(folder.glob("spare-*.log"))) >= 2, 20, 0.05, "spare segments prepared")
        _fill(disk / "ballast", leave_mb=WATERMARK_MB + 6)
        files = sorted((tmp_path / "series").iterdir())
        by_uid = {_uid(d): d for d in payloads}
        caplog.set_level(logging.INFO)
        caplog.clear()
        sent = storescu(node.port, *files, extra=("-nh", "-v"))
        out = sent.stdout + sent.stderr
        answered = out.count("Received Store Response")
        assert answered == len(files), out[-2000:]
        refused = out.count("Refused: OutOfResources")
        lines = [r for r in caplog.records if r.name.startswith("dicom_node") and "0xA700" in r.getMessage()]
        assert 0 < refused < len(files) and len(lines) == refused, out[-2000:]
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
        assert node.ingestor.flush(30)  # type: ignore[attr-defined]
        with engine.connect() as conn:
            kept = {uid for (uid,) in conn.execute(select(instances.c.sop_uid))}
            events_ = conn.execute(select(func.count()).select_from(events).where(events.c.kind == "disk_full"))
            assert events_.scalar_one() == refused
        assert len(kept) == len(files) - refused  # every Success has its row (and file, below)
        _check_kept(store, engine, {uid: by_uid[uid] for uid in kept}, exact=False)
        (disk / "ballast").unlink()  # the rest fits now, once the materializer has caught up between sends
        uid_of = {f: _uid(f.read_bytes()) for f in files}
        for _ in range(5):
            missing = [f for f in files if uid_of[f] not in kept]
            if not missing:
                break
            storescu(node.port, *missing, extra=("-nh",))
            assert node.ingestor.flush(30)  # type: ignore[attr-defined]
            with engine.connect() as conn:
                kept = {uid for (uid,) in conn.execute(select(instances.c.sop_uid))}
        _check_kept(store, engine, by_uid, exact=False)
    finally:
        node.stop()
        engine.dispose()


def test_a_refusal_is_one_line_when_the_database_is_on_the_full_disk(
    disk: Path, tmp_path: Path, payloads: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{disk / 'node.db'}"
    config = make_config(disk / "storage", db_url=url, port=0, min_free_disk_mb=WATERMARK_MB)
    engine = connect(url)
    ingestor = Ingestor(config, engine, Store(config.node.storage))
    try:
        wait_for(lambda: len(list((disk / "storage" / "journal" / "r0").glob("spare-*.log"))) >= 2, 20, 0.05)
        _fill(disk / "ballast", leave_mb=0)
        caplog.set_level(logging.INFO)
        caplog.clear()
        for data in payloads[:3]:
            assert ingestor.keep(data, calling_ae="STORESCU", called_ae="NODE").status == OUT_OF_RESOURCES
        lines = [r for r in caplog.records if r.name.startswith("dicom_node")]
        assert len(lines) == 3 and not any(r.exc_info for r in caplog.records)
        assert all("event not recorded" in r.getMessage() for r in lines)
    finally:
        (disk / "ballast").unlink()
        ingestor.close()
        engine.dispose()


def test_a_journal_without_room_recycles_its_segment(tmp_path: Path) -> None:
    """No room for a new segment and no spare: appends past the segment's end are refused (ENOSPC), and
    once its records are materialized the segment itself becomes the next one; nothing new is allocated."""
    import errno

    asked: list[int] = []

    def room(n: int) -> bool:
        """Room for the first segment only: the disk is short from then on, so no spare is ever prepared
        (a spare prepared in the background before the disk filled would make the test depend on timing)."""
        asked.append(n)
        return len(asked) == 1

    folder = tmp_path / "j"
    journal = Journal(folder, segment_bytes=64 * 1024, room=room)
    try:
        first = journal.current
        kept = 0
        with pytest.raises(OSError) as refused:
            for i in range(20):
                journal.append({"i": i}, InstanceBuffer.from_bytes(bytes([i + 1]) * 9000))
                kept += 1
        assert refused.value.errno == errno.ENOSPC and 0 < kept < 20
        assert journal.stuck() and journal.current == first
        assert not journal.recycle_current()  # its records are not materialized yet
        journal.materialized(first, kept)
        assert journal.recycle_current()
        assert journal.current == first + 1 and not journal.stuck()
        journal.append({"new": 1}, InstanceBuffer.from_bytes(b"fresh"))
        assert [p.name for p in folder.iterdir()] == [f"seg-{first + 1:08d}.log"]  # the same blocks, renamed
        assert [r.meta for r in journal.replay()] == [{"new": 1}]
    finally:
        journal.close()


def test_a_start_that_cannot_replay_leaves_no_partial_segment(
    disk: Path, tmp_path: Path, payloads: list[bytes]
) -> None:
    """The disk cannot even take the journaled files: the start fails, the journal is as it was (no new
    or partial segment), and the next start, with space freed, replays everything."""
    url = f"sqlite:///{tmp_path / 'node.db'}"
    config = make_config(disk / "storage", db_url=url, port=0, min_free_disk_mb=WATERMARK_MB)
    store = Store(config.node.storage)
    folder = store.root / "journal" / "r0"
    journal = Journal(folder, segment_bytes=SEGMENT, open_now=False)
    acked = {_uid(d): d for d in payloads[:50]}
    for data in acked.values():
        journal.append(describe(read_header(data), "STORESCU", "NODE"), InstanceBuffer.from_bytes(data))
    journal.close()
    before = sorted(p.name for p in folder.iterdir())
    _fill(disk / "ballast", leave_mb=2)
    engine = connect(url)
    with pytest.raises(OSError):
        Ingestor(config, engine, store)
    assert sorted(p.name for p in folder.iterdir()) == before
    (disk / "ballast").unlink()
    ingestor = Ingestor(config, engine, store)
    try:
        _check_kept(store, engine, acked)
    finally:
        ingestor.close()
        engine.dispose()
