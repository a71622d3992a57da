"""DIMSE command sets (PS3.7): always Implicit VR Little Endian, group 0000, a handful of elements.

Encoded and decoded by hand: for a storage SCP this per-message work is most of the CPU when done
through a general DICOM library.
"""

from __future__ import annotations

import struct

# Command Field values (PS3.7 E.1): a response is its request with RESPONSE set
C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
RESPONSE = 0x8000
NO_DATA_SET = 0x0101  # Command Data Set Type: no data set follows

# Command elements, group 0000 (PS3.7 E.1)
COMMAND_GROUP_LENGTH = 0x00000000
AFFECTED_SOP_CLASS = 0x00000002
COMMAND_FIELD = 0x00000100
MESSAGE_ID = 0x00000110
MESSAGE_ID_BEING_RESPONDED_TO = 0x00000120
PRIORITY = 0x00000700
DATA_SET_TYPE = 0x00000800
STATUS = 0x00000900
ERROR_COMMENT = 0x00000902
AFFECTED_SOP_INSTANCE = 0x00001000
MOVE_ORIGINATOR_MESSAGE_ID = 0x00001031

# Status codes (PS3.7 Annex C; pynetdicom.status.Status names Success only)
SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110  # Failure: processing failure
DUPLICATE_SOP_INSTANCE = 0x0111  # Failure: duplicate SOP instance
UNRECOGNIZED_OPERATION = 0x0211  # Failure: unrecognized operation
SOP_CLASS_NOT_SUPPORTED = 0x0122  # Failure: SOP class not supported (e.g. not the context's abstract syntax)
DATA_SET_MISMATCH = 0xA900  # Error: data set does not match SOP class (C-STORE, PS3.4 B.2.3)
OUT_OF_RESOURCES = 0xA700  # Refused: out of resources (C-STORE)
CANNOT_UNDERSTAND = 0xC000  # Error: cannot understand (C-STORE)
STATUS_CLASS, WARNING = 0xF000, 0xB000  # status & STATUS_CLASS == WARNING: stored, with a warning

# File Meta Information, group 0002 (PS3.10 7.1): element numbers
FILE_META_GROUP, GROUP_LENGTH = 0x0002, 0x0000
META_VERSION, MEDIA_SOP_CLASS, MEDIA_SOP_INSTANCE = 0x0001, 0x0002, 0x0003
META_TRANSFER_SYNTAX, IMPLEMENTATION_CLASS, IMPLEMENTATION_VERSION_NAME = 0x0010, 0x0012, 0x0013
SOURCE_AE = 0x0016

_US = {
    COMMAND_FIELD,
    MESSAGE_ID,
    MESSAGE_ID_BEING_RESPONDED_TO,
    DATA_SET_TYPE,
    STATUS,
    PRIORITY,
    MOVE_ORIGINATOR_MESSAGE_ID,
}


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
        elif tag != COMMAND_GROUP_LENGTH:
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
    if error_comment and status != SUCCESS:
        body += _element(ERROR_COMMENT, error_comment.encode("ascii", "replace")[:64])
    if sop_instance:
        body += _element(AFFECTED_SOP_INSTANCE, sop_instance.encode())
    return _element(COMMAND_GROUP_LENGTH, struct.pack("<I", len(body))) + body


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
            return struct.pack("<HH2sHI", FILE_META_GROUP, elem, vr, 0, len(value)) + value
        return struct.pack("<HH2sH", FILE_META_GROUP, elem, vr, len(value)) + value

    body = el(META_VERSION, b"OB", b"\x00\x01")
    body += el(MEDIA_SOP_CLASS, b"UI", sop_class.encode())
    body += el(MEDIA_SOP_INSTANCE, b"UI", sop_instance.encode())
    body += el(META_TRANSFER_SYNTAX, b"UI", transfer_syntax.encode())
    body += el(IMPLEMENTATION_CLASS, b"UI", implementation_uid.encode())
    body += el(IMPLEMENTATION_VERSION_NAME, b"SH", implementation_version.encode(), b" ")
    if source_ae:
        body += el(SOURCE_AE, b"AE", source_ae.encode("ascii", "replace")[:16], b" ")
    group_length = struct.pack("<HH2sHI", FILE_META_GROUP, GROUP_LENGTH, b"UL", 4, len(body))
    return b"\x00" * 128 + b"DICM" + group_length + body
