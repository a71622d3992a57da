"""LIDC-IDRI reader XML: nodule outlines (>= 3 mm, unblinded reads) as masks on a loaded CT volume."""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from skimage.draw import polygon

from dicom_node.imaging.volume import Volume

logger = logging.getLogger(__name__)

NS = {"n": "http://www.nih.gov"}


def _coord(edge: ET.Element, tag: str) -> int:
    return int(edge.findtext(tag, namespaces=NS) or 0)


def lidc_nodule_masks(xml_path: Path, volume: Volume, min_readers: int = 1) -> np.ndarray:
    """Voxels inside the outline of at least ``min_readers`` readers (inclusion ROIs, >= 3 mm nodules).

    Slices are matched by SOP Instance UID, falling back to the z position (0.1 mm tolerance).
    """
    root = ET.parse(str(xml_path)).getroot()
    uid_to_k = {str(ds.SOPInstanceUID): k for k, ds in enumerate(volume.sources)}
    z_to_k = {round(float(ds.ImagePositionPatient[2]), 1): k for k, ds in enumerate(volume.sources)}
    votes = np.zeros(volume.shape, dtype=np.int16)
    for session in root.findall("n:readingSession", NS):
        reader = np.zeros(volume.shape, dtype=bool)
        for nodule in session.findall("n:unblindedReadNodule", NS):
            for roi in nodule.findall("n:roi", NS):
                inclusion = roi.findtext("n:inclusion", default="TRUE", namespaces=NS).strip().upper()
                pts = [
                    (
                        int(e.findtext("n:xCoord", namespaces=NS) or 0),
                        int(e.findtext("n:yCoord", namespaces=NS) or 0),
                    )
                    for e in roi.findall("n:edgeMap", NS)
                ]
                if len(pts) < 3:
                    continue  # a single point marks a nodule < 3 mm: no outline
                uid = (roi.findtext("n:imageSOP_UID", default="", namespaces=NS) or "").strip()
                k = uid_to_k.get(uid)
                if k is None:
                    z = round(float(roi.findtext("n:imageZposition", default="nan", namespaces=NS)), 1)
                    k = z_to_k.get(z)
                if k is None:
                    continue
                xs = np.array([p[0] for p in pts])
                ys = np.array([p[1] for p in pts])
                rr, cc = polygon(ys, xs, shape=volume.shape[1:])
                sl = np.zeros(volume.shape[1:], dtype=bool)
                sl[rr, cc] = True
                sl[ys.clip(0, volume.shape[1] - 1), xs.clip(0, volume.shape[2] - 1)] = True
                if inclusion == "TRUE":
                    reader[k] |= sl
                else:
                    reader[k] &= ~sl
        votes += reader
    return np.asarray(votes >= min_readers)
