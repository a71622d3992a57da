"""TID 1500 Measurement Report in a Comprehensive 3D SR, built with highdicom's templates.

Per finding, two measurement groups share one tracking identifier and UID (highdicom's groups take
exactly one reference each):

- a volumetric group (TID 1411) referencing the finding's SEG segment, with the volumetric
  measurements (volume, mean HU, ...), the qualitative evaluations and the AI score;
- a planar group (TID 1410) on the key slice whose region is a closed SCOORD polyline (the outline),
  with the planar measurements (long and short axis, diameter, area, length);
- before it, a planar group on the key slice whose region is the finding's bounding rectangle there (a
  closed 5-point POLYLINE) and that holds no measurement: the one region OHIF (3.13) can restore into its
  measurement panel and track. OHIF only rehydrates an "Image Region" that is a 4/5-point polyline or a
  point, and it reads the region of a group with NUM items inside the first NUM (TID 300 "inferred
  from"), so the outline group draws in its SR viewer but cannot be tracked
  (``tests/e2e/test_ohif_viewer.py`` checks it in the real viewer).

Every group names its finding with the SEG segment's codes: Finding Category = the segmented property
category, Finding = the segmented property type (IHE AI Results: one coded finding across SEG and SR).
Without a SEG (``kinds`` without ``"seg"``) the planar group carries everything. Every measurement
group has a tracking UID and an image region or a referenced segment: viewers such as OHIF expect
one (a group without either crashed OHIF's SR loader).

The per-finding score is the detection confidence, DCM (111012, "Certainty of Finding") in percent, the
term CAD reports use for "how sure is the detector that this is a true finding"; it is not the chance of
cancer, which is the malignancy likelihood evaluation (DCM 111047, "Probability of cancer").

What concerns the whole input lives at document level, in the TID 1500 "Qualitative Evaluations"
container (UMLS C0034375, rows 12-14): the overall result as a coded "Finding" ("No abnormality" when
nothing was found, "not applicable" when the pipeline refused the input, the coded clinical class when
the pipeline classified the whole input (lung ultrasound: normal lung / B-lines / consolidation /
pleural effusion; anatomy such as ribs and the pleural line never makes a study "Abnormal"), else
"Abnormal"), then as text the reason / "found nothing", findings without a location (empty mask) and
the conclusions. The "Imaging Measurements" container is always present (viewers look for it) and
starts with the algorithm identification (TID 1500 row 6b), its only content when nothing was located.
"""

from __future__ import annotations

import logging

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as std
from pydicom.sr.coding import Code

from dicom_node.findings import Category, Finding, Findings, Quantity
from dicom_node.imaging.volume import Volume
from dicom_node.outputs import codes
from dicom_node.outputs.common import finish_identity, full_mask, slice_ref
from dicom_node.outputs.contours import outline
from dicom_node.outputs.options import EncodeOptions
from dicom_node.outputs.seg import SegResult, tracking_id
from dicom_node.outputs.uids import UidFactory, uid_from_names

logger = logging.getLogger(__name__)

PLANAR: frozenset[Quantity] = frozenset(
    {Quantity.LONG_AXIS, Quantity.SHORT_AXIS, Quantity.DIAMETER, Quantity.AREA, Quantity.LENGTH}
)
SCORE_CODE = codes.DETECTION_CONFIDENCE
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
"""TID 1500 row 12: document-level evaluations (not in pydicom's code dictionary)."""

Group = (
    hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
)


def device_observer_uid(node_name: str) -> str:
    """A stable Device Observer UID for this node."""
    return str(uid_from_names("dicom-node device observer", node_name))


def build_sr(
    findings: Findings,
    volume: Volume,
    uids: UidFactory,
    options: EncodeOptions,
    seg: SegResult | None,
) -> hd.sr.Comprehensive3DSR:
    """Build the TID 1500 report of ``findings`` (see the module docstring for its structure)."""
    algorithm = hd.sr.AlgorithmIdentification(name=findings.pipeline, version=findings.version)
    device = hd.sr.ObserverContext(
        observer_type=std.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_observer_uid(options.node_name),
            name=options.node_name[:64],
            manufacturer_name=options.manufacturer[:64],
            model_name=f"{findings.pipeline} {findings.version}"[:64],
        ),
    )
    groups: list[Group] = []
    unlocated: list[Finding] = []
    for i, finding in enumerate(findings.findings):
        found = _finding_groups(i, finding, volume, uids, options, seg, algorithm)
        groups.extend(found)
        if not found:
            unlocated.append(finding)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.procedure_code(volume.modality),
        # highdicom wants at least one group; a placeholder is dropped again below
        imaging_measurements=groups or [_placeholder_group(uids)],
        title=std.DCM.ImagingMeasurementReport,
        referenced_images=_library_images(findings, volume),
    )
    root = report[0]
    # row 6b: the algorithm, which also keeps the container non-empty when nothing was located
    measurements = next(i for i in root.ContentSequence if i.name == std.DCM.ImagingMeasurements)
    located = list(measurements.ContentSequence) if groups else []
    measurements.ContentSequence = hd.sr.ContentSequence([*algorithm, *located])
    root.ContentSequence.append(_document_evaluations(findings, unlocated, algorithm))
    evidence: list[Dataset] = list(volume.sources)
    if seg is not None:
        evidence.append(seg.dataset)
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=uids.series("sr"),
        series_number=options.series_number_of("sr"),
        sop_instance_uid=uids.instance("sr"),
        instance_number=1,
        manufacturer=options.manufacturer,
        is_complete=True,
        is_final=False,
        is_verified=False,
        institution_name=options.institution_name,
    )
    finish_identity(sr, volume.sources[0], f"AI report ({findings.pipeline})", options.institution_name)
    return sr


def _library_images(findings: Findings, volume: Volume) -> list[Dataset]:
    """Images for the TID 1500 Image Library: those the report draws on (key images), else the first."""
    keys = sorted({int(f.key_slice) for f in findings.findings if f.key_slice is not None and f.mask.any()})
    images: dict[str, Dataset] = {}
    for k in keys or [0]:
        ref = slice_ref(volume, k)
        images.setdefault(ref.sop_instance_uid, ref.source)
    return list(images.values())


def _measurements(finding: Finding, quantities: frozenset[Quantity] | None) -> list[hd.sr.Measurement]:
    out: list[hd.sr.Measurement] = []
    for m in finding.measurements:
        if quantities is not None and m.quantity not in quantities:
            continue
        name, derivation = codes.quantity_code(m.quantity)
        out.append(
            hd.sr.Measurement(
                name=name, value=significant(m.value), unit=codes.unit_code(m.unit), derivation=derivation
            )
        )
    return out


def _evaluations(finding: Finding) -> list[hd.sr.QualitativeEvaluation]:
    return [
        hd.sr.QualitativeEvaluation(name=codes.evaluation_code(k), value=codes.evaluation_value_code(v))
        for k, v in finding.evaluations.items()
    ]


def _finding_groups(
    i: int,
    finding: Finding,
    volume: Volume,
    uids: UidFactory,
    options: EncodeOptions,
    seg: SegResult | None,
    algorithm: hd.sr.AlgorithmIdentification,
) -> list[Group]:
    tracking = hd.sr.TrackingIdentifier(uid=uids.tracking(i), identifier=tracking_id(finding.label, i))
    finding_category, finding_type = codes.category_codes(finding.category)  # as the SEG segment's
    sites = _finding_sites(finding)
    score = detection_confidence(finding)
    evaluations = _evaluations(finding)
    segment = seg.segment_of.get(i) if seg is not None else None
    region = _key_region(finding, volume, options)
    groups: list[Group] = []
    common = dict(
        finding_type=finding_type,
        finding_category=finding_category,
        algorithm_id=algorithm,
        finding_sites=sites or None,
    )
    box = _key_box(finding, volume) if region is not None else None
    trackable: list[Group] = []  # the bounding-box group OHIF can track (module docstring), no measurements
    if box is not None:
        trackable.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                referenced_region=box,
                **common,  # type: ignore[arg-type]
            )
        )
    if segment is not None and seg is not None:
        referenced = _referenced_segment(seg, segment, finding, volume)
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                referenced_segment=referenced,
                measurements=[*_measurements(finding, frozenset(Quantity) - PLANAR), score],
                qualitative_evaluations=evaluations or None,
                **common,  # type: ignore[arg-type]
            )
        )
        if region is not None:
            groups.extend(trackable)
            groups.append(
                hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=tracking,
                    referenced_region=region,
                    measurements=_measurements(finding, PLANAR) or None,
                    **common,  # type: ignore[arg-type]
                )
            )
    elif region is not None:
        groups.extend(trackable)
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                referenced_region=region,
                measurements=[*_measurements(finding, None), score],
                qualitative_evaluations=evaluations or None,
                **common,  # type: ignore[arg-type]
            )
        )
    return groups  # empty when the finding has no location: reported at document level instead


def _referenced_segment(seg: SegResult, segment: int, finding: Finding, volume: Volume) -> hd.sr.ReferencedSegment:
    """The SEG segment and where it lies: the source frames of a multi-frame image, or (as dcmqi does)
    the source series of a single-frame series, which keeps large CT reports small."""
    if volume.is_multiframe:
        occupied = np.flatnonzero(finding.mask.reshape(finding.mask.shape[0], -1).any(axis=1))
        ref = slice_ref(volume, int(occupied[0]))
        frames = [int(slice_ref(volume, int(k)).frame_number or 0) for k in occupied]
        return hd.sr.ReferencedSegment(
            sop_class_uid=str(seg.dataset.SOPClassUID),
            sop_instance_uid=str(seg.dataset.SOPInstanceUID),
            segment_number=segment,
            source_images=[
                hd.sr.SourceImageForSegmentation(
                    referenced_sop_class_uid=ref.sop_class_uid,
                    referenced_sop_instance_uid=ref.sop_instance_uid,
                    referenced_frame_numbers=frames,
                )
            ],
        )
    return hd.sr.ReferencedSegment(
        sop_class_uid=str(seg.dataset.SOPClassUID),
        sop_instance_uid=str(seg.dataset.SOPInstanceUID),
        segment_number=segment,
        source_series=hd.sr.SourceSeriesForSegmentation(str(volume.sources[0].SeriesInstanceUID)),
    )


def _finding_sites(finding: Finding) -> list[hd.sr.FindingSite]:
    """Lung (with laterality when known) for everything but ribs, whose site is the rib itself, and PET
    tumours (:data:`~dicom_node.outputs.codes.NON_LUNG`), which may lie anywhere."""
    if finding.category is Category.RIB or finding.category in codes.NON_LUNG:
        return []
    laterality = codes.laterality_code(finding.laterality) if finding.laterality is not None else None
    return [hd.sr.FindingSite(anatomic_location=codes.LUNG, laterality=laterality)]


def _key_region(finding: Finding, volume: Volume, options: EncodeOptions) -> hd.sr.ImageRegion | None:
    if finding.key_slice is None:
        return None
    mask = full_mask(finding, volume)[finding.key_slice]
    points = outline(mask, options.max_contour_points)
    if points is None:
        return None
    return _polyline(volume, finding.key_slice, points)


def _key_box(finding: Finding, volume: Volume) -> hd.sr.ImageRegion | None:
    """The finding's bounding rectangle on its key slice as a closed POLYLINE (top-left, top-right,
    bottom-right, bottom-left, top-left) along the pixel edges, in DICOM pixel coordinates."""
    if finding.key_slice is None:
        return None
    mask = full_mask(finding, volume)[finding.key_slice]
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    top, bottom, left, right = float(rows.min()), float(rows.max() + 1), float(cols.min()), float(cols.max() + 1)
    points = np.array([[left, top], [right, top], [right, bottom], [left, bottom], [left, top]], dtype=np.float32)
    return _polyline(volume, finding.key_slice, points)


def _polyline(volume: Volume, k: int, points: np.ndarray) -> hd.sr.ImageRegion:
    """A POLYLINE region of ``points`` (column, row) on slice ``k`` of ``volume``."""
    ref = slice_ref(volume, k)
    source = hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=ref.sop_class_uid,
        referenced_sop_instance_uid=ref.sop_instance_uid,
        referenced_frame_numbers=[ref.frame_number] if ref.frame_number is not None else None,
    )
    return hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=points, source_image=source)


def significant(value: float, digits: int = 4, decimals: int = 2) -> float:
    """``value`` to ``digits`` significant digits and at most ``decimals`` decimals: what a reader can use of
    a measurement (63878.7282752991 mm3 reads 63880 mm3, 12.3456 mm reads 12.35 mm, -678.123 HU reads
    -678.1 HU); the outline itself is in the SEG."""
    return round(float(f"{float(value):.{digits}g}"), decimals)


def detection_confidence(finding: Finding) -> hd.sr.Measurement:
    """The finding's score as its detection confidence (see the module docstring), in percent."""
    return hd.sr.Measurement(name=SCORE_CODE, value=round(float(finding.score) * 100.0, 1), unit=codes.unit_code("%"))


def overall_result_code(findings: Findings) -> hd.sr.CodedConcept | Code:
    """The coded overall result: not applicable / the clinical class / no abnormality / abnormal."""
    if findings.not_applicable is not None:
        return codes.LOCAL_CODES["not_applicable"]
    if (clinical := codes.clinical_result_code(findings.classification)) is not None:
        return clinical  # lung US: the cine's class, not "Abnormal" because ribs / pleura were segmented
    if not findings.findings:
        return std.DCM.NoAbnormality
    return std.SCT.Abnormal


def _placeholder_group(uids: UidFactory) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uids.tracking(-1), identifier="placeholder")
    )


def _unlocated_text(finding: Finding) -> str:
    """A finding without a location (empty mask), as one line of text."""
    parts = [f"{finding.label} (no location)", f"detection confidence {finding.score:.1%}"]
    parts += [f"{m.quantity.value} {m.value:g} {m.unit}" for m in finding.measurements]
    parts += [f"{getattr(k, 'value', k)} {v}" for k, v in finding.evaluations.items()]
    return ", ".join(parts)


def _document_evaluations(
    findings: Findings, unlocated: list[Finding], algorithm: hd.sr.AlgorithmIdentification
) -> hd.sr.ContainerContentItem:
    """TID 1500 "Qualitative Evaluations": the overall result, the reason / nothing found, the findings
    without a location and the conclusions (see the module docstring)."""
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    items: list[hd.sr.ContentItem] = [*algorithm]  # row 12b: TID 4019, HAS CONCEPT MOD
    items.append(
        hd.sr.CodeContentItem(
            name=std.DCM.Finding,
            value=overall_result_code(findings),
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    )
    texts: list[tuple[Code, str]] = []
    if findings.not_applicable is not None:
        texts.append((std.DCM.Comment, f"Not applicable: {findings.not_applicable}"))
    elif not findings.findings:
        texts.append((std.DCM.Comment, f"{findings.pipeline} {findings.version} ran and found nothing."))
    texts.extend((std.DCM.Finding, _unlocated_text(f)) for f in unlocated)
    texts.extend((std.DCM.Conclusion, c) for c in findings.conclusions)
    if findings.classification:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(findings.classification.items()))
        texts.append((std.DCM.Conclusion, f"Classification: {parts}"))
    items.extend(
        hd.sr.TextContentItem(name=name, value=value[:1024], relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        for name, value in texts
    )
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container
