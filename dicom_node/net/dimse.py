"""DIMSE command sets (PS3.7): always Implicit VR Little Endian, group 0000, a handful of elements.

Encoded and decoded by hand: for a storage SCP this per-message work is most of the CPU when done
through a general DICOM library.
"""

from __future__ import annotations

import struct

C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
NO_DATA_SET = 0x0101

AFFECTED_SOP_CLASS = 0x00000002
COMMAND_FIELD = 0x00000100
MESSAGE_ID = 0x00000110
MESSAGE_ID_BEING_RESPONDED_TO = 0x00000120
DATA_SET_TYPE = 0x00000800
STATUS = 0x00000900
ERROR_COMMENT = 0x00000902
AFFECTED_SOP_INSTANCE = 0x00001000

_US = {COMMAND_FIELD, MESSAGE_ID, MESSAGE_ID_BEING_RESPONDED_TO, DATA_SET_TYPE, STATUS, 0x00000700, 0x00001031}


def decode_command(raw: bytes | memoryview) -> dict[int, int | str]:
    """Elements of a command set: US values as int, the rest as stripped text."""
    view = memoryview(raw)
    out: dict[int, int | str] = {}
    pos = 0
    while pos + 8 <= len(view):
        group, elem, length = struct.unpack_from("<HHI", view, pos)
        value = view[pos + 8 : pos + 8 + length]
        if len(value) != length:
            raise ValueError("command set element runs past its end")
        tag = (group << 16) | elem
        if tag in _US and length == 2:
            out[tag] = struct.unpack("<H", value)[0]
        elif tag != 0:
            out[tag] = bytes(value).decode("ascii", "replace").rstrip("\x00 ").strip()
        pos += 8 + length
    return out


def _element(tag: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if tag in (AFFECTED_SOP_CLASS, AFFECTED_SOP_INSTANCE) else b" "
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def encode_response(
    command_field: int,
    message_id: int,
    status: int,
    sop_class: str = "",
    sop_instance: str = "",
    error_comment: str = "",
) -> bytes:
    """A C-STORE-RSP or C-ECHO-RSP command set, group length included, elements in tag order."""
    body = b""
    if sop_class:
        body += _element(AFFECTED_SOP_CLASS, sop_class.encode())
    body += _element(COMMAND_FIELD, struct.pack("<H", command_field))
    body += _element(MESSAGE_ID_BEING_RESPONDED_TO, struct.pack("<H", message_id))
    body += _element(DATA_SET_TYPE, struct.pack("<H", NO_DATA_SET))
    body += _element(STATUS, struct.pack("<H", status))
    if error_comment and status != 0:
        body += _element(ERROR_COMMENT, error_comment.encode("ascii", "replace")[:64])
    if sop_instance:
        body += _element(AFFECTED_SOP_INSTANCE, sop_instance.encode())
    return _element(0x00000000, struct.pack("<I", len(body))) + body


def file_meta(
    sop_class: str,
    sop_instance: str,
    transfer_syntax: str,
    source_ae: str,
    implementation_uid: str,
    implementation_version: str,
) -> bytes:
    """Preamble, "DICM" and the File Meta Information (Explicit VR Little Endian) for a received data set."""

    def el(elem: int, vr: bytes, value: bytes, pad: bytes = b"\x00") -> bytes:
        if len(value) % 2:
            value += pad
        if vr == b"OB":
            return struct.pack("<HH2sHI", 2, elem, vr, 0, len(value)) + value
        return struct.pack("<HH2sH", 2, elem, vr, len(value)) + value

    body = el(0x0001, b"OB", b"\x00\x01")
    body += el(0x0002, b"UI", sop_class.encode())
    body += el(0x0003, b"UI", sop_instance.encode())
    body += el(0x0010, b"UI", transfer_syntax.encode())
    body += el(0x0012, b"UI", implementation_uid.encode())
    body += el(0x0013, b"SH", implementation_version.encode(), b" ")
    if source_ae:
        body += el(0x0016, b"AE", source_ae.encode("ascii", "replace")[:16], b" ")
    group_length = struct.pack("<HH2sHI", 2, 0, b"UL", 4, len(body))
    return b"\x00" * 128 + b"DICM" + group_length + body
