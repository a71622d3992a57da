"""Association policy: who may open an association with the node, and the A-ASSOCIATE-RJ when not."""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass
from functools import lru_cache

from dicom_node.config import NodeConfig
from dicom_node.net import ul

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (result, source, reason/diagnostic) as PS3.8 Table 9-21 defines them
REJECT_CALLING_AE = (ul.REJECTED_PERMANENT, ul.SOURCE_SERVICE_USER, ul.CALLING_AE_NOT_RECOGNIZED)
REJECT_CALLED_AE = (ul.REJECTED_PERMANENT, ul.SOURCE_SERVICE_USER, ul.CALLED_AE_NOT_RECOGNIZED)
REJECT_BUSY = (ul.REJECTED_TRANSIENT, ul.SOURCE_PROVIDER_PRESENTATION, ul.LOCAL_LIMIT_EXCEEDED)


@dataclass(frozen=True)
class Decision:
    """The outcome of checking one association request."""

    accept: bool
    reject: tuple[int, int, int] | None = None
    reason: str = ""


@lru_cache(maxsize=256)
def _addresses(host: str) -> frozenset[str]:
    try:
        return frozenset({ipaddress.ip_address(host).compressed})
    except ValueError:
        pass
    try:
        return frozenset(str(info[4][0]) for info in socket.getaddrinfo(host, None))
    except OSError:
        log.warning("peer host %r does not resolve; associations from it will be refused", host)
        return frozenset()


class AssociationPolicy:
    """Decides on association requests from the config's node and peers sections."""

    def __init__(self, config: NodeConfig) -> None:
        self.ae_title = config.node.ae_title
        self.max_associations = config.node.max_associations
        self.open_door = config.node.accept_unknown_callers
        self.peers: dict[str, list[str | None]] = {}
        for peer in config.peers:
            self.peers.setdefault(peer.ae_title, []).append(peer.host)

    def decide(self, called_ae: str, calling_ae: str, address: str, active: int) -> Decision:
        """Check one request; ``active`` counts the associations already open (this one excluded)."""
        called_ae, calling_ae = called_ae.strip(), calling_ae.strip()
        if called_ae != self.ae_title:
            return Decision(False, REJECT_CALLED_AE, f"called AE {called_ae!r} is not this node ({self.ae_title!r})")
        hosts = self.peers.get(calling_ae)
        if hosts is None and not self.open_door:
            return Decision(False, REJECT_CALLING_AE, f"calling AE {calling_ae!r} is not in the peers list")
        if hosts is not None and None not in hosts:
            addr = _normalise(address)
            if not any(addr in _addresses(h) for h in hosts if h is not None):
                return Decision(
                    False,
                    REJECT_CALLING_AE,
                    f"calling AE {calling_ae!r} is not allowed from address {address}",
                )
        if active >= self.max_associations:
            return Decision(False, REJECT_BUSY, f"{active} associations open, the maximum is {self.max_associations}")
        return Decision(True)


def _normalise(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return ip.ipv4_mapped.compressed
    return ip.compressed
