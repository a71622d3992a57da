"""UID validation before paths, and atomic durable writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.store import InvalidUID, Store, check_uid, write_atomic


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "   ",
        "../../etc/passwd",
        "1.2.3/../../x",
        "1.2.abc",
        "1.2.3\\4",
        "1." * 40 + "1",
        None,
        "1..2",
        ".1.2",
    ],
)
def test_bad_uids_are_refused(bad: object) -> None:
    with pytest.raises(InvalidUID):
        check_uid(bad, "SOPInstanceUID")


def test_good_uids_pass_with_padding_removed() -> None:
    assert check_uid("1.2.840.10008.1.2\x00", "x") == "1.2.840.10008.1.2"
    assert check_uid(" 1.2.03 ", "x") == "1.2.03"  # leading zeros: lenient, real modalities send them


def test_paths_stay_under_the_root(tmp_path: Path) -> None:
    store = Store(tmp_path)
    path = store.instance_path("1.2", "1.2.3", "1.2.3.4")
    assert path == tmp_path.resolve() / "instances" / "1.2" / "1.2.3" / "1.2.3.4.dcm"
    with pytest.raises(InvalidUID):
        store.instance_path("1.2", "..", "1.2.3.4")
    with pytest.raises(ValueError):
        store.absolute("../outside.dcm")
    assert store.absolute(store.relative(path)) == path


def test_write_atomic_replaces_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "x.dcm"
    assert write_atomic(target, [b"abc", b"def"]) == 6
    assert write_atomic(target, [b"new"]) == 3
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["x.dcm"]


def test_write_atomic_failure_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "x.dcm"
    write_atomic(target, [b"old"])

    def chunks() -> object:
        yield b"partial"
        raise RuntimeError("peer vanished")

    with pytest.raises(RuntimeError):
        write_atomic(target, chunks())  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.dcm"]
