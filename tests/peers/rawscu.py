"""A storage SCU at the byte level, for tests that must send what real SCUs never send.

Built on the node's own PDU builders (``dicom_node.net.ul``, ``dicom_node.net.dimse``), it associates
with chosen presentation contexts and sends command sets and data sets as given, on chosen context
IDs, so tests can see how a receiver answers protocol violations and command / data set mismatches.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from dicom_node.net import dimse, ul

CT = "1.2.840.10008.5.1.4.1.1.2"
SC = "1.2.840.10008.5.1.4.1.1.7"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def associate_rq(contexts: list[tuple[int, str, str]], called: str = "NODE", calling: str = "TESTSCU") -> bytes:
    """An A-ASSOCIATE-RQ proposing (id, abstract syntax, transfer syntax) contexts."""
    body = struct.pack(">HH", ul.PROTOCOL_VERSION, 0) + ul._ae(called) + ul._ae(calling) + bytes(32)
    body += ul._item(ul.APPLICATION_CONTEXT_ITEM, ul.APPLICATION_CONTEXT.encode())
    for ctx_id, abstract, transfer in contexts:
        sub = ul._item(ul.ABSTRACT_SYNTAX_SUB_ITEM, abstract.encode())
        sub += ul._item(ul.TRANSFER_SYNTAX_SUB_ITEM, transfer.encode())
        body += ul._item(ul.PRESENTATION_CONTEXT_ITEM_RQ, bytes([ctx_id, 0, 0, 0]) + sub)
    user = ul._item(ul.MAXIMUM_LENGTH_SUB_ITEM, struct.pack(">I", 65536))
    user += ul._item(ul.IMPLEMENTATION_CLASS_UID_SUB_ITEM, b"1.2.3.4")
    body += ul._item(ul.USER_INFORMATION_ITEM, user)
    return ul._pdu(ul.A_ASSOCIATE_RQ, body)


def store_command(sop_class: str | None, sop_instance: str | None, message_id: int = 1) -> bytes:
    """A C-STORE-RQ command set; ``None`` leaves the element out."""

    def el(tag: int, value: bytes) -> bytes:
        if len(value) % 2:
            value += b"\x00"
        return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value

    body = el(dimse.AFFECTED_SOP_CLASS, sop_class.encode()) if sop_class is not None else b""
    body += el(dimse.COMMAND_FIELD, struct.pack("<H", dimse.C_STORE_RQ))
    body += el(dimse.MESSAGE_ID, struct.pack("<H", message_id))
    body += el(dimse.PRIORITY, struct.pack("<H", 0))
    body += el(dimse.DATA_SET_TYPE, struct.pack("<H", 0x0000))
    if sop_instance is not None:
        body += el(dimse.AFFECTED_SOP_INSTANCE, sop_instance.encode())
    return el(dimse.COMMAND_GROUP_LENGTH, struct.pack("<I", len(body))) + body


@dataclass
class Reply:
    """What came back: a DIMSE status, an A-ABORT, or the connection closing."""

    status: int | None = None
    aborted: bool = False
    closed: bool = False


class RawScu:
    """One connection to a receiver."""

    def __init__(self, port: int, timeout: float = 20.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawScu:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def read_pdu(self) -> tuple[int, bytes] | None:
        """The next PDU, or None when the peer closed the connection."""
        try:
            pdu_type, _, length = ul.PDU_HEADER.unpack(self._recv(ul.PDU_HEADER.size))
            return pdu_type, self._recv(length)
        except (ConnectionError, OSError):
            return None

    def associate(self, contexts: list[tuple[int, str, str]]) -> bool:
        self.send(associate_rq(contexts))
        pdu = self.read_pdu()
        return pdu is not None and pdu[0] == ul.A_ASSOCIATE_AC

    def pdv(self, context_id: int, command: bool, data: bytes, last: bool = True) -> None:
        self.send(ul.build_p_data(context_id, command, last, data))

    def reply(self) -> Reply:
        """Read until a DIMSE response, an A-ABORT or the connection's end."""
        pdu = self.read_pdu()
        if pdu is None:
            return Reply(closed=True)
        if pdu[0] == ul.A_ABORT_RQ:
            return Reply(aborted=True)
        if pdu[0] != ul.P_DATA_TF:
            return Reply(closed=True)
        command = dimse.decode_command(pdu[1][6:])
        return Reply(status=int(command.get(dimse.STATUS, -1)))

    def release(self) -> bool:
        self.send(ul._pdu(ul.A_RELEASE_RQ, bytes(4)))
        pdu = self.read_pdu()
        return pdu is not None and pdu[0] == ul.A_RELEASE_RP


def dataset_of(part10: bytes) -> bytes:
    """The data set of a Part 10 byte string (after its file meta group)."""
    (meta_length,) = struct.unpack_from("<I", part10, 140)
    return part10[144 + meta_length :]
