"""The receiver against real clients: dcmtk echoscu/storescu and pynetdicom, on loopback."""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from sqlalchemy import select

from dicom_node.config import NodeConfig
from dicom_node.db import connect, events, instances, series
from dicom_node.net.receivers import make_receiver
from dicom_node.store import Store
from tests.nodes import make_config, tcp_env
from tests.peers.dicomfiles import CT_LIDC_SLAB, REAL, US_CLINICAL, US_PHANTOM, require


class Running:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.engine = connect(config.node.database_url())
        self.store = Store(config.node.storage)
        self.receiver = make_receiver(config, self.engine, self.store)
        self.receiver.start()
        self.port = self.receiver.port

    def count(self) -> int:
        self.settle()
        with self.engine.connect() as conn:
            return len(conn.execute(select(instances.c.id)).all())

    def settle(self) -> None:
        """Let journaled instances reach their rows (the materializer waits for a pause in the traffic)."""
        assert self.receiver.ingestor.flush()  # type: ignore[attr-defined]

    def stop(self) -> None:
        self.receiver.stop()
        self.engine.dispose()

    def events(self, kind: str | None = None) -> list[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(events.c.kind, events.c.message)).all()
        return [f"{r.kind}: {r.message}" for r in rows if kind is None or r.kind == kind]


def _node(tmp_path: Path, db_url: str = "", **kwargs: object) -> Running:
    config = make_config(tmp_path / "storage", db_url=db_url, port=0, **kwargs)
    return Running(config)


RECEIVERS = [
    'receiver = "native"\ndurability = "journal"',
    'receiver = "native"\ndurability = "file"',
    'receiver = "pynetdicom"\ndurability = "journal"',
]


@pytest.fixture(params=RECEIVERS, ids=["native-journal", "native-file", "pynetdicom-journal"])
def node(request: pytest.FixtureRequest, tmp_path: Path, db_url: str) -> Iterator[Running]:
    running = _node(tmp_path, db_url, extra_node=request.param)
    yield running
    running.stop()


def storescu(
    port: int, *paths: Path | str, aet: str = "STORESCU", aec: str = "NODE", extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    cmd = ["storescu", "-aet", aet, "-aec", aec, *extra, "127.0.0.1", str(port), *[str(p) for p in paths]]
    return subprocess.run(cmd, capture_output=True, text=True, env=tcp_env(), timeout=120)


def test_echo_and_ct_series_from_storescu(node: Running) -> None:
    echo = subprocess.run(
        ["echoscu", "-aet", "ECHOSCU", "-aec", "NODE", "127.0.0.1", str(node.port)],
        capture_output=True,
        text=True,
        env=tcp_env(),
        timeout=30,
    )
    assert echo.returncode == 0, echo.stderr
    files = sorted((require(CT_LIDC_SLAB) / "dicom").iterdir())
    result = storescu(node.port, "+sd", *files)
    assert result.returncode == 0, result.stderr
    assert node.count() == 12
    with node.engine.connect() as conn:
        rows = conn.execute(select(instances)).all()
        ser = conn.execute(select(series)).one()
    assert ser.instance_count == 12 and ser.state == "receiving" and ser.modality == "CT"
    for row in rows:
        stored = dcmread(node.store.absolute(row.path))
        original = dcmread(next(f for f in files if dcmread(f, stop_before_pixels=True).SOPInstanceUID == row.sop_uid))
        assert stored.PixelData == original.PixelData  # bytes kept exactly as sent
        assert stored.SOPInstanceUID == row.sop_uid


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_every_transfer_syntax_and_us_file_is_kept(node: Running, tmp_path: Path) -> None:
    from pydicom.uid import generate_uid

    from dicom_node.net.scu import send_files

    folders = [REAL / "ct_chest_slice_transfer_syntaxes", US_CLINICAL, US_PHANTOM, REAL / "ct_misc"]
    datasets = []
    for folder in folders:
        for f in sorted(require(folder).rglob("*.dcm")):
            datasets.append(dcmread(f))
    # The 16 transfer-syntax variants share one SOP Instance UID: make them distinct instances.
    paths = []
    for i, ds in enumerate(datasets):
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        paths.append(tmp_path / f"{i}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    sent = send_files(paths, host="127.0.0.1", port=node.port, called_ae="NODE", calling_ae="TESTSCU")
    assert [s.status for s in sent] == [0] * len(datasets)
    assert node.count() == len(datasets)
    with node.engine.connect() as conn:
        syntaxes = {r.transfer_syntax for r in conn.execute(select(instances.c.transfer_syntax))}
    assert len(syntaxes) >= 14  # every variant arrives in its own transfer syntax, undecoded


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_unknown_calling_ae_and_wrong_called_ae_are_rejected(node: Running) -> None:
    files = sorted((require(CT_LIDC_SLAB) / "dicom").iterdir())[:1]
    bad_calling = storescu(node.port, *files, aet="INTRUDER")
    assert bad_calling.returncode != 0
    assert "Calling AE Title Not Recognized" in bad_calling.stderr
    bad_called = storescu(node.port, *files, aec="SOMEONE")
    assert "Called AE Title Not Recognized" in bad_called.stderr
    assert node.count() == 0
    assert len(node.events("association_rejected")) == 2
    assert storescu(node.port, *files).returncode == 0  # and the node keeps serving
    assert node.count() == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_protocol_garbage_is_dropped_and_the_node_keeps_serving(node: Running) -> None:
    import socket
    import struct

    junk = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # a port scanner or a browser
        struct.pack(">BBI", 0x01, 0, 10) + b"short",  # an A-ASSOCIATE-RQ cut off mid-PDU
        struct.pack(">BBI", 0x04, 0, 8) + b"\x00" * 8,  # P-DATA before any association
        struct.pack(">BBI", 0x01, 0, 0xFFFFFFF0),  # a PDU that claims 4 GiB
    ]
    for payload in junk:
        with socket.create_connection(("127.0.0.1", node.port), timeout=10) as sock:
            try:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(4096):
                    pass
            except OSError:
                pass  # the node may close or reset the connection first: that is fine
    files = sorted((require(CT_LIDC_SLAB) / "dicom").iterdir())[:2]
    assert storescu(node.port, *files).returncode == 0
    assert node.count() == 2


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_association_limit_answers_local_limit_exceeded(tmp_path: Path, db_url: str) -> None:
    from pynetdicom import AE

    running = _node(tmp_path, db_url, extra_node="max_associations = 1")
    try:
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context("1.2.840.10008.1.1")
        first = ae.associate("127.0.0.1", running.port, ae_title="NODE")
        assert first.is_established
        second = ae.associate("127.0.0.1", running.port, ae_title="NODE")
        assert second.is_rejected
        first.release()
        assert any("maximum is 1" in e for e in running.events("association_rejected"))
    finally:
        running.stop()


def _part10(dataset_bytes: bytes, sop_class: str = "1.2.840.10008.5.1.4.1.1.2", sop_uid: str = "1.2.3.4.5") -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    buf = DicomBytesIO()
    buf.write(b"\0" * 128 + b"DICM")
    from pydicom.filewriter import write_file_meta_info

    write_file_meta_info(buf, meta, enforce_standard=True)
    return bytes(buf.getvalue()) + dataset_bytes


def test_bad_input_gets_failure_status_and_event_and_nothing_else_is_lost(
    node: Running, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pynetdicom import AE, _config

    # Send files byte for byte (UIDs from the file meta), as a misbehaving modality would.
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)

    slab = sorted((require(CT_LIDC_SLAB) / "dicom").iterdir())
    good = dcmread(slab[0])
    raw_good = slab[0].read_bytes()
    cases: dict[str, Path] = {}

    def case(name: str, data: bytes) -> None:
        path = tmp_path / f"{name}.dcm"
        path.write_bytes(data)
        cases[name] = path

    case("garbage", _part10(b"\x13\x37" * 5000))
    case("truncated", raw_good[: len(raw_good) - 70000])
    traversal = copy.deepcopy(good)
    traversal.SOPInstanceUID = "../../../../etc/passwd"
    traversal.file_meta.MediaStorageSOPInstanceUID = "1.2.3.9"
    buf = DicomBytesIO()
    traversal.save_as(buf, enforce_file_format=False)
    case("traversal", buf.getvalue())
    empty_uid = sorted(require(REAL / "ct_totalseg_partialbody_j2k").glob("CT.*"))[0]
    cases["empty_uids"] = empty_uid

    ae = AE(ae_title="TESTSCU")
    for syntax in (
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.4.90",
    ):  # one context each: the SCP picks one per context
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", syntax)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="NODE")
    assert assoc.is_established
    try:
        statuses = {}
        for name, path in cases.items():
            status = assoc.send_c_store(path)
            statuses[name] = int(status.Status)
        # ... and on the same association a good instance still gets stored
        statuses["good"] = int(assoc.send_c_store(good).Status)
    finally:
        assoc.release()
    assert statuses["good"] == 0, node.events()
    for name in cases:
        assert statuses[name] & 0xF000 in (0xA000, 0xC000), (name, hex(statuses[name]))
    problems = node.events("rejected")
    assert len(problems) == len(cases), problems
    assert any("truncated" in p for p in problems)
    assert any("SOPInstanceUID is empty" in p for p in problems)
    assert any("not a valid UID" in p for p in problems)
    assert node.count() == 1
    assert not list(Path(node.config.node.storage).rglob("passwd*"))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("policy", "status", "stored_bytes"),
    [
        ("keep-first", 0x0000, "first"),
        ("overwrite", 0x0000, "second"),
        ("reject", 0x0111, "first"),
    ],
)
@pytest.mark.parametrize("indexed_first", [False, True], ids=["while-pending", "after-indexing"])
def test_duplicate_policy(
    tmp_path: Path, db_url: str, policy: str, status: int, stored_bytes: str, indexed_first: bool
) -> None:
    """The second copy arrives while the first is journaled but not yet indexed, or after it is indexed."""
    from tests.peers.scu import c_store

    running = _node(tmp_path, db_url, extra_node=f'duplicate_policy = "{policy}"')
    try:
        first = dcmread(sorted((require(CT_LIDC_SLAB) / "dicom").iterdir())[0])
        second = copy.deepcopy(first)
        second.SeriesDescription = "resent"
        assert c_store([first], running.port, called_aet="NODE") == [0]
        if indexed_first:
            running.settle()
        assert c_store([second], running.port, called_aet="NODE") == [status]
        running.settle()
        with running.engine.connect() as conn:
            row = conn.execute(select(instances)).one()
        stored = dcmread(running.store.absolute(row.path), stop_before_pixels=True)
        assert (stored.get("SeriesDescription") == "resent") is (stored_bytes == "second")
        assert row.duplicates == (0 if policy == "overwrite" else 1)
        assert len(running.events("duplicate")) == (0 if policy == "overwrite" else 1)
    finally:
        running.stop()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_disk_under_watermark_answers_out_of_resources(tmp_path: Path, db_url: str) -> None:
    from tests.peers.scu import c_store

    running = _node(tmp_path, db_url, min_free_disk_mb=10**9)
    try:
        first = dcmread(sorted((require(CT_LIDC_SLAB) / "dicom").iterdir())[0])
        assert c_store([first], running.port, called_aet="NODE") == [0xA700]
        assert running.count() == 0
        assert any("watermark" in e for e in running.events("disk_full"))
    finally:
        running.stop()
