"""DICOM TLS (``[tls]``, per-destination ``tls = true``) against real peers: dcmtk storescu / echoscu /
storescp with ``+tls``, ``openssl s_client``, and Orthanc's DICOM TLS. Certificates come from a
throwaway CA made at test time (:mod:`tests.peers.pki`)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from dicom_node.config import ConfigError, NodeConfig, parse_config
from dicom_node.db import connect, deliveries, events, instances, jobs, now, results
from dicom_node.delivery import Sender
from dicom_node.net.receivers import make_receiver
from dicom_node.net.scu import SendError, send_files
from dicom_node.net.tls import client_context
from dicom_node.store import Store
from tests.nodes import node_config_text, tcp_env, wait_for
from tests.peers.dicomfiles import CT_LIDC_SLAB, require
from tests.peers.orthanc import OrthancPeer, free_port, orthanc_available
from tests.peers.pki import OPENSSL, Pki, make_pki

pytestmark = pytest.mark.skipif(OPENSSL is None or shutil.which("storescu") is None, reason="needs openssl, dcmtk")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def ct_files() -> list[Path]:
    return sorted((require(CT_LIDC_SLAB) / "dicom").iterdir())[:3]


def tls_section(pki: Pki, *, port: int = 0, extra: str = "") -> str:
    return f"""
[tls]
port = {port}
certificate = "{pki.server_cert}"
private_key = "{pki.server_key}"
ca_certificates = "{pki.ca}"
{extra}
"""


class Running:
    """A receiver with ``[tls]`` in this process, over SQLite."""

    def __init__(
        self, tmp_path: Path, pki: Pki, receiver: str, *, port: int | None = None, node: str = "", extra: str = ""
    ) -> None:
        text = node_config_text(tmp_path / "storage", port=port, extra_node=f'receiver = "{receiver}"\n{node}')
        self.config = parse_config(text + tls_section(pki) + extra)
        self.engine = connect(self.config.node.database_url())
        self.receiver = make_receiver(self.config, self.engine, Store(self.config.node.storage))
        self.receiver.start()
        self.port = self.receiver.port
        tls_port = self.receiver.tls_port
        assert tls_port is not None
        self.tls_port = tls_port

    def count(self) -> int:
        assert self.receiver.ingestor.flush()  # type: ignore[attr-defined]
        with self.engine.connect() as conn:
            return len(conn.execute(select(instances.c.id)).all())

    def events(self, kind: str) -> list[str]:
        with self.engine.connect() as conn:
            return [r.message for r in conn.execute(select(events.c.message).where(events.c.kind == kind))]

    def stop(self) -> None:
        self.receiver.stop()
        self.engine.dispose()


@pytest.fixture(params=["native", "pynetdicom"])
def node(request: pytest.FixtureRequest, tmp_path: Path, pki: Pki) -> Iterator[Running]:
    running = Running(tmp_path, pki, request.param, node="association_request_timeout_s = 2")
    yield running
    running.stop()


def dcmtk(
    tool: str, port: int, *args: str | Path, aet: str = "STORESCU", files: list[Path] | tuple[Path, ...] = ()
) -> subprocess.CompletedProcess[str]:
    cmd = [tool, "-aet", aet, "-aec", "NODE", *map(str, args), "127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, env=tcp_env(), timeout=60)


def trusted(pki: Pki) -> tuple[str | Path, ...]:
    return ("+tls", pki.client_key, pki.client_cert, "+cf", pki.ca)


def test_trusted_client_stores_and_echoes_over_tls(node: Running, pki: Pki, ct_files: list[Path]) -> None:
    echo = dcmtk("echoscu", node.tls_port, *trusted(pki), aet="ECHOSCU")
    assert echo.returncode == 0, echo.stderr
    sent = dcmtk("storescu", node.tls_port, *trusted(pki), files=ct_files)
    assert sent.returncode == 0, sent.stderr
    assert node.count() == len(ct_files)
    plain = dcmtk("echoscu", node.port, aet="ECHOSCU")  # the plain listener stays beside the TLS one
    assert plain.returncode == 0, plain.stderr
    assert node.events("tls_refused") == []


def test_refused_clients_are_logged_and_the_node_keeps_serving(node: Running, pki: Pki, ct_files: list[Path]) -> None:
    plain = dcmtk("storescu", node.tls_port, files=ct_files[:1])
    anonymous = dcmtk("storescu", node.tls_port, "+tla", "+cf", pki.ca, files=ct_files[:1])
    rogue = dcmtk("storescu", node.tls_port, "+tls", pki.rogue_key, pki.rogue_cert, "+cf", pki.ca, files=ct_files[:1])
    for refused in (plain, anonymous, rogue):
        assert refused.returncode != 0, refused.stdout
    reasons = wait_for(lambda: (r := node.events("tls_refused")) and len(r) >= 3 and r, 10, what="three events")
    assert isinstance(reasons, list)
    text = "\n".join(reasons)
    assert "not TLS" in text, text
    assert "no client certificate" in text, text
    assert "client certificate not trusted" in text, text
    assert node.count() == 0
    sent = dcmtk("storescu", node.tls_port, *trusted(pki), files=ct_files[:1])
    assert sent.returncode == 0, sent.stderr
    assert node.count() == 1


BOUND_PEERS = """
[[peers]]
ae_title = "BOUNDSCU"
certificate_name = "STORESCU"
[[peers]]
ae_title = "SANSCU"
certificate_name = "modality-b.example.org"
"""


@pytest.mark.parametrize("receiver", ["native", "pynetdicom"])
def test_an_ae_title_bound_to_a_certificate_is_refused_to_any_other_caller(
    tmp_path: Path, pki: Pki, ct_files: list[Path], receiver: str
) -> None:
    node = Running(tmp_path, pki, receiver, extra=BOUND_PEERS)
    try:
        other = ("+tls", pki.other_key, pki.other_cert, "+cf", pki.ca)
        assert dcmtk("storescu", node.tls_port, *trusted(pki), aet="BOUNDSCU", files=ct_files[:1]).returncode == 0
        assert dcmtk("storescu", node.tls_port, *other, aet="SANSCU", files=ct_files[1:2]).returncode == 0
        # Another trusted certificate, and the plain port, cannot use the bound AE titles.
        assert dcmtk("storescu", node.tls_port, *other, aet="BOUNDSCU", files=ct_files[2:3]).returncode != 0
        assert dcmtk("storescu", node.tls_port, *trusted(pki), aet="SANSCU", files=ct_files[2:3]).returncode != 0
        assert dcmtk("storescu", node.port, aet="BOUNDSCU", files=ct_files[2:3]).returncode != 0
        assert node.count() == 2
        refused = wait_for(lambda: (r := node.events("association_rejected")) and len(r) >= 3 and r, 10, what="3")
        text = "\n".join(refused) if isinstance(refused, list) else ""
        assert "needs the certificate 'STORESCU'; the caller's certificate names 'modality-b'" in text, text
        assert "must call over DICOM TLS with the certificate 'STORESCU'" in text, text
        # Unbound peers keep working on both ports.
        assert dcmtk("echoscu", node.port, aet="ECHOSCU").returncode == 0
        assert dcmtk("echoscu", node.tls_port, *other, aet="ECHOSCU").returncode == 0
    finally:
        node.stop()


def test_tls_1_1_is_refused(node: Running, pki: Pki) -> None:
    cmd = [OPENSSL or "openssl", "s_client", "-connect", f"127.0.0.1:{node.tls_port}", "-tls1_1"]
    cmd += ["-cipher", "DEFAULT:@SECLEVEL=0", "-cert", str(pki.client_cert), "-key", str(pki.client_key)]
    old = subprocess.run(cmd, input="", capture_output=True, text=True, timeout=30)
    assert old.returncode != 0
    reason = wait_for(lambda: node.events("tls_refused"), 10, what="a tls_refused event")
    assert "TLS version below the minimum" in str(reason), reason
    modern = subprocess.run([*cmd[:4], "-tls1_2", *cmd[-4:]], input="", capture_output=True, text=True, timeout=30)
    assert modern.returncode == 0, modern.stdout + modern.stderr
    assert "Protocol  : TLSv1.2" in modern.stdout or "TLSv1.2" in modern.stdout


def test_silent_tls_caller_is_closed_at_artim_and_blocks_nobody(node: Running, pki: Pki, ct_files: list[Path]) -> None:
    """A connection that never starts its handshake holds no thread of the accept loop (pynetdicom's own
    server would handshake there) and is closed at the ARTIM timeout (2 s here)."""
    with socket.create_connection(("127.0.0.1", node.tls_port)) as silent:
        silent.settimeout(10)
        started = time.monotonic()
        sent = dcmtk("storescu", node.tls_port, *trusted(pki), files=ct_files[:1])
        assert sent.returncode == 0, sent.stderr
        assert silent.recv(1) == b""  # closed by the node
        assert time.monotonic() - started < 8
    socket.create_connection(("127.0.0.1", node.tls_port)).close()  # a TCP port check
    assert node.count() == 1
    time.sleep(0.5)
    assert node.events("tls_refused") == []  # neither is a refusal: no event rows from port checks


@pytest.mark.parametrize("receiver", ["native", "pynetdicom"])
def test_handshakes_count_against_max_pending_per_address(tmp_path: Path, pki: Pki, receiver: str) -> None:
    """A third silent TLS connection from one address closes the oldest at once (not at the ARTIM timeout)."""
    running = Running(tmp_path, pki, receiver, node="association_request_timeout_s = 30\nmax_pending_per_address = 2")
    try:
        conns = [socket.create_connection(("127.0.0.1", running.tls_port)) for _ in range(2)]
        time.sleep(2.0)  # both are in their handshake (generous: the CI machine may be loaded)
        conns.append(socket.create_connection(("127.0.0.1", running.tls_port)))
        conns[0].settimeout(20)
        started = time.monotonic()
        assert conns[0].recv(1) == b""  # evicted
        assert time.monotonic() - started < 20  # well before its 30 s ARTIM timeout
        conns[2].settimeout(0.5)
        with pytest.raises(TimeoutError):  # the newest still waits for its handshake
            conns[2].recv(1)
        for conn in conns:
            conn.close()
    finally:
        running.stop()


def test_plain_port_zero_means_tls_only(tmp_path: Path, pki: Pki) -> None:
    running = Running(tmp_path, pki, "native", port=0)
    try:
        assert running.port == running.tls_port  # no plain listener
        echo = dcmtk("echoscu", running.tls_port, *trusted(pki), aet="ECHOSCU")
        assert echo.returncode == 0, echo.stderr
    finally:
        running.stop()


def test_config_errors_name_the_line(tmp_path: Path, pki: Pki) -> None:
    base = node_config_text(tmp_path / "s", port=1)
    pair = f'certificate = "{pki.server_cert}"\nprivate_key = "{pki.server_key}"\n'
    trust = f'ca_certificates = "{pki.ca}"\n'
    cases = [
        (f'certificate = "{pki.server_cert}"\nprivate_key = "{pki.client_key}"\n{trust}', "tls.private_key",
         "KEY_VALUES_MISMATCH"),
        (f'certificate = "{tmp_path}/missing.crt"\nprivate_key = "{pki.server_key}"\n{trust}', "tls.certificate",
         "No such file"),
        (f'{pair}ca_certificates = "{pki.server_key}"\n', "tls.ca_certificates", "not PEM certificates"),
        (pair, "tls", "require_client_certificate needs ca_certificates"),
        (f'{pair}{trust}minimum_version = "1.1"\n', "tls.minimum_version", "1.2"),
    ]  # fmt: skip
    lines = len(base.splitlines())
    for section, where, what in cases:
        with pytest.raises(ConfigError) as err:
            parse_config(base + "\n[tls]\n" + section)
        message = str(err.value)
        assert f": {where}:" in message and what in message, message
        line = int(message.split(":")[1])
        assert line > lines, message  # a line of the [tls] section, not "?"


def test_check_config_reports_tls_and_names_a_bad_file(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    from dicom_node.cli import main

    path = tmp_path / "node.toml"
    path.write_text(node_config_text(tmp_path / "storage", port=0) + tls_section(pki, port=2762))
    assert main(["check-config", "--no-load", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "no plain DICOM" in out and "DICOM TLS 1.2+ on 127.0.0.1:2762, client certificates required" in out, out
    path.write_text(path.read_text().replace(str(pki.server_key), str(pki.rogue_key)))
    assert main(["check-config", "--no-load", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "tls.private_key" in err and "KEY_VALUES_MISMATCH" in err, err


def _storescp(port: int, folder: Path, pki: Pki) -> subprocess.Popen[bytes]:
    """dcmtk's storescp over TLS, requiring a client certificate from the test CA."""
    folder.mkdir()
    cmd = ["storescp", "+tls", str(pki.server_key), str(pki.server_cert), "+cf", str(pki.ca), "-od", str(folder)]
    proc = subprocess.Popen([*cmd, str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=tcp_env())

    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return False

    wait_for(listening, 20, what="storescp")
    return proc


def _destination_text(pki: Pki, port: int, *, client: bool = True) -> str:
    keys = f'certificate = "{pki.client_cert}"\nprivate_key = "{pki.client_key}"\n' if client else ""
    return f"""
[[destinations]]
name = "pacs"
ae_title = "STORESCP"
host = "127.0.0.1"
port = {port}
tls = true
ca_certificates = "{pki.ca}"
{keys}"""


def _destination(pki: Pki, port: int, *, client: bool = True) -> NodeConfig:
    return parse_config(_destination_text(pki, port, client=client))


def test_send_to_storescp_over_tls(tmp_path: Path, pki: Pki, ct_files: list[Path]) -> None:
    port = free_port()
    received = tmp_path / "received"
    proc = _storescp(port, received, pki)
    try:
        config_file = tmp_path / "node.toml"  # `dicom-node send --to` a TLS destination
        config_file.write_text(f'[node]\nstorage = "{tmp_path / "storage"}"\n' + _destination_text(pki, port))
        cli = [sys.executable, "-m", "dicom_node.cli", "send", str(ct_files[0]), "--to", "pacs", "-c", str(config_file)]
        done = subprocess.run([*cli, "--quiet"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "sent 1 of 1" in done.stdout, done.stdout + done.stderr
        assert len(list(received.iterdir())) == 1
        dest = _destination(pki, port).destination("pacs")
        sent = send_files(ct_files, host=dest.host, port=port, called_ae=dest.ae_title, tls=client_context(dest))
        assert all(s.ok for s in sent), sent
        assert len(list(received.iterdir())) == len(ct_files)
        without = _destination(pki, port, client=False).destination("pacs")  # storescp requires our certificate
        with pytest.raises(SendError, match="over TLS"):
            send_files(ct_files[:1], host="127.0.0.1", port=port, called_ae="STORESCP", tls=client_context(without))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.skipif(not orthanc_available(), reason="Orthanc not installed")
def test_delivery_to_orthanc_over_tls(tmp_path: Path, pki: Pki, ct_files: list[Path]) -> None:
    """The sender delivers a result to Orthanc's DICOM TLS (mutual), through the deliveries table."""
    orthanc_tls = {
        "DicomTlsEnabled": True,
        "DicomTlsCertificate": str(pki.server_cert),
        "DicomTlsPrivateKey": str(pki.server_key),
        "DicomTlsTrustedCertificates": str(pki.ca),
        "DicomTlsRemoteCertificateRequired": True,
    }
    with OrthancPeer(extra_config=orthanc_tls) as pacs:
        text = node_config_text(tmp_path / "storage", port=0, dest_port=pacs.dicom_port)
        dest = f'tls = true\nca_certificates = "{pki.ca}"\ncertificate = "{pki.client_cert}"\n'
        text = text.replace(
            "retry_backoff_max_s = 1.0\n", f'retry_backoff_max_s = 1.0\n{dest}private_key = "{pki.client_key}"\n'
        )
        config = parse_config(text)
        engine = connect(config.node.database_url())
        store = Store(config.node.storage)
        target = store.result_path(1, "1.2.3.4")
        target.parent.mkdir(parents=True)
        target.write_bytes(ct_files[0].read_bytes())
        t = now()
        with engine.begin() as conn:
            conn.execute(insert(jobs).values(id=1, series_uid="1.2", study_uid="1", route="chest-ct",
                                             pipeline="ct_lung_field", revision=1, state="succeeded", attempts=1,
                                             max_attempts=2, run_after=t, created_at=t))  # fmt: skip
            conn.execute(insert(results).values(id=1, job_id=1, kind="seg", sop_uid="1.2.3.4",
                                                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                                                path=store.relative(target), created_at=t))  # fmt: skip
            conn.execute(insert(deliveries).values(result_id=1, destination="pacs", state="pending", attempts=0,
                                                   next_try=t, give_up_at=t + 3600, created_at=t))  # fmt: skip
        assert Sender(config, engine, store).tick() == 1, pacs.log_tail()
        with engine.connect() as conn:
            assert conn.execute(select(deliveries.c.state)).scalar_one() == "sent"
        assert len(pacs.instances()) == 1
        engine.dispose()
