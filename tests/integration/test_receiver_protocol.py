"""Issue #18 D and E on both receivers: what a malformed object or a broken DIMSE exchange gets back.

Sent byte for byte with :class:`tests.peers.rawscu.RawScu`. Where the two receivers answer differently,
the test says what each does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_node.net import ul
from dicom_node.net.dimse import DATA_SET_MISMATCH, SOP_CLASS_NOT_SUPPORTED
from tests.integration.test_receiver import Running
from tests.nodes import make_config
from tests.peers.rawscu import CT, EXPLICIT_LE, SC, RawScu, Reply, associate_rq, dataset_of, store_command
from tests.unit.test_header import nested_part10

CANNOT_UNDERSTAND = 0xC000


@pytest.fixture(params=["native", pytest.param("pynetdicom", marks=pytest.mark.slow)])
def receiver(request: pytest.FixtureRequest, tmp_path: Path, sqlite_url: str) -> Iterator[Running]:
    extra = f'receiver = "{request.param}"\nassociation_request_timeout_s = 3'
    running = Running(make_config(tmp_path / "storage", db_url=sqlite_url, port=0, extra_node=extra))
    running.kind = request.param  # type: ignore[attr-defined]
    yield running
    running.stop()


def _store(scu: RawScu, part10: bytes, sop_class: str | None = SC, sop_uid: str | None = "1.2.3.4.5.6") -> int | None:
    scu.pdv(1, True, store_command(sop_class, sop_uid))
    scu.pdv(1, False, dataset_of(part10))
    reply = scu.reply()
    assert not reply.aborted and not reply.closed, reply
    return reply.status


def test_deeply_nested_sequences_get_cannot_understand(receiver: Running) -> None:
    """2,000 nested sequences of undefined length: 0xC000 with the reason, the association goes on."""
    with RawScu(receiver.port) as scu:
        assert scu.associate([(1, SC, EXPLICIT_LE)])
        assert _store(scu, nested_part10(2000)) == CANNOT_UNDERSTAND
        assert _store(scu, nested_part10(3, sop_uid="1.2.3.4.5.7"), sop_uid="1.2.3.4.5.7") == 0
        assert scu.release()
    assert receiver.count() == 1
    assert any("nested" in e or "cannot parse" in e for e in receiver.events("rejected")), receiver.events()


def _exchange(port: int, contexts: list[tuple[int, str, str]], messages: list[tuple[int, bool, bytes]]) -> Reply:
    """Associate (when ``contexts``), send ``messages`` as (context id, is command, bytes), read one reply."""
    with RawScu(port, timeout=5) as scu:
        if contexts:
            assert scu.associate(contexts)
        try:
            for ctx_id, is_command, data in messages:
                scu.pdv(ctx_id, is_command, data)
        except OSError:  # aborted and closed before the rest was sent: the reply says which
            pass
        return scu.reply()


DS_UID = "1.2.3.4.5.6"
DATA = dataset_of(nested_part10(1, sop_uid=DS_UID))
SC_CTX, CT_CTX = (1, SC, EXPLICIT_LE), (3, CT, EXPLICIT_LE)


def test_command_and_data_set_must_agree(receiver: Running) -> None:
    """A C-STORE whose command does not describe its data set is refused with PS3.7 / PS3.4 statuses and
    nothing is stored. Recorded where the receivers differ: pynetdicom does not call the node's handler
    for a C-STORE-RQ without an Affected SOP Instance UID ("Received unexpected C-STORE service message")
    and leaves it unanswered until its network timeout; the native receiver answers 0xC000."""
    cases = {
        "path as instance UID": (store_command(SC, "../../../../tmp/x"), 1, CANNOT_UNDERSTAND),
        "another instance UID": (store_command(SC, "1.2.3.4.5.999"), 1, CANNOT_UNDERSTAND),
        "no instance UID": (store_command(SC, None), 1, CANNOT_UNDERSTAND),
        "another SOP class": (store_command(CT, DS_UID), 3, DATA_SET_MISMATCH),
        "not the context's class": (store_command(CT, DS_UID), 1, SOP_CLASS_NOT_SUPPORTED),
    }
    expected: dict[str, int | None] = {name: status for name, (_, _, status) in cases.items()}
    if receiver.kind == "pynetdicom":  # type: ignore[attr-defined]
        expected["no instance UID"] = None  # pynetdicom drops the message unanswered (see the docstring)
    answers = {}
    for name, (command, ctx_id, _) in cases.items():
        reply = _exchange(receiver.port, [SC_CTX, CT_CTX], [(ctx_id, True, command), (ctx_id, False, DATA)])
        answers[name] = reply.status
        assert reply.status is not None or reply.aborted or reply.closed, (name, reply)
    assert answers == expected
    assert receiver.count() == 0
    assert not Path("/tmp/x.dcm").exists()
    assert _exchange(receiver.port, [SC_CTX], [(1, True, store_command(SC, DS_UID)), (1, False, DATA)]).status == 0
    assert receiver.count() == 1


def test_protocol_violations_are_aborted(receiver: Running) -> None:
    """PS3.8 violations end the association with an A-ABORT (or, before any association, the connection).

    Recorded where the receivers differ: pynetdicom by itself stores a data set sent on another
    presentation context than its command (the node's ContextGuard now closes such an association); an
    even presentation context ID in the request is aborted by both (invalid PDU parameter value;
    pynetdicom's reactor thread used to die on it with a ValueError: the node's ContextGuard now takes the
    item out before pynetdicom reads it, and the receiver aborts).
    """
    kind = receiver.kind  # type: ignore[attr-defined]
    store = store_command(SC, DS_UID)
    replies = {
        "data set on another context": _exchange(receiver.port, [SC_CTX, CT_CTX], [(1, True, store), (3, False, DATA)]),
        "P-DATA before the A-ASSOCIATE-AC": _exchange(receiver.port, [], [(1, True, store), (1, False, DATA)]),
        "P-DATA on a context not proposed": _exchange(receiver.port, [SC_CTX], [(5, True, store), (5, False, DATA)]),
        "P-DATA on context 0": _exchange(receiver.port, [SC_CTX], [(0, True, store), (0, False, DATA)]),
    }
    for name, reply in replies.items():
        assert reply.status is None and (reply.aborted or reply.closed), (name, reply)
    with RawScu(receiver.port) as scu:
        scu.send(associate_rq([(2, SC, EXPLICIT_LE)]))
        pdu = scu.read_pdu()
    assert pdu is not None and pdu[0] == ul.A_ABORT_RQ, (kind, pdu)
    assert receiver.count() == 0
