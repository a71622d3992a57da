"""Findings to DICOM: SEG, TID 1500 SR, presentation state, overlay images and a PNG preview.

The worker calls :func:`encode` with the object kinds a destination wants, and
:func:`render_preview` for the dashboard. Every UID is derived from the inputs (see
:mod:`dicom_node.outputs.uids`), so encoding the same findings twice gives the same objects.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pydicom.dataset import Dataset

from dicom_node.findings import Findings
from dicom_node.imaging.volume import Volume
from dicom_node.outputs.options import KINDS, EncodeOptions
from dicom_node.outputs.preview import render_preview

logger = logging.getLogger(__name__)

__all__ = ["KINDS", "EncodeOptions", "encode", "kind_of", "render_preview"]

_KIND_BY_CLASS: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.66.4": "seg",  # Segmentation
    "1.2.840.10008.5.1.4.1.1.66.7": "seg",  # Label Map Segmentation (seg_type LABELMAP)
    "1.2.840.10008.5.1.4.1.1.88.34": "sr",  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.11.1": "gsps",  # Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.11.2": "gsps",  # Color Softcopy Presentation State (colour sources)
    "1.2.840.10008.5.1.4.1.1.7": "overlay",  # Secondary Capture
}


def kind_of(ds: Dataset) -> str:
    """The output kind (one of :data:`KINDS`) of an object made by :func:`encode`.

    Raises:
        ValueError: ``ds`` is of a SOP class :func:`encode` does not make.
    """
    kind = _KIND_BY_CLASS.get(str(ds.SOPClassUID))
    if kind is None:
        raise ValueError(f"SOP class {ds.SOPClassUID} is not an output of dicom_node.outputs")
    return kind


def encode(
    findings: Findings,
    volume: Volume,
    kinds: Sequence[str],
    *,
    series_number: int = 900,
    options: EncodeOptions | None = None,
) -> list[Dataset]:
    """Encode ``findings`` on ``volume`` as the DICOM objects named in ``kinds``.

    Args:
        findings: What the pipeline returned (may be empty, or not applicable).
        volume: The volume the pipeline ran on; its ``sources`` are the referenced instances.
        kinds: Any of ``"seg"``, ``"sr"``, ``"gsps"``, ``"overlay"``.
        series_number: Series Number of the SEG; SR, GSPS and overlay take the next three
            (ignored when ``options`` is given).
        options: Manufacturer, node name, institution, SEG type and so on.

    Returns:
        The objects in the order SEG, the SEG on each of ``volume.paired_volumes()`` (the CT of a PET/CT:
        the same segments carried onto its grid), SR, GSPS, overlay images (kinds not asked for are left out;
        no SEG when no finding has a mask pixel). Each has ``file_meta`` and can be saved or sent. The SR
        references the SEG on ``volume``, where its measurements were made.

    Raises:
        ValueError: an unknown kind, or findings that do not fit the volume.
    """
    from dicom_node.outputs.common import complete_type2
    from dicom_node.outputs.gsps import build_gsps
    from dicom_node.outputs.overlay import build_overlays
    from dicom_node.outputs.seg import build_paired_seg, build_seg
    from dicom_node.outputs.sr import build_sr
    from dicom_node.outputs.uids import UidFactory

    wanted = [str(k).lower() for k in kinds]
    unknown = sorted(set(wanted) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown output kind(s) {unknown}; known kinds are {list(KINDS)}")
    opts = options if options is not None else EncodeOptions(series_number=series_number)
    for finding in findings.findings:
        if finding.mask.shape != volume.shape:
            raise ValueError(f"finding mask shape {finding.mask.shape} differs from volume shape {volume.shape}")
    complete_type2(volume.sources)
    uids = UidFactory(volume.sources, findings.pipeline, findings.version)
    out: list[Dataset] = []
    seg = None
    if "seg" in wanted:
        seg = build_seg(findings, volume, uids, opts)
        if seg is not None:
            out.append(seg.dataset)
            for j, paired in enumerate(volume.paired_volumes()):
                complete_type2(paired.sources)
                try:
                    on_paired = build_paired_seg(findings, seg, volume, paired, uids, opts, j)
                except Exception:  # a copy for viewing on the paired series: the main results still go out
                    logger.exception("SEG on the paired %s series not written", paired.modality)
                    continue
                if on_paired is not None:
                    out.append(on_paired.dataset)
    if "sr" in wanted:
        out.append(build_sr(findings, volume, uids, opts, seg))
    if "gsps" in wanted:
        out.append(build_gsps(findings, volume, uids, opts))
    if "overlay" in wanted:
        out.extend(build_overlays(findings, volume, uids, opts))
    logger.info(
        "encoded %s as %d objects (%s)",
        findings.summary(),
        len(out),
        ", ".join(sorted({str(ds.Modality) for ds in out})),
    )
    return out
