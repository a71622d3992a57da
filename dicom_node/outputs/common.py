"""Small helpers shared by the encoders: identity fixes, key slices, source references."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from dicom_node.findings import Finding
from dicom_node.imaging.volume import Volume
from dicom_node.outputs.codes import LOCAL_SCHEME

logger = logging.getLogger(__name__)

STUDY_ATTRIBUTES: tuple[str, ...] = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "IssuerOfPatientID",
    "StudyInstanceUID",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
)

NOT_IN_RESULT_IODS: tuple[str, ...] = ("RequestingService",)
"""Copied along by highdicom from some sources but not part of the SEG/SR/PR/SC IODs."""

COPIED_REFERENCES: tuple[str, ...] = ("ReferencedStudySequence", "ReferencedPatientSequence")
"""Type 3 references that highdicom copies with the study and patient modules. Each item is a SOP Instance
Reference Macro (class and instance UID, both Type 1); a source that wrote one without its class UID (the real
Lung-PET-CT-Dx CT does) would make every result fail dciodvfy, so such an item is dropped, never invented."""


TYPE2_SOURCE_ATTRIBUTES: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "SeriesNumber",
    "InstanceNumber",
    "Manufacturer",
)
"""Type 2 attributes (present, may be empty) of the patient, study, series and equipment modules that the
encoders (highdicom) read from the source images. A source that left one out entirely is malformed."""


def complete_type2(sources: list[Dataset]) -> list[str]:
    """Add each of :data:`TYPE2_SOURCE_ATTRIBUTES` that a source lacks, empty ("unknown", as Type 2 allows),
    to the in-memory headers (the stored files are not touched); the names added, for the log.

    Without this one missing attribute, such as a modality that omits PatientBirthDate, made every
    result of the series fail to encode."""
    added: set[str] = set()
    for ds in sources:
        for kw in TYPE2_SOURCE_ATTRIBUTES:
            if kw not in ds:
                setattr(ds, kw, None)
                added.add(kw)
    if added:
        logger.warning("source images lack Type 2 attributes %s: encoded as empty", ", ".join(sorted(added)))
    return sorted(added)


def finish_identity(ds: Dataset, source: Dataset, description: str, institution_name: str | None) -> None:
    """Copy the patient/study identity from ``source`` and tidy what highdicom leaves behind.

    highdicom copies most of the patient and study modules; this makes sure every attribute in
    :data:`STUDY_ATTRIBUTES` present in the source is present (equal) in the result, drops
    meaningless zero patient size/weight, and sets the series description.
    """
    for kw in STUDY_ATTRIBUTES:
        if kw in source and source[kw].value not in (None, ""):
            setattr(ds, kw, source[kw].value)
    for kw in ("PatientSize", "PatientWeight"):
        if kw in ds and (ds[kw].value in (None, "") or float(ds[kw].value) == 0.0):
            delattr(ds, kw)
    for kw in NOT_IN_RESULT_IODS:
        if kw in ds:
            delattr(ds, kw)
    drop_incomplete_references(ds)
    if "Laterality" not in ds and ds.get("Modality") in ("PR", "OT"):
        # General Series: Type 2C (paired body parts); unknown for a result series -> empty.
        ds.Laterality = source.get("Laterality", None)
    ds.SeriesDescription = description[:64]
    if institution_name:
        ds.InstitutionName = institution_name[:64]
    declare_local_scheme(ds)


def drop_incomplete_references(ds: Dataset) -> None:
    """Drop the items of :data:`COPIED_REFERENCES` that lack a class or instance UID (and a sequence left empty)."""
    for kw in COPIED_REFERENCES:
        if kw not in ds:
            continue
        kept = [
            item for item in ds[kw].value if item.get("ReferencedSOPClassUID") and item.get("ReferencedSOPInstanceUID")
        ]
        if kept:
            setattr(ds, kw, kept)
        else:
            delattr(ds, kw)


def uses_scheme(ds: Dataset, designator: str) -> bool:
    """Whether any code anywhere in ``ds`` comes from the coding scheme ``designator``."""
    for elem in ds:
        if elem.keyword == "CodingSchemeDesignator" and elem.value == designator:
            return True
        if elem.VR == "SQ" and any(uses_scheme(item, designator) for item in elem.value):
            return True
    return False


def declare_local_scheme(ds: Dataset) -> None:
    """Identify our private coding scheme in the SOP Common module when ``ds`` uses it."""
    if "CodingSchemeIdentificationSequence" in ds or not uses_scheme(ds, LOCAL_SCHEME):
        return
    item = Dataset()
    item.CodingSchemeDesignator = LOCAL_SCHEME
    item.CodingSchemeName = "dicom-node local codes"
    item.CodingSchemeResponsibleOrganization = "dicom-node"
    ds.CodingSchemeIdentificationSequence = [item]


@dataclass(frozen=True)
class SliceRef:
    """Where slice ``index`` of a volume is stored: a source instance and, for multi-frame, a frame."""

    index: int
    source: Dataset
    frame_number: int | None

    @property
    def sop_instance_uid(self) -> str:
        return str(self.source.SOPInstanceUID)

    @property
    def sop_class_uid(self) -> str:
        return str(self.source.SOPClassUID)


def slice_ref(volume: Volume, index: int) -> SliceRef:
    """The stored instance (and frame) holding slice ``index`` of ``volume``."""
    if volume.frame_numbers is not None:
        return SliceRef(index, volume.sources[0], int(volume.frame_numbers[index]))
    return SliceRef(index, volume.sources[index], None)


def full_mask(finding: Finding, volume: Volume) -> np.ndarray:
    """The finding's mask on the stored image grid (padded back when the volume is a crop)."""
    if finding.mask.shape != volume.shape:
        raise ValueError(f"finding mask shape {finding.mask.shape} differs from volume shape {volume.shape}")
    return np.asarray(volume.uncrop(finding.mask), dtype=bool)


def key_slices(findings: list[Finding]) -> list[int]:
    """Sorted distinct key slices of the findings that have one."""
    return sorted({int(f.key_slice) for f in findings if f.key_slice is not None and f.mask.any()})
