"""DICOM Segmentation (SEG) of the findings' masks, built with highdicom.

One segment per finding with a non-empty mask, coded with the category's standard codes and the
pipeline as algorithm. Frames without any mask pixel are omitted by highdicom without shifting the
references of the others (each frame keeps its own source reference and position).

:func:`build_paired_seg` writes the same segments on another series of the Frame of Reference (the CT of a
PET/CT): each mask is carried onto that series' grid through both geometries, and numbers, labels, codes and
tracking identifiers stay those of the first SEG, so a viewer showing either series shows the same findings.

Ultrasound multi-frame sources have no Frame of Reference and highdicom 0.28 refuses them. For those
this module builds the SEG with highdicom for a single-frame view of the source (so every module,
segment description and reference is written by highdicom), then assembles the multi-frame pixel data
and per-frame functional groups with pydicom: one frame per (segment, source frame) that has mask
pixels, each referencing its source frame by Referenced Frame Number, with Temporal Position Index
(= source frame number) as the second dimension index. Validity is proven by dciodvfy and highdicom's
reader in the tests.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import pack_bits
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import UltrasoundImageStorage, UltrasoundMultiFrameImageStorage

from dicom_node.findings import Findings
from dicom_node.imaging.volume import Volume
from dicom_node.outputs import codes
from dicom_node.outputs.common import finish_identity, full_mask
from dicom_node.outputs.options import EncodeOptions
from dicom_node.outputs.preview import COLORS
from dicom_node.outputs.uids import UidFactory

logger = logging.getLogger(__name__)


_SINGLE_FRAME_CLASS: dict[str, str] = {UltrasoundMultiFrameImageStorage: UltrasoundImageStorage}


@dataclass
class SegResult:
    """A built SEG and which segment holds which finding."""

    dataset: hd.seg.Segmentation
    segment_of: dict[int, int] = field(default_factory=dict)
    """finding index -> segment number"""


def algorithm_identification(findings: Findings) -> hd.AlgorithmIdentificationSequence:
    """Algorithm identification: name = pipeline, version = model bundle version, family AI."""
    return hd.AlgorithmIdentificationSequence(
        name=findings.pipeline, family=codes.ALGORITHM_FAMILY, version=findings.version
    )


def _description(
    findings: Findings, index: int, number: int, uids: UidFactory, algorithm: hd.AlgorithmIdentificationSequence
) -> hd.seg.SegmentDescription:
    """Segment ``number`` holding finding ``index``: its codes, label, colour and tracking identifiers."""
    finding = findings.findings[index]
    category, prop_type = codes.category_codes(finding.category)
    anatomic = [codes.LUNG] if prop_type != codes.LUNG and finding.category not in codes.NON_LUNG else None
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=finding.label[:64],
        segmented_property_category=category,
        segmented_property_type=prop_type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=uids.tracking(index),
        tracking_id=tracking_id(finding.label, index),
        anatomic_regions=anatomic,
        display_color=hd.color.CIELabColor.from_rgb(*COLORS[finding.category]),
    )


def _seg_kwargs(
    findings: Findings,
    descriptions: list[hd.seg.SegmentDescription],
    uids: UidFactory,
    options: EncodeOptions,
    role: str,
    series_number: int,
) -> dict[str, Any]:
    """The highdicom Segmentation arguments shared by the SEG on the volume and those on paired series."""
    return dict(
        segmentation_type=options.seg_type,
        segment_descriptions=descriptions,
        series_instance_uid=uids.series(role),
        series_number=series_number,
        sop_instance_uid=uids.instance(role),
        instance_number=1,
        **options.equipment(findings.pipeline, findings.version),
        content_label="AI_SEG",
        content_description=f"{findings.pipeline} {findings.version}"[:64],
        omit_empty_frames=True,
    )


def build_seg(findings: Findings, volume: Volume, uids: UidFactory, options: EncodeOptions) -> SegResult | None:
    """Build the SEG of ``findings`` on ``volume``'s source instances.

    Returns:
        The SEG and its segment numbers, or None when no finding has a mask pixel.
    """
    algorithm = algorithm_identification(findings)
    descriptions: list[hd.seg.SegmentDescription] = []
    masks: list[np.ndarray] = []
    segment_of: dict[int, int] = {}
    for i, finding in enumerate(findings.findings):
        mask = full_mask(finding, volume)
        if not mask.any():
            logger.info("finding %d (%s) has an empty mask; no segment", i, finding.category.value)
            continue
        number = len(descriptions) + 1
        descriptions.append(_description(findings, i, number, uids, algorithm))
        masks.append(mask)
        segment_of[i] = number
    if not descriptions:
        return None
    pixels = np.stack(masks, axis=-1)
    if options.seg_type == "LABELMAP" and (pixels.sum(axis=-1) > 1).any():
        raise ValueError("LABELMAP segmentation needs non-overlapping masks; use BINARY for overlapping findings")
    source = volume.sources[0]
    kwargs = _seg_kwargs(findings, descriptions, uids, options, "seg", options.series_number_of("seg"))
    needs_assembly = volume.is_multiframe and "FrameOfReferenceUID" not in source
    if needs_assembly:
        if options.seg_type != "BINARY":
            logger.warning("multi-frame source without frame of reference: writing a BINARY SEG")
            kwargs["segmentation_type"] = "BINARY"
        seg = _multiframe_without_frame_of_reference(volume, pixels, kwargs)
    else:
        pixels = _in_stored_order(pixels, volume)
        seg = hd.seg.Segmentation(source_images=volume.sources, pixel_array=pixels, **kwargs)
    if "ImageOrientationPatient" not in source and "PatientOrientation" not in seg:
        # General Image module: Patient Orientation is Type 2C when there is no plane orientation.
        seg.PatientOrientation = source.get("PatientOrientation", None)
    _stable_dimension_organization(seg, str(uids.instance("seg-dimension-organization")))
    finish_identity(seg, source, f"AI segmentation ({findings.pipeline})", options.institution_name)
    logger.debug("SEG built: %d segments, %d frames", len(descriptions), int(seg.NumberOfFrames))
    return SegResult(seg, segment_of)


def build_paired_seg(
    findings: Findings,
    seg: SegResult,
    volume: Volume,
    paired: Volume,
    uids: UidFactory,
    options: EncodeOptions,
    index: int = 0,
) -> SegResult | None:
    """The SEG of ``seg``'s segments on ``paired``, another series of ``volume``'s Frame of Reference (the CT
    of a PET/CT), so that a viewer showing that series shows the same findings.

    Each segment's mask goes from ``volume``'s grid onto ``paired``'s through both real geometries, nearest
    neighbour (:func:`dicom_node.imaging.pet.labels_onto`: every voxel of ``paired`` whose centre lies in a
    voxel of the mask). The segments keep ``seg``'s numbers, labels, codes and tracking identifiers; a segment
    that falls outside ``paired`` keeps its description without frames.

    Returns:
        The SEG, or None when no segment has a voxel on ``paired``.

    Raises:
        ValueError: ``paired`` has no Frame of Reference, or not ``volume``'s, or is a crop.
    """
    from dicom_node.imaging.pet import labels_onto

    source = paired.sources[0]
    frame = str(source.get("FrameOfReferenceUID", ""))
    if not frame or frame != str(volume.sources[0].get("FrameOfReferenceUID", "")) or paired.crop is not None:
        raise ValueError("a paired SEG needs an uncropped series of the volume's Frame of Reference")
    algorithm = algorithm_identification(findings)
    numbers = sorted(seg.segment_of.items(), key=lambda item: item[1])
    descriptions = [_description(findings, i, number, uids, algorithm) for i, number in numbers]
    masks = [(number, full_mask(findings.findings[i], volume)) for i, number in numbers]
    overlapping = int(sum(m.sum(dtype=np.int64) for _, m in masks)) != int(
        np.logical_or.reduce([m for _, m in masks]).sum()
    )
    dtype = np.uint8 if len(masks) < 256 else np.uint16
    carried = [(number, labels_onto(m.astype(dtype), volume, paired) > 0) for number, m in masks]
    empty = [number for number, m in carried if not m.any()]
    if len(empty) == len(carried):
        logger.info("no segment has a voxel on the paired %s series; no SEG on it", paired.modality)
        return None
    if empty:
        logger.info("segments %s lie outside the paired %s series: described without frames", empty, paired.modality)
    if overlapping:  # stacked segments (each its own plane); the findings of one PET/CT never overlap
        pixels = np.stack([m for _, m in carried], axis=-1)
    else:
        pixels = np.zeros(paired.shape, dtype=dtype)  # label map: one array, whatever the number of segments
        for number, m in carried:
            pixels[m] = number
    del carried
    pixels = _in_stored_order(pixels, paired)
    role = f"seg-paired-{index}"
    kwargs = _seg_kwargs(findings, descriptions, uids, options, role, options.series_number_of("paired_seg") + index)
    out = hd.seg.Segmentation(source_images=paired.sources, pixel_array=pixels, **kwargs)
    _stable_dimension_organization(out, str(uids.instance(f"{role}-dimension-organization")))
    finish_identity(
        out, source, f"AI segmentation ({findings.pipeline}) on {paired.modality}", options.institution_name
    )
    logger.debug("paired SEG on %s: %d segments, %d frames", paired.modality, len(descriptions), out.NumberOfFrames)
    return SegResult(out, dict(seg.segment_of))


def _in_stored_order(pixels: np.ndarray, volume: Volume) -> np.ndarray:
    """``pixels`` (in ``volume``'s slice order) in the stored frame order of its multi-frame source, as highdicom
    pairs mask frame i with stored frame i + 1 (an Enhanced CT's frames are sorted by position when read, and
    may be stored in any order); frames the volume does not show stay empty. Unchanged for single-frame series."""
    if volume.frame_numbers is None:
        return pixels
    stored = np.zeros((int(volume.sources[0].NumberOfFrames), *pixels.shape[1:]), dtype=pixels.dtype)
    stored[[n - 1 for n in volume.frame_numbers]] = pixels
    return stored


def _stable_dimension_organization(seg: Dataset, uid: str) -> None:
    """Replace highdicom's random Dimension Organization UID by a derived one (same inputs, same bytes)."""
    old = {str(item.DimensionOrganizationUID) for item in seg.get("DimensionOrganizationSequence", [])}
    old |= {str(item.DimensionOrganizationUID) for item in seg.get("DimensionIndexSequence", [])}
    for item in [*seg.get("DimensionOrganizationSequence", []), *seg.get("DimensionIndexSequence", [])]:
        if str(item.DimensionOrganizationUID) in old:
            item.DimensionOrganizationUID = uid


def tracking_id(label: str, index: int) -> str:
    """Human-readable tracking identifier of finding ``index``: its label, numbered unless the label already
    ends with that number ("nodule 1", never "nodule 1 1")."""
    number = str(index + 1)
    if label.split()[-1:] == [number]:
        return label[:64]
    return f"{label} {number}"[:64]


def _multiframe_without_frame_of_reference(
    volume: Volume, pixels: np.ndarray, kwargs: dict[str, Any]
) -> hd.seg.Segmentation:
    """SEG of a multi-frame source that has no Frame of Reference (see module docstring)."""
    source = volume.sources[0]
    assert volume.frame_numbers is not None
    proxy = copy.deepcopy(source)
    # highdicom treats a multi-frame SOP class as an enhanced image with functional groups; the view
    # is a single-frame US image whose class is put back in every reference afterwards.
    for kw in ("NumberOfFrames", "FrameIncrementPointer", "FrameTime", "FrameTimeVector"):
        if kw in proxy:
            delattr(proxy, kw)
    proxy.SOPClassUID = _SINGLE_FRAME_CLASS.get(str(source.SOPClassUID), UltrasoundImageStorage)
    n_segments = pixels.shape[-1]
    # One frame per segment, all ones so none is omitted; the template of each segment's frame.
    template = hd.seg.Segmentation(
        source_images=[proxy],
        pixel_array=np.ones((1, *pixels.shape[1:3], n_segments), dtype=bool),
        **{**kwargs, "omit_empty_frames": False},  # type: ignore[arg-type]
    )
    # highdicom moves what all frames share to the shared groups: with one segment, its identification
    shared = template.SharedFunctionalGroupsSequence[0] if template.get("SharedFunctionalGroupsSequence") else None
    by_segment = {
        int(_segment_identification(item, shared)[0].ReferencedSegmentNumber): item
        for item in template.PerFrameFunctionalGroupsSequence
    }
    frames: list[np.ndarray] = []
    items: list[Dataset] = []
    for segment in range(1, n_segments + 1):
        for index, frame_number in enumerate(volume.frame_numbers):
            plane = pixels[index, :, :, segment - 1]
            if not plane.any():
                continue
            item = copy.deepcopy(by_segment[segment])
            src_ref = item.DerivationImageSequence[0].SourceImageSequence[0]
            src_ref.ReferencedFrameNumber = int(frame_number)
            content = item.FrameContentSequence[0]
            content.DimensionIndexValues = [segment, int(frame_number)]
            content.TemporalPositionIndex = int(frame_number)
            items.append(item)
            frames.append(plane)
    index_item = Dataset()
    index_item.DimensionOrganizationUID = template.DimensionIndexSequence[0].DimensionOrganizationUID
    index_item.DimensionIndexPointer = Tag("TemporalPositionIndex")
    index_item.FunctionalGroupPointer = Tag("FrameContentSequence")
    index_item.DimensionDescriptionLabel = "Source Frame (Temporal Position Index)"
    template.DimensionIndexSequence.append(index_item)
    template.PerFrameFunctionalGroupsSequence = DicomSequence(items)  # type: ignore[assignment]
    template.NumberOfFrames = len(frames)
    stack = np.stack(frames).astype(np.uint8)
    if template.SegmentationType == "BINARY":
        template.PixelData = pack_bits(stack, pad=True)
    else:
        template.PixelData = stack.tobytes()
    _restore_class(template, str(source.SOPInstanceUID), str(proxy.SOPClassUID), str(source.SOPClassUID))
    return template


def _segment_identification(item: Dataset, shared: Dataset | None) -> DicomSequence:
    """The Segment Identification Sequence of a frame: its own, else the shared one."""
    if "SegmentIdentificationSequence" in item:
        return item.SegmentIdentificationSequence
    if shared is None or "SegmentIdentificationSequence" not in shared:
        raise ValueError("SEG frame without a segment identification")
    return shared.SegmentIdentificationSequence


def _restore_class(ds: Dataset, instance_uid: str, proxy_class: str, real_class: str) -> None:
    """Replace the proxy's SOP class by the real one in every reference to the source instance."""

    def visit(item: Dataset) -> None:
        for elem in item:
            if elem.VR == "SQ":
                for sub in elem.value:
                    if (
                        sub.get("ReferencedSOPInstanceUID") == instance_uid
                        and sub.get("ReferencedSOPClassUID") == proxy_class
                    ):
                        sub.ReferencedSOPClassUID = real_class
                    visit(sub)

    visit(ds)
