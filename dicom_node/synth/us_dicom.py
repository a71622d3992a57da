"""Synthetic lung-US cines as DICOM files (US Multi-frame Image Storage) for demos and end-to-end tests.

The frame of :func:`dicom_node.synth.us_lung.generate` is placed below a burned-in text band (as
scanners do), and ``SequenceOfUltrasoundRegions`` describes the imaging region with its physical
deltas in cm, so :func:`dicom_node.imaging.us.load_us` crops the text away and recovers the spacing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid

from dicom_node.synth.us_lung import LungPattern, LungUsSample, Probe, generate

logger = logging.getLogger(__name__)

TEXT_BAND = 24
"""Rows above the imaging region that carry burned-in 'text'."""


def _uid(seed: int, kind: str) -> str:
    return generate_uid(entropy_srcs=[f"dicom-node synthetic lung US {seed} {kind}"])


def set_gray_cine(ds: Dataset, rows: int, cols: int, frames: int, frame_time_ms: float = 33.3) -> None:
    """The image pixel and cine attributes of an 8-bit MONOCHROME2 multi-frame US image."""
    ds.Rows, ds.Columns = rows, cols
    ds.NumberOfFrames = frames
    ds.FrameTime = frame_time_ms
    ds.FrameIncrementPointer = pydicom.tag.Tag("FrameTime")
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0


def lung_cine_dataset(
    seed: int,
    frames: int = 8,
    size: tuple[int, int] = (256, 256),
    pattern: LungPattern | str | None = None,
    probe: Probe | str | None = None,
) -> tuple[Dataset, LungUsSample]:
    """A US multi-frame dataset (8-bit MONOCHROME2) and the sample (with ground truth) it shows.

    The region occupies rows ``TEXT_BAND..TEXT_BAND + size[0]`` of the stored image; the band above
    holds bright burned-in blocks that must not reach the pipeline.
    """
    sample = generate(seed, size=size, frames=frames, pattern=pattern, probe=probe)
    rows, cols = size[0] + TEXT_BAND, size[1]
    pixels = np.zeros((frames, rows, cols), dtype=np.uint8)
    pixels[:, TEXT_BAND:] = np.round(sample.image * 255).astype(np.uint8)
    for k in range(0, cols - 16, 24):  # "burned-in text": bright glyph-like blocks
        pixels[:, 6:16, k + 2 : k + 14 : 2] = 250
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    ds.SOPClassUID = UltrasoundMultiFrameImageStorage
    ds.SOPInstanceUID = _uid(seed, "instance")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = _uid(seed, "study")
    ds.SeriesInstanceUID = _uid(seed, "series")
    ds.PatientName = f"SYNTH^LUNGUS{seed}"
    ds.PatientID = f"SYNTH-US-{seed}"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Modality = "US"
    ds.Manufacturer = "dicom-node synthetic"
    ds.BodyPartExamined = "CHEST"
    ds.SeriesDescription = f"synthetic lung US ({sample.pattern.value}, {sample.probe.value} probe)"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PatientOrientation = ""
    set_gray_cine(ds, rows, cols, frames)
    ds.LossyImageCompression = "00"
    region = Dataset()
    region.RegionSpatialFormat = 1
    region.RegionDataType = 1
    region.RegionFlags = 0
    region.RegionLocationMinX0 = 0
    region.RegionLocationMinY0 = TEXT_BAND
    region.RegionLocationMaxX1 = cols - 1
    region.RegionLocationMaxY1 = rows - 1
    region.PhysicalUnitsXDirection = 3
    region.PhysicalUnitsYDirection = 3
    region.PhysicalDeltaX = sample.spacing_mm / 10.0
    region.PhysicalDeltaY = sample.spacing_mm / 10.0
    region.ReferencePixelX0 = cols // 2
    region.ReferencePixelY0 = 0
    ds.SequenceOfUltrasoundRegions = [region]
    ds.PixelData = pixels.tobytes()
    return ds, sample


def write_lung_cine(path: str | Path, seed: int, **options: object) -> LungUsSample:
    """Write :func:`lung_cine_dataset` to ``path``; returns the ground truth."""
    ds, sample = lung_cine_dataset(seed, **options)  # type: ignore[arg-type]
    ds.save_as(Path(path), enforce_file_format=True)
    return sample
