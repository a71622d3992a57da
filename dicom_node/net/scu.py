"""The sending SCU: C-STORE files to a destination over one association."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE, evt
from pynetdicom.presentation import build_context

from dicom_node.net.dimse import STATUS_CLASS, SUCCESS, WARNING
from dicom_node.net.sockets import set_nodelay

log = logging.getLogger(__name__)

# New associations after one is lost mid-send (the file in flight goes again: a receiver keeps the first
# copy). pynetdicom's requestor can miss a very quick C-STORE response under load (its reactor thread
# takes it off the queue) and then aborts after the DIMSE timeout.
RECONNECTS = 2


class SendError(RuntimeError):
    """The destination could not be reached or refused the association."""


@dataclass(frozen=True)
class Sent:
    """The outcome of one C-STORE: ``status`` is the DIMSE status, or None with ``error`` set."""

    path: Path
    status: int | None
    error: str = ""

    @property
    def ok(self) -> bool:
        # Success, or a warning (0xB000, 0xB007, 0xB006...) that still means "stored"
        return self.status is not None and (self.status == SUCCESS or self.status & STATUS_CLASS == WARNING)


def _contexts(paths: Sequence[Path]) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for path in paths:
        meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).file_meta
        pair = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
        if pair not in pairs:
            pairs.append(pair)
    return pairs


def send_files(
    paths: Iterable[str | Path],
    *,
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str = "DICOM_NODE",
    timeout: float = 30.0,
    progress: Callable[[Sent], None] | None = None,
    tls: ssl.SSLContext | None = None,
) -> list[Sent]:
    """C-STORE ``paths`` to one SCP over one association, in order (up to :data:`RECONNECTS` new ones
    when an association is lost mid-send, resuming with the file in flight).

    Each file is proposed with its own SOP class and transfer syntax (plus Explicit VR Little Endian
    as a fallback). Raises :class:`SendError` when no association can be made; per-file failures are
    returned, not raised, in the order of ``paths``. With ``tls`` (see :func:`dicom_node.net.tls.client_context`)
    the association runs over DICOM TLS, the server's certificate checked for ``host``.
    """
    files = [Path(p) for p in paths]
    if not files:
        return []
    ae = AE(ae_title=calling_ae)
    ae.maximum_pdu_size = 0
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    pairs = _contexts(files)
    by_class: dict[str, list[str]] = {}
    for sop_class, syntax in pairs:
        by_class.setdefault(sop_class, [])
        for ts in (syntax, "1.2.840.10008.1.2.1"):
            if ts not in by_class[sop_class]:
                by_class[sop_class].append(ts)
    contexts = [build_context(c, ts) for c, syntaxes in by_class.items() for ts in syntaxes]
    if len(contexts) > 128:
        raise SendError(f"{len(contexts)} presentation contexts needed; send fewer kinds of object at once")
    results: list[Sent] = []  # in the order of files: the next file to send is files[len(results)]
    for attempt in range(1 + RECONNECTS):
        if len(results) == len(files):
            break
        assoc = ae.associate(
            host,
            port,
            contexts=contexts,
            ae_title=called_ae,
            evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay)],
            tls_args=(tls, host) if tls is not None else None,
        )
        if not assoc.is_established:
            if attempt == 0:
                what = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "failed"
                over = " over TLS" if tls is not None else ""
                raise SendError(f"association with {called_ae}@{host}:{port}{over} {what}")
            break
        try:
            while len(results) < len(files) and assoc.is_established:
                path = files[len(results)]
                try:
                    status = assoc.send_c_store(path)
                    code = int(status.Status) if "Status" in status else None
                    outcome = Sent(path, code, "" if code is not None else "no response (timeout or abort)")
                except Exception as exc:  # a file that cannot be sent must not stop the others
                    outcome = Sent(path, None, f"{type(exc).__name__}: {exc}")
                if outcome.status is None and not assoc.is_established and attempt < RECONNECTS:
                    log.warning("association lost sending %s (%s); sending the rest again", path, outcome.error)
                    break  # this file and the rest go again on a new association
                results.append(outcome)
                if progress is not None:
                    progress(outcome)
        finally:
            if assoc.is_established:
                assoc.release()
    results += [Sent(path, None, "association lost before sending") for path in files[len(results) :]]
    return results
