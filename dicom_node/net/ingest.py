"""Keeping one received instance: validate, write durably, record, answer.

This is the whole receive path minus the network, so it can be exercised directly. The C-STORE
handler in :mod:`dicom_node.net.scp` calls :meth:`Ingestor.keep` with the bytes exactly as the peer
encoded them (file meta prepended) and answers with the status it returns. Pixel data is never
decoded: headers are parsed up to the pixel data only.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.engine import Connection

from dicom_node.config import DuplicatePolicy, NodeConfig
from dicom_node.db import instances, now, series, studies
from dicom_node.db.engine import log_event
from dicom_node.store import InvalidUID, Store, check_uid, write_atomic

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # Refused: out of resources
CANNOT_UNDERSTAND = 0xC000  # Error: cannot understand
DUPLICATE_SOP = 0x0111  # Failure: duplicate SOP instance (reject policy)
PROCESSING_FAILURE = 0x0110


@dataclass(frozen=True)
class Outcome:
    """What happened to one instance: the DIMSE status and, on failure, why."""

    status: int
    reason: str = ""
    sop_uid: str | None = None


class Ingestor:
    """Keeps instances for the receiver: one call per C-STORE, safe to call from many threads."""

    def __init__(self, config: NodeConfig, engine: Engine, store: Store) -> None:
        self.config = config
        self.engine = engine
        self.store = store

    def keep(self, data: bytes, *, calling_ae: str, called_ae: str, address: str = "") -> Outcome:
        """Validate, write and record one instance; returns the status to answer with."""
        try:
            header = parse_header(data)
            sop_uid = check_uid(header.get("SOPInstanceUID"), "SOPInstanceUID")
            series_uid = check_uid(header.get("SeriesInstanceUID"), "SeriesInstanceUID")
            study_uid = check_uid(header.get("StudyInstanceUID"), "StudyInstanceUID")
            sop_class = check_uid(
                header.get("SOPClassUID") or header.file_meta.get("MediaStorageSOPClassUID"), "SOPClassUID"
            )
            transfer_syntax = check_uid(header.file_meta.get("TransferSyntaxUID"), "TransferSyntaxUID")
        except (InvalidUID, ValueError) as exc:
            return self._refuse(CANNOT_UNDERSTAND, "rejected", str(exc), calling_ae, address, header=None)

        free = self.store.free_mb()
        if free < self.config.node.min_free_disk_mb:
            reason = (
                f"free disk {free:.0f} MiB is under the {self.config.node.min_free_disk_mb} MiB watermark"
            )
            return self._refuse(OUT_OF_RESOURCES, "disk_full", reason, calling_ae, address, sop_uid=sop_uid)

        path = self.store.instance_path(study_uid, series_uid, sop_uid)
        policy = self.config.node.duplicate_policy
        with self.engine.connect() as conn:
            existing = conn.execute(select(instances.c.id).where(instances.c.sop_uid == sop_uid)).first()
        if existing is not None and policy is not DuplicatePolicy.OVERWRITE:
            with self.engine.begin() as conn:
                conn.execute(
                    update(instances)
                    .where(instances.c.sop_uid == sop_uid)
                    .values(duplicates=instances.c.duplicates + 1)
                )
            if policy is DuplicatePolicy.REJECT:
                return self._refuse(
                    DUPLICATE_SOP,
                    "duplicate",
                    "SOP instance already stored",
                    calling_ae,
                    address,
                    sop_uid=sop_uid,
                )
            log_event(
                self.engine,
                "duplicate",
                "duplicate SOP instance kept as first received",
                level="INFO",
                calling_ae=calling_ae,
                sop_uid=sop_uid,
            )
            return Outcome(SUCCESS, "duplicate", sop_uid)

        try:
            size = write_atomic(path, [data])
        except OSError as exc:
            return self._refuse(
                OUT_OF_RESOURCES,
                "write_failed",
                f"cannot write instance: {exc.strerror}",
                calling_ae,
                address,
                sop_uid=sop_uid,
            )
        try:
            with self.engine.begin() as conn:
                self._record(
                    conn,
                    header,
                    path,
                    size,
                    sop_uid,
                    series_uid,
                    study_uid,
                    sop_class,
                    transfer_syntax,
                    calling_ae,
                    called_ae,
                    replace=existing is not None,
                )
        except Exception as exc:  # the database refused: the peer must resend, so it must not see Success
            log.exception("cannot record instance")
            if existing is None:
                path.unlink(missing_ok=True)
            return self._refuse(
                PROCESSING_FAILURE,
                "db_failed",
                f"cannot record instance: {exc}",
                calling_ae,
                address,
                sop_uid=sop_uid,
            )
        return Outcome(SUCCESS, "", sop_uid)

    def _record(
        self,
        conn: Connection,
        header: Dataset,
        path: Path,
        size: int,
        sop_uid: str,
        series_uid: str,
        study_uid: str,
        sop_class: str,
        transfer_syntax: str,
        calling_ae: str,
        called_ae: str,
        *,
        replace: bool,
    ) -> None:
        t = now()
        study = conn.execute(
            select(studies.c.id).where(studies.c.study_uid == study_uid).with_for_update()
        ).first()
        if study is None:
            conn.execute(
                insert(studies).values(
                    study_uid=study_uid,
                    patient_id=_text(header, "PatientID", 64),
                    accession=_text(header, "AccessionNumber", 64),
                    first_seen=t,
                    last_seen=t,
                )
            )
        else:
            conn.execute(update(studies).where(studies.c.id == study.id).values(last_seen=t))

        row = conn.execute(
            select(series.c.id, series.c.state, series.c.revision)
            .where(series.c.series_uid == series_uid)
            .with_for_update()
        ).first()
        if row is None:
            revision = 1
            conn.execute(
                insert(series).values(
                    series_uid=series_uid,
                    study_uid=study_uid,
                    modality=_text(header, "Modality", 16),
                    description=_text(header, "SeriesDescription", 128),
                    calling_ae=calling_ae,
                    called_ae=called_ae,
                    instance_count=1,
                    first_seen=t,
                    last_seen=t,
                    state="receiving",
                    revision=1,
                )
            )
        else:
            # An instance after the series was routed starts a new revision: new jobs, not a silent drop.
            revision = row.revision if row.state == "receiving" else row.revision + 1
            conn.execute(
                update(series)
                .where(series.c.id == row.id)
                .values(
                    instance_count=series.c.instance_count + (0 if replace else 1),
                    last_seen=t,
                    state="receiving",
                    revision=revision,
                )
            )
        values = dict(
            series_uid=series_uid,
            study_uid=study_uid,
            sop_class_uid=sop_class,
            transfer_syntax=transfer_syntax,
            path=self.store.relative(path),
            size=size,
            received_at=t,
            revision=revision,
            calling_ae=calling_ae,
        )
        if replace:
            conn.execute(update(instances).where(instances.c.sop_uid == sop_uid).values(**values))
        else:
            conn.execute(insert(instances).values(sop_uid=sop_uid, **values))

    def _refuse(
        self,
        status: int,
        kind: str,
        reason: str,
        calling_ae: str,
        address: str,
        *,
        sop_uid: str | None = None,
        header: Dataset | None = None,
    ) -> Outcome:
        log.warning("C-STORE from %s (%s) refused with 0x%04X: %s", calling_ae, address, status, reason)
        log_event(
            self.engine,
            kind,
            reason,
            level="WARNING",
            calling_ae=calling_ae,
            sop_uid=sop_uid,
            status=f"0x{status:04X}",
            address=address,
        )
        return Outcome(status, reason, sop_uid)


def parse_header(data: bytes) -> Dataset:
    """Parse a Part 10 byte string up to (not including) the pixel data, and check it is complete.

    Raises ValueError with a readable reason for anything pydicom cannot parse and for a data set
    whose pixel data is cut short.
    """
    stream = io.BytesIO(data)
    try:
        ds = dcmread(stream, stop_before_pixels=True)
        # Touch the elements we need now, so deferred parse errors surface here.
        for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "SOPClassUID", "Modality"):
            ds.get(keyword)
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        samples, bits = int(ds.get("SamplesPerPixel") or 1), int(ds.get("BitsAllocated") or 0)
        frames = int(ds.get("NumberOfFrames") or 1)
        if str(ds.get("PhotometricInterpretation", "")) == "YBR_FULL_422":
            samples = 2  # two chroma samples shared by each pair of pixels
    except Exception as exc:  # pydicom raises many types for malformed input
        raise ValueError(f"cannot parse dataset: {type(exc).__name__}: {exc}") from None
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    if syntax != "1.2.840.10008.1.2.1.99":  # deflated: the stream position is not a byte offset
        check_pixel_data(data, stream.tell(), syntax, rows * cols * samples * frames * bits // 8)
    return ds


PIXEL_TAGS = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")
SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def check_pixel_data(data: bytes, offset: int, syntax: str, expected: int) -> None:
    """Raise ValueError if the Pixel Data element at ``offset`` is shorter than it says or must be.

    ``expected`` is the native size from Rows x Columns x samples x frames x bits (0 if unknown);
    encapsulated pixel data must end with its sequence delimiter.
    """
    if offset >= len(data) or data[offset : offset + 4] not in PIXEL_TAGS:
        return  # no pixel data (SR, presentation state...) or another element follows
    order: Literal["big", "little"] = "big" if syntax == "1.2.840.10008.1.2.2" else "little"
    if syntax == "1.2.840.10008.1.2":  # implicit VR: tag, 4-byte length
        length, start = int.from_bytes(data[offset + 4 : offset + 8], order), offset + 8
    else:  # explicit VR OB/OW: tag, VR, 2 reserved bytes, 4-byte length
        length, start = int.from_bytes(data[offset + 8 : offset + 12], order), offset + 12
    if length == 0xFFFFFFFF:
        if data.rfind(SEQUENCE_DELIMITER, start) < 0:
            raise ValueError("truncated data set: encapsulated pixel data has no sequence delimiter")
        return
    available = len(data) - start
    if length > available:
        raise ValueError(f"truncated data set: pixel data declares {length} bytes, {available} present")
    if expected and length < expected:
        raise ValueError(f"truncated data set: pixel data holds {length} bytes, the image needs {expected}")


def _text(ds: Dataset, keyword: str, limit: int) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed optional attribute must not lose the instance
        return None
    if value is None:
        return None
    return str(value)[:limit] or None
