"""Write a synthetic HU volume as a real CT Image Storage series (for the demo, tests and benchmarks)."""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

ROOT = "1.2.826.0.1.3680043.10.1443."  # example-only root for generated (synthetic) objects


def _uid(*parts: object) -> str:
    return generate_uid(prefix=ROOT, entropy_srcs=[str(p) for p in parts])


def write_ct_series(
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    folder: str | Path,
    *,
    seed: int = 0,
    patient_id: str = "SYNTH-0001",
    patient_name: str = "Synthetic^Chest",
    series_description: str = "Chest CT 1.25mm (synthetic phantom)",
    accession: str = "SYN0001",
) -> list[Path]:
    """Write ``hu`` (slices, rows, cols; Hounsfield units) as one axial CT series, one file per slice.

    UIDs derive from ``seed`` so the same call writes the same study. Pixel data is 16-bit signed
    with RescaleIntercept 0, geometry head-first supine (slices go from feet to head).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid, frame_uid = (_uid(seed, k) for k in ("study", "series", "frame"))
    dz, dy, dx = spacing
    n, rows, cols = hu.shape
    pixels = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    today = datetime.date.today().strftime("%Y%m%d")
    paths = []
    for i in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        sop_uid = _uid(seed, "slice", i)
        ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
            patient_name,
            patient_id,
            "19600101",
            "O",
        )
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = today
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = accession, "1", ""
        ds.StudyDescription = "CT CHEST (synthetic)"
        ds.Modality, ds.Manufacturer, ds.BodyPartExamined = "CT", "dicom-node synth", "CHEST"
        ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = series_description, 2, i + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientPosition = "HFS"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-(cols - 1) * dx / 2, -(rows - 1) * dy / 2, -n * dz + i * dz]
        ds.SliceLocation = ds.ImagePositionPatient[2]
        ds.SliceThickness, ds.PixelSpacing = dz, [dy, dx]
        ds.KVP, ds.ConvolutionKernel = 120, "STANDARD"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = -600, 1500
        ds.PixelData = pixels[i].tobytes()
        path = folder / f"CT{i + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
