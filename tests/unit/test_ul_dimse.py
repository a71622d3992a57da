"""The hand-written Upper Layer and DIMSE pieces of the native receiver, byte for byte."""

from __future__ import annotations

import struct

import pytest
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO

from dicom_node.net import dimse, ul


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def _associate_rq() -> bytes:
    body = struct.pack(">HH", 1, 0) + b"NODE".ljust(16) + b"PACS".ljust(16) + bytes(32)
    body += _item(0x10, ul.APPLICATION_CONTEXT.encode())
    sub = _item(0x30, b"1.2.840.10008.5.1.4.1.1.2") + _item(0x40, b"1.2.840.10008.1.2.4.90\x00")
    body += _item(0x20, struct.pack(">BBBB", 1, 0, 0, 0) + sub)
    body += _item(
        0x20, struct.pack(">BBBB", 3, 0, 0, 0) + _item(0x30, b"1.2.840.10008.1.1") + _item(0x40, b"1.2.840.10008.1.2")
    )
    body += _item(0x50, _item(0x51, struct.pack(">I", 16384)) + _item(0x52, b"1.2.3.4"))
    return body


def test_associate_rq_is_parsed() -> None:
    rq = ul.parse_associate_rq(_associate_rq())
    assert (rq.called_ae, rq.calling_ae, rq.max_pdu, rq.implementation_class_uid) == ("NODE", "PACS", 16384, "1.2.3.4")
    assert [(c.id, c.abstract_syntax, c.transfer_syntaxes) for c in rq.contexts] == [
        (1, "1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.4.90"]),
        (3, "1.2.840.10008.1.1", ["1.2.840.10008.1.2"]),
    ]
    ac = ul.build_associate_ac(rq, [(1, ul.ACCEPTANCE, "1.2.840.10008.1.2.4.90"), (3, 3, "")])
    assert ac[0] == ul.A_ASSOCIATE_AC and struct.unpack(">I", ac[2:6])[0] == len(ac) - 6
    assert b"1.2.840.10008.1.2.4.90" in ac and ul.IMPLEMENTATION_CLASS_UID.encode() in ac


@pytest.mark.parametrize("cut", [10, 67, 80, 100])
def test_cut_associate_rq_is_a_protocol_error(cut: int) -> None:
    with pytest.raises(ul.ProtocolError):
        ul.parse_associate_rq(_associate_rq()[:cut])


def test_pdvs_and_command_sets_round_trip() -> None:
    response = dimse.encode_response(dimse.C_STORE_RSP, 7, 0xC000, "1.2.840.10008.5.1.4.1.1.2", "1.2.3", "bad data")
    pdu = ul.build_p_data(5, True, True, response)
    size, ctx, control = ul.parse_pdv_header(pdu[6:12], len(pdu) - 6)
    assert (ctx, control) == (5, 0x03) and size == len(pdu) - 12
    value = pdu[12:]
    decoded = dimse.decode_command(value)
    assert decoded[dimse.COMMAND_FIELD] == dimse.C_STORE_RSP and decoded[dimse.STATUS] == 0xC000
    assert decoded[dimse.MESSAGE_ID_BEING_RESPONDED_TO] == 7 and decoded[dimse.AFFECTED_SOP_INSTANCE] == "1.2.3"
    assert decoded[dimse.ERROR_COMMENT] == "bad data"
    with pytest.raises(ul.ProtocolError):
        ul.parse_pdv_header(struct.pack(">IBB", 100, 1, 3), 6)  # longer than its PDU
    with pytest.raises(ul.ProtocolError):
        ul.parse_pdv_header(struct.pack(">IBB", 1, 1, 3), 6)  # no room for the control header
    with pytest.raises(ul.ProtocolError):
        ul.parse_pdv_header(b"", 4)  # the header itself runs past the PDU


def test_file_meta_is_valid_part10() -> None:
    meta = dimse.file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1", "PACS", "1.2.9", "X_1")
    ds = dcmread(DicomBytesIO(meta + b""), force=True)
    assert ds.file_meta.MediaStorageSOPInstanceUID == "1.2.3.4"
    assert (
        ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1" and ds.file_meta.SourceApplicationEntityTitle == "PACS"
    )
