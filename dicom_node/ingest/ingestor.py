"""Keeping one received instance: validate, make it durable, record it, answer.

This is the whole receive path minus the network, so it can be exercised directly. Both receivers
call :meth:`Ingestor.keep` with the bytes exactly as the peer encoded them (file meta prepended) and
answer with the status it returns. Pixel data is never decoded: headers are parsed up to the pixel
data only (:mod:`~dicom_node.ingest.header`), and the pixel data's length is checked against the
image size. The :class:`~dicom_node.ingest.keep.Keeper` then makes the instance durable under the
duplicates policy: in the journal, whose records the
:class:`~dicom_node.ingest.materialize.Materializer` turns into files and rows (``durability =
"journal"``, the default), or straight into its file and row (``"file"``).
"""

from __future__ import annotations

import time

from sqlalchemy import Engine

from dicom_node.config import NodeConfig
from dicom_node.db.engine import connect
from dicom_node.ingest.buffers import Bytes, InstanceBuffer
from dicom_node.ingest.header import check_pixel_data, read_header
from dicom_node.ingest.index import Index, describe
from dicom_node.ingest.journal import Journal
from dicom_node.ingest.keep import Keeper, Outcome
from dicom_node.ingest.materialize import Backlog, Materializer
from dicom_node.net.dimse import CANNOT_UNDERSTAND, DATA_SET_MISMATCH, OUT_OF_RESOURCES
from dicom_node.store import InvalidUID, Store

__all__ = ["Ingestor", "Outcome"]


class Ingestor:
    """Keeps instances for a receiver: one call per C-STORE, safe to call from many threads.

    ``journal_name`` names this receiver's journal folder (one per receiver process); a journal left
    by an unclean stop is replayed here. Call :meth:`close` on shutdown to materialize and checkpoint
    everything pending.
    """

    def __init__(self, config: NodeConfig, engine: Engine, store: Store, journal_name: str = "r0") -> None:
        self.config = config
        self.engine = engine
        self.store = store
        self.index = Index(engine)
        self.keeper = Keeper(config, engine, store, self.index)
        self.backlog = Backlog()
        self.journal: Journal | None = None
        self.materializer: Materializer | None = None
        self.writer = engine
        if config.node.durability == "journal":
            # Rows of journaled instances become durable at the journal checkpoint (syncfs), not per commit.
            if engine.url.get_backend_name() == "sqlite":
                self.writer = connect(
                    engine.url.render_as_string(hide_password=False), migrate=False, synchronous="NORMAL"
                )
            # No segment is made before the replay: a restart on a full disk replays first (its files
            # are what the disk is owed), and new segments are made only while there is room.
            self.journal = Journal(store.root / "journal" / journal_name, room=self._room, open_now=False)
            self.materializer = Materializer(config, store, self.writer, self.index, self.journal, self.backlog)
            try:
                self.materializer.replay()
            except BaseException:  # the start fails (its records stay in the journal for the next one)
                self.journal.close()
                raise
            self.journal.open_segment()
            self.materializer.start()

    def keep(
        self,
        received: InstanceBuffer | Bytes,
        *,
        calling_ae: str,
        called_ae: str,
        address: str = "",
        command: tuple[str, str] | None = None,
    ) -> Outcome:
        """Validate one instance and make it durable; returns the status to answer with.

        ``received`` is the Part 10 bytes, best in an :class:`InstanceBuffer` (the native receiver reads
        the network into one; other bytes are copied into one). The buffer belongs to the ingestor.
        ``command`` is the C-STORE-RQ's (Affected SOP Class UID, Affected SOP Instance UID): the data
        set must carry the same, or it is refused (0xA900 for another SOP class, 0xC000 for another
        instance) and nothing is kept.
        """
        buf = received if isinstance(received, InstanceBuffer) else InstanceBuffer.from_bytes(received)
        try:
            with buf.view() as data:
                header = read_header(data)
                if header.pixel_offset >= 0:
                    check_pixel_data(data, header.pixel_offset, header.transfer_syntax, header.native_pixel_bytes)
            meta = describe(header, calling_ae, called_ae)
        except (InvalidUID, ValueError) as exc:
            buf.release()
            return self.keeper.refuse(CANNOT_UNDERSTAND, "rejected", str(exc), calling_ae, address)
        mismatch = _mismatch(command, header.sop_class, meta["sop_uid"])
        if mismatch is not None:
            buf.release()
            status, reason = mismatch
            return self.keeper.refuse(status, "rejected", reason, calling_ae, address, sop_uid=meta["sop_uid"])
        free = self.store.free_mb()
        if free < self.config.node.min_free_disk_mb:
            free = self.store.free_mb(max_age_s=0)  # read again before refusing: space may have been freed
        if free < self.config.node.min_free_disk_mb:
            buf.release()
            reason = f"free disk {free:.0f} MiB is under the {self.config.node.min_free_disk_mb} MiB watermark"
            return self.keeper.refuse(
                OUT_OF_RESOURCES, "disk_full", reason, calling_ae, address, sop_uid=meta["sop_uid"]
            )
        materializer = self.materializer
        if materializer is None:
            return self.keeper.keep_file(meta, buf, calling_ae, address)
        return self.keeper.keep_journaled(meta, buf, calling_ae, address, materializer)

    def _room(self, size: int) -> bool:
        """Whether ``size`` more bytes may go to the journal (a new segment): the disk keeps the
        watermark free after it and after the files still owed for acknowledged instances."""
        owed = self.backlog.owed()
        return self.store.free_bytes() - owed - size >= self.config.node.min_free_disk_mb * 1024 * 1024

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every journaled instance has its file and row; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.backlog.idle():
                return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        """Materialize and checkpoint everything pending, then stop the materializer."""
        if self.materializer is not None:
            self.materializer.close()
            self.materializer = None
        if self.journal is not None:
            self.journal = None
            if self.writer is not self.engine:
                self.writer.dispose()


def _mismatch(command: tuple[str, str] | None, sop_class: str, sop_uid: str) -> tuple[int, str] | None:
    """The status and reason when the data set is not the instance its C-STORE-RQ announced."""
    if command is None:
        return None
    command_class, command_instance = command
    if sop_class and sop_class != command_class:
        return DATA_SET_MISMATCH, "the data set's SOP Class UID differs from the command's Affected SOP Class UID"
    if sop_uid != command_instance:
        return CANNOT_UNDERSTAND, "the data set's SOP Instance UID differs from the command's Affected SOP Instance UID"
    return None
