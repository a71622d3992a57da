"""pynetdicom under hostile peer input: one log line instead of a traceback, no reactor thread dying.

Two things the fuzz test (``tests/integration/test_receiver_fuzz.py``) found in pynetdicom 3, fixed
from outside it for the node's pynetdicom receiver (:func:`install`, idempotent):

- pynetdicom's DUL reactor catches what it cannot decode (a cut PDU, an AE title of spaces, a bad item
  length), aborts the association and logs the exception with its traceback; its text decoder logs one
  for every AE title or UID that is not ASCII. Input from the network is not a fault of the node: the
  line stays, as a warning, and the traceback goes (:class:`PeerInputFilter`).
- A peer that breaks the protocol early (a P-DATA-TF before the A-ASSOCIATE-AC, say) makes the DUL send
  an A-ABORT and wait for the connection to close (state Sta13). The association thread does not know
  yet and hands the DUL its A-ASSOCIATE-AC, or an A-ABORT of its own; the state machine raises
  ``InvalidEventError`` for that local request in Sta13 and the reactor thread dies with the
  connection still open. PS3.8 defines no local request in Sta13 (the association is already gone):
  :func:`_guarded_do_action` drops them.
"""

from __future__ import annotations

import logging
from typing import Any

from pynetdicom import fsm

log = logging.getLogger(__name__)

PEER_INPUT_LOGGERS = ("pynetdicom.dul", "pynetdicom.utils")  # they log exceptions only for peer input
LOCAL_REQUESTS = {"Evt1", "Evt7", "Evt8", "Evt9", "Evt11", "Evt14", "Evt15"}  # primitives from the local user
AWAITING_CLOSE = "Sta13"  # the A-ABORT (or A-RELEASE-RP) is sent; the connection is closing

_original_do_action = fsm.StateMachine.do_action


class PeerInputFilter(logging.Filter):
    """Turns a record with an exception into a one-line warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = "malformed input from a peer: %s: %s"
            record.args = (type(exc).__name__, str(exc)[:200])
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _guarded_do_action(self: Any, event: str) -> None:
    """pynetdicom's ``StateMachine.do_action``, except that a local request in Sta13 is dropped."""
    if self.current_state == AWAITING_CLOSE and event in LOCAL_REQUESTS:
        log.debug("local %s dropped: the association is already aborted", event)
        return
    _original_do_action(self, event)


def install() -> None:
    """Add the log filter to pynetdicom's loggers of peer input and guard its state machine (once)."""
    for name in PEER_INPUT_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, PeerInputFilter) for f in logger.filters):
            logger.addFilter(PeerInputFilter())
    fsm.StateMachine.do_action = _guarded_do_action  # type: ignore[method-assign]


__all__ = ["PeerInputFilter", "install"]
