"""Issue #18: a receiver process killed with SIGKILL is restarted by ``serve`` and clears its pending marks.

With ``receiver_processes > 1`` each extra receiver process has its own journal and publishes the series
whose instances wait there in ``ingest_pending``; the stability sweep routes none of them while a mark is
left. A receiver that died used to keep its marks (and its acknowledged instances without rows) until the
whole node restarted. Here materialization is made to fail for real (a constraint in PostgreSQL), so the
marks are certain to exist, one receiver child is killed with SIGKILL, the database is healed, and the
node must restart that child, which replays its journal: every acknowledged instance gets its row and the
series is routed once, whole.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import create_engine, select

from dicom_node.db import ingest_pending, instances, jobs, series
from tests.integration.test_ingest_races import (
    _count,
    _echo,
    _heal,
    _inject_failure,
    _series,
    serve_four_receivers,
    storescu_in_parallel,
)
from tests.nodes import wait_for


def _holder_of(folder: Path) -> int | None:
    """The process that has a file under ``folder`` open (a receiver's journal segment)."""
    prefix = str(folder.resolve()) + "/"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd).startswith(prefix):
                    return int(entry.name)
        except OSError:  # gone, or not ours
            continue
    return None


@pytest.mark.slow
@pytest.mark.postgres
def test_a_killed_receiver_process_is_restarted_and_replays(tmp_path: Path, pg_url: str) -> None:
    files = _series(tmp_path / "in", n=24, seed=99)
    storage = tmp_path / "storage"
    node, port = serve_four_receivers(tmp_path, pg_url)
    engine = create_engine(pg_url)
    try:
        wait_for(lambda: _echo(port), timeout=60, what=f"the node to answer\n{node.log_tail()}")
        wait_for(lambda: node.log_path.read_text().count("listening as NODE") >= 4, timeout=60, what="4 receivers")
        _inject_failure(engine)  # every batch fails: the acknowledged instances wait in the journals
        procs = storescu_in_parallel(port, files, 12)
        assert all(p.wait(timeout=120) == 0 for p in procs)  # every instance acknowledged

        def marked_child() -> str | None:
            with engine.connect() as conn:
                receivers = set(conn.execute(select(ingest_pending.c.receiver)).scalars())
            return next((r for r in sorted(receivers) if not r.startswith("r0@")), None)

        victim = wait_for(marked_child, timeout=30, what=f"a receiver child's pending mark\n{node.log_tail()}")
        assert isinstance(victim, str)
        journal = storage / "journal" / victim.split("@")[0]
        pid = wait_for(lambda: _holder_of(journal), timeout=10, what=f"the process of {journal}")
        assert isinstance(pid, int) and node.proc is not None and pid != node.proc.pid
        os.kill(pid, signal.SIGKILL)
        _heal(engine)
        wait_for(lambda: _count(engine, instances) == len(files), timeout=90, what=f"rows\n{node.log_tail()}")
        wait_for(lambda: _count(engine, ingest_pending) == 0, timeout=30, what=f"marks cleared\n{node.log_tail()}")
        wait_for(lambda: _count(engine, jobs) >= 1, timeout=60, what=f"the series routed\n{node.log_tail()}")
        time.sleep(2)  # a second, partial routing would show up as another job
        with engine.connect() as conn:
            ser = conn.execute(select(series)).one()
            job_revisions = list(conn.execute(select(jobs.c.revision)).scalars())
            uids = set(conn.execute(select(instances.c.sop_uid)).scalars())
        assert ser.instance_count == len(files) and ser.state == "routed"
        assert job_revisions == [1]
        assert uids == {dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
        logged = node.log_path.read_text(errors="replace")
        assert "exited with -9; restarting it" in logged, node.log_tail()
        assert "Traceback" not in logged, node.log_tail()
        assert _holder_of(journal) not in (None, pid)  # a new process holds the journal
    finally:
        node.stop()
        engine.dispose()
