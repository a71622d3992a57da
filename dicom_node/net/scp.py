"""The receiving SCP: C-ECHO and C-STORE for every storage SOP class and transfer syntax.

The C-STORE handler is short (write, record, answer); the work is in :class:`~dicom_node.ingest.ingestor.Ingestor`.
With ``[tls]`` a second server of the same AE listens for DICOM TLS (:class:`TlsServer`); ``node.port = 0``
then turns the plain one off.
"""

from __future__ import annotations

import itertools
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import Engine

from dicom_node.config import NodeConfig
from dicom_node.db.engine import log_event
from dicom_node.ingest.ingestor import Ingestor
from dicom_node.net import hostile, tls
from dicom_node.net.admission import Admission, ContextGuard
from dicom_node.net.commands import check_store_command
from dicom_node.net.dimse import CANNOT_UNDERSTAND, SUCCESS
from dicom_node.net.outcomes import Ledger
from dicom_node.net.policy import AssociationPolicy
from dicom_node.net.sockets import set_nodelay
from dicom_node.store import Store

log = logging.getLogger(__name__)

PYNETDICOM_CONNECTIONS = 1000  # pynetdicom's own limit, on open connections (ours is on associations)


class TlsServer(ThreadedAssociationServer):
    """pynetdicom's server with the TLS handshake moved out of the accept loop.

    pynetdicom wraps and handshakes in ``get_request``, in the one thread that accepts: a caller that
    never finishes its handshake would stop every other connection. Here that thread only accepts; the
    handshake runs in the connection's own thread, within the ARTIM timeout of its opening, at most
    ``max_pending_per_address`` at once per address, and a refused one is logged and recorded.
    """

    receiver: Receiver

    # The order of acceptance decides which pending handshake is the oldest: the connection threads
    # register in any order. Filled by the accepting thread, each entry taken by its connection's thread.
    accepts: ClassVar[Iterator[int]] = itertools.count()
    accept_order: ClassVar[dict[socket.socket, int]] = {}

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        conn, address = self.socket.accept()
        self.accept_order[conn] = next(self.accepts)
        return conn, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        accepted = self.accept_order.pop(request, 0)
        receiver = self.receiver
        assert receiver.tls_context is not None
        address = str(client_address[0])
        deadline = time.monotonic() + receiver.config.node.association_request_timeout_s
        secure = tls.wrap(request, receiver.tls_context)
        receiver.handshakes.opened(address, secure, accepted)
        try:
            tls.handshake(secure, deadline)
        except ssl.SSLError as exc:
            tls.log_refusal(receiver.engine, address, exc)
            return
        except OSError as exc:  # a timeout, or the connection closed or evicted
            log.info("TLS connection from %s ended: %s", address, exc)
            return
        finally:
            receiver.handshakes.done(address, secure)
        super().process_request_thread(secure, client_address)


class Receiver:
    """The node's listening AE: association policy from config, instances kept by an Ingestor."""

    def __init__(self, config: NodeConfig, engine: Engine, store: Store, journal_name: str = "r0") -> None:
        self.config = config
        self.engine = engine
        self.policy = AssociationPolicy(config)
        self.ingestor = Ingestor(config, engine, store, journal_name)
        self.server: ThreadedAssociationServer | None = None
        self.tls_server: TlsServer | None = None
        self.tls_context = tls.server_context(config.tls) if config.tls is not None else None
        self.handshakes = tls.PendingHandshakes(config.node.max_pending_per_address)
        # Accept private and future storage SOP classes too, not only those pynetdicom lists.
        _config.UNRESTRICTED_STORAGE_SERVICE = True
        # pynetdicom's standard DIMSE log handlers raise on a C-STORE-RQ missing a required element, and
        # the exception kills the association's reactor without closing the connection; the receiver logs
        # what it needs itself.
        _config.LOG_HANDLER_LEVEL = "none"
        hostile.install()  # pynetdicom under malformed peer input: no traceback, no dying reactor
        ae = AE(ae_title=config.node.ae_title)
        ae.maximum_pdu_size = config.node.max_pdu
        # The policy answers with the right A-ASSOCIATE-RJ, counting negotiated associations only;
        # pynetdicom's own limit counts every open connection and must not pre-empt it.
        ae.maximum_associations = PYNETDICOM_CONNECTIONS
        ae.require_called_aet = False
        ae.network_timeout = config.node.network_timeout_s
        ae.dimse_timeout = config.node.network_timeout_s
        ae.acse_timeout = config.node.association_request_timeout_s  # also pynetdicom's ARTIM timer
        self.admission = Admission(config.node.association_request_timeout_s, config.node.max_pending_per_address)
        self.ledger = Ledger(engine)  # one log line and event per association (net/outcomes.py)
        self.contexts = ContextGuard()
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(str(context.abstract_syntax), ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        self.ae = ae

    def start(self, *, block: bool = False, reuse_port: bool = False) -> None:
        """Listen on the configured host and port (returns at once unless ``block``).

        ``reuse_port`` is accepted for symmetry with the native receiver; pynetdicom cannot share a port.
        """
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, set_nodelay),
            (evt.EVT_CONN_OPEN, lambda event: self.admission.opened(event.assoc, str(event.address[0]))),
            (evt.EVT_CONN_CLOSE, lambda event: self.admission.closed(event.assoc)),
            (evt.EVT_PDU_RECV, self.contexts.on_pdu),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_ECHO, lambda event: SUCCESS),
            (evt.EVT_C_STORE, self._on_store),
            *self.ledger.handlers(),
        ]
        node = self.config.node
        self.admission.start()
        if self.config.tls is not None:
            self._start_tls(handlers)
            if node.port == 0:  # TLS only
                if block:
                    threading.Event().wait()  # until the process ends, as pynetdicom's blocking server does
                return
        address = (node.host, node.port)
        log.info("listening as %s on %s:%d", node.ae_title, *address)
        if block:
            self.ae.start_server(address, block=True, evt_handlers=handlers)
        else:
            self.server = self.ae.start_server(address, block=False, evt_handlers=handlers)

    def _start_tls(self, handlers: list[Any]) -> None:
        assert self.config.tls is not None
        address = (self.config.node.host, self.config.tls.port)
        server = self.ae.make_server(address, evt_handlers=handlers, server_class=TlsServer)
        assert isinstance(server, TlsServer)
        server.receiver = self
        self.ae._servers.append(server)  # as AE.start_server does: ae.shutdown() stops it, server.shutdown() expects it
        thread = threading.Thread(target=server.serve_forever, name="scp-accept-tls", daemon=True)
        thread.start()
        self.tls_server = server
        log.info("listening as %s on %s:%d (DICOM TLS)", self.config.node.ae_title, address[0], self.tls_port)

    @property
    def port(self) -> int:
        """The plain port actually bound (useful when the config asked for port 0); the TLS port when the
        plain listener is off."""
        server = self.server if self.server is not None else self.tls_server
        assert server is not None
        return int(server.server_address[1])

    @property
    def tls_port(self) -> int | None:
        """The DICOM TLS port actually bound, or None without ``[tls]``."""
        return None if self.tls_server is None else int(self.tls_server.server_address[1])

    def stop(self) -> None:
        """Stop listening; open associations are aborted."""
        for server in (self.server, self.tls_server):
            if server is not None:
                server.shutdown()
        self.server = self.tls_server = None
        self.ae.shutdown()
        self.admission.stop()
        self.ingestor.close()

    def _on_requested(self, event: Any) -> None:
        assoc = event.assoc
        if self.contexts.malformed(assoc):  # an even context ID, or no transfer syntax (PS3.8 9.3.2.2)
            assoc.acse.send_ap_abort(0x06)  # invalid PDU parameter value
            assoc.kill()  # lets the DUL send the A-ABORT, then stops (as for a reject below)
            return
        primitive = assoc.requestor.primitive
        address = str(assoc.requestor.address)
        policy = self.policy
        names = tls.peer_names(assoc.dul.socket.socket if assoc.dul.socket is not None else None)
        decision = self.admission.admit(
            assoc,
            lambda active: policy.decide(primitive.called_ae_title, primitive.calling_ae_title, address, active, names),
        )
        if decision.accept:
            return
        log.warning("association from %s refused: %s", address, decision.reason)
        log_event(
            self.engine,
            "association_rejected",
            decision.reason,
            level="WARNING",
            calling_ae=primitive.calling_ae_title.strip()[:16],
            address=address,
        )
        assert decision.reject is not None
        self.ledger.outcome(assoc, "rejected", primitive.calling_ae_title)
        assoc.acse.send_reject(*decision.reject)
        assoc.kill()  # as pynetdicom's own ACSE does: lets the DUL send the A-ASSOCIATE-RJ, then stops

    def _on_store(self, event: Any) -> int:
        assoc = event.assoc
        request = event.request
        sop_class = str(request.AffectedSOPClassUID or "")
        sop_instance = str(request.AffectedSOPInstanceUID or "")
        refusal = check_store_command(sop_class, sop_instance, str(event.context.abstract_syntax))
        if self.contexts.violated(assoc):  # the association is being aborted: keep nothing of it
            refusal = (CANNOT_UNDERSTAND, "data set on another presentation context than its command")
        if refusal is not None:
            status, reason = refusal
            self.ingestor.keeper.refuse(
                status, "rejected", reason, assoc.requestor.ae_title.strip(), str(assoc.requestor.address)
            )
            return status
        try:
            data = event.encoded_dataset(include_meta=True)
        except Exception as exc:  # malformed command or context: answer, never crash the association
            log.warning("cannot read C-STORE data set: %s", exc)
            log_event(
                self.engine,
                "rejected",
                f"cannot read data set: {exc}",
                level="WARNING",
                calling_ae=assoc.requestor.ae_title.strip(),
            )
            return CANNOT_UNDERSTAND
        outcome = self.ingestor.keep(
            data,
            calling_ae=assoc.requestor.ae_title.strip(),
            called_ae=assoc.acceptor.ae_title.strip(),
            address=str(assoc.requestor.address),
            command=(sop_class, sop_instance),
        )
        if outcome.status == SUCCESS:
            self.ledger.stored(assoc)
        return outcome.status
