"""One record per association once it ends: a log line (calling AE, address, instances stored, duration,
outcome) and an ``events`` row of kind ``association`` (read by ``/metrics`` as
``dicom_node_associations_total{outcome}``, so every receiver process counts). Written after the association
is over, never on the path of a C-STORE answer.

A rejected association already has its ``association_rejected`` event (with the reason); a connection that
closes before it asks for an association (a port probe, a refused TLS handshake) is logged at DEBUG only.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from sqlalchemy import Engine

from dicom_node.db.engine import log_event

log = logging.getLogger(__name__)

QUIET = "closed before associating"


def log_association(engine: Engine, calling_ae: str, address: str, instances: int, opened: float, outcome: str) -> None:
    """Log and record how one association ended; ``opened`` is its ``time.monotonic()`` at connection."""
    seconds = round(time.monotonic() - opened, 3)
    if outcome == QUIET:
        log.debug("connection from %s %s after %.1f s", address, outcome, seconds)
        return
    log.info(
        "association from %s (%s): %d instance(s) in %.1f s, %s",
        calling_ae.strip() or "?",
        address,
        instances,
        seconds,
        outcome,
    )
    if outcome != "rejected":
        log_event(
            engine,
            "association",
            outcome,
            calling_ae=calling_ae.strip()[:16] or None,
            address=address,
            instances=instances,
            seconds=seconds,
        )


class Ledger:
    """The same record for pynetdicom's receiver, kept from its events: when each association's connection
    opened, how many instances it stored, how it ended; logged once its connection closes."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._open: dict[int, list[Any]] = {}  # id(assoc) -> [opened, stored, outcome, calling AE]
        self._lock = threading.Lock()

    def handlers(self) -> list[tuple[Any, Any]]:
        """The pynetdicom event handlers that keep the ledger."""
        from pynetdicom import evt

        return [
            (evt.EVT_CONN_OPEN, lambda event: self._set(event.assoc, None)),
            (evt.EVT_ACCEPTED, lambda event: self.outcome(event.assoc, "aborted")),
            (evt.EVT_RELEASED, lambda event: self.outcome(event.assoc, "released")),
            (evt.EVT_ABORTED, lambda event: self.outcome(event.assoc, "aborted")),
            (evt.EVT_CONN_CLOSE, self._closed),
        ]

    def _set(self, assoc: Any, outcome: str | None) -> None:
        with self._lock:
            self._open[id(assoc)] = [time.monotonic(), 0, outcome or QUIET, ""]

    def outcome(self, assoc: Any, outcome: str, calling_ae: str = "") -> None:
        """Record how the association ends (the last word wins: a release after the accept); ``calling_ae``
        for a rejected request (pynetdicom leaves the requestor's AE title unset then)."""
        with self._lock:
            entry = self._open.get(id(assoc))
            if entry is not None and entry[2] not in ("released", "rejected"):
                entry[2] = outcome
                entry[3] = calling_ae or entry[3]

    def stored(self, assoc: Any) -> None:
        """Count one instance answered Success."""
        with self._lock:
            entry = self._open.get(id(assoc))
            if entry is not None:
                entry[1] += 1

    def _closed(self, event: Any) -> None:
        with self._lock:
            entry = self._open.pop(id(event.assoc), None)
        if entry is None:
            return
        requestor = event.assoc.requestor
        calling_ae = entry[3] or str(requestor.ae_title or "")
        log_association(self.engine, calling_ae, str(requestor.address), entry[1], entry[0], entry[2])
