"""Issue #18 A: connections that never associate must not lock senders out, on both receivers.

Idle and slow-drip TCP connections used to count against ``max_associations`` from the moment they
were accepted, with a receive timeout that every byte restarted. Now an association counts once it
is negotiated, the A-ASSOCIATE-RQ must be complete within the ARTIM timeout of the connection
opening, and one address keeps at most ``max_pending_per_address`` connections negotiating.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_receiver import Running, storescu
from tests.nodes import make_config, tcp_env

ARTIM_S = 3.0
LIMITS = f"association_request_timeout_s = {ARTIM_S}\nmax_associations = 4\nmax_pending_per_address = 4"


@pytest.fixture(params=["native", "pynetdicom"])
def limited(request: pytest.FixtureRequest, tmp_path: Path, sqlite_url: str) -> Iterator[Running]:
    extra = f'receiver = "{request.param}"\n{LIMITS}'
    running = Running(make_config(tmp_path / "storage", db_url=sqlite_url, port=0, extra_node=extra))
    yield running
    running.stop()


def _open(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    sock.settimeout(0.2)
    return sock


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1 << 16) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def _drip(socks: list[socket.socket], stop: threading.Event) -> None:
    """One byte of an A-ASSOCIATE-RQ header per socket every 0.5 s, for at most 60 s."""
    header = bytes([0x01, 0x00, 0x00, 0x00, 0x10, 0x00]) * 20
    for i in range(120):
        if stop.wait(0.5):
            return
        for sock in socks:
            try:
                sock.send(header[i : i + 1])
            except OSError:
                pass


def _echo(port: int) -> subprocess.CompletedProcess[str]:
    cmd = ["echoscu", "-to", "20", "-ta", "20", "-td", "20", "-aet", "ECHOSCU", "-aec", "NODE", "127.0.0.1", str(port)]
    return subprocess.run(cmd, capture_output=True, text=True, env=tcp_env(), timeout=60)


@pytest.mark.slow
def test_idle_and_dripping_connections_do_not_lock_senders_out(limited: Running, tmp_path: Path) -> None:
    import numpy as np

    from dicom_node.synth.dicom_series import write_ct_series

    files = write_ct_series(np.zeros((2, 8, 8)), (1.0, 1.0, 1.0), tmp_path / "in", seed=5)
    idle = [_open(limited.port) for _ in range(40)]  # one address: the oldest are closed as more come
    dripping = [_open(limited.port, f"127.0.0.{i}") for i in range(2, 22)]  # 20 other addresses
    stop = threading.Event()
    dripper = threading.Thread(target=_drip, args=(dripping, stop), daemon=True)
    dripper.start()
    try:
        time.sleep(0.5)
        started = time.monotonic()
        echo = _echo(limited.port)
        assert echo.returncode == 0, echo.stdout + echo.stderr
        stored = storescu(limited.port, *files, extra=("-to", "20", "-ta", "20", "-td", "20"))
        assert stored.returncode == 0, stored.stdout + stored.stderr
        assert time.monotonic() - started < ARTIM_S + 10  # generous: not blocked until the ARTIM expiry
        assert limited.count() == 2
        # The dripping connections never complete their A-ASSOCIATE-RQ: closed at the ARTIM timeout,
        # although they keep sending bytes.
        deadline = time.monotonic() + ARTIM_S + 15
        while time.monotonic() < deadline and not all(_closed_by_peer(s) for s in dripping):
            time.sleep(0.2)
        assert all(_closed_by_peer(s) for s in dripping), "slow-drip connections outlived the ARTIM timeout"
        assert all(_closed_by_peer(s) for s in idle)
    finally:
        stop.set()
        dripper.join(timeout=5)
        for sock in idle + dripping:
            sock.close()


def _associate_rq(called: str = "NODE") -> bytes:
    from dicom_node.net import ul

    ctx = ul._item(ul.ABSTRACT_SYNTAX_SUB_ITEM, b"1.2.840.10008.1.1")
    ctx += ul._item(ul.TRANSFER_SYNTAX_SUB_ITEM, b"1.2.840.10008.1.2")
    body = (1).to_bytes(2, "big") + bytes(2) + ul._ae(called) + ul._ae("ECHOSCU") + bytes(32)
    body += ul._item(ul.APPLICATION_CONTEXT_ITEM, ul.APPLICATION_CONTEXT.encode())
    body += ul._item(ul.PRESENTATION_CONTEXT_ITEM_RQ, bytes([1, 0, 0, 0]) + ctx)
    body += ul._item(ul.USER_INFORMATION_ITEM, ul._item(ul.MAXIMUM_LENGTH_SUB_ITEM, (16384).to_bytes(4, "big")))
    return ul._pdu(ul.A_ASSOCIATE_RQ, body)


GARBAGE = [
    b"GARBAGE-GARBAGE-GARBAGE",  # not a PDU
    b"\x04\x00\x00\x00\x00\x02ab",  # P-DATA-TF before any association
    _associate_rq() + b"\xff\x00\x00\x00\x00\x02ab",  # a request, then an unknown PDU type
    _associate_rq("WRONG") + b"\x04\x00\x00\x00\x00\x02ab",  # a refused request, then P-DATA
    _associate_rq() + b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00",  # a request, then A-ABORT at once
]


@pytest.mark.slow
def test_garbage_before_association_leaves_no_thread_behind(limited: Running) -> None:
    """Each connection ends (closed or aborted), the receiver's thread count comes back, and a real
    sender is served afterwards."""
    before = threading.active_count()
    for payload in GARBAGE:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", limited.port), timeout=10) as sock:
                sock.sendall(payload)
                sock.settimeout(ARTIM_S + 10)
                try:
                    while sock.recv(4096):
                        pass
                except OSError:
                    pass
    deadline = time.monotonic() + ARTIM_S + 10
    while time.monotonic() < deadline and threading.active_count() > before:
        time.sleep(0.2)
    assert threading.active_count() <= before, [t.name for t in threading.enumerate()]
    assert _echo(limited.port).returncode == 0
