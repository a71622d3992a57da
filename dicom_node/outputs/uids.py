"""Deterministic UIDs for result objects.

A result's UIDs depend only on what went in (the sorted SOP Instance UIDs of the source), which
pipeline and version produced it, the object kind and an index. A job re-run after a crash therefore
sends the same SOP Instance UIDs, and the PACS treats the resend as the same object.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from pydicom.dataset import Dataset
from pydicom.uid import UID

NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:dicom-node:result-uids")
"""Namespace of the name-based (version 5) UUIDs behind our ``2.25.<integer>`` UIDs (PS3.5 B.2)."""


def uid_from_names(*names: str) -> UID:
    """A ``2.25.`` UID from a name-based UUID of ``names`` (deterministic; pydicom's ``generate_uid``
    ignores its entropy sources when no prefix is given, so it cannot be used for this)."""
    digest = uuid.uuid5(NAMESPACE, "\x1f".join(names))
    return UID(f"2.25.{digest.int}")


def derive_uid(source_uids: Iterable[str], pipeline: str, version: str, kind: str, index: int = 0) -> UID:
    """A UID determined by its inputs.

    Args:
        source_uids: SOP Instance UIDs of the source instances (order does not matter).
        pipeline: Pipeline name.
        version: Pipeline (model bundle) version.
        kind: Object kind and role, e.g. ``"seg"``, ``"seg-series"``, ``"tracking"``.
        index: Index within the kind (instance number, finding index).

    Returns:
        A valid UID, the same for the same arguments.
    """
    uids = sorted({str(u) for u in source_uids})
    if not uids:
        raise ValueError("derive_uid needs at least one source UID")
    return uid_from_names("dicom-node", pipeline, version, kind, str(index), *uids)


class UidFactory:
    """Derives the UIDs of one encoding run (one source volume, one pipeline version)."""

    def __init__(self, sources: Iterable[Dataset], pipeline: str, version: str) -> None:
        self.source_uids = sorted({str(ds.SOPInstanceUID) for ds in sources})
        self.pipeline = pipeline
        self.version = version

    def instance(self, kind: str, index: int = 0) -> UID:
        """SOP Instance UID of result ``index`` of ``kind``."""
        return derive_uid(self.source_uids, self.pipeline, self.version, kind, index)

    def series(self, kind: str) -> UID:
        """Series Instance UID of the result series of ``kind``."""
        return derive_uid(self.source_uids, self.pipeline, self.version, f"{kind}-series")

    def tracking(self, finding_index: int) -> UID:
        """Tracking UID of finding ``finding_index`` (shared by SEG segment and SR groups)."""
        return derive_uid(self.source_uids, self.pipeline, self.version, "tracking", finding_index)
