"""The node's native storage SCP: the DICOM Upper Layer and DIMSE C-STORE / C-ECHO done directly on sockets.

pynetdicom spends most of its per-message time in general-purpose encoding of tiny command sets and
file meta; this acceptor parses exactly what a storage SCP needs by hand. Data set fragments are read
from the socket straight into the instance's page-aligned :class:`~dicom_node.ingest.buffers.InstanceBuffer`,
after the file meta built from the command: the bytes the peer sent, never re-encoded and never copied
again on their way to the journal and the store. The buffer goes to the same
:class:`~dicom_node.ingest.ingestor.Ingestor` as the pynetdicom receiver's bytes. Association policy,
A-ASSOCIATE-RJ reasons and status codes are the same too. One thread per association; TCP_NODELAY on
every socket; the maximum PDU we accept is unlimited.

With ``[tls]`` a second listening socket takes DICOM TLS: the association's thread runs the handshake
(:func:`~dicom_node.net.tls.handshake`) before the A-ASSOCIATE-RQ, both within the ARTIM timeout of the
connection opening, and the connection counts as pending for its address meanwhile (so a silent TLS
caller is bounded like a silent plain one). ``node.port = 0`` with ``[tls]`` turns the plain listener off.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
import time
from typing import Any

from sqlalchemy import Engine

from dicom_node.config import NodeConfig
from dicom_node.db.engine import log_event
from dicom_node.ingest.buffers import InstanceBuffer
from dicom_node.ingest.ingestor import Ingestor
from dicom_node.net import dimse, tls, ul
from dicom_node.net.commands import check_store_command, valid_uid
from dicom_node.net.outcomes import log_association
from dicom_node.net.policy import AssociationPolicy, Decision
from dicom_node.store import Store

log = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
# Well-known non-storage services under the storage branch a storage SCP must not accept.
NOT_STORAGE_PREFIXES = ("1.2.840.10008.5.1.4.1.2.", "1.2.840.10008.5.1.4.31", "1.2.840.10008.5.1.4.32")
MAX_PDU_BODY = 1 << 30  # refuse PDUs over 1 GiB as malformed
MAX_ASSOCIATE_RQ = 1 << 20  # an A-ASSOCIATE-RQ is a few KiB; more is not one
EAGER_ALLOCATION = 16 << 20  # larger PDUs are read in chunks
PDU_SECONDS_PER_MIB = 1.0  # a PDU must be complete within the network timeout plus this per MiB


def acceptable_abstract_syntax(uid: str) -> bool:
    """Verification, every storage SOP class (standard, retired, private): not query/retrieve or worklist."""
    if uid == VERIFICATION:
        return True
    if uid.startswith("1.2.840.10008."):
        return uid.startswith("1.2.840.10008.5.1.4.1.1.") or uid.startswith("1.2.840.10008.5.1.4.34.")
    return bool(uid) and not uid.startswith(NOT_STORAGE_PREFIXES)


def choose_transfer_syntax(proposed: list[str]) -> str | None:
    """The first proposed DICOM transfer syntax: the data set is stored as sent, so any is fine."""
    for syntax in proposed:
        if syntax.startswith("1.2.840.10008.1.2"):
            return syntax
    return None


class NativeReceiver:
    """Listens on the configured port and serves associations, one thread each."""

    def __init__(self, config: NodeConfig, engine: Engine, store: Store, journal_name: str = "r0") -> None:
        self.config = config
        self.engine = engine
        self.policy = AssociationPolicy(config)
        self.ingestor = Ingestor(config, engine, store, journal_name)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._tls_sock: socket.socket | None = None
        self._tls_thread: threading.Thread | None = None
        self.tls_context = tls.server_context(config.tls) if config.tls is not None else None
        self._connections: set[_Association] = set()  # every open connection, negotiated or not
        self._active: set[_Association] = set()  # associations: counted against max_associations
        self._pending: dict[str, list[_Association]] = {}  # per address, oldest first: still negotiating
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def start(self, *, block: bool = False, reuse_port: bool = False) -> None:
        """Bind and listen (plain, and TLS with ``[tls]``); with ``reuse_port`` several processes can share
        the ports (SO_REUSEPORT)."""
        node, tls_section = self.config.node, self.config.tls
        if tls_section is not None:
            self._tls_sock = self._listen(tls_section.port, reuse_port)
            log.info("listening as %s on %s:%d (DICOM TLS)", node.ae_title, node.host, self.tls_port)
            self._tls_thread = threading.Thread(
                target=self._serve, args=(self._tls_sock, self.tls_context), name="scp-accept-tls", daemon=True
            )
            self._tls_thread.start()
        if tls_section is None or node.port != 0:
            self._sock = self._listen(node.port, reuse_port)
            log.info("listening as %s on %s:%d", node.ae_title, node.host, self.port)
        if block:
            if self._sock is not None:
                self._serve(self._sock, None)
            elif self._tls_thread is not None:
                self._tls_thread.join()
        elif self._sock is not None:
            self._thread = threading.Thread(target=self._serve, args=(self._sock, None), name="scp-accept", daemon=True)
            self._thread.start()

    def _listen(self, port: int, reuse_port: bool) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.config.node.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((self.config.node.host, port))
        sock.listen(128)
        return sock

    @property
    def port(self) -> int:
        """The plain port actually bound (useful when the config asked for port 0); the TLS port when the
        plain listener is off."""
        sock = self._sock if self._sock is not None else self._tls_sock
        assert sock is not None
        return int(sock.getsockname()[1])

    @property
    def tls_port(self) -> int | None:
        """The DICOM TLS port actually bound, or None without ``[tls]``."""
        return None if self._tls_sock is None else int(self._tls_sock.getsockname()[1])

    def stop(self) -> None:
        """Stop listening and close open associations."""
        self._stopping.set()
        for sock in (self._sock, self._tls_sock):
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
        with self._lock:
            active = list(self._connections)
        for assoc in active:
            assoc.wake()
        for thread in (self._thread, self._tls_thread):
            if thread is not None:
                thread.join(timeout=5)
        for assoc in active:  # an instance being journaled finishes before the journal closes
            if assoc.thread is not None:
                assoc.thread.join(timeout=5)
        self.ingestor.close()

    def _serve(self, listening: socket.socket, tls_context: ssl.SSLContext | None) -> None:
        while not self._stopping.is_set():
            try:
                conn, addr = listening.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            assoc = _Association(self, conn, str(addr[0]), tls_context)
            evicted = self._connected(assoc)
            if evicted is not None:
                log.info("closing a connection from %s that has not associated: newer ones wait", evicted.address)
                evicted.wake()
            assoc.thread = threading.Thread(target=assoc.run, name=f"assoc-{addr[0]}:{addr[1]}", daemon=True)
            assoc.thread.start()

    def _connected(self, assoc: _Association) -> _Association | None:
        """A new connection, not yet associated; returns the oldest of its address to close when that
        address has more than ``max_pending_per_address`` of them."""
        with self._lock:
            self._connections.add(assoc)
            waiting = self._pending.setdefault(assoc.address, [])
            waiting.append(assoc)
            if len(waiting) > self.config.node.max_pending_per_address:
                return waiting.pop(0)
        return None

    def _admit(self, assoc: _Association, decide: Any) -> Decision:
        """Decide on ``assoc``'s request with the number of associations open, and count it if accepted
        (in one step: two requests at once cannot both take the last slot)."""
        with self._lock:
            self._not_pending(assoc)
            decision: Decision = decide(len(self._active))
            if decision.accept:
                self._active.add(assoc)
        return decision

    def _not_pending(self, assoc: _Association) -> None:
        waiting = self._pending.get(assoc.address)
        if waiting is not None and assoc in waiting:
            waiting.remove(assoc)
            if not waiting:
                del self._pending[assoc.address]

    def _unregister(self, assoc: _Association) -> None:
        with self._lock:
            self._not_pending(assoc)
            self._active.discard(assoc)
            self._connections.discard(assoc)


class _Association:
    """One association, from A-ASSOCIATE-RQ to release or abort."""

    def __init__(
        self, server: NativeReceiver, conn: socket.socket, address: str, tls_context: ssl.SSLContext | None = None
    ) -> None:
        self.server = server
        self.conn = conn
        self.address = address
        self.tls_context = tls_context
        self.calling_ae = ""
        self.certificate_names: frozenset[str] | None = None  # of the verified TLS client certificate; None: plain
        self.called_ae = ""
        self.contexts: dict[int, tuple[str, str]] = {}  # id -> (abstract syntax, transfer syntax)
        self.thread: threading.Thread | None = None
        self.opened = time.monotonic()
        self.network_timeout = server.config.node.network_timeout_s
        self.stored = 0  # instances answered Success
        self.outcome = "closed before associating"  # how it ended: the association's log line and event
        self._pdu_deadline = 0.0  # monotonic time by which the PDU being read must be complete

    def wake(self) -> None:
        """From another thread: shut the connection down, which wakes the association's thread (blocked
        reading, or waiting in the TLS handshake) so that it ends and closes the socket itself. Closing it
        from here could pull the descriptor from under the handshake's poll, which would then wait out
        the ARTIM timeout."""
        tls.shutdown(self.conn)

    def close(self) -> None:
        """Shut the connection down and close it (the association's own thread, when it ends)."""
        tls.shutdown(self.conn)
        try:
            self.conn.close()
        except OSError:
            pass

    def _use_kernel_timeouts(self) -> None:
        """Blocking, with the timeout in the kernel: one recv call per read (a Python-level timeout
        polls before every call) and MSG_WAITALL returns whole PDV values, not whatever has arrived."""
        self.conn.settimeout(None)
        seconds = max(int(self.network_timeout), 1)
        timeval = struct.pack("ll", seconds, 0)
        self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)

    def _secure(self) -> bool:
        """The TLS handshake, within the ARTIM timeout of the connection opening; False if refused."""
        assert self.tls_context is not None
        deadline = self.opened + self.server.config.node.association_request_timeout_s
        secure = self.conn = tls.wrap(self.conn, self.tls_context)
        try:
            tls.handshake(secure, deadline)
        except ssl.SSLError as exc:
            tls.log_refusal(self.server.engine, self.address, exc)
            return False
        self.certificate_names = tls.peer_names(secure)
        log.debug(
            "TLS from %s: %s, certificate %s", self.address, secure.version(), sorted(self.certificate_names or ())
        )
        return True

    def run(self) -> None:
        try:
            if self.tls_context is not None and not self._secure():
                return
            request = self._read_request()
            if self.tls_context is not None:  # SSL reads cannot use the kernel's timeouts
                self.conn.settimeout(self.network_timeout)
            else:
                self._use_kernel_timeouts()
            if self._negotiate(request):
                self.outcome = "aborted"
                self._serve_messages()
        except (ul.ProtocolError, ValueError) as exc:
            self.outcome = "protocol error"
            log.warning("association from %s aborted: %s", self.address, exc)
            reason = exc.reason if isinstance(exc, ul.ProtocolError) else ul.ABORT_REASON_NOT_SPECIFIED
            self._send_quietly(ul.build_abort(reason=reason))
        except (TimeoutError, ConnectionError, OSError) as exc:
            self.outcome = "timed out" if isinstance(exc, TimeoutError) else "connection lost"
            if not self.server._stopping.is_set():
                log.info("association from %s ended: %s", self.address, exc)
        except Exception:  # whatever went wrong, this association ends and the others go on
            self.outcome = "failed"
            log.exception("association from %s failed", self.address)
            self._send_quietly(ul.build_abort())
        finally:
            self.server._unregister(self)
            self.close()
            log_association(self.server.engine, self.calling_ae, self.address, self.stored, self.opened, self.outcome)

    # -- transport ------------------------------------------------------------------------------------
    def _recv_exact(self, n: int) -> bytes | bytearray:
        if n > EAGER_ALLOCATION:  # a huge length must not reserve memory before the bytes arrive
            grown = bytearray()
            while len(grown) < n:
                chunk = self.conn.recv(min(n - len(grown), EAGER_ALLOCATION))
                if not chunk:
                    raise ConnectionError("peer closed the connection")
                grown += chunk
            return grown
        # One call and one object for the common case (PDU and PDV headers, commands): all n bytes.
        data = self.conn.recv(n, socket.MSG_WAITALL)
        if len(data) == n:
            return data
        grown = bytearray(data)
        while len(grown) < n:
            if not data:
                raise ConnectionError("peer closed the connection")
            data = self.conn.recv(n - len(grown), socket.MSG_WAITALL)
            grown += data
        return grown

    def _read_pdu_header(self) -> tuple[int, int]:
        pdu_type, _, length = ul.PDU_HEADER.unpack(self._recv_exact(ul.PDU_HEADER.size))
        if length > MAX_PDU_BODY:
            raise ul.ProtocolError(f"PDU of {length} bytes")
        # A total deadline for the PDU, not a timeout that every byte restarts (checked per PDV).
        self._pdu_deadline = time.monotonic() + self.network_timeout + PDU_SECONDS_PER_MIB * length / (1 << 20)
        return pdu_type, length

    def _read_request(self) -> ul.AssociateRequest:
        """The A-ASSOCIATE-RQ, complete within the ARTIM timeout of the connection opening (PS3.8 9.1.5),
        however slowly its bytes drip in; then the transport is closed (no A-ABORT: no association)."""
        deadline = self.opened + self.server.config.node.association_request_timeout_s

        def recv(n: int) -> bytearray:
            data = bytearray()
            while len(data) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("no complete A-ASSOCIATE-RQ within the ARTIM timeout")
                self.conn.settimeout(remaining)
                chunk = self.conn.recv(min(n - len(data), 1 << 16))
                if not chunk:
                    raise ConnectionError("peer closed the connection before associating")
                data += chunk
            return data

        pdu_type, _, length = ul.PDU_HEADER.unpack(recv(ul.PDU_HEADER.size))
        if pdu_type != ul.A_ASSOCIATE_RQ:  # PS3.8 Sta2: any other PDU is answered with A-ABORT
            known = ul.A_ASSOCIATE_RQ <= pdu_type <= ul.A_ABORT_RQ
            reason = ul.ABORT_UNEXPECTED_PDU if known else ul.ABORT_UNRECOGNIZED_PDU
            raise ul.ProtocolError(f"expected A-ASSOCIATE-RQ, got PDU type 0x{pdu_type:02X}", reason)
        if length > MAX_ASSOCIATE_RQ:
            raise ul.ProtocolError(f"A-ASSOCIATE-RQ of {length} bytes")
        return ul.parse_associate_rq(bytes(recv(length)))

    def _send_quietly(self, data: bytes) -> None:
        try:
            self.conn.sendall(data)
        except OSError:
            pass

    # -- association establishment --------------------------------------------------------------------
    def _negotiate(self, request: ul.AssociateRequest) -> bool:
        self.calling_ae, self.called_ae = request.calling_ae, request.called_ae
        policy = self.server.policy
        names = self.certificate_names
        decision = self.server._admit(
            self, lambda others: policy.decide(request.called_ae, request.calling_ae, self.address, others, names)
        )
        if not decision.accept:
            assert decision.reject is not None
            self.outcome = "rejected"
            log.warning("association from %s refused: %s", self.address, decision.reason)
            log_event(
                self.server.engine,
                "association_rejected",
                decision.reason,
                level="WARNING",
                calling_ae=request.calling_ae[:16],
                address=self.address,
            )
            self._send_quietly(ul.build_associate_rj(*decision.reject))
            return False
        results = []
        for ctx in request.contexts:
            if not acceptable_abstract_syntax(ctx.abstract_syntax):
                results.append((ctx.id, ul.ABSTRACT_SYNTAX_NOT_SUPPORTED, ""))
                continue
            syntax = choose_transfer_syntax(ctx.transfer_syntaxes)
            if syntax is None:
                results.append((ctx.id, ul.TRANSFER_SYNTAXES_NOT_SUPPORTED, ""))
                continue
            results.append((ctx.id, ul.ACCEPTANCE, syntax))
            self.contexts[ctx.id] = (ctx.abstract_syntax, syntax)
        self.conn.sendall(ul.build_associate_ac(request, results, self.server.config.node.max_pdu))
        return True

    # -- DIMSE ------------------------------------------------------------------------------------------
    def _serve_messages(self) -> None:
        """P-DATA-TF PDUs are read PDV by PDV: data set fragments go straight into the instance's buffer."""
        command: list[bytes] = []
        parsed: dict[int, int | str] | None = None
        data: InstanceBuffer | None = None
        context_id = 0
        # Protocol constants as locals: this loop runs once per PDV.
        pdv_header, command_fragment, last_fragment = ul.PDV_HEADER.size, ul.PDV_COMMAND, ul.PDV_LAST
        while True:
            pdu_type, length = self._read_pdu_header()
            if pdu_type != ul.P_DATA_TF:
                self._recv_exact(length)
                if pdu_type == ul.A_RELEASE_RQ:
                    self.conn.sendall(ul.build_release_rp())
                    self.outcome = "released"
                    return
                if pdu_type == ul.A_ABORT_RQ:
                    self.outcome = "aborted by the peer"
                    log.info("association from %s aborted by the peer", self.address)
                    return
                raise ul.ProtocolError(
                    f"unexpected PDU type 0x{pdu_type:02X} during the association", ul.ABORT_UNEXPECTED_PDU
                )
            while length:
                if time.monotonic() > self._pdu_deadline:
                    raise TimeoutError("a PDU took longer than its deadline")
                head = self._recv_exact(pdv_header) if length >= pdv_header else b""
                size, ctx_id, control = ul.parse_pdv_header(head, length)
                length -= pdv_header + size
                if ctx_id not in self.contexts:
                    raise ul.ProtocolError(
                        f"PDV on presentation context {ctx_id}, which was not accepted", ul.ABORT_INVALID_PARAMETER
                    )
                if control & command_fragment:
                    command.append(bytes(self._recv_exact(size)))
                    if control & last_fragment:
                        parsed = dimse.decode_command(b"".join(command))
                        command, context_id = [], ctx_id
                        if parsed.get(dimse.DATA_SET_TYPE, dimse.NO_DATA_SET) == dimse.NO_DATA_SET:
                            self._dispatch(parsed, context_id, None)
                            parsed = None
                        else:
                            data = self._new_instance(parsed, context_id)
                else:
                    if parsed is None or data is None:
                        raise ul.ProtocolError("data set fragment before its command", ul.ABORT_UNEXPECTED_PDU)
                    if ctx_id != context_id:  # PS3.7 9.3.1 / PS3.8: one message, one presentation context
                        raise ul.ProtocolError(
                            f"data set on presentation context {ctx_id}, its command on {context_id}",
                            ul.ABORT_INVALID_PARAMETER,
                        )
                    data.recv(self.conn, size)
                    if control & last_fragment:
                        self._dispatch(parsed, context_id, data)
                        parsed, data = None, None

    def _new_instance(self, command: dict[int, int | str], context_id: int) -> InstanceBuffer:
        """A buffer for the coming data set, starting with the file meta a Part 10 file needs."""
        buf = InstanceBuffer()
        if command.get(dimse.COMMAND_FIELD) == dimse.C_STORE_RQ:
            _, syntax = self.contexts[context_id]
            buf.append(
                dimse.file_meta(
                    str(command.get(dimse.AFFECTED_SOP_CLASS, "")),
                    str(command.get(dimse.AFFECTED_SOP_INSTANCE, "")),
                    syntax,
                    self.calling_ae,
                    ul.IMPLEMENTATION_CLASS_UID,
                    ul.IMPLEMENTATION_VERSION,
                )
            )
        return buf

    def _dispatch(self, command: dict[int, int | str], context_id: int, data: InstanceBuffer | None) -> None:
        field = command.get(dimse.COMMAND_FIELD)
        message_id = int(command.get(dimse.MESSAGE_ID, 0))
        if field == dimse.C_ECHO_RQ:
            response = dimse.encode_response(dimse.C_ECHO_RSP, message_id, dimse.SUCCESS, VERIFICATION)
        elif field == dimse.C_STORE_RQ and data is not None:
            response = self._store(command, message_id, data, context_id)
        else:
            # An unrecognized operation on an otherwise healthy association: answered, not aborted.
            response_field = (int(field or 0) | dimse.RESPONSE) & 0xFFFF
            response = dimse.encode_response(response_field, message_id, dimse.UNRECOGNIZED_OPERATION)
        self.conn.sendall(ul.build_p_data(context_id, True, True, response))

    def _store(self, command: dict[int, Any], message_id: int, data: InstanceBuffer, context_id: int) -> bytes:
        sop_class = str(command.get(dimse.AFFECTED_SOP_CLASS, ""))
        sop_instance = str(command.get(dimse.AFFECTED_SOP_INSTANCE, ""))
        refusal = check_store_command(sop_class, sop_instance, self.contexts[context_id][0])
        if refusal is not None:
            data.release()
            status, reason = refusal
            self.server.ingestor.keeper.refuse(status, "rejected", reason, self.calling_ae, self.address)
            return dimse.encode_response(
                dimse.C_STORE_RSP, message_id, status, sop_class[:64] if valid_uid(sop_class) else "", "", reason
            )
        outcome = self.server.ingestor.keep(
            data,
            calling_ae=self.calling_ae,
            called_ae=self.called_ae,
            address=self.address,
            command=(sop_class, sop_instance),
        )
        self.stored += outcome.status == dimse.SUCCESS
        return dimse.encode_response(
            dimse.C_STORE_RSP,
            message_id,
            outcome.status,
            sop_class,
            sop_instance,
            outcome.reason if outcome.status else "",
        )
