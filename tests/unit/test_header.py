"""The receiver's hand-rolled header reader agrees with pydicom on every real file we have."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.ingest.header import _fast, _Unsupported, _with_pydicom, read_header
from tests.peers.dicomfiles import REAL, require


def _part10_files() -> list[Path]:
    files = []
    for path in sorted(require(REAL).rglob("*")):
        if path.is_file() and path.stat().st_size > 132:
            with path.open("rb") as fh:
                fh.seek(128)
                if fh.read(4) == b"DICM":
                    files.append(path)
    return files


def test_fast_path_equals_pydicom_on_all_real_files() -> None:
    compared = 0
    for path in _part10_files():
        data = path.read_bytes()
        try:
            slow = _with_pydicom(data)
        except ValueError:
            continue
        try:
            fast = _fast(data)
        except _Unsupported:
            continue  # read_header falls back to pydicom for these
        assert fast == slow, path
        compared += 1
    assert compared >= 50


@pytest.mark.parametrize("cut", [200, 400, 1000])
def test_cut_headers_fall_back_and_fail_readably(cut: int) -> None:
    data = sorted((require(REAL / "ct_lidc0002_slab12") / "dicom").iterdir())[0].read_bytes()
    try:
        header = read_header(data[:cut])
    except ValueError as exc:
        assert "cannot parse dataset" in str(exc)
    else:
        assert not header.sop_uid or header.pixel_offset == -1 or header.pixel_offset <= cut


def nested_part10(depth: int, *, implicit: bool = False, sop_uid: str = "1.2.3.4.5.6") -> bytes:
    """A small CT-like object holding ``depth`` sequences of undefined length, each in the item of the
    one around it (issue #18 D: 2,000 of them used to exhaust the stack)."""
    import struct

    from dicom_node.net.dimse import file_meta

    syntax = "1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1"
    sop_class = "1.2.840.10008.5.1.4.1.1.7"

    def element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
        if len(value) % 2:
            value += b"\x00" if vr == b"UI" else b" "
        if implicit:
            return struct.pack("<HHI", group, elem, len(value)) + value
        return struct.pack("<HH2sH", group, elem, vr, len(value)) + value

    def undefined_sequence(group: int, elem: int) -> bytes:
        if implicit:
            return struct.pack("<HHI", group, elem, 0xFFFFFFFF)
        return struct.pack("<HH2sHI", group, elem, b"SQ", 0, 0xFFFFFFFF)

    item, item_end = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF), struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    sequence_end = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    body = element(0x0008, 0x0016, b"UI", sop_class.encode())
    body += element(0x0008, 0x0018, b"UI", sop_uid.encode())
    body += element(0x0008, 0x0060, b"CS", b"OT")
    body += element(0x0020, 0x000D, b"UI", b"1.2.3.4.1")
    body += element(0x0020, 0x000E, b"UI", b"1.2.3.4.2")
    body += (undefined_sequence(0x0040, 0xA730) + item) * depth + (item_end + sequence_end) * depth
    return file_meta(sop_class, sop_uid, syntax, "TESTSCU", "1.2.3", "TEST") + body


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_deeply_nested_sequences_are_refused_readably(implicit: bool) -> None:
    from dicom_node.ingest.header import MAX_SEQUENCE_DEPTH

    assert read_header(nested_part10(MAX_SEQUENCE_DEPTH - 2, implicit=implicit)).sop_uid == "1.2.3.4.5.6"
    with pytest.raises(ValueError, match="nested deeper"):
        read_header(nested_part10(2000, implicit=implicit))
