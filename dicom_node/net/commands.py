"""Checks of a C-STORE-RQ command set before its data set is kept (PS3.7 9.1.1, C.4; PS3.4 B.2.3).

The command's Affected SOP Class UID must be the presentation context's abstract syntax, and both
affected UIDs must be present and valid UIDs; whether the data set carries the same UIDs is checked
once its header is read (:meth:`dicom_node.ingest.ingestor.Ingestor.keep`, ``command=``).
"""

from __future__ import annotations

from dicom_node.net.dimse import CANNOT_UNDERSTAND, SOP_CLASS_NOT_SUPPORTED
from dicom_node.store import InvalidUID, check_uid


def valid_uid(value: str) -> bool:
    """Whether ``value`` is a UID the node accepts (digits and dots, at most 64 characters)."""
    try:
        check_uid(value, "UID")
    except InvalidUID:
        return False
    return True


def check_store_command(sop_class: str, sop_instance: str, abstract_syntax: str) -> tuple[int, str] | None:
    """The failure status and reason for a C-STORE-RQ that cannot be served, or None.

    0xC000 (cannot understand) for a missing or malformed Affected SOP Class / Instance UID (never a
    path, never stored under another name); 0x0122 (SOP class not supported) when the class is not the
    abstract syntax of the presentation context it came on.
    """
    if not sop_instance:
        return CANNOT_UNDERSTAND, "C-STORE-RQ without an Affected SOP Instance UID"
    if not sop_class:
        return CANNOT_UNDERSTAND, "C-STORE-RQ without an Affected SOP Class UID"
    if not valid_uid(sop_instance):
        return CANNOT_UNDERSTAND, "the Affected SOP Instance UID is not a valid UID"
    if not valid_uid(sop_class):
        return CANNOT_UNDERSTAND, "the Affected SOP Class UID is not a valid UID"
    if sop_class != abstract_syntax:
        return SOP_CLASS_NOT_SUPPORTED, "the Affected SOP Class UID is not the presentation context's abstract syntax"
    return None
