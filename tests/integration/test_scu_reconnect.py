"""The sending SCU resumes on a new association when a receiver drops one mid-send."""

from __future__ import annotations

import threading
import time
from typing import Any

from pynetdicom import AE, AllStoragePresentationContexts, evt

from dicom_node.net.scu import RECONNECTS, send_files
from tests.peers.dicomfiles import CT_LIDC_SLAB, require
from tests.peers.orthanc import free_port

TIMEOUT_S = 1.0
LATE_S = 1.5


class _DroppingSCP:
    """A pynetdicom Storage SCP that stores every file but, on the n-th C-STORE of the k-th association
    (``drops`` maps k -> n, both 1-based), answers only after :data:`LATE_S`: later than the sender's
    DIMSE timeout, so the sender gives that association up as a lost response would make it."""

    def __init__(self, drops: dict[int, int]) -> None:
        self.drops = drops
        self.stored: list[str] = []
        self.associations = 0
        self._per_assoc = 0
        self._lock = threading.Lock()
        self.port = free_port()
        ae = AE(ae_title="DROPPER")
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_ACCEPTED, self._accepted), (evt.EVT_C_STORE, self._store)],
        )

    def _accepted(self, event: Any) -> None:
        with self._lock:
            self.associations += 1
            self._per_assoc = 0

    def _store(self, event: Any) -> int:
        with self._lock:
            self._per_assoc += 1
            late = self.drops.get(self.associations) == self._per_assoc
            self.stored.append(str(event.request.AffectedSOPInstanceUID))
        if late:
            time.sleep(LATE_S)
        return 0x0000


def test_a_dropped_association_is_resumed_with_the_file_in_flight() -> None:
    files = sorted(require(CT_LIDC_SLAB / "dicom").glob("*.dcm"))[:5]
    scp = _DroppingSCP({1: 3})  # the first association dies on its third file
    try:
        sent = send_files(files, host="127.0.0.1", port=scp.port, called_ae="DROPPER", timeout=TIMEOUT_S)
    finally:
        scp.server.shutdown()
    assert [s.path for s in sent] == files
    assert all(s.ok for s in sent), sent
    assert scp.associations == 2 and len(set(scp.stored)) == 5  # the file in flight arrived twice


def test_reconnects_are_bounded() -> None:
    files = sorted(require(CT_LIDC_SLAB / "dicom").glob("*.dcm"))[:3]
    scp = _DroppingSCP({n: 1 for n in range(1, RECONNECTS + 3)})  # every association dies on its first file
    try:
        sent = send_files(files, host="127.0.0.1", port=scp.port, called_ae="DROPPER", timeout=TIMEOUT_S)
    finally:
        scp.server.shutdown()
    assert scp.associations == 1 + RECONNECTS
    assert not any(s.ok for s in sent) and len(sent) == 3
    assert sent[0].error and all(s.error == "association lost before sending" for s in sent[1:])
