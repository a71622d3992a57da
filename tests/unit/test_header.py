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
