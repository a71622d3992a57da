"""Minimal volume builders for tests (the real loaders live in ``dicom_node.imaging``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from dicom_node.imaging.volume import Volume


def _header(ds: Dataset) -> Dataset:
    hdr = pydicom.Dataset(ds)
    hdr.file_meta = ds.file_meta
    for kw in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if kw in hdr:
            delattr(hdr, kw)
    return hdr


def ct_volume(folder: Path) -> Volume:
    """A CT volume in Hounsfield units from a folder of single-frame slices, ordered along the normal."""
    files = [p for p in sorted(folder.iterdir()) if p.suffix == ".dcm"]
    datasets = [pydicom.dcmread(p) for p in files]
    iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    datasets.sort(key=lambda d: float(np.dot(normal, np.asarray(d.ImagePositionPatient, dtype=float))))
    pixels = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in datasets]).astype(
        np.float32
    )
    pos = [float(np.dot(normal, np.asarray(d.ImagePositionPatient, dtype=float))) for d in datasets]
    dz = float(np.median(np.diff(pos))) if len(pos) > 1 else float(datasets[0].SliceThickness)
    row, col = (float(v) for v in datasets[0].PixelSpacing)
    return Volume(pixels=pixels, spacing=(dz, row, col), modality="CT", sources=[_header(d) for d in datasets])


def us_volume(path: Path, crop: tuple[int, int, int, int] | None = None) -> Volume:
    """A grayscale (0..1) ultrasound volume from one single- or multi-frame file, optionally cropped."""
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if int(ds.SamplesPerPixel) == 3:
        if frames == 1:
            arr = arr[np.newaxis]
        if ds.PhotometricInterpretation.startswith("YBR"):
            arr = pydicom.pixels.convert_color_space(arr, ds.PhotometricInterpretation, "RGB")
        gray = arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114
    else:
        gray = arr if frames > 1 else arr[np.newaxis]
    gray = gray.astype(np.float32) / float(2 ** int(ds.BitsStored) - 1)
    if crop is not None:
        r0, c0, r1, c1 = crop
        gray = gray[:, r0:r1, c0:c1]
    row_mm, col_mm = 1.0, 1.0
    regions = getattr(ds, "SequenceOfUltrasoundRegions", None)
    if regions:
        col_mm = float(regions[0].PhysicalDeltaX) * 10.0
        row_mm = float(regions[0].PhysicalDeltaY) * 10.0
    return Volume(
        pixels=np.ascontiguousarray(gray),
        spacing=(0.0, row_mm, col_mm),
        modality="US",
        sources=[_header(ds)],
        frame_numbers=list(range(1, frames + 1)) if frames > 1 else None,
        crop=crop,
    )


def sphere(
    shape: tuple[int, int, int], center: tuple[float, float, float], radius_vox: tuple[float, ...]
) -> np.ndarray:
    """A boolean ellipsoid mask (radii per axis, in voxels)."""
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    rz, ry, rx = radius_vox
    d = ((zz - center[0]) / rz) ** 2 + ((yy - center[1]) / ry) ** 2 + ((xx - center[2]) / rx) ** 2
    return np.asarray(d <= 1.0)


def synthetic_ct(slices: int = 4, size: int = 32, seed: int = 0) -> Volume:
    """A tiny in-memory CT series (valid headers, no files) for fast unit tests."""
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(seed)
    study, series, frame = (generate_uid(prefix=None) for _ in range(3))
    pixels = rng.normal(-700.0, 50.0, size=(slices, size, size)).astype(np.float32)
    sources: list[Dataset] = []
    for k in range(slices):
        ds = Dataset()
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid(prefix=None)
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.Modality = "CT"
        ds.PatientID = "SYNTH01"
        ds.PatientName = "Synthetic^Patient"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.FrameOfReferenceUID = frame
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", "ACC1"
        ds.ReferringPhysicianName = "Ref^Doc"
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-16.0, -16.0, float(k) * 2.0]
        ds.PixelSpacing = [1.0, 1.0]
        ds.SliceThickness = 2.0
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        sources.append(ds)
    return Volume(pixels=pixels, spacing=(2.0, 1.0, 1.0), modality="CT", sources=sources)
