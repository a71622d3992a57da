"""Association policy: who may open an association with the node, and the A-ASSOCIATE-RJ when not."""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass
from functools import lru_cache

from dicom_node.config import NodeConfig, Peer
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
        self.peers: dict[str, list[Peer]] = {}
        for peer in config.peers:
            self.peers.setdefault(peer.ae_title, []).append(peer)

    def decide(
        self,
        called_ae: str,
        calling_ae: str,
        address: str,
        active: int,
        certificate_names: frozenset[str] | None = None,
    ) -> Decision:
        """Check one request; ``active`` counts the associations already open (this one excluded).

        ``certificate_names`` are the names of the caller's verified TLS client certificate (see
        :func:`dicom_node.net.tls.peer_names`): empty over TLS without a certificate, None on the plain port.
        """
        called_ae, calling_ae = called_ae.strip(), calling_ae.strip()
        if called_ae != self.ae_title:
            return Decision(False, REJECT_CALLED_AE, f"called AE {called_ae!r} is not this node ({self.ae_title!r})")
        entries = self.peers.get(calling_ae)
        if entries is None and not self.open_door:
            return Decision(False, REJECT_CALLING_AE, f"calling AE {calling_ae!r} is not in the peers list")
        if entries is not None:
            refusal = _refusal(entries, calling_ae, _normalise(address), certificate_names)
            if refusal:
                return Decision(False, REJECT_CALLING_AE, refusal)
        if active >= self.max_associations:
            return Decision(False, REJECT_BUSY, f"{active} associations open, the maximum is {self.max_associations}")
        return Decision(True)


def _refusal(entries: list[Peer], calling_ae: str, address: str, names: frozenset[str] | None) -> str:
    """Why no peer entry of ``calling_ae`` admits this caller ("" when one does)."""
    from_host = [p for p in entries if p.host is None or address in _addresses(p.host)]
    if not from_host:
        return f"calling AE {calling_ae!r} is not allowed from address {address}"
    if any(p.certificate_name is None or (names is not None and p.certificate_name in names) for p in from_host):
        return ""
    wanted = ", ".join(sorted(repr(p.certificate_name) for p in from_host))
    if names is None:
        return f"calling AE {calling_ae!r} must call over DICOM TLS with the certificate {wanted}"
    shown = ", ".join(sorted(repr(n) for n in names)) or "none"
    return f"calling AE {calling_ae!r} needs the certificate {wanted}; the caller's certificate names {shown}"


def _normalise(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return ip.ipv4_mapped.compressed
    return ip.compressed
