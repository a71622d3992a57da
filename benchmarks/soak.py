"""Soak (issue #18): mixed senders against ``dicom-node serve`` on PostgreSQL with 4 receiver processes.

Senders, concurrently and in a loop over their own series: dcmtk ``storescu`` (one process per chunk,
``-v`` so each Success answer is counted), pynetdicom (one association per series, every status read),
and Orthanc pushing whole series through its REST API (``/modalities/NODE/store``, counted only when
the push succeeds). Each sender records which SOP instances got a Success answer: *acknowledged*.
Meanwhile the node's whole process group is killed with SIGKILL (once in the middle by default; once a
minute in longer runs) and restarted; and, where a tmpfs can be mounted for the node's storage (root),
the disk is filled to just above the ``min_free_disk_mb`` watermark for a while and then freed. Senders
resend what was not acknowledged until everything was, or the time is up.

At the end every acknowledged instance must have a row and its file (``lost``: neither; ``hidden``: a
file but no row, or a row but no file) and the routed series their full size: ``partial routings``
counts series with a job on a revision opened before all their instances had arrived, ``duplicate jobs``
jobs beyond one per series revision.

Default about 60 s of sending plus the start, the quiet period and the checks; ``DICOM_NODE_SOAK_S``
sets the sending time (one kill per 60 s)::

    python -m benchmarks.run --only soak
    DICOM_NODE_SOAK_S=600 python -m benchmarks.run --only soak
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Group, free_port, tcp_env, wait_for
from benchmarks.nodecfg import node_config, start_node

log = logging.getLogger("benchmarks.soak")

PG_ADMIN = os.environ.get("DICOM_NODE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
INSTANCES_PER_SERIES = 30
QUIET_S = 15.0  # longer than a restart: a series whose sender waits for the node is not routed meanwhile
TMPFS_MB, MIN_FREE_MB, ABOVE_MB, DISK_PHASE_S = 1536, 64, 4, 8.0


@dataclass
class SoakResult:
    """What one soak run counted."""

    seconds: float = 0.0
    acknowledged: dict[str, int] = field(default_factory=dict)  # sender -> instances acknowledged
    attempts: dict[str, int] = field(default_factory=dict)  # sender -> sends (associations or pushes)
    stored: int = 0
    lost: int = 0
    hidden: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # event kind -> count (node's events)
    kills: int = 0
    series: int = 0
    routed: int = 0
    partial_routings: int = 0
    duplicate_jobs: int = 0
    disk_phase: str = ""
    notes: list[str] = field(default_factory=list)


class Ledger:
    """SOP instances acknowledged, per sender (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.acked: dict[str, set[str]] = {}
        self.attempts: Counter[str] = Counter()

    def ack(self, sender: str, uids: list[str]) -> None:
        with self._lock:
            self.acked.setdefault(sender, set()).update(uids)

    def attempt(self, sender: str) -> None:
        with self._lock:
            self.attempts[sender] += 1

    def all(self) -> set[str]:
        with self._lock:
            return set().union(*self.acked.values()) if self.acked else set()


@dataclass
class Series:
    files: list[Path]
    uids: list[str]
    orthanc_id: str = ""


def _make_series(folder: Path, seed: int) -> Series:
    """A new synthetic CT series (its own study) of :data:`INSTANCES_PER_SERIES` small images."""
    from pydicom import dcmread

    from dicom_node.synth.dicom_series import write_ct_series

    hu = np.full((INSTANCES_PER_SERIES, 64, 64), -1000.0)
    files = write_ct_series(hu, (1.0, 1.0, 1.0), folder / f"s{seed}", seed=seed)
    return Series(files, [str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files])


# -- senders ----------------------------------------------------------------------------------------------
SUCCESS_LINE = re.compile(r"Received Store Response \(Success\)")


def _storescu(port: int, series: Series, todo: list[int], ledger: Ledger) -> None:
    """Send the instances ``todo`` (indexes) of ``series``; the Success answers come in file order."""
    files = [str(series.files[i]) for i in todo]
    cmd = ["storescu", "-v", "-to", "10", "-ta", "10", "-aet", "STORESCU", "-aec", "NODE", "127.0.0.1", str(port)]
    ledger.attempt("storescu")
    try:
        done = subprocess.run([*cmd, *files], capture_output=True, text=True, env=tcp_env(), timeout=60)
    except subprocess.TimeoutExpired:
        return
    answered = len(SUCCESS_LINE.findall(done.stdout + done.stderr))
    ledger.ack("storescu", [series.uids[i] for i in todo[:answered]])


def _pynetdicom(port: int, series: Series, todo: list[int], ledger: Ledger) -> None:
    from pydicom import dcmread
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ledger.attempt("pynetdicom")
    assoc = ae.associate("127.0.0.1", port, ae_title="NODE")
    if not assoc.is_established:
        return
    try:
        for i in todo:
            status = assoc.send_c_store(dcmread(series.files[i]))
            if status is None or "Status" not in status:
                return
            if int(status.Status) == 0:
                ledger.ack("pynetdicom", [series.uids[i]])
    finally:
        if assoc.is_established:
            assoc.release()


def _orthanc(peer: Any, series: Series, ledger: Ledger) -> None:
    ledger.attempt("orthanc")
    try:
        peer.post("/modalities/node/store", {"Resources": [series.orthanc_id], "Synchronous": True}, timeout=60)
    except Exception:  # refused, the node down, a timeout: the whole series is sent again
        return
    ledger.ack("orthanc", series.uids)


def _sender(
    name: str, port: int, work: list[Series], folder: Path, ledger: Ledger, stop: threading.Event, peer: Any
) -> None:
    """Until ``stop``: make a new series (appended to ``work``), send it until all its instances are
    acknowledged; every third series is sent once more, whole (a re-sent study: duplicates)."""
    seed = SENDERS.index(name) + 1
    while not stop.is_set():
        series = _make_series(folder, seed * 1000 + len(work))
        if name == "orthanc":
            for f in series.files:
                answer = peer.post("/instances", f.read_bytes())
            series.orthanc_id = str(answer["ParentSeries"])
        work.append(series)
        rounds = 2 if len(work) % 3 == 0 else 1
        for again in range(rounds):
            while not stop.is_set():
                acked = ledger.acked.get(name, set())
                todo = [i for i, uid in enumerate(series.uids) if again or uid not in acked]
                if not todo:
                    break
                if name == "storescu":
                    for start in range(0, len(todo), 10):
                        _storescu(port, series, todo[start : start + 10], ledger)
                elif name == "pynetdicom":
                    _pynetdicom(port, series, todo, ledger)
                else:
                    _orthanc(peer, series, ledger)
                if again:
                    break
                if not set(series.uids) <= ledger.acked.get(name, set()):
                    time.sleep(0.5)  # the node is down or refusing: try again


# -- the disk ---------------------------------------------------------------------------------------------
def _mount_tmpfs(folder: Path) -> str | None:
    """Mount a tmpfs of :data:`TMPFS_MB` on ``folder``; None, or why it could not be."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"mount failed: {exc}"
    return None if done.returncode == 0 else f"cannot mount a tmpfs ({done.stderr.strip() or done.returncode})"


def _fill(folder: Path, leave_mb: int) -> Path:
    """A filler file that leaves about ``leave_mb`` MiB free on ``folder``'s file system."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    filler = folder / "filler.bin"
    size = max(free - leave_mb * 1024 * 1024, 0)
    with filler.open("wb") as fh:
        chunk = b"\0" * (8 << 20)
        while size > 0:
            n = min(size, len(chunk))
            fh.write(chunk[:n])
            size -= n
    return filler


# -- the run ----------------------------------------------------------------------------------------------
def run_soak(seconds: float | None = None, workdir: Path | None = None) -> SoakResult:
    """One soak run of about ``seconds`` of sending (default ``$DICOM_NODE_SOAK_S`` or 60)."""
    import psycopg

    from tests.peers.orthanc import OrthancPeer

    seconds = seconds or float(os.environ.get("DICOM_NODE_SOAK_S", "60"))
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # "connection refused" while the node restarts
    result = SoakResult()
    work = workdir or Path(tempfile.mkdtemp(prefix="dicom-node-soak-"))
    storage = work / "storage"
    why_no_tmpfs = _mount_tmpfs(storage)
    mounted = why_no_tmpfs is None
    name = f"dn_soak_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db_url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"
    ledger = Ledger()
    node: Group | None = None
    peer: Any = None
    try:
        by_sender: dict[str, list[Series]] = {s: [] for s in SENDERS}
        port = free_port()
        text = node_config(
            storage,
            port=port,
            database=db_url,
            workers=0,
            quiet_period_s=QUIET_S,
            pipelines=["ct_lung_field"],
            extra={
                "receiver_processes": "4",
                "receiver": '"native"',
                "min_free_disk_mb": str(MIN_FREE_MB),
                "accept_unknown_callers": "true",  # Orthanc calls as ORTHANC
            },
        ).replace("min_free_disk_mb = 0\n", "")
        node = start_node(work, text, port)
        peer = OrthancPeer(aet="ORTHANC", modalities={"node": ("NODE", "127.0.0.1", port)})
        time.sleep(3)  # the extra receiver processes bind the port
        stop = threading.Event()
        threads = [
            threading.Thread(
                target=_sender, args=(s, port, by_sender[s], work / "in", ledger, stop, peer), name=f"soak-{s}"
            )
            for s in SENDERS
        ]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        kills = max(1, int(seconds // 60))
        kill_at = [t0 + seconds * (k + 1) / (kills + 1) for k in range(kills)]
        disk_at = t0 + seconds * 0.8 if mounted else None
        while time.monotonic() - t0 < seconds and any(t.is_alive() for t in threads):
            if kill_at and time.monotonic() >= kill_at[0]:
                kill_at.pop(0)
                log.info("soak: kill -9 of the node's process group")
                os.killpg(node.pid, signal.SIGKILL)  # no SIGTERM first: nothing is flushed or closed
                assert node.proc is not None
                node.proc.wait(timeout=30)
                result.kills += 1
                node = start_node(work, text, port)
            if disk_at is not None and time.monotonic() >= disk_at:
                disk_at = None
                filler = _fill(storage, MIN_FREE_MB + ABOVE_MB)
                log.info("soak: disk filled to %d MiB above the watermark for %.0f s", ABOVE_MB, DISK_PHASE_S)
                time.sleep(DISK_PHASE_S)
                filler.unlink()
                result.disk_phase = (
                    f"ran: tmpfs of {TMPFS_MB} MiB filled to {ABOVE_MB} MiB above the {MIN_FREE_MB} MiB "
                    f"watermark for {DISK_PHASE_S:.0f} s, then freed"
                )
            time.sleep(0.2)
        stop.set()  # senders that are not done stop after their current send
        for t in threads:
            t.join(timeout=120)
        result.seconds = time.monotonic() - t0
        if not mounted:
            result.disk_phase = f"skipped: {why_no_tmpfs}"
        elif not result.disk_phase:
            result.disk_phase = "not reached: the senders finished first"
        _check(result, ledger, by_sender, db_url, storage)
    finally:
        if peer is not None:
            peer.terminate()
        if node is not None:
            node.stop()
        if mounted:
            subprocess.run(["umount", "-l", str(storage)], capture_output=True, timeout=30)
        if workdir is None:  # the generated series (tens of MB a minute) and the node's folder
            shutil.rmtree(work, ignore_errors=True)
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return result


SENDERS = ("storescu", "pynetdicom", "orthanc")


def _check(result: SoakResult, ledger: Ledger, by_sender: dict[str, list[Series]], db_url: str, root: Path) -> None:
    """Wait for the rows and the routing, then count what is missing."""
    from sqlalchemy import create_engine, func, select

    from dicom_node.db import events, instances, jobs, series

    acked = ledger.all()
    result.acknowledged = {s: len(ledger.acked.get(s, set())) for s in SENDERS}
    result.attempts = dict(ledger.attempts)
    engine = create_engine(db_url)

    def rows() -> dict[str, str]:
        with engine.connect() as conn:
            return {r.sop_uid: r.path for r in conn.execute(select(instances.c.sop_uid, instances.c.path))}

    try:
        try:
            wait_for(lambda: acked <= set(rows()), 60, "a row for every acknowledged instance")
        except Exception as exc:
            result.notes.append(str(exc))
        complete = [s for group in by_sender.values() for s in group if set(s.uids) <= acked]
        result.series = len(complete)

        def routed() -> int:
            with engine.connect() as conn:
                return len(set(conn.execute(select(jobs.c.series_uid)).scalars()))

        try:
            wait_for(lambda: routed() >= len(complete), QUIET_S + 60, "every complete series routed")
        except Exception as exc:
            result.notes.append(str(exc))
        time.sleep(2)  # a late, second routing would show up as another job
        indexed = rows()
        result.stored = sum(1 for uid in acked if uid in indexed and (root / indexed[uid]).exists())
        files = {p.stem for p in root.rglob("*.dcm")}
        result.lost = sum(1 for uid in acked if uid not in indexed and uid not in files)
        result.hidden = len(acked) - result.stored - result.lost
        with engine.connect() as conn:
            per_revision = Counter(conn.execute(select(jobs.c.series_uid, jobs.c.revision)).all())
            revisions = dict(conn.execute(select(series.c.series_uid, series.c.revision)).all())
            kinds = conn.execute(select(events.c.kind, func.count()).group_by(events.c.kind)).all()
        result.routed = len({uid for uid, _ in per_revision})
        result.duplicate_jobs = sum(n - 1 for n in per_revision.values())
        result.partial_routings = sum(1 for uid, rev in revisions.items() if rev > 1)  # opened after routing
        result.refused = {k: int(n) for k, n in kinds if k in REFUSALS}
    finally:
        engine.dispose()


SUMMARY = (
    "`dicom-node serve` on PostgreSQL with 4 receiver processes (native), no workers (routing only), "
    f"quiet period {QUIET_S:g} s; senders in parallel, each sending new {INSTANCES_PER_SERIES}-image CT series "
    "(64 x 64) in a loop and every third one twice: dcmtk storescu (10 files per process), pynetdicom (one "
    "association per series), Orthanc REST pushes (whole series). SIGKILL of the node's whole process group "
    "(once in the middle; once a minute with DICOM_NODE_SOAK_S), a nearly full disk (tmpfs) for 8 s, and "
    "restarts. Acknowledged = answered Success to the sender; lost = acknowledged with neither row nor file."
)
REFUSALS = ("disk_full", "rejected", "association_rejected", "duplicate", "ingest_set_aside", "materialize_failed")


def markdown_lines(res: SoakResult) -> list[str]:
    """The soak's table for the report."""
    rows = [
        ("sending time", f"{res.seconds:.0f} s"),
        ("senders (sends)", ", ".join(f"{s} ({res.attempts.get(s, 0)})" for s in SENDERS)),
        ("acknowledged", ", ".join(f"{s} {n}" for s, n in res.acknowledged.items())),
        ("stored (row + file)", str(res.stored)),
        ("lost (must be 0)", str(res.lost)),
        ("hidden (file or row missing)", str(res.hidden)),
        ("kills -9 survived", str(res.kills)),
        ("nearly full disk", res.disk_phase),
        ("complete series / routed", f"{res.series} / {res.routed}"),
        ("partial routings (new revision after routing)", str(res.partial_routings)),
        ("duplicate jobs (same series revision)", str(res.duplicate_jobs)),
        ("events", ", ".join(f"{k} {n}" for k, n in sorted(res.refused.items())) or "none"),
    ]
    out = ["| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]
    out += [f"- {n}" for n in res.notes]
    return out


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    res = run_soak()
    print("\n".join(markdown_lines(res)))
    return 0 if res.lost == 0 and res.hidden == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
