"""Presentation state with the findings' outlines and labels, for viewers that show GSPS.

One Grayscale Softcopy Presentation State (Color Softcopy for colour sources) references the key
image of every finding (the key frame for a multi-frame source) and draws, on a layer named
``AI``, each finding's outline (closed polyline) and a short text label. CT gets a lung window. When
there is nothing to draw, the state carries one text saying the AI ran and what it concluded.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset

from dicom_node.findings import Findings
from dicom_node.imaging.volume import Volume
from dicom_node.outputs.common import finish_identity, full_mask, slice_ref
from dicom_node.outputs.contours import outline
from dicom_node.outputs.options import EncodeOptions
from dicom_node.outputs.preview import CT_WINDOW, label_text, status_text
from dicom_node.outputs.seg import tracking_id
from dicom_node.outputs.uids import UidFactory

logger = logging.getLogger(__name__)

LAYER = hd.pr.GraphicLayer(
    layer_name="AI",
    order=1,
    description="AI findings (not for diagnosis)",
    display_color=hd.color.CIELabColor(97.0, -21.0, 94.0),
)


def srgb_profile() -> bytes:
    """The sRGB ICC profile shipped with highdicom (colour sources without one are taken as sRGB)."""
    from importlib.resources import files

    return (files("highdicom") / "_icc_profiles" / "sRGB_v4_ICC_preference.icc").read_bytes()


_PerSlice = dict[int, tuple[list[hd.pr.GraphicObject], list[hd.pr.TextObject]]]


def _drawings(findings: Findings, volume: Volume, uids: UidFactory, options: EncodeOptions) -> _PerSlice:
    """Outline and label of every finding, by key slice; one status text on the middle slice when
    there is nothing to draw."""
    per_slice: _PerSlice = defaultdict(lambda: ([], []))
    for i, finding in enumerate(findings.findings):
        if finding.key_slice is None:
            continue
        points = outline(full_mask(finding, volume)[finding.key_slice], options.max_contour_points)
        if points is None:
            continue
        graphics, texts = per_slice[int(finding.key_slice)]
        tracking_uid = str(uids.tracking(i))
        graphics.append(
            hd.pr.GraphicObject(
                graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
                graphic_data=points,
                units=hd.pr.AnnotationUnitsValues.PIXEL,
                tracking_id=tracking_id(finding.label, i),
                tracking_uid=tracking_uid,
            )
        )
        anchor = (float(points[:, 0].min()), max(1.0, float(points[:, 1].min()) - 6.0))
        texts.append(
            hd.pr.TextObject(
                text_value=label_text(finding),
                units=hd.pr.AnnotationUnitsValues.PIXEL,
                anchor_point=anchor,
                anchor_point_visible=False,
                text_justification=hd.pr.TextJustificationValues.LEFT,
            )
        )
    if not per_slice:
        rows, cols = volume.full_shape[1:]
        per_slice[volume.shape[0] // 2][1].append(
            hd.pr.TextObject(
                text_value=status_text(findings)[:64],
                units=hd.pr.AnnotationUnitsValues.PIXEL,
                anchor_point=(float(cols) / 2.0, float(rows) / 10.0),
                anchor_point_visible=False,
            )
        )
    return per_slice


def _graphic_annotations(per_slice: _PerSlice, volume: Volume) -> tuple[list[hd.pr.GraphicAnnotation], list[Dataset]]:
    """One annotation on the ``AI`` layer per drawn image, and the referenced images (each once)."""
    annotations: list[hd.pr.GraphicAnnotation] = []
    referenced: dict[str, Dataset] = {}
    for index in sorted(per_slice):
        ref = slice_ref(volume, index)
        referenced[ref.sop_instance_uid] = ref.source
        graphics, texts = per_slice[index]
        annotations.append(
            hd.pr.GraphicAnnotation(
                referenced_images=[ref.source],
                graphic_layer=LAYER,
                referenced_frame_number=ref.frame_number,
                graphic_objects=graphics or None,
                text_objects=texts or None,
            )
        )
    return annotations, list(referenced.values())


def _grayscale_state(volume: Volume, source: Dataset, common: dict[str, Any]) -> Dataset:
    """A grayscale state: lung window for CT, the full stored range otherwise."""
    if volume.modality.upper() == "CT":
        center, width, explanation = CT_WINDOW[0], CT_WINDOW[1], "LUNG"
    else:
        bits = int(source.get("BitsStored", 8))
        center, width, explanation = 2.0 ** (bits - 1) - 0.5, 2.0**bits, "FULL RANGE"
    voi = [hd.pr.SoftcopyVOILUTTransformation(window_center=center, window_width=width, window_explanation=explanation)]
    modality_lut = None
    if volume.modality.upper() == "PT":
        # PET slices each have their own Rescale Slope, one state cannot hold them all: the identity on the
        # stored values (each slice then shows scaled to its own maximum, as it was reconstructed)
        modality_lut = hd.ModalityLUTTransformation(
            rescale_intercept=0.0, rescale_slope=1.0, rescale_type=hd.RescaleTypeValues.US
        )
    elif volume.is_multiframe and "SharedFunctionalGroupsSequence" not in source:
        # highdicom looks for the Modality LUT of a multi-frame image in functional groups,
        # which classic multi-frame (US cine) images do not have: state the identity explicitly.
        modality_lut = hd.ModalityLUTTransformation(
            rescale_intercept=float(source.get("RescaleIntercept", 0.0)),
            rescale_slope=float(source.get("RescaleSlope", 1.0)),
            rescale_type=hd.RescaleTypeValues.US,
        )
    return hd.pr.GrayscaleSoftcopyPresentationState(  # type: ignore[arg-type]
        voi_lut_transformations=voi, modality_lut_transformation=modality_lut, **common
    )


def build_gsps(findings: Findings, volume: Volume, uids: UidFactory, options: EncodeOptions) -> Dataset:
    """Build the presentation state of ``findings`` on ``volume``'s key images."""
    annotations, images = _graphic_annotations(_drawings(findings, volume, uids, options), volume)
    source = volume.sources[0]
    common: dict[str, Any] = dict(
        referenced_images=images,
        series_instance_uid=uids.series("gsps"),
        series_number=options.series_number_of("gsps"),
        sop_instance_uid=uids.instance("gsps"),
        instance_number=1,
        **options.equipment(findings.pipeline, findings.version),
        content_label="AI_FINDINGS",
        content_description=f"AI {findings.pipeline} {findings.version} outlines"[:64],
        graphic_annotations=annotations,
        graphic_layers=[LAYER],
        institution_name=options.institution_name,
    )
    if int(source.get("SamplesPerPixel", 1)) > 1:
        icc = bytes(source.ICCProfile) if "ICCProfile" in source else srgb_profile()
        pr: Dataset = hd.pr.ColorSoftcopyPresentationState(icc_profile=icc, **common)  # type: ignore[arg-type]
    else:
        pr = _grayscale_state(volume, source, common)
    finish_identity(pr, source, f"AI annotations ({findings.pipeline})", options.institution_name)
    logger.debug("GSPS built: %d annotated images", len(annotations))
    return pr
