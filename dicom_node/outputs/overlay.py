"""Secondary Capture overlay images with burned-in outlines, for viewers that only show images.

One RGB Secondary Capture per key slice (or key frame), rendered in the lung window for CT, with the
outline and label of every finding on that slice burned in. Burned In Annotation is YES and the
series description says it is an AI overlay, not for diagnosis. With nothing to outline, one image of
the middle slice says what the AI concluded.
"""

from __future__ import annotations

import logging

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from dicom_node.findings import Findings
from dicom_node.imaging.volume import Volume
from dicom_node.outputs.common import finish_identity, key_slices, slice_ref
from dicom_node.outputs.options import EncodeOptions
from dicom_node.outputs.preview import render_rgb, status_text
from dicom_node.outputs.uids import UidFactory

logger = logging.getLogger(__name__)

SERIES_DESCRIPTION = "AI overlay - NOT FOR DIAGNOSIS"


def patient_orientation(source: Dataset) -> tuple[str, str]:
    """Patient Orientation (row, column directions as letters) from Image Orientation (Patient)."""
    iop = np.asarray(source.ImageOrientationPatient, dtype=float)

    def letters(v: np.ndarray) -> str:
        names = (("L", "R"), ("P", "A"), ("H", "F"))  # +x left, +y posterior, +z head
        order = np.argsort(-np.abs(v))
        out = ""
        for axis in order:
            if abs(v[axis]) > 0.25:
                out += names[axis][0] if v[axis] > 0 else names[axis][1]
        return out or "L"

    return letters(iop[:3]), letters(iop[3:])


def build_overlays(findings: Findings, volume: Volume, uids: UidFactory, options: EncodeOptions) -> list[Dataset]:
    """One burned-in Secondary Capture per key slice of ``findings``."""
    indices = key_slices(findings.findings)
    caption = None
    if not indices:
        indices = [volume.shape[0] // 2]
        caption = status_text(findings) + " - not for diagnosis"
    out: list[Dataset] = []
    source0 = volume.sources[0]
    has_patient_geometry = "ImageOrientationPatient" in source0
    for number, index in enumerate(indices, start=1):
        ref = slice_ref(volume, index)
        rgb = render_rgb(findings, volume, index, caption=caption)
        orientation = patient_orientation(ref.source) if has_patient_geometry else ("L", "P")
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=ref.source,
            pixel_array=rgb,
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=uids.series("overlay"),
            series_number=options.series_number_of("overlay"),
            sop_instance_uid=uids.instance("overlay", index),
            instance_number=number,
            manufacturer=options.manufacturer,
            patient_orientation=orientation,
            transfer_syntax_uid="1.2.840.10008.1.2.1",
        )
        if not has_patient_geometry:
            sc.PatientOrientation = None  # type: ignore[assignment]  # unknown: Type 2, empty
        sc.BurnedInAnnotation = "YES"
        sc.ImageType = ["DERIVED", "SECONDARY", "AI_OVERLAY"]
        sc.ImageComments = "AI-generated overlay with burned-in outlines. Not for diagnostic use."
        sc.DerivationDescription = f"{findings.pipeline} {findings.version} outlines burned in"[:1024]
        sc.ManufacturerModelName = findings.pipeline[:64]
        sc.SoftwareVersions = f"{findings.pipeline} {findings.version}"[:64]
        item = Dataset()
        item.ReferencedSOPClassUID = ref.sop_class_uid
        item.ReferencedSOPInstanceUID = ref.sop_instance_uid
        if ref.frame_number is not None:
            item.ReferencedFrameNumber = ref.frame_number
        sc.SourceImageSequence = DicomSequence([item])
        finish_identity(sc, ref.source, SERIES_DESCRIPTION, options.institution_name)
        out.append(sc)
    logger.debug("overlay built: %d images", len(out))
    return out
