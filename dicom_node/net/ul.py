"""The DICOM Upper Layer protocol (PS3.8 section 9), acceptor side: PDUs as bytes, parsed and built.

Only what a storage SCP needs: A-ASSOCIATE-RQ in, -AC / -RJ out, P-DATA-TF both ways, A-RELEASE and
A-ABORT. Pure functions over bytes, no sockets, so they are tested directly.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1443.1.1"  # dicom-node (example-only root, see synth)
IMPLEMENTATION_VERSION = "DICOM_NODE_01"

ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, RELEASE_RQ, RELEASE_RP, ABORT = 0x04, 0x05, 0x06, 0x07

# Presentation context results (PS3.8 Table 9-18)
ACCEPTANCE, ABSTRACT_SYNTAX_NOT_SUPPORTED, TRANSFER_SYNTAXES_NOT_SUPPORTED = 0, 3, 4


class ProtocolError(ValueError):
    """A PDU that does not follow PS3.8; the association is aborted."""


@dataclass
class ProposedContext:
    """One presentation context of an A-ASSOCIATE-RQ."""

    id: int
    abstract_syntax: str
    transfer_syntaxes: list[str]


@dataclass
class AssociateRequest:
    """The parts of an A-ASSOCIATE-RQ an acceptor decides on."""

    called_ae: str
    calling_ae: str
    contexts: list[ProposedContext] = field(default_factory=list)
    max_pdu: int = 0  # the requestor's maximum receive length; 0 = unlimited
    implementation_class_uid: str = ""


def _uid(raw: bytes) -> str:
    return raw.decode("ascii", "replace").rstrip("\x00 ").strip()


def parse_associate_rq(body: bytes) -> AssociateRequest:
    """Parse the body (after the 6-byte PDU header) of an A-ASSOCIATE-RQ."""
    if len(body) < 68:
        raise ProtocolError("A-ASSOCIATE-RQ shorter than its fixed fields")
    called = body[4:20].decode("ascii", "replace").strip()
    calling = body[20:36].decode("ascii", "replace").strip()
    request = AssociateRequest(called, calling)
    pos = 68
    while pos + 4 <= len(body):
        item_type = body[pos]
        (length,) = struct.unpack(">H", body[pos + 2 : pos + 4])
        item = body[pos + 4 : pos + 4 + length]
        if len(item) != length:
            raise ProtocolError("A-ASSOCIATE-RQ item runs past the PDU")
        if item_type == 0x20:
            request.contexts.append(_parse_context(item))
        elif item_type == 0x50:
            _parse_user_info(item, request)
        pos += 4 + length
    return request


def _parse_context(item: bytes) -> ProposedContext:
    if len(item) < 4:
        raise ProtocolError("presentation context item too short")
    ctx = ProposedContext(item[0], "", [])
    pos = 4
    while pos + 4 <= len(item):
        sub_type = item[pos]
        (length,) = struct.unpack(">H", item[pos + 2 : pos + 4])
        value = _uid(item[pos + 4 : pos + 4 + length])
        if sub_type == 0x30:
            ctx.abstract_syntax = value
        elif sub_type == 0x40:
            ctx.transfer_syntaxes.append(value)
        pos += 4 + length
    return ctx


def _parse_user_info(item: bytes, request: AssociateRequest) -> None:
    pos = 0
    while pos + 4 <= len(item):
        sub_type = item[pos]
        (length,) = struct.unpack(">H", item[pos + 2 : pos + 4])
        value = item[pos + 4 : pos + 4 + length]
        if sub_type == 0x51 and length == 4:
            (request.max_pdu,) = struct.unpack(">I", value)
        elif sub_type == 0x52:
            request.implementation_class_uid = _uid(value)
        pos += 4 + length


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def _pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBI", pdu_type, 0, len(body)) + body


def _ae(title: str) -> bytes:
    return title.encode("ascii", "replace")[:16].ljust(16, b" ")


def build_associate_ac(request: AssociateRequest, results: list[tuple[int, int, str]], max_pdu: int = 0) -> bytes:
    """An A-ASSOCIATE-AC: ``results`` holds (context id, result, chosen transfer syntax) per context."""
    body = struct.pack(">HH", 1, 0) + _ae(request.called_ae) + _ae(request.calling_ae) + bytes(32)
    body += _item(0x10, APPLICATION_CONTEXT.encode())
    for ctx_id, result, syntax in results:
        sub = _item(0x40, syntax.encode()) if result == ACCEPTANCE else _item(0x40, b"")
        body += _item(0x21, struct.pack(">BBBB", ctx_id, 0, result, 0) + sub)
    user = _item(0x51, struct.pack(">I", max_pdu))
    user += _item(0x52, IMPLEMENTATION_CLASS_UID.encode())
    user += _item(0x55, IMPLEMENTATION_VERSION.encode())
    body += _item(0x50, user)
    return _pdu(ASSOCIATE_AC, body)


def build_associate_rj(result: int, source: int, reason: int) -> bytes:
    """An A-ASSOCIATE-RJ with PS3.8 Table 9-21 result, source and reason/diagnostic."""
    return _pdu(ASSOCIATE_RJ, struct.pack(">BBBB", 0, result, source, reason))


def build_release_rp() -> bytes:
    return _pdu(RELEASE_RP, bytes(4))


def build_abort(source: int = 2, reason: int = 0) -> bytes:
    """A-ABORT; source 2 = service provider, reason 0 = not specified."""
    return _pdu(ABORT, struct.pack(">BBBB", 0, 0, source, reason))


def build_p_data(context_id: int, command: bool, last: bool, data: bytes) -> bytes:
    """A P-DATA-TF carrying one PDV."""
    control = (0x01 if command else 0x00) | (0x02 if last else 0x00)
    pdv = struct.pack(">IBB", len(data) + 2, context_id, control) + data
    return _pdu(P_DATA_TF, pdv)


PDV_HEADER = struct.Struct(">IBB")  # item length, presentation context id, message control header


def parse_pdv_header(raw: bytes | bytearray, remaining: int) -> tuple[int, int, int]:
    """A PDV item header (6 bytes) with ``remaining`` bytes left in its P-DATA-TF.

    Returns (value length, presentation context id, message control header).
    """
    if remaining < PDV_HEADER.size:
        raise ProtocolError("PDV header runs past the P-DATA-TF")
    length, context_id, control = PDV_HEADER.unpack(raw)
    if length < 2 or length + 4 > remaining:
        raise ProtocolError("PDV length does not fit the P-DATA-TF")
    return length - 2, context_id, control
