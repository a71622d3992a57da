"""Issue #18: generated Upper Layer PDUs and DIMSE messages thrown at both receivers, on loopback.

Each case is a valid skeleton with mutated parts (Hypothesis draws them): an A-ASSOCIATE-RQ with odd,
even or zero presentation context IDs, odd abstract and transfer syntaxes, flipped, cut or appended
bytes, a wrong length or item type, garbage after it; then P-DATA-TF PDUs whose context IDs, control
headers, command sets (mutated C-STORE-RQ elements) and data sets are drawn the same way, PDUs whose
length field lies (short, or about 2 GiB), and unknown PDU types. After every case the receiver must
still answer ``echoscu`` and take a new instance from ``storescu``; at the end nothing was logged with
a traceback, no thread died with an exception, and the receiver's threads and file descriptors are
back near where they started.

The run is reproducible and bounded for CI (``derandomize``, :data:`EXAMPLES` per receiver). For a
longer run by hand: ``FUZZ_EXAMPLES=2000 pytest tests/integration/test_receiver_fuzz.py``.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from dicom_node.db import instances
from dicom_node.net import ul
from dicom_node.synth.dicom_series import write_ct_series
from tests.integration.test_receiver import Running
from tests.nodes import make_config, tcp_env, wait_for
from tests.peers.rawscu import CT, EXPLICIT_LE, SC, associate_rq, dataset_of, store_command
from tests.unit.test_header import nested_part10

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
DATA = dataset_of(nested_part10(1, sop_uid="1.2.3.4.5.6"))


class Collector(logging.Handler):
    """Every log record that carries a traceback, from any thread."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.tracebacks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.stack_info:
            self.tracebacks.append(f"{record.name}: {record.getMessage()}\n{self.format(record)}")


@pytest.fixture(scope="module", params=["native", "pynetdicom"])
def fuzzed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One receiver for all the cases of a run (a new one per case would test start-up, not the parser)."""
    folder = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    extra = f'receiver = "{request.param}"\nassociation_request_timeout_s = 2\nnetwork_timeout_s = 3'
    config = make_config(folder / "storage", db_url=f"sqlite:///{folder / 'node.db'}", port=0, extra_node=extra)
    collector = Collector()
    root = logging.getLogger()
    root.addHandler(collector)
    pynetdicom_level = logging.getLogger("pynetdicom").level
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # as serve sets it
    running = Running(config)
    template = write_ct_series(np.full((1, 8, 8), -1000.0), (1.0, 1.0, 1.0), folder / "in", seed=7)[0]
    try:
        yield running, collector, template, folder
    finally:
        running.stop()
        root.removeHandler(collector)
        logging.getLogger("pynetdicom").setLevel(pynetdicom_level)


# -- what is thrown ---------------------------------------------------------------------------------
CONTEXT_IDS = st.sampled_from([1, 3, 5, 255, 0, 2, 254, 128])
ABSTRACT = st.sampled_from([SC, CT, VERIFICATION, "", "1.2.3", "1." + "2" * 70, "not a uid"])
TRANSFER = st.sampled_from([EXPLICIT_LE, IMPLICIT_LE, "", "1.2.840.10008.1.2.4.50", "9.9.9"])
BLOB = st.binary(min_size=0, max_size=300)


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` as is, or with bytes flipped, cut, appended, or its PDU length or item type changed."""
    how = draw(st.sampled_from(["keep", "keep", "flip", "cut", "append", "length", "item_type"]))
    if how == "keep" or not data:
        return data
    if how == "flip":
        out = bytearray(data)
        for pos in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=6)):
            out[pos] = draw(st.integers(0, 255))
        return bytes(out)
    if how == "cut":
        return data[: draw(st.integers(0, len(data) - 1))]
    if how == "append":
        return data + draw(st.binary(min_size=1, max_size=200))
    if how == "length" and len(data) >= 6:
        length = draw(st.sampled_from([0, 1, 4, len(data) - 6 + 1, 0x7FFFFFF0, 0xFFFFFFFF]))
        return data[:2] + struct.pack(">I", length) + data[6:]
    if len(data) > 80:  # an item type inside the variable part (application context, contexts, user info)
        pos = draw(st.integers(74, len(data) - 1))
        return data[:pos] + bytes([draw(st.integers(0, 255))]) + data[pos + 1 :]
    return data


@st.composite
def associate(draw: st.DrawFn) -> tuple[bytes, bool]:
    """An A-ASSOCIATE-RQ (maybe mutated, maybe with garbage after it); and whether it is intact."""
    contexts = draw(st.lists(st.tuples(CONTEXT_IDS, ABSTRACT, TRANSFER), min_size=0, max_size=4))
    if draw(st.booleans()):
        contexts = [(1, SC, EXPLICIT_LE), *contexts]
    called = draw(st.sampled_from(["NODE", "", "X" * 16, "NODE\x00\x01"]))
    pdu = associate_rq(contexts, called=called[:16])
    out = draw(mutated(pdu))
    garbage = draw(st.one_of(st.just(b""), BLOB))
    return out + garbage, out == pdu and not garbage


@st.composite
def command(draw: st.DrawFn) -> bytes:
    sop_class = draw(st.one_of(st.none(), ABSTRACT))
    sop_uid = draw(st.sampled_from([None, "1.2.3.4.5.6", "", "../../x", "1.2.3." + "9" * 70]))
    return draw(mutated(store_command(sop_class, sop_uid, message_id=draw(st.integers(0, 0xFFFF)))))


@st.composite
def message(draw: st.DrawFn) -> bytes:
    """A P-DATA-TF with a drawn context ID and control header, an A-RELEASE-RQ, or other PDUs."""
    kind = draw(st.sampled_from(["pdata", "pdata", "pdata", "release", "abort", "unknown", "raw"]))
    if kind == "release":
        return ul._pdu(ul.A_RELEASE_RQ, bytes(4))
    if kind == "abort":
        return ul._pdu(ul.A_ABORT_RQ, draw(st.binary(min_size=0, max_size=6)))
    if kind == "unknown":
        return ul._pdu(draw(st.integers(0, 255)), draw(BLOB))
    if kind == "raw":
        return draw(BLOB)
    body = draw(st.one_of(command(), st.just(DATA), mutated(DATA), BLOB))
    ctx = draw(CONTEXT_IDS)
    is_command, last = draw(st.booleans()), draw(st.booleans())
    pdu = ul.build_p_data(ctx, is_command, last, body)
    if draw(st.booleans()):  # a control header with every bit drawn
        header_at = 10  # PDU header (6) + PDV length (4)
        pdu = pdu[:header_at] + bytes([draw(st.integers(0, 255))]) + pdu[header_at + 1 :]
    return draw(mutated(pdu))


@st.composite
def case(draw: st.DrawFn) -> tuple[bytes, bool, list[bytes]]:
    """(opening bytes, whether to wait for the answer to them, the PDUs sent after it).

    An intact A-ASSOCIATE-RQ is answered before the messages follow, or not (the messages arrive
    before the A-ASSOCIATE-AC is sent: a P-DATA-TF in state Sta3)."""
    opening, intact = draw(
        st.one_of(
            associate(),
            st.builds(lambda b: (b, False), st.one_of(message(), BLOB)),  # no association first
        )
    )
    wait = intact and draw(st.booleans())
    return opening, wait, draw(st.lists(message(), min_size=0, max_size=4))


# -- throwing it --------------------------------------------------------------------------------------
def _throw(port: int, opening: bytes, wait: bool, messages: list[bytes]) -> None:
    """Send one case; read whatever comes back until the receiver closes or a pause of 0.3 s."""
    with socket.create_connection(("127.0.0.1", port), timeout=0.3) as sock:
        try:
            sock.sendall(opening)
            if wait:
                _read_some(sock)  # the A-ASSOCIATE-AC (or RJ) before the messages
            for pdu in messages:
                sock.sendall(pdu)
            _read_some(sock)
        except OSError:  # reset or closed by the receiver: an answer too
            pass


def _read_some(sock: socket.socket) -> None:
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        pass


def _echo(port: int) -> bool:
    cmd = ["echoscu", "-to", "10", "-aet", "ECHOSCU", "-aec", "NODE", "127.0.0.1", str(port)]
    return subprocess.run(cmd, capture_output=True, env=tcp_env(), timeout=30).returncode == 0


def _store(port: int, template: Path, folder: Path) -> str:
    """Send a new instance with storescu; returns its SOP Instance UID (asserts Success)."""
    ds = dcmread(template)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path)
    cmd = ["storescu", "-to", "10", "-aet", "STORESCU", "-aec", "NODE", "127.0.0.1", str(port), str(path)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=tcp_env(), timeout=30)
    assert done.returncode == 0, done.stderr
    return str(ds.SOPInstanceUID)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.slow
def test_generated_pdus_never_break_a_receiver(fuzzed: Any) -> None:
    running, collector, template, folder = fuzzed
    port = running.port
    assert _echo(port)
    _store(port, template, folder)  # the first store opens what stays open (journal, database)
    running.settle()
    base_threads, base_fds = threading.active_count(), _fds()
    died: list[str] = []
    hook = threading.excepthook
    threading.excepthook = lambda args: died.append(f"{args.thread.name if args.thread else '?'}: {args.exc_value!r}")
    stored: list[str] = []
    try:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(case())
        def run(thrown: tuple[bytes, bool, list[bytes]]) -> None:
            opening, wait, messages = thrown
            died.clear()
            _throw(port, opening, wait, messages)
            assert _echo(port), "C-ECHO refused after a fuzz case"
            stored.append(_store(port, template, folder))
            assert not died, died
            assert threading.active_count() < base_threads + 40, "threads grow"

        run()
    finally:
        threading.excepthook = hook
    running.settle()
    # Connections end asynchronously (ARTIM, network timeout): threads and fds come back near the start.
    wait_for(lambda: threading.active_count() <= base_threads + 2, timeout=20, what="threads back to the start")
    wait_for(lambda: _fds() <= base_fds + 4, timeout=20, what=f"fds back to the start ({_fds()} vs {base_fds})")
    assert not died, died
    assert not collector.tracebacks, "\n\n".join(collector.tracebacks[:3])
    with running.engine.connect() as conn:
        kept = set(conn.execute(select(instances.c.sop_uid)).scalars())
    assert set(stored) <= kept
