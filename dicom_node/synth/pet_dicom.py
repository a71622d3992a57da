"""Write a :class:`~dicom_node.synth.pet_phantom.PetCtPhantom` as a real PET/CT study: a CT series and a PT
series (PET Image Storage, Units BQML, DecayCorrection START, the radiopharmaceutical and dose fields SUV needs)
in one study, one Frame of Reference, each on its own grid."""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, PositronEmissionTomographyImageStorage

from dicom_node.imaging.suv import F18_HALF_LIFE_S
from dicom_node.synth.dicom_series import _uid
from dicom_node.synth.pet_phantom import Grid, PetCtPhantom


def _base(
    sop_class: str, sop_uid: str, study: dict[str, str], grid: Grid, k: int, rows_cols: tuple[int, int]
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = study["name"], study["id"], "19600101"
    ds.PatientSex, ds.PatientWeight, ds.PatientSize = study["sex"], study["weight"], study["size"]
    ds.StudyInstanceUID, ds.FrameOfReferenceUID = study["study"], study["frame"]
    ds.StudyDate, ds.StudyTime = study["date"], "100000"
    ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = study["accession"], "1", ""
    ds.StudyDescription = "PET/CT FDG whole body (synthetic)"
    ds.Manufacturer, ds.BodyPartExamined = "dicom-node synth", "WHOLEBODY"
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "FFS"
    dz, dy, dx = grid.spacing
    x0, y0, z0 = grid.origin
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [round(x0, 4), round(y0, 4), round(z0 + k * dz, 4)]
    ds.SliceLocation = round(z0 + k * dz, 4)
    ds.SliceThickness, ds.PixelSpacing = dz, [dy, dx]
    ds.InstanceNumber = k + 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = rows_cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    return ds


def _study(seed: int, weight_kg: float) -> dict[str, str]:
    return {
        "name": f"Synthetic^PETCT{seed}",
        "id": f"SYNPET-{seed:04d}",
        "accession": f"PET{seed:05d}",
        "sex": "M",
        "weight": f"{weight_kg:.1f}",
        "size": "1.75",
        "study": _uid(seed, "petct", "study"),
        "frame": _uid(seed, "petct", "frame"),
        "date": datetime.date.today().strftime("%Y%m%d"),
    }


def write_pet_ct_study(
    phantom: PetCtPhantom,
    folder: str | Path,
    *,
    seed: int = 0,
    weight_kg: float = 75.0,
    dose_mbq: float = 350.0,
    uptake_min: float = 62.0,
) -> tuple[list[Path], list[Path]]:
    """Write the phantom's CT and PT series under ``folder/CT`` and ``folder/PT``; returns both path lists.

    The PET pixels are activity concentration (Bq/ml, per-slice Rescale Slope) such that the QIBA SUVbw of
    the headers gives back ``phantom.suv``: scan start ``uptake_min`` after the injection of ``dose_mbq`` of
    F-18 FDG, decay corrected to the scan start.
    """
    folder = Path(folder)
    study = _study(seed, weight_kg)
    ct_paths = _write_ct(phantom, folder / "CT", study, seed)
    pt_paths = _write_pt(phantom, folder / "PT", study, seed, weight_kg, dose_mbq, uptake_min)
    return ct_paths, pt_paths


def _write_ct(phantom: PetCtPhantom, folder: Path, study: dict[str, str], seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    series = _uid(seed, "petct", "ct-series")
    pixels = np.clip(np.rint(phantom.ct_hu + 1024.0), 0, 4095).astype(np.uint16)
    paths = []
    for k in range(pixels.shape[0]):
        ds = _base(CTImageStorage, _uid(seed, "petct", "ct", k), study, phantom.ct_grid, k, pixels.shape[1:])
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.Modality = series, 2, "CT"
        ds.SeriesDate, ds.SeriesTime = study["date"], "100500"
        ds.AcquisitionDate, ds.AcquisitionTime = study["date"], "100500"
        ds.ContentDate, ds.ContentTime = study["date"], "100500"
        ds.SeriesDescription = "CT attenuation correction 3 mm (synthetic)"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.KVP, ds.ConvolutionKernel = 120, "STANDARD"
        ds.PixelRepresentation = 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelData = pixels[k].tobytes()
        path = folder / f"CT{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _write_pt(
    phantom: PetCtPhantom,
    folder: Path,
    study: dict[str, str],
    seed: int,
    weight_kg: float,
    dose_mbq: float,
    uptake_min: float,
) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    series = _uid(seed, "petct", "pt-series")
    injection = datetime.datetime.combine(datetime.date.today(), datetime.time(9, 0, 0))
    start = injection + datetime.timedelta(minutes=uptake_min)
    dose_bq = dose_mbq * 1e6
    decayed = dose_bq * 2.0 ** (-(uptake_min * 60.0) / F18_HALF_LIFE_S)
    bqml = phantom.suv.astype(np.float64) * decayed / (weight_kg * 1000.0)
    n = bqml.shape[0]
    radio = Dataset()
    radio.Radiopharmaceutical = "Fluorodeoxyglucose"
    radio.RadiopharmaceuticalStartDateTime = injection.strftime("%Y%m%d%H%M%S.00")
    radio.RadiopharmaceuticalStartTime = injection.strftime("%H%M%S.00")
    radio.RadionuclideTotalDose = f"{dose_bq:.1f}"
    radio.RadionuclideHalfLife = f"{F18_HALF_LIFE_S}"
    radio.RadionuclidePositronFraction = "0.9673"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "C-111A1", "SRT", "^18^Fluorine"
    radio.RadionuclideCodeSequence = Sequence([code])
    paths = []
    for k in range(n):
        ds = _base(
            PositronEmissionTomographyImageStorage,
            _uid(seed, "petct", "pt", k),
            study,
            phantom.pet_grid,
            k,
            bqml.shape[1:],
        )
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.Modality = series, 3, "PT"
        ds.SeriesDate, ds.SeriesTime = start.strftime("%Y%m%d"), start.strftime("%H%M%S")
        frame_start = start + datetime.timedelta(seconds=120 * ((n - 1 - k) * 4 // n))
        ds.AcquisitionDate, ds.AcquisitionTime = frame_start.strftime("%Y%m%d"), frame_start.strftime("%H%M%S")
        ds.ContentDate, ds.ContentTime = ds.AcquisitionDate, ds.AcquisitionTime
        ds.SeriesDescription = "PET WB AC (synthetic)"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.SeriesType = ["WHOLE BODY", "IMAGE"]
        ds.Units, ds.CountsSource, ds.DecayCorrection = "BQML", "EMISSION", "START"
        ds.CorrectedImage = ["DECY", "ATTN", "SCAT", "DTIM", "RAN", "NORM"]
        ds.RandomsCorrectionMethod, ds.AttenuationCorrectionMethod = "DLYD", "CT"
        ds.ReconstructionMethod = "OSEM 3i21s (synthetic)"
        ds.NumberOfSlices, ds.ImageIndex = n, k + 1
        ds.ActualFrameDuration, ds.FrameReferenceTime = 120000, 0
        ds.DecayFactor = "1.0"
        ds.RadiopharmaceuticalInformationSequence = Sequence([radio])
        ds.PixelRepresentation = 0
        peak = float(bqml[k].max())
        slope = peak / 32000.0 if peak > 0 else 1.0
        ds.RescaleIntercept, ds.RescaleSlope = 0, f"{slope:.8g}"
        ds.PixelData = np.clip(np.rint(bqml[k] / float(f"{slope:.8g}")), 0, 65535).astype(np.uint16).tobytes()
        path = folder / f"PT{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
