"""Instance buffers: page-aligned, grown on demand, filled from a socket, written unbuffered or not."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from dicom_node.ingest.buffers import BLOCK, HEAD_ROOM, InstanceBuffer, write_file
from dicom_node.ingest.header import check_pixel_data, read_header
from tests.peers.dicomfiles import REAL, require

TRANSFER_SYNTAXES = REAL / "ct_chest_slice_transfer_syntaxes"


def write_instance_file(path: Path, payload: bytes) -> int:
    """``write_file`` from a block-aligned buffer, as the materializer's journal reads give it."""
    with InstanceBuffer.from_bytes(payload).view() as data:
        return write_file(path, data)


@pytest.mark.parametrize("size", [5, BLOCK, 3 * BLOCK, 3 * BLOCK + 1])
def test_instance_file_of_any_length_replaces_the_old_one(tmp_path: Path, size: int) -> None:
    """Whole blocks unbuffered, a partial last block through the page cache; the rename replaces."""
    path = tmp_path / "a" / "b" / "x.dcm"
    assert write_instance_file(path, os.urandom(5 * BLOCK)) == 5 * BLOCK
    payload = os.urandom(size)
    assert write_instance_file(path, payload) == size
    assert path.read_bytes() == payload
    assert [p.name for p in path.parent.iterdir()] == ["x.dcm"]


def test_a_released_buffer_is_reused_with_only_the_new_bytes() -> None:
    a, b = socket.socketpair()
    first = InstanceBuffer()
    first.append(os.urandom(3 * BLOCK))
    first.release()  # back to the pool, its pages backed
    payload = os.urandom(BLOCK + 9)
    a.sendall(payload)
    second = InstanceBuffer()
    second.recv(b, len(payload))
    assert bytes(second.view()) == payload
    with second.padded(HEAD_ROOM) as padded:
        assert bytes(padded[len(payload) :]) == bytes(len(padded) - len(payload))
    a.close()
    b.close()


def test_buffer_grows_and_keeps_its_bytes() -> None:
    buf = InstanceBuffer(capacity=BLOCK)
    payload = os.urandom(3 * BLOCK + 17)
    buf.append(payload[:100])
    buf.append(payload[100:])  # past the first capacity: the buffer moves to a bigger mapping
    with buf.view() as view:
        assert bytes(view) == payload
    with buf.padded(HEAD_ROOM) as padded:
        assert len(padded) % BLOCK == 0 and bytes(padded[len(payload) :]) == bytes(len(padded) - len(payload))


def test_buffer_reads_exactly_n_bytes_from_a_socket() -> None:
    a, b = socket.socketpair()
    payload = os.urandom(5 * 1024 * 1024 + 3)
    sender = threading.Thread(target=lambda: (a.sendall(payload + b"next"), a.close()))
    sender.start()
    buf = InstanceBuffer(capacity=BLOCK)
    buf.recv(b, len(payload))
    sender.join()
    assert bytes(buf.view()) == payload
    assert b.recv(16) == b"next"  # not a byte more was read
    with pytest.raises(ConnectionError):
        InstanceBuffer().recv(b, 10)  # the peer closed before sending them
    b.close()


@pytest.mark.parametrize("folder", [None, Path("/dev/shm")], ids=["disk", "tmpfs"])
def test_instance_file_has_exactly_the_bytes(tmp_path: Path, folder: Path | None) -> None:
    """O_DIRECT on a disk, the page cache on tmpfs (which refuses O_DIRECT): the same file either way."""
    base = tmp_path if folder is None else folder
    if not base.is_dir():
        pytest.skip(f"{base} is missing")
    path = base / f"dicom-node-test-{os.getpid()}" / "x.dcm"
    payload = os.urandom(BLOCK * 2 + 5)
    try:
        assert write_instance_file(path, payload) == len(payload)
        assert path.read_bytes() == payload
        assert [p.name for p in path.parent.iterdir()] == ["x.dcm"]  # no temporary left behind
    finally:
        path.unlink(missing_ok=True)
        if folder is not None:
            path.parent.rmdir()


def test_encapsulated_pixel_data_must_reach_its_delimiter() -> None:
    data = (require(TRANSFER_SYNTAXES) / "CTImage.dcm_RLELosslessTransferSyntax_1.2.840.10008.1.2.5.dcm").read_bytes()
    header = read_header(data)
    check_pixel_data(data, header.pixel_offset, header.transfer_syntax, header.native_pixel_bytes)
    with pytest.raises(ValueError, match="no sequence delimiter"):
        check_pixel_data(data[:-200], header.pixel_offset, header.transfer_syntax, header.native_pixel_bytes)
    broken = bytearray(data)
    first_item = header.pixel_offset + 12
    broken[first_item : first_item + 4] = b"\x00\x00\x00\x00"
    with pytest.raises(ValueError, match="malformed encapsulated"):
        check_pixel_data(bytes(broken), header.pixel_offset, header.transfer_syntax, header.native_pixel_bytes)
