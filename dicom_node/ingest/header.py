"""What the receiver needs from an instance's header, read straight from the bytes the peer sent.

The fast path walks the top-level data elements of a Part 10 byte string by hand (explicit and
implicit VR little endian, explicit big endian; sequences skipped by length or by delimiter), stops
at the pixel data, and never decodes anything else. Anything it does not understand (deflated
data, a malformed element, a missing attribute) falls back to pydicom, which reads leniently and
raises readable errors. Both paths return the same :class:`Header`. Pixel data is never decoded:
:func:`check_pixel_data` only checks its length against the image size.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Literal

from pydicom import dcmread

from dicom_node.ingest.buffers import Bytes

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1")
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
PIXEL_DATA = 0x7FE00010
# Sequences of undefined length nested deeper than this are refused (0xC000) rather than walked: real
# objects nest a few levels (SR content trees a few dozen at most); thousands would exhaust the stack.
MAX_SEQUENCE_DEPTH = 64

TEXT = {
    0x00080016: "sop_class",
    0x00080018: "sop_uid",
    0x00080050: "accession",
    0x00080060: "modality",
    0x0008103E: "description",
    0x00100020: "patient_id",
    0x0020000D: "study_uid",
    0x0020000E: "series_uid",
    0x00280004: "photometric",
    0x00280008: "frames",
}
NUMBERS = {0x00280002: "samples", 0x00280010: "rows", 0x00280011: "columns", 0x00280100: "bits"}


@dataclass
class Header:
    """The identity and image size of one instance, and where its pixel data starts (the data set's end
    if it has none; -1 if unknown, for deflated data)."""

    transfer_syntax: str
    meta_sop_class: str = ""
    sop_class: str = ""
    sop_uid: str = ""
    study_uid: str = ""
    series_uid: str = ""
    modality: str = ""
    description: str = ""
    patient_id: str = ""
    accession: str = ""
    photometric: str = ""
    frames: str = ""
    samples: int = 1
    rows: int = 0
    columns: int = 0
    bits: int = 0
    pixel_offset: int = -1

    @property
    def native_pixel_bytes(self) -> int:
        """Bytes the pixel data needs uncompressed (0 if the size is unknown)."""
        samples = 2 if self.photometric == "YBR_FULL_422" else self.samples
        try:
            frames = int(self.frames or 1)
        except ValueError:
            frames = 1
        return self.rows * self.columns * samples * frames * self.bits // 8


class _Unsupported(Exception):
    """The fast path cannot read this; pydicom will."""


def read_header(data: Bytes) -> Header:
    """The header of a Part 10 byte string; raises ValueError with a readable reason."""
    try:
        return _fast(data)
    except (_Unsupported, struct.error, IndexError, UnicodeDecodeError):
        return _with_pydicom(data)


def _text(raw: Bytes) -> str:
    return bytes(raw).decode("latin-1").rstrip("\x00 ").strip()


def _fast(data: Bytes) -> Header:
    if len(data) < 144 or data[128:132] != b"DICM":
        raise _Unsupported
    group, elem, vr, length = struct.unpack_from("<HH2sH", data, 132)
    if (group, elem, vr) != (2, 0, b"UL"):
        raise _Unsupported
    meta_end = 144 + struct.unpack_from("<I", data, 140)[0]
    meta: dict[int, Bytes] = {}
    pos = 144
    while pos < meta_end:
        tag, value, pos = _explicit(data, pos, "<")
        meta[tag] = value
    syntax = _text(meta.get(0x00020010, b""))
    if not syntax or syntax in DEFLATED:
        raise _Unsupported
    header = Header(transfer_syntax=syntax, meta_sop_class=_text(meta.get(0x00020002, b"")))
    implicit, order = syntax == IMPLICIT_LE, (">" if syntax == EXPLICIT_BE else "<")
    header.pixel_offset = len(data)  # where the data set ends when it has no pixel data
    pos = _walk_fast(data, pos, header, implicit, order)
    while pos < len(data):  # the last few bytes (a truncated data set), element by element
        start = pos
        if implicit:
            group, elem, length = struct.unpack_from("<HHI", data, pos)
            tag, pos = (group << 16) | elem, pos + 8
            if tag == PIXEL_DATA:
                header.pixel_offset = start
                break
            if length == 0xFFFFFFFF:
                pos = _skip_undefined(data, pos, implicit=True, order="<")
                continue
            value = data[pos : pos + length]
            pos += length
        else:
            group, elem = struct.unpack_from(order + "HH", data, pos)
            tag = (group << 16) | elem
            if tag == PIXEL_DATA:
                header.pixel_offset = start
                break
            tag, value, pos = _explicit(data, pos, order)
        if pos > len(data):
            raise _Unsupported
        if tag in TEXT:
            setattr(header, TEXT[tag], _text(value))
        elif tag in NUMBERS and len(value) == 2:
            setattr(header, NUMBERS[tag], struct.unpack(order + "H", value)[0])
    if not header.sop_uid:
        raise _Unsupported  # let pydicom tell what is wrong
    return header


_UPPER_PAIRS = frozenset(bytes((a, b)) for a in range(65, 91) for b in range(65, 91))  # what a short VR may be
_ELEMENT = {"<": struct.Struct("<HH2sH"), ">": struct.Struct(">HH2sH")}  # tag, VR, short length
_IMPLICIT = struct.Struct("<HHI")
_LONG = {"<": struct.Struct("<I"), ">": struct.Struct(">I")}
_WANTED = {**TEXT, **NUMBERS}


def _walk_fast(data: Bytes, pos: int, header: Header, implicit: bool, order: str) -> int:
    """The top-level elements from ``pos`` up to the pixel data, in one tight loop (~50 per CT slice).

    Reads while a whole element head fits; returns where it stopped (the data set's end, the pixel
    data, which sets ``header.pixel_offset``, or a last few bytes :func:`_fast` reads one by one).
    Element for element it does what that slower loop does, and fails the same way.
    """
    n = len(data)
    wanted = _WANTED
    if implicit:
        unpack = _IMPLICIT.unpack_from
        while pos + 12 <= n:
            group, elem, length = unpack(data, pos)
            tag = (group << 16) | elem
            if tag == PIXEL_DATA:
                header.pixel_offset = pos
                return n
            pos += 8
            if length == 0xFFFFFFFF:
                pos = _skip_undefined(data, pos, implicit=True, order="<")
                continue
            end = pos + length
            if tag in wanted:
                _set(header, tag, data[pos:end], "<")
            pos = end
        if pos > n:
            raise _Unsupported
        return pos
    unpack_element = _ELEMENT[order].unpack_from
    unpack_long = _LONG[order].unpack_from
    upper = _UPPER_PAIRS
    while pos + 12 <= n:
        group, elem, vr, length = unpack_element(data, pos)
        tag = (group << 16) | elem
        if tag == PIXEL_DATA:
            header.pixel_offset = pos
            return n
        if vr in LONG_VRS:
            (length,) = unpack_long(data, pos + 8)
            pos += 12
            if length == 0xFFFFFFFF:
                pos = _skip_undefined(data, pos, implicit=vr == b"UN", order=order)
                if pos > n:
                    raise _Unsupported
                if tag in wanted:
                    _set(header, tag, b"", order)
                continue
        elif vr in upper:
            pos += 8
        else:
            raise _Unsupported  # not explicit VR after all
        end = pos + length
        if end > n:
            raise _Unsupported
        if tag in wanted:
            _set(header, tag, data[pos:end], order)
        pos = end
    return pos


def _set(header: Header, tag: int, value: Bytes, order: str) -> None:
    if tag in TEXT:
        setattr(header, TEXT[tag], _text(value))
    elif len(value) == 2:
        setattr(header, NUMBERS[tag], struct.unpack(order + "H", value)[0])


def _explicit(data: Bytes, pos: int, order: str, depth: int = 0) -> tuple[int, Bytes, int]:
    group, elem, vr = struct.unpack_from(order + "HH2s", data, pos)
    tag = (group << 16) | elem
    if vr in LONG_VRS:
        (length,) = struct.unpack_from(order + "I", data, pos + 8)
        pos += 12
        if length == 0xFFFFFFFF:
            return tag, b"", _skip_undefined(data, pos, implicit=vr == b"UN", order=order, depth=depth)
    elif vr.isalpha() and vr.isupper():
        (length,) = struct.unpack_from(order + "H", data, pos + 6)
        pos += 8
    else:
        raise _Unsupported  # not explicit VR after all
    end = pos + length
    if end > len(data):
        raise _Unsupported
    return tag, data[pos:end], end


def _skip_undefined(data: Bytes, pos: int, *, implicit: bool, order: str, depth: int = 0) -> int:
    """Skip a sequence of undefined length: items until the sequence delimiter (FFFE,E0DD).

    ``depth`` counts the sequences of undefined length around this one; past :data:`MAX_SEQUENCE_DEPTH`
    the data set is refused with ValueError (not handed to pydicom, which would recurse as deep).
    """
    if depth >= MAX_SEQUENCE_DEPTH:
        raise ValueError(f"cannot parse dataset: sequences nested deeper than {MAX_SEQUENCE_DEPTH} levels")
    while True:
        group, elem, length = struct.unpack_from(order + "HHI", data, pos)
        pos += 8
        if (group, elem) == (0xFFFE, 0xE0DD):
            return pos
        if (group, elem) != (0xFFFE, 0xE000):
            raise _Unsupported
        if length != 0xFFFFFFFF:
            pos += length
            continue
        # An item of undefined length: its elements, until the item delimiter (FFFE,E00D).
        while True:
            group, elem = struct.unpack_from(order + "HH", data, pos)
            if (group, elem) == (0xFFFE, 0xE00D):
                pos += 8
                break
            if implicit:
                (length,) = struct.unpack_from(order + "I", data, pos + 4)
                pos += 8
                if length == 0xFFFFFFFF:
                    pos = _skip_undefined(data, pos, implicit=True, order=order, depth=depth + 1)
                else:
                    pos += length
            else:
                _, _, pos = _explicit(data, pos, order, depth + 1)
        if pos > len(data):
            raise _Unsupported


def _with_pydicom(data: Bytes) -> Header:
    stream = io.BytesIO(data)
    try:
        ds = dcmread(stream, stop_before_pixels=True)
        meta = ds.file_meta
        syntax = str(meta.get("TransferSyntaxUID", ""))
        header = Header(transfer_syntax=syntax, meta_sop_class=str(meta.get("MediaStorageSOPClassUID", "")))
        for tag, name in TEXT.items():
            value = ds.get(tag)
            if value is not None and value.value is not None:
                setattr(header, name, str(value.value).strip())
        for tag, name in NUMBERS.items():
            value = ds.get(tag)
            if value is not None and value.value is not None:
                setattr(header, name, int(value.value))
    except Exception as exc:  # pydicom raises many types for malformed input
        raise ValueError(f"cannot parse dataset: {type(exc).__name__}: {exc}") from None
    if syntax not in DEFLATED:  # deflated: the stream position is not a byte offset into ``data``
        header.pixel_offset = stream.tell()
    return header


PIXEL_TAGS = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")
SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
ITEM = b"\xfe\xff\x00\xe0"


def check_pixel_data(data: Bytes, offset: int, syntax: str, expected: int) -> None:
    """Raise ValueError if the Pixel Data element at ``offset`` is shorter than it says or must be.

    ``expected`` is the native size from Rows x Columns x samples x frames x bits (0 if unknown);
    encapsulated pixel data must hold whole items up to its sequence delimiter.
    """
    if offset >= len(data) or data[offset : offset + 4] not in PIXEL_TAGS:
        return  # no pixel data (SR, presentation state...) or another element follows
    order: Literal["big", "little"] = "big" if syntax == EXPLICIT_BE else "little"
    if syntax == IMPLICIT_LE:  # implicit VR: tag, 4-byte length
        length, start = int.from_bytes(data[offset + 4 : offset + 8], order), offset + 8
    else:  # explicit VR OB/OW: tag, VR, 2 reserved bytes, 4-byte length
        length, start = int.from_bytes(data[offset + 8 : offset + 12], order), offset + 12
    if length == 0xFFFFFFFF:
        check_fragments(data, start)
        return
    available = len(data) - start
    if length > available:
        raise ValueError(f"truncated data set: pixel data declares {length} bytes, {available} present")
    if expected and length < expected:
        raise ValueError(f"truncated data set: pixel data holds {length} bytes, the image needs {expected}")


def check_fragments(data: Bytes, pos: int) -> None:
    """Walk encapsulated pixel data from ``pos``: items (FFFE,E000) until the delimiter (FFFE,E0DD)."""
    while pos + 8 <= len(data):
        tag = bytes(data[pos : pos + 4])
        length = int.from_bytes(data[pos + 4 : pos + 8], "little")
        if tag == SEQUENCE_DELIMITER[:4]:
            return
        if tag != ITEM:
            raise ValueError("malformed encapsulated pixel data: expected an item or the sequence delimiter")
        pos += 8 + length
    raise ValueError("truncated data set: encapsulated pixel data has no sequence delimiter")
