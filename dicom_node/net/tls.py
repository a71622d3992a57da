"""DICOM TLS (PS3.15 Annex B, BCP 195 profile): the SSL contexts and the server-side handshake.

:func:`server_context` builds the receivers' context from ``[tls]`` (TLS 1.2 or newer, the BCP 195
cipher suites, client certificates verified against ``ca_certificates`` and required for mutual
TLS); :func:`client_context` builds a destination's. :func:`wrap` and :func:`handshake` run the server
side of the handshake on an accepted socket, in the connection's own thread, against a deadline that
counts from the connection's opening, so a caller that says nothing (or drips bytes) holds its
connection no longer than the ARTIM timeout. A refused handshake is logged with the peer's address and
the reason and recorded as a ``tls_refused`` event (:func:`log_refusal`); a peer that closes during the
handshake (a TCP port check) is no refusal.
"""

from __future__ import annotations

import logging
import selectors
import socket
import ssl
import threading
import time
from typing import Any

from sqlalchemy import Engine

from dicom_node.config import Destination, TlsSection
from dicom_node.db.engine import log_event

log = logging.getLogger(__name__)

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TlsSocket(ssl.SSLSocket):
    """An SSL socket that accepts ``MSG_WAITALL`` (the native receiver's reads ask for it; SSL sockets
    refuse flags). Reads return what one TLS record gives; the callers loop until they have enough."""

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        return super().recv(buflen, flags & ~socket.MSG_WAITALL)

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
        return super().recv_into(buffer, nbytes, flags & ~socket.MSG_WAITALL)


class _EncryptedKey(Exception):
    pass


def _no_password() -> str:
    """An encrypted key is an error, never a prompt on the terminal (the config check refuses it too)."""
    raise _EncryptedKey


def _harden(context: ssl.SSLContext, minimum_version: str, ciphers: str) -> None:
    context.minimum_version = _VERSIONS[minimum_version]
    context.set_ciphers(ciphers)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION


def server_context(tls: TlsSection) -> ssl.SSLContext:
    """The receivers' context: our certificate and key, TLS >= ``minimum_version``, the BCP 195 suites;
    with ``ca_certificates`` client certificates are verified (and required when
    ``require_client_certificate``)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context, tls.minimum_version, tls.ciphers)
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    context.load_cert_chain(tls.certificate, tls.private_key, password=_no_password)
    if tls.ca_certificates is not None:
        context.load_verify_locations(cafile=tls.ca_certificates)
        context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
    else:
        context.verify_mode = ssl.CERT_NONE
    context.sslsocket_class = TlsSocket
    return context


def client_context(dest: Destination, tls: TlsSection | None = None) -> ssl.SSLContext:
    """A destination's context: its certificate verified against its ``ca_certificates`` (the system's
    CAs when none), its host name checked unless ``verify_hostname = false``, our client certificate
    sent when it has one. Version and cipher suites as in ``[tls]`` (BCP 195 defaults without it)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=dest.ca_certificates)
    if tls is not None:
        _harden(context, tls.minimum_version, tls.ciphers)
    else:
        defaults = TlsSection.model_fields
        _harden(context, str(defaults["minimum_version"].default), str(defaults["ciphers"].default))
    context.check_hostname = dest.verify_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if dest.certificate is not None and dest.private_key is not None:
        context.load_cert_chain(dest.certificate, dest.private_key, password=_no_password)
    return context


def wrap(conn: socket.socket, context: ssl.SSLContext) -> ssl.SSLSocket:
    """Wrap accepted ``conn`` for the server side, handshake not yet done (see :func:`handshake`); the
    result replaces ``conn`` at once, so closing it from another thread interrupts the handshake."""
    conn.setblocking(False)
    return context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)


def handshake(tls: ssl.SSLSocket, deadline: float) -> None:
    """Run the handshake of a :func:`wrap`-ped socket, complete by ``deadline`` (monotonic); the socket
    is blocking afterwards, closed on failure.

    Raises :class:`TimeoutError` past the deadline, :class:`ssl.SSLError` when the peer is refused
    (plain DICOM, an old protocol, no or an untrusted certificate), :class:`ConnectionError` when the
    peer closes first (a TCP port check), :class:`OSError` when the connection fails.
    """
    try:
        _handshake_until(tls, deadline)
    except BaseException:
        tls.close()
        raise
    tls.setblocking(True)


def _handshake_until(tls: ssl.SSLSocket, deadline: float) -> None:
    with selectors.DefaultSelector() as selector:
        while True:
            try:
                tls.do_handshake()
                return
            except ssl.SSLEOFError:  # a port check or a caller that gave up: not a refusal
                raise ConnectionError("closed during the TLS handshake") from None
            except ssl.SSLWantReadError:
                events = selectors.EVENT_READ
            except ssl.SSLWantWriteError:
                events = selectors.EVENT_WRITE
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no complete TLS handshake within the ARTIM timeout")
            selector.register(tls, events)
            ready = selector.select(remaining)
            selector.unregister(tls)
            if not ready:
                raise TimeoutError("no complete TLS handshake within the ARTIM timeout")


def shutdown(sock: socket.socket) -> None:
    """Shut a connection down at the TCP level, waking a thread blocked on it. For an SSL socket too:
    ``SSLSocket.shutdown`` drops the SSL object, which the thread reading it may be using."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


class PendingHandshakes:
    """TLS connections still in their handshake, by address: one address may hold at most
    ``max_per_address`` (``node.max_pending_per_address``); a newer one shuts the oldest down."""

    def __init__(self, max_per_address: int) -> None:
        self.max_per_address = max_per_address
        self._lock = threading.Lock()
        self._pending: dict[str, list[tuple[int, socket.socket]]] = {}  # (accept order, socket), oldest first

    def opened(self, address: str, sock: socket.socket, accepted: int) -> None:
        """``sock`` (the ``accepted``-th connection accepted) starts its handshake. Connections register from
        their own threads, in any order: the oldest is the one accepted first, not the first to register."""
        with self._lock:
            waiting = self._pending.setdefault(address, [])
            waiting.append((accepted, sock))
            waiting.sort(key=lambda entry: entry[0])
            evicted = waiting.pop(0)[1] if len(waiting) > self.max_per_address else None
        if evicted is not None:
            log.info("closing a TLS connection from %s still in its handshake: newer ones wait", address)
            shutdown(evicted)

    def done(self, address: str, sock: socket.socket) -> None:
        with self._lock:
            waiting = self._pending.get(address, [])
            waiting[:] = [entry for entry in waiting if entry[1] is not sock]
            if not waiting:
                self._pending.pop(address, None)


def log_refusal(engine: Engine, address: str, exc: BaseException) -> None:
    """Log a refused TLS connection and record it as a ``tls_refused`` event."""
    reason = refusal_reason(exc)
    log.warning("TLS connection from %s refused: %s", address, reason)
    log_event(engine, "tls_refused", reason, level="WARNING", address=address)


def refusal_reason(exc: BaseException) -> str:
    """A short reason for a refused handshake, for the log and the event row (no patient data: none
    can have been sent yet)."""
    reason = getattr(exc, "reason", None) or type(exc).__name__
    hints = {
        "WRONG_VERSION_NUMBER": "not TLS (plain DICOM on the TLS port?)",
        "HTTP_REQUEST": "not TLS (an HTTP request)",
        "UNSUPPORTED_PROTOCOL": "TLS version below the minimum",
        "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no client certificate (mutual TLS is required)",
        "CERTIFICATE_VERIFY_FAILED": "client certificate not trusted",
        "NO_SHARED_CIPHER": "no BCP 195 cipher suite in common",
        "TLSV1_ALERT_UNKNOWN_CA": "the caller does not trust the node's certificate",
    }
    hint = hints.get(str(reason))
    if isinstance(exc, TimeoutError):
        return str(exc)
    verify = getattr(exc, "verify_message", None)
    detail = f" ({verify})" if verify else ""
    return f"{hint or 'TLS handshake failed'}: {reason}{detail}"


def peer_names(conn: Any) -> frozenset[str] | None:
    """The names of a TLS caller's verified client certificate: subject common name(s) and DNS subject
    alternative names. Empty over TLS without a certificate; None for a plain connection."""
    getpeercert = getattr(conn, "getpeercert", None)
    if getpeercert is None:
        return None
    cert = getpeercert() or {}
    names = {str(value) for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"}
    names.update(str(value) for kind, value in cert.get("subjectAltName", ()) if kind == "DNS")
    return frozenset(names)
