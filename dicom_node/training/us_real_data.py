"""Real lung-ultrasound clips (``../shared/data/real/us_pocus_ccby``) as US multi-frame DICOM.

The collection holds videos (mp4 / mpeg / mov) and still images with per-file physician labels
(``labels.csv``). :func:`read_clips` joins those labels with the project's fixed train / check split
(``us_real_split.csv`` beside this module, decided by source and patient before any tuning);
:func:`clip_frames` decodes ``n`` evenly spaced frames of one file as luminance in 0..1 (PyAV for
videos, Pillow for images); :func:`clip_dataset` wraps them as an 8-bit MONOCHROME2 US Multi-frame
Image Storage data set whose only ultrasound region is the whole image and is NOT calibrated: the
clips carry no depth scale, so the pixel spacing stays unknown and no length in mm can be reported.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid

from dicom_node.synth.us_dicom import set_gray_cine

logger = logging.getLogger(__name__)

REAL_LUNG_US = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real" / "us_pocus_ccby"
SPLIT_FILE = Path(__file__).with_name("us_real_split.csv")
FINDINGS = ("b_lines", "a_lines", "consolidation", "effusion", "pleural_irregular")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class RealClip:
    """One labelled real file: its path, split part and the physicians' per-file labels.

    ``findings`` maps each of :data:`FINDINGS` to 1, 0 or ``None`` (not rated).
    """

    file: str
    path: Path
    kind: str
    diagnosis: str
    probe: str
    part: str
    source: str
    findings: dict[str, int | None]

    @property
    def name(self) -> str:
        return Path(self.file).name

    @property
    def abnormal(self) -> bool | None:
        """Truth for normal vs abnormal from the findings: any B-lines / consolidation / effusion /
        pleural irregularity = abnormal; none of them and a healthy diagnosis = normal; otherwise
        (an abnormal diagnosis with no finding marked, or nothing rated) ``None``."""
        marks = [self.findings[k] for k in ("b_lines", "consolidation", "effusion", "pleural_irregular")]
        if any(m == 1 for m in marks):
            return True
        if all(m == 0 for m in marks) and self.diagnosis == "regular":
            return False
        return None


def _flag(value: str) -> int | None:
    value = value.strip()
    return int(float(value)) if value else None


def read_clips(root: Path = REAL_LUNG_US, split_file: Path = SPLIT_FILE) -> list[RealClip]:
    """Every file of ``labels.csv`` with its part of the split (files missing from the split are left out)."""
    root = Path(root)
    with open(split_file, newline="") as fh:
        split = {row["file"]: row for row in csv.DictReader(fh)}
    clips: list[RealClip] = []
    with open(root / "labels.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            part = split.get(row["file"])
            if part is None:
                logger.warning("real lung-US file %s is not in the split; left out", row["file"])
                continue
            clips.append(
                RealClip(
                    file=row["file"],
                    path=root / row["file"],
                    kind=row["kind"],
                    diagnosis=row["label"].strip().lower(),
                    probe=row["probe"],
                    part=part["part"],
                    source=part["source_group"],
                    findings={k: _flag(row[k]) for k in FINDINGS},
                )
            )
    return clips


def _gray(rgb: np.ndarray) -> np.ndarray:
    if rgb.ndim == 2:
        return rgb.astype(np.float32) / 255.0
    return (rgb[..., :3].astype(np.float32) @ _LUMA) / 255.0


def clip_frames(path: Path, n: int = 16) -> np.ndarray:
    """``n`` evenly spaced frames (fewer for short clips, 1 for an image) as float32 (n, rows, cols) in 0..1."""
    path = Path(path)
    if path.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp", ".gif"}:
        from PIL import Image

        with Image.open(path) as im:
            return _gray(np.asarray(im.convert("RGB")))[None]
    import av

    with av.open(str(path)) as container:
        frames = [_gray(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    if not frames:
        raise ValueError(f"no frames decoded from {path.name}")
    pick = np.unique(np.linspace(0, len(frames) - 1, min(n, len(frames))).round().astype(int))
    return np.stack([frames[i] for i in pick])


def clip_dataset(frames: np.ndarray, name: str) -> Dataset:
    """Frames in 0..1 as a US Multi-frame data set; one uncalibrated region (spacing unknown)."""
    n, rows, cols = frames.shape
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    ds.SOPClassUID = UltrasoundMultiFrameImageStorage
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[f"dicom-node real lung US {name} instance"])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[f"dicom-node real lung US {name} study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[f"dicom-node real lung US {name} series"])
    ds.PatientName, ds.PatientID = "POCUS^CCBY", f"POCUS-{name}"[:64]
    # Type 2 patient and study attributes: present, empty (unknown); the node's encoders copy them
    ds.PatientBirthDate = ds.PatientSex = ds.ReferringPhysicianName = ds.AccessionNumber = ""
    ds.StudyDate = ds.StudyTime = ""
    ds.StudyID = "1"
    ds.SeriesNumber = ds.InstanceNumber = 1
    ds.PatientOrientation = ds.Manufacturer = ""
    ds.ImageType = ["DERIVED", "SECONDARY"]  # frames decoded from a published video, not from the scanner
    ds.Modality, ds.BodyPartExamined = "US", "CHEST"
    ds.SeriesDescription = f"real lung US {name}"[:64]
    set_gray_cine(ds, rows, cols, n)
    region = Dataset()
    region.RegionSpatialFormat = 1
    region.RegionDataType = 1
    region.RegionFlags = 0
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, 0
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = cols - 1, rows - 1
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 0  # none: no depth scale in the clips
    ds.SequenceOfUltrasoundRegions = [region]
    ds.PixelData = np.round(np.clip(frames, 0, 1) * 255).astype(np.uint8).tobytes()
    return ds


def write_clip(clip: RealClip, folder: Path, n: int = 16) -> Path:
    """Decode ``clip`` and write it as ``folder/<name>.dcm``; returns the path."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / (Path(clip.file).stem + ".dcm")
    if not out.is_file():
        clip_dataset(clip_frames(clip.path, n), clip.name).save_as(out, enforce_file_format=True)
    return out
