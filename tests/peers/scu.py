"""A small pynetdicom C-STORE client for tests, with TCP_NODELAY set on its socket."""

from __future__ import annotations

import socket
from collections.abc import Iterable

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.presentation import build_context


def c_store(
    datasets: Iterable[Dataset],
    port: int,
    called_aet: str = "ORTHANC",
    calling_aet: str = "TESTSCU",
    host: str = "127.0.0.1",
) -> list[int]:
    """Send ``datasets`` in one association; return the C-STORE status of each (0 = success).

    Raises:
        ConnectionError: the association was not established.
    """
    items = list(datasets)
    ae = AE(ae_title=calling_aet)
    pairs = sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in items})
    contexts: dict[str, set[str]] = {}
    for sop_class, ts in pairs:
        contexts.setdefault(sop_class, set()).add(ts)
    ae.requested_contexts = [build_context(sc, sorted(tss)) for sc, tss in contexts.items()]
    assoc = ae.associate(host, port, ae_title=called_aet)
    if not assoc.is_established:
        raise ConnectionError(f"association to {called_aet}@{host}:{port} failed")
    try:
        sock = assoc.dul.socket.socket if assoc.dul.socket is not None else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        statuses: list[int] = []
        for ds in items:
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status) if "Status" in status else -1)
        return statuses
    finally:
        assoc.release()
