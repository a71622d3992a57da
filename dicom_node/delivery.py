"""Deliveries: each result object to each destination, retried with backoff until it is stored or dead.

Rows in ``deliveries`` are the only state: a restart picks up every pending one. One tick sends what
is due, one association per destination; a destination that cannot be reached has all its due
deliveries pushed back with exponential backoff until ``retry_for_hours`` has passed, then they are
dead-lettered (visible in ``dicom-node status``).
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections import defaultdict
from typing import Any

from sqlalchemy import Engine, select, update

from dicom_node.config import Destination, NodeConfig
from dicom_node.db import deliveries, now, results
from dicom_node.db.engine import log_event
from dicom_node.net.scu import SendError, send_files
from dicom_node.net.tls import client_context
from dicom_node.store import Store

log = logging.getLogger(__name__)


def connect_cause(host: str, port: int, timeout: float = 5.0) -> str:
    """Why a TCP connection to ``host:port`` fails (``": Connection refused"``), or ``""`` when it opens: an
    association that "aborted" names its real cause (pynetdicom reports a refused connection as an abort)."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return f": {exc.strerror or type(exc).__name__}"
    return ""


class Sender:
    """Sends due deliveries; call :meth:`tick` periodically (the scheduler does, every second)."""

    def __init__(self, config: NodeConfig, engine: Engine, store: Store, batch: int = 200) -> None:
        self.config = config
        self.engine = engine
        self.store = store
        self.batch = batch
        self._tls: dict[str, ssl.SSLContext] = {}  # per destination's TLS settings (a reload may change them)

    def _tls_context(self, dest: Destination) -> ssl.SSLContext | None:
        """The destination's TLS context (None for plain DICOM); raises OSError if its files went bad."""
        if not dest.tls:
            return None
        key = dest.model_dump_json(include={"name", "ca_certificates", "certificate", "private_key", "verify_hostname"})
        if key not in self._tls:
            self._tls[key] = client_context(dest, self.config.tls)
        return self._tls[key]

    def tick(self) -> int:
        """Send every due delivery; returns how many were stored at their destination."""
        t = now()
        with self.engine.connect() as conn:
            due = conn.execute(
                select(
                    deliveries.c.id,
                    deliveries.c.destination,
                    deliveries.c.attempts,
                    deliveries.c.give_up_at,
                    results.c.path,
                    results.c.sop_uid,
                )
                .join(results, results.c.id == deliveries.c.result_id)
                .where(deliveries.c.state == "pending", deliveries.c.next_try <= t)
                .order_by(deliveries.c.next_try, deliveries.c.id)
                .limit(self.batch)
            ).all()
        by_dest: dict[str, list[Any]] = defaultdict(list)
        for row in due:
            by_dest[row.destination].append(row)
        sent = 0
        for name, rows in by_dest.items():
            sent += self._send(name, rows)
        return sent

    def _send(self, name: str, rows: list[Any]) -> int:
        try:
            dest = self.config.destination(name)
        except KeyError:
            self._retry(rows, f"destination {name!r} is no longer configured", None)
            return 0
        paths = [self.store.absolute(r.path) for r in rows]
        started = now()
        try:
            outcomes = send_files(
                paths,
                host=dest.host,
                port=dest.port,
                called_ae=dest.ae_title,
                calling_ae=self.config.node.ae_title,
                tls=self._tls_context(dest),
            )
        except (SendError, OSError) as exc:  # ssl.SSLError (a certificate file gone bad) is an OSError
            error = f"{exc}{connect_cause(dest.host, dest.port) if isinstance(exc, SendError) else ''}"
            log.warning("destination %s unreachable: %s", name, error)
            self._retry(rows, error, dest)
            return 0
        ok = [r for r, o in zip(rows, outcomes, strict=True) if o.ok]
        failed = [(r, o) for r, o in zip(rows, outcomes, strict=True) if not o.ok]
        if ok:
            with self.engine.begin() as conn:
                conn.execute(
                    update(deliveries)
                    .where(deliveries.c.id.in_([r.id for r in ok]))
                    .values(state="sent", sent_at=now(), attempts=deliveries.c.attempts + 1, last_error=None)
                )
            log.info("sent %d object(s) to %s in %.2f s", len(ok), name, now() - started)
        for row, outcome in failed:
            error = outcome.error or f"destination answered status 0x{outcome.status or 0:04X}"
            self._retry([row], error, dest)
        return len(ok)

    def _retry(self, rows: list[Any], error: str, dest: Any) -> None:
        t = now()
        base = dest.retry_backoff_s if dest is not None else 60.0
        cap = dest.retry_backoff_max_s if dest is not None else 3600.0
        with self.engine.begin() as conn:
            for row in rows:
                attempts = row.attempts + 1
                if t >= row.give_up_at:
                    conn.execute(
                        update(deliveries)
                        .where(deliveries.c.id == row.id)
                        .values(state="dead", attempts=attempts, last_error=error[:2000])
                    )
                    continue
                delay = min(base * 2 ** (attempts - 1), cap)
                conn.execute(
                    update(deliveries)
                    .where(deliveries.c.id == row.id)
                    .values(attempts=attempts, next_try=min(t + delay, row.give_up_at), last_error=error[:2000])
                )
        dead = [r for r in rows if t >= r.give_up_at]
        if dead:
            log_event(
                self.engine,
                "delivery_dead",
                f"{len(dead)} object(s) to {rows[0].destination} dead-lettered: {error}",
                level="ERROR",
            )
