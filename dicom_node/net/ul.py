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

# PDU types (PS3.8 9.3.1), named as pynetdicom.pdu names the PDU classes (pynetdicom.pdu.PDU_TYPES)
A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT_RQ = 0x04, 0x05, 0x06, 0x07
PDU_HEADER = struct.Struct(">BBI")  # PDU type, reserved, PDU length

# Item types of the A-ASSOCIATE PDUs (PS3.8 9.3.2 - 9.3.3; pynetdicom.pdu_items.PDU_ITEM_TYPES)
APPLICATION_CONTEXT_ITEM = 0x10
PRESENTATION_CONTEXT_ITEM_RQ, PRESENTATION_CONTEXT_ITEM_AC = 0x20, 0x21
ABSTRACT_SYNTAX_SUB_ITEM, TRANSFER_SYNTAX_SUB_ITEM = 0x30, 0x40
USER_INFORMATION_ITEM = 0x50
# User information sub-items (PS3.8 D.1, PS3.7 D.3.3)
MAXIMUM_LENGTH_SUB_ITEM, IMPLEMENTATION_CLASS_UID_SUB_ITEM, IMPLEMENTATION_VERSION_NAME_SUB_ITEM = 0x51, 0x52, 0x55

PROTOCOL_VERSION = 0x0001  # the only one (PS3.8 9.3.2), a bit field
ASSOCIATE_FIXED = 68  # A-ASSOCIATE-RQ body bytes before its variable items (PS3.8 Table 9-11)

# Presentation context results (PS3.8 Table 9-18)
ACCEPTANCE, ABSTRACT_SYNTAX_NOT_SUPPORTED, TRANSFER_SYNTAXES_NOT_SUPPORTED = 0, 3, 4

# A-ASSOCIATE-RJ result, source and reason/diagnostic (PS3.8 Table 9-21); reasons depend on the source
REJECTED_PERMANENT, REJECTED_TRANSIENT = 0x01, 0x02
SOURCE_SERVICE_USER, SOURCE_PROVIDER_ACSE, SOURCE_PROVIDER_PRESENTATION = 0x01, 0x02, 0x03
CALLING_AE_NOT_RECOGNIZED, CALLED_AE_NOT_RECOGNIZED = 0x03, 0x07  # service user
LOCAL_LIMIT_EXCEEDED = 0x02  # service provider (presentation)

# A-ABORT source and reason (PS3.8 Table 9-26)
ABORT_SOURCE_PROVIDER = 0x02  # DICOM UL service-provider
ABORT_REASON_NOT_SPECIFIED, ABORT_UNRECOGNIZED_PDU, ABORT_UNEXPECTED_PDU = 0x00, 0x01, 0x02
ABORT_INVALID_PARAMETER = 0x06  # invalid PDU parameter value

# PDV message control header bits (PS3.8 E.2)
PDV_COMMAND, PDV_LAST = 0x01, 0x02
PDV_HEADER = struct.Struct(">IBB")  # item length, presentation context id, message control header


class ProtocolError(ValueError):
    """A PDU that does not follow PS3.8; the association is aborted (A-ABORT with ``reason``, Table 9-26)."""

    def __init__(self, message: str, reason: int = ABORT_REASON_NOT_SPECIFIED) -> None:
        super().__init__(message)
        self.reason = reason


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
    if len(body) < ASSOCIATE_FIXED:
        raise ProtocolError("A-ASSOCIATE-RQ shorter than its fixed fields")
    called = body[4:20].decode("ascii", "replace").strip()
    calling = body[20:36].decode("ascii", "replace").strip()
    request = AssociateRequest(called, calling)
    pos = ASSOCIATE_FIXED
    while pos + 4 <= len(body):
        item_type = body[pos]
        (length,) = struct.unpack(">H", body[pos + 2 : pos + 4])
        item = body[pos + 4 : pos + 4 + length]
        if len(item) != length:
            raise ProtocolError("A-ASSOCIATE-RQ item runs past the PDU")
        if item_type == PRESENTATION_CONTEXT_ITEM_RQ:
            request.contexts.append(_parse_context(item))
        elif item_type == USER_INFORMATION_ITEM:
            _parse_user_info(item, request)
        pos += 4 + length
    return request


def _parse_context(item: bytes) -> ProposedContext:
    if len(item) < 4:
        raise ProtocolError("presentation context item too short")
    if item[0] == 0 or item[0] % 2 == 0:  # PS3.8 9.3.2.2: odd integers between 1 and 255
        raise ProtocolError(f"presentation context ID {item[0]} is not odd", ABORT_INVALID_PARAMETER)
    ctx = ProposedContext(item[0], "", [])
    pos = 4
    while pos + 4 <= len(item):
        sub_type = item[pos]
        (length,) = struct.unpack(">H", item[pos + 2 : pos + 4])
        value = _uid(item[pos + 4 : pos + 4 + length])
        if sub_type == ABSTRACT_SYNTAX_SUB_ITEM:
            ctx.abstract_syntax = value
        elif sub_type == TRANSFER_SYNTAX_SUB_ITEM:
            ctx.transfer_syntaxes.append(value)
        pos += 4 + length
    return ctx


def _parse_user_info(item: bytes, request: AssociateRequest) -> None:
    pos = 0
    while pos + 4 <= len(item):
        sub_type = item[pos]
        (length,) = struct.unpack(">H", item[pos + 2 : pos + 4])
        value = item[pos + 4 : pos + 4 + length]
        if sub_type == MAXIMUM_LENGTH_SUB_ITEM and length == 4:
            (request.max_pdu,) = struct.unpack(">I", value)
        elif sub_type == IMPLEMENTATION_CLASS_UID_SUB_ITEM:
            request.implementation_class_uid = _uid(value)
        pos += 4 + length


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def _pdu(pdu_type: int, body: bytes) -> bytes:
    return PDU_HEADER.pack(pdu_type, 0, len(body)) + body


def _ae(title: str) -> bytes:
    return title.encode("ascii", "replace")[:16].ljust(16, b" ")


def build_associate_ac(request: AssociateRequest, results: list[tuple[int, int, str]], max_pdu: int = 0) -> bytes:
    """An A-ASSOCIATE-AC: ``results`` holds (context id, result, chosen transfer syntax) per context."""
    body = struct.pack(">HH", PROTOCOL_VERSION, 0) + _ae(request.called_ae) + _ae(request.calling_ae) + bytes(32)
    body += _item(APPLICATION_CONTEXT_ITEM, APPLICATION_CONTEXT.encode())
    for ctx_id, result, syntax in results:
        sub = _item(TRANSFER_SYNTAX_SUB_ITEM, syntax.encode() if result == ACCEPTANCE else b"")
        body += _item(PRESENTATION_CONTEXT_ITEM_AC, struct.pack(">BBBB", ctx_id, 0, result, 0) + sub)
    user = _item(MAXIMUM_LENGTH_SUB_ITEM, struct.pack(">I", max_pdu))
    user += _item(IMPLEMENTATION_CLASS_UID_SUB_ITEM, IMPLEMENTATION_CLASS_UID.encode())
    user += _item(IMPLEMENTATION_VERSION_NAME_SUB_ITEM, IMPLEMENTATION_VERSION.encode())
    body += _item(USER_INFORMATION_ITEM, user)
    return _pdu(A_ASSOCIATE_AC, body)


def build_associate_rj(result: int, source: int, reason: int) -> bytes:
    """An A-ASSOCIATE-RJ with PS3.8 Table 9-21 result, source and reason/diagnostic."""
    return _pdu(A_ASSOCIATE_RJ, struct.pack(">BBBB", 0, result, source, reason))


def build_release_rp() -> bytes:
    return _pdu(A_RELEASE_RP, bytes(4))


def build_abort(source: int = ABORT_SOURCE_PROVIDER, reason: int = ABORT_REASON_NOT_SPECIFIED) -> bytes:
    """A-ABORT, by default from the service provider, reason not specified."""
    return _pdu(A_ABORT_RQ, struct.pack(">BBBB", 0, 0, source, reason))


def build_p_data(context_id: int, command: bool, last: bool, data: bytes) -> bytes:
    """A P-DATA-TF carrying one PDV."""
    control = (PDV_COMMAND if command else 0) | (PDV_LAST if last else 0)
    pdv = PDV_HEADER.pack(len(data) + 2, context_id, control) + data
    return _pdu(P_DATA_TF, pdv)


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
