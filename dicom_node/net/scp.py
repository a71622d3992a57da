"""The receiving SCP: C-ECHO and C-STORE for every storage SOP class and transfer syntax.

The C-STORE handler is short (write, record, answer); the work is in :class:`~dicom_node.ingest.ingestor.Ingestor`.
"""

from __future__ import annotations

import logging
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import Engine

from dicom_node.config import NodeConfig
from dicom_node.db.engine import log_event
from dicom_node.ingest.ingestor import Ingestor
from dicom_node.net.dimse import CANNOT_UNDERSTAND, SUCCESS
from dicom_node.net.policy import AssociationPolicy
from dicom_node.net.sockets import set_nodelay
from dicom_node.store import Store

log = logging.getLogger(__name__)


class Receiver:
    """The node's listening AE: association policy from config, instances kept by an Ingestor."""

    def __init__(self, config: NodeConfig, engine: Engine, store: Store, journal_name: str = "r0") -> None:
        self.config = config
        self.engine = engine
        self.policy = AssociationPolicy(config)
        self.ingestor = Ingestor(config, engine, store, journal_name)
        self.server: ThreadedAssociationServer | None = None
        # Accept private and future storage SOP classes too, not only those pynetdicom lists.
        _config.UNRESTRICTED_STORAGE_SERVICE = True
        ae = AE(ae_title=config.node.ae_title)
        ae.maximum_pdu_size = config.node.max_pdu
        # The policy answers with the right A-ASSOCIATE-RJ; pynetdicom's own limit must not pre-empt it.
        ae.maximum_associations = config.node.max_associations + 1
        ae.require_called_aet = False
        ae.network_timeout = 120
        ae.dimse_timeout = 120
        ae.acse_timeout = 30
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
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_ECHO, lambda event: SUCCESS),
            (evt.EVT_C_STORE, self._on_store),
        ]
        address = (self.config.node.host, self.config.node.port)
        log.info("listening as %s on %s:%d", self.config.node.ae_title, *address)
        if block:
            self.ae.start_server(address, block=True, evt_handlers=handlers)
        else:
            self.server = self.ae.start_server(address, block=False, evt_handlers=handlers)

    @property
    def port(self) -> int:
        """The port actually bound (useful when the config asked for port 0)."""
        assert self.server is not None
        return int(self.server.server_address[1])

    def stop(self) -> None:
        """Stop listening; open associations are aborted."""
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        self.ae.shutdown()
        self.ingestor.close()

    def _on_requested(self, event: Any) -> None:
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        address = str(assoc.requestor.address)
        active = len([a for a in assoc.ae.active_associations if a.is_acceptor and a is not assoc])
        decision = self.policy.decide(primitive.called_ae_title, primitive.calling_ae_title, address, active)
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
        assoc.acse.send_reject(*decision.reject)
        assoc.kill()  # as pynetdicom's own ACSE does: lets the DUL send the A-ASSOCIATE-RJ, then stops

    def _on_store(self, event: Any) -> int:
        assoc = event.assoc
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
        )
        return outcome.status
