"""The migrations build exactly the schema the code declares, on both databases."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from dicom_node.db import connect, metadata


def test_migrated_schema_matches_the_tables(db_url: str) -> None:
    engine = connect(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []
    connect(db_url)  # running the migrations again is a no-op


CHILD = """
import os, sys, time
from dicom_node.db import connect
open(sys.argv[3], "w").close()
while not os.path.exists(sys.argv[2]):
    time.sleep(0.01)
connect(sys.argv[1]).dispose()
"""


@pytest.mark.postgres
def test_processes_starting_together_migrate_once(pg_url: str, tmp_path: Path) -> None:
    """Several processes connecting at once to a new PostgreSQL database (serve's workers, workers on other
    hosts) all start: one migrates, the others wait on the advisory lock and find the schema at head."""
    flag = tmp_path / "go"
    ready = [tmp_path / f"ready-{i}" for i in range(4)]
    procs = [
        subprocess.Popen([sys.executable, "-c", CHILD, pg_url, str(flag), str(r)], stderr=subprocess.PIPE, text=True)
        for r in ready
    ]
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.05)
    flag.touch()  # all imported: they connect together
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    engine = connect(pg_url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    engine.dispose()
