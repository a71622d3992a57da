"""Operations from the CLI: `dicom-node echo` against a real Orthanc and a closed port, `deliveries list` /
`retry-now`, and `jobs list` showing patient, accession and study."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from dicom_node.cli import main
from dicom_node.db import connect, deliveries, events, jobs, results, studies
from tests.nodes import node_config_text
from tests.peers.orthanc import OrthancPeer, free_port


def _config(tmp_path: Path, dest_port: int) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(node_config_text(tmp_path / "storage", dest_port=dest_port))
    return path


@pytest.mark.slow
def test_echo_names_the_real_cause(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with OrthancPeer(aet="ORTHANC") as pacs:
        config = _config(tmp_path, pacs.dicom_port)
        assert main(["echo", "pacs", "--config", str(config)]) == 0
        assert "ok    pacs (ORTHANC@127.0.0.1" in capsys.readouterr().out
    closed = _config(tmp_path, free_port())
    assert main(["echo", "--config", str(closed)]) == 1
    assert "FAIL  pacs" in (out := capsys.readouterr().out) and "Connection refused" in out
    assert main(["echo", "nowhere", "--config", str(closed)]) == 2
    assert "unknown name 'nowhere'" in capsys.readouterr().err


def test_deliveries_and_jobs_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, free_port())
    (tmp_path / "storage").mkdir()
    engine = connect(f"sqlite:///{tmp_path / 'storage' / 'node.db'}")
    t = time.time()
    with engine.begin() as conn:
        conn.execute(
            insert(studies).values(study_uid="1.9", patient_id="P-1", accession="A-2", first_seen=t, last_seen=t)
        )
        conn.execute(
            insert(jobs).values(
                id=4,
                series_uid="1.9.1",
                study_uid="1.9",
                route="chest-ct",
                pipeline="ct_lung_field",
                revision=1,
                state="succeeded",
                attempts=1,
                max_attempts=2,
                run_after=t,
                created_at=t,
            )
        )
        conn.execute(
            insert(results).values(
                id=1, job_id=4, kind="seg", sop_uid="1.9.2", sop_class_uid="1.2", path="x", created_at=t
            )
        )
        conn.execute(
            insert(deliveries).values(
                id=8,
                result_id=1,
                destination="pacs",
                state="dead",
                attempts=5,
                next_try=t,
                give_up_at=t,
                last_error="Connection refused",
                created_at=t,
            )
        )
    assert main(["jobs", "list", "--config", str(config)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("4 "))
    assert "P-1" in line and "A-2" in line and "1.9" in line
    assert main(["deliveries", "list", "--state", "dead", "--config", str(config)]) == 0
    assert "Connection refused" in capsys.readouterr().out
    assert main(["deliveries", "retry-now", "8", "--config", str(config)]) == 0
    assert main(["deliveries", "retry-now", "8", "--config", str(config)]) == 0  # pending: sent at the next tick
    assert main(["deliveries", "retry-now", "99", "--config", str(config)]) == 1
    with engine.connect() as conn:
        row = conn.execute(select(deliveries).where(deliveries.c.id == 8)).one()
        audit = [r.message for r in conn.execute(select(events).where(events.c.kind == "admin"))]
    assert row.state == "pending" and row.give_up_at > t + 3000  # retry_for_hours = 1 from the config
    assert len(audit) == 3 and audit[0].startswith("cli:") and audit[0].endswith("delivery 8 retry-now: done")


def test_user_add_appends_a_checked_account(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    from dicom_node.config import load_config
    from dicom_node.web.auth import verify_password

    config = _config(tmp_path, free_port())
    monkeypatch.setattr("sys.stdin", io.StringIO("first-pw\n"))
    assert main(["user", "add", "alice", "--config", str(config)]) == 0
    (user,) = load_config(config).web.users
    assert user.name == "alice" and verify_password("first-pw", user.password_hash)
    monkeypatch.setattr("sys.stdin", io.StringIO("other\n"))
    assert main(["user", "add", "alice", "--config", str(config)]) == 1  # exists
    before = config.read_text()
    monkeypatch.setattr("sys.stdin", io.StringIO("pw\n"))
    assert main(["user", "add", "bad name", "--config", str(config)]) == 2  # refused by the config, nothing written
    assert config.read_text() == before and "web.users.1.name" in capsys.readouterr().err
    assert main(["user", "list", "--config", str(config)]) == 0
    assert capsys.readouterr().out.split() == ["alice"]
