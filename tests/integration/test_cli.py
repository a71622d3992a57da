"""The `dicom-node` command line as an admin uses it."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import insert

from dicom_node.cli import main
from dicom_node.config import parse_config
from dicom_node.db import connect, jobs, now
from dicom_node.net.receivers import make_receiver
from dicom_node.store import Store
from tests.nodes import node_config_text
from tests.peers.dicomfiles import CT_LIDC_SLAB, US_CLINICAL, require


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(node_config_text(tmp_path / "storage", port=0, dest_port=4242))
    return path


def test_init_writes_a_config_that_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "node.toml"
    assert main(["init", str(target)]) == 0
    assert main(["init", str(target)]) == 1  # never overwrites without --force
    # --no-load: the config's own checks (loading the routed bundles is tests/integration/test_broken_pipeline.py)
    assert main(["check-config", "--no-load", "--config", str(target)]) == 0
    out = capsys.readouterr().out
    assert f"storage {tmp_path / 'storage'}" in out  # beside the config, not relative to the example's folder
    assert main(["init", str(target), "--force", "--storage", str(tmp_path / "data")]) == 0
    assert main(["check-config", "--no-load", "--config", str(target)]) == 0
    assert f"storage {tmp_path / 'data'}" in capsys.readouterr().out
    assert "OK" in out and "route     chest-ct" in out and "dest      pacs" in out


def test_check_config_names_the_bad_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[node]\nae_title = "NODE"\nport = "eleven"\n')
    assert main(["check-config", "--config", str(bad)]) == 2
    assert f"{bad}:3: node.port" in capsys.readouterr().err
    bad.write_text('[[routes]]\nname = "r"\npipelines = ["ct_lung_field"]\n[routes.match]\nFooBar = "x"\n')
    assert main(["check-config", "--config", str(bad)]) == 2  # route keys are checked beyond config.py
    assert f"{bad}:5: routes.0.match.FooBar: match key 'FooBar'" in capsys.readouterr().err


def test_route_test_explains_each_file(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ct = sorted((require(CT_LIDC_SLAB) / "dicom").iterdir())[0]
    us = sorted(require(US_CLINICAL).glob("*.dcm"))[0]
    assert main(["route-test", "--config", str(config_file), str(ct), str(us)]) == 0
    out = capsys.readouterr().out
    assert f"{ct}: -> chest-ct" in out
    assert f"{us}: matches NO route" in out and "Modality='US' does not match 'CT'" in out


def test_send_status_and_jobs(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = parse_config(config_file.read_text(), config_file)
    engine = connect(config.node.database_url())
    receiver = make_receiver(config, engine, Store(config.node.storage))
    receiver.start()
    try:
        folder = require(CT_LIDC_SLAB) / "dicom"
        code = main(
            [
                "send",
                str(folder),
                "--host",
                "127.0.0.1",
                "--port",
                str(receiver.port),
                "--aec",
                "NODE",
                "--aet",
                "TESTSCU",
                "--quiet",
            ]
        )
        assert code == 0
        assert "sent 12 of 12 file(s)" in capsys.readouterr().out
        assert receiver.ingestor.flush()  # type: ignore[attr-defined]
    finally:
        receiver.stop()
    with engine.begin() as conn:
        t = now()
        for state in ("dead", "queued"):
            conn.execute(
                insert(jobs).values(
                    series_uid="1.2.3",
                    study_uid="1.2",
                    route="chest-ct",
                    pipeline="ct_lung_field",
                    revision=1 if state == "dead" else 2,
                    state=state,
                    attempts=2,
                    max_attempts=2,
                    run_after=t,
                    created_at=t,
                    last_error="model exploded" if state == "dead" else None,
                )
            )
    assert main(["status", "--config", str(config_file)]) == 0
    out = capsys.readouterr().out
    assert "instances   12" in out and "dead jobs:" in out and "model exploded" in out
    assert main(["jobs", "list", "--config", str(config_file), "--state", "dead"]) == 0
    assert "model exploded" in capsys.readouterr().out
    assert main(["jobs", "retry", "1", "--config", str(config_file)]) == 0
    assert main(["jobs", "cancel", "2", "--config", str(config_file)]) == 0
    capsys.readouterr()
    assert main(["jobs", "cancel", "2", "--config", str(config_file)]) == 1
    assert "job 2 is cancelled: only a queued, failed or running job can be cancelled" in capsys.readouterr().out
    assert main(["jobs", "retry", "99", "--config", str(config_file)]) == 1
    assert "job 99: no such job" in capsys.readouterr().err
    with pytest.raises(SystemExit) as bogus:
        main(["jobs", "list", "--state", "bogus", "--config", str(config_file)])
    assert bogus.value.code == 2 and "invalid choice: 'bogus'" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["status", "--json", "--config", str(config_file)]) == 0
    assert '"cancelled": 1' in capsys.readouterr().out


def test_log_level_in_any_case_and_a_clear_error_for_a_wrong_one(capsys: pytest.CaptureFixture[str]) -> None:
    from dicom_node.cli import build_parser

    assert build_parser().parse_args(["serve", "--log-level", "debug"]).log_level == "DEBUG"
    with pytest.raises(SystemExit) as wrong:
        build_parser().parse_args(["serve", "--log-level", "chatty"])
    assert wrong.value.code == 2 and "invalid choice: 'CHATTY'" in capsys.readouterr().err


def test_serve_on_a_busy_port_says_so(tmp_path: Path) -> None:
    """A port held by another program is a one-line error naming it, exit 1, not a traceback."""
    import socket
    import subprocess
    import sys

    from dicom_node.config import default_config_text

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        text = default_config_text().replace("port = 11112", f"port = {port}", 1).replace('"0.0.0.0"', '"127.0.0.1"', 1)
        (tmp_path / "node.toml").write_text(text.replace('storage = "../storage"', 'storage = "storage"', 1))
        node = Path(sys.executable).parent / "dicom-node"
        run = subprocess.run(
            [str(node), "serve", "--config", str(tmp_path / "node.toml")], capture_output=True, text=True, timeout=120
        )
    assert run.returncode == 1, run.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in run.stderr and "Traceback" not in run.stderr


def test_status_lists_series_still_waiting_in_a_journal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sqlalchemy import insert

    from dicom_node.db import connect, ingest_pending, now

    config_file = tmp_path / "node.toml"
    config_file.write_text('[node]\nstorage = "storage"\n')
    engine = connect(f"sqlite:///{tmp_path / 'storage' / 'node.db'}")
    with engine.begin() as conn:
        conn.execute(
            insert(ingest_pending).values(
                receiver="r0", series_uid="1.2.3.4", study_uid="1.2.3", since=now(), error="OperationalError: disk I/O"
            )
        )
    engine.dispose()
    assert main(["status", "--config", str(config_file)]) == 0
    out = capsys.readouterr().out
    assert "series waiting in a receiver's journal" in out and "1.2.3.4" in out and "disk I/O" in out
