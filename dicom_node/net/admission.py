"""Connections that have not associated yet, for the pynetdicom receiver: ARTIM and a per-address limit.

pynetdicom counts every accepted connection against its association limit, and its ARTIM timer cannot
fire while its reactor is blocked reading a PDU that drips in a byte at a time. This tracker closes
(shuts the socket down, which ends pynetdicom's reactor cleanly) any connection that has not delivered
its A-ASSOCIATE-RQ within the ARTIM timeout of opening, and the oldest pending connection of an
address that opens more than ``max_pending_per_address``. It also counts the associations accepted,
so the policy's limit applies to negotiated associations only. The native receiver does the same
inline (``net/fastscp.py``).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import weakref
from typing import Any

log = logging.getLogger(__name__)

WATCH_S = 0.25  # how often the ARTIM deadlines are checked


def shutdown(assoc: Any) -> None:
    """Shut the association's socket down: pynetdicom's reactor sees the transport close and ends."""
    raw = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if raw is None:
        return
    try:
        socket.socket.shutdown(raw, socket.SHUT_RDWR)  # TCP level: an SSL socket's own shutdown drops its SSL object
    except OSError:
        pass


class Admission:
    """Pending connections (by address, oldest first) and the count of accepted associations."""

    def __init__(self, artim_s: float, max_pending_per_address: int) -> None:
        self.artim_s = artim_s
        self.max_pending = max_pending_per_address
        self._lock = threading.Lock()
        self._pending: dict[Any, tuple[str, float]] = {}  # assoc -> (address, opened), insertion ordered
        self._accepted: set[Any] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="artim", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def opened(self, assoc: Any, address: str) -> None:
        """A connection opened; the oldest pending one of ``address`` is closed if it has too many."""
        with self._lock:
            self._pending[assoc] = (address, time.monotonic())
            same = [a for a, (addr, _) in self._pending.items() if addr == address]
            evicted = same[0] if len(same) > self.max_pending else None
            if evicted is not None:
                del self._pending[evicted]
        if evicted is not None:
            log.info("closing a connection from %s that has not associated: newer ones wait", address)
            shutdown(evicted)

    def admit(self, assoc: Any, decide: Any) -> Any:
        """The request of ``assoc`` arrived: decide with the number of associations accepted, and count
        it if the decision accepts (in one step, so two requests cannot both take the last slot)."""
        with self._lock:
            self._pending.pop(assoc, None)
            decision = decide(len(self._accepted))
            if decision.accept:
                self._accepted.add(assoc)
        return decision

    def closed(self, assoc: Any) -> None:
        with self._lock:
            self._pending.pop(assoc, None)
            self._accepted.discard(assoc)

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_S):
            cutoff = time.monotonic() - self.artim_s
            with self._lock:
                late = [a for a, (_, opened) in self._pending.items() if opened <= cutoff]
                for assoc in late:
                    del self._pending[assoc]
            for assoc in late:
                log.info("closing a connection with no A-ASSOCIATE-RQ within the ARTIM timeout")
                shutdown(assoc)


def _usable_context(item: Any) -> bool:
    """Whether a variable item of an A-ASSOCIATE-RQ is not a presentation context pynetdicom fails on."""
    context_id = getattr(item, "presentation_context_id", None)
    if context_id is None:  # not a presentation context item
        return True
    subs = getattr(item, "abstract_transfer_syntax_sub_items", [])
    named = [s for s in subs if getattr(s, "transfer_syntax_name", None)]
    return bool(context_id % 2 == 1 and named)


class ContextGuard:
    """PS3.7 / PS3.8: a message's data set travels on its command's presentation context.

    pynetdicom takes a data set fragment on any context; this guard sees every P-DATA-TF (pynetdicom's
    ``EVT_PDU_RECV``, in the reactor thread, before the message reaches the C-STORE handler), shuts down
    an association that mixes contexts, and remembers it so its message is not stored.

    It also sees the A-ASSOCIATE-RQ before pynetdicom turns it into a primitive: a presentation context
    ID that is even (or 0) makes pynetdicom raise in its reactor thread (``'context_id' must be an odd
    integer``), which then dies and leaves the connection open; a context without a transfer syntax
    makes its negotiation raise (``IndexError``) in the association thread. Such items are taken out of
    the PDU and the association is marked :meth:`malformed`: the receiver answers it with an A-ABORT.
    """

    def __init__(self) -> None:
        self._command_context: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._violated: weakref.WeakSet[Any] = weakref.WeakSet()
        self._malformed: weakref.WeakSet[Any] = weakref.WeakSet()

    def on_pdu(self, event: Any) -> None:
        if type(event.pdu).__name__ == "A_ASSOCIATE_RQ":
            self._check_request(event.assoc, event.pdu)
            return
        items = getattr(event.pdu, "presentation_data_value_items", None)
        if not items:
            return
        assoc = event.assoc
        for item in items:
            context_id, value = item.presentation_context_id, item.presentation_data_value
            if not value:
                continue
            if value[0] & 0x01:  # a command fragment; the last one fixes the message's context
                if value[0] & 0x02:
                    self._command_context[assoc] = context_id
            elif self._command_context.get(assoc, context_id) != context_id:
                log.warning("data set on another presentation context than its command: aborting")
                self._violated.add(assoc)
                shutdown(assoc)
                return

    def _check_request(self, assoc: Any, pdu: Any) -> None:
        """Take presentation context items that pynetdicom cannot take out of ``pdu``: an invalid ID
        (PS3.8 9.3.2.2: odd, 1-255), or no transfer syntax with a name."""
        items = list(pdu.variable_items)
        valid = [i for i in items if _usable_context(i)]
        if len(valid) != len(items):
            log.warning("A-ASSOCIATE-RQ with an invalid presentation context (even ID, no transfer syntax): aborting")
            pdu.variable_items = valid
            self._malformed.add(assoc)

    def malformed(self, assoc: Any) -> bool:
        """Whether ``assoc``'s A-ASSOCIATE-RQ had an invalid presentation context ID (answer: A-ABORT)."""
        return assoc in self._malformed

    def violated(self, assoc: Any) -> bool:
        """Whether ``assoc`` sent a data set on another context than its command."""
        return assoc in self._violated
