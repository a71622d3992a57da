"""An FDG PET/CT written by other code than the node's: its own phantom and its own DICOM writer.

Nothing here comes from :mod:`dicom_node` (plain numpy, scipy and pydicom), so a test that pushes this study
checks the node against conventions it was not built on, the way an independent evaluator would:

- **Phantom**: an elliptic-cylinder body (subcutaneous fat, muscle), lungs, a left-ventricle myocardium with
  high FDG uptake (SUV 6.5, as in a non-fasting patient) around its blood pool, liver, spleen, kidneys, bladder,
  spine, neck and a head with skull and brain, and spherical tumours (lung, liver, mediastinal node) of uniform
  activity. The activity is drawn on the PET grid supersampled 2 x 2 x 2, blurred by a Gaussian PSF
  (:data:`PSF_FWHM_MM`) and averaged down to the PET voxels; Poisson-like noise (sd ``0.07 * sqrt(SUV)``) is
  added after. The CT is drawn on its own grid (HU per tissue).
- **Truth**: each tumour's centre and diameter in patient coordinates, and its SUVmax as the noise-free blurred
  PET shows it (the highest PET voxel whose centre lies in the sphere): what a perfect reader of this scanner's
  images measures, partial volume included. The myocardium is given as two ellipsoids.
- **Headers, unlike the node's own generator**: head first supine, slices written head to foot (descending z,
  Instance Number 1 at the top), file names from the SOP Instance UIDs; PET Units BQML with Decay Correction
  ADMIN (pixels corrected to the injection time; ``decay="START"`` writes the other convention), signed 16-bit
  PET and CT pixels, a Rescale Slope per PET slice, CT Rescale Intercept 0; a 128 x 128 PET of 4.07 mm pixels
  and 3.27 mm slices, a 256 x 256 CT of 1.953 mm pixels and 2.5 mm slices, the grids offset from each other;
  PatientWeight, and a Radiopharmaceutical Information Sequence with Radionuclide Total Dose, Half Life and
  Start DateTime (with a UTC offset) but no Start Time; CT in Implicit VR Little Endian, PET in Explicit VR.
  With ``ct="enhanced"`` the CT is one Enhanced CT instance instead, its frames stored head to foot too; it holds
  the geometry, rescale and dimensions a reader needs, not every Type 1 CT acquisition macro (dciodvfy lists
  those as missing; the node reads what it needs and ignores the rest).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence as Items
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    PositronEmissionTomographyImageStorage,
    generate_uid,
)
from scipy import ndimage as ndi

PSF_FWHM_MM = 6.0
HALF_LIFE_S = 6588.0  # F-18, as some vendors write it (109.8 min)
WEIGHT_KG = 82.0
DOSE_BQ = 296.0e6  # 8 mCi
UPTAKE_S = 3900.0  # injection to the scan start
NOISE = 0.07  # sd of the PET noise = NOISE * sqrt(SUV)

PET_MATRIX, PET_PIXEL_MM, PET_SLICE_MM = 128, 4.0728, 3.27
CT_MATRIX, CT_PIXEL_MM, CT_SLICE_MM = 256, 1.953125, 2.5
Z_RANGE_MM = (-330.0, 470.0)  # pelvis (bladder) to the top of the head


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid (or, with ``zcyl``, an elliptic cylinder along z of half-length ``radii[2]``) in patient
    coordinates (LPS, mm): ``center`` (x, y, z), ``radii`` (x, y, z)."""

    tissue: str
    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    zcyl: bool = False

    def contains(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Whether the points (broadcast arrays of patient coordinates) lie inside."""
        dx = (x - self.center[0]) / self.radii[0]
        dy = (y - self.center[1]) / self.radii[1]
        dz = (z - self.center[2]) / self.radii[2]
        if self.zcyl:
            return np.asarray((dx**2 + dy**2 <= 1.0) & (np.abs(dz) <= 1.0))
        return np.asarray(dx**2 + dy**2 + dz**2 <= 1.0)


# tissue -> (HU, SUV)
TISSUES: dict[str, tuple[float, float]] = {
    "air": (-1000.0, 0.0),
    "fat": (-100.0, 0.35),
    "muscle": (45.0, 0.8),
    "lung": (-820.0, 0.5),
    "myocardium": (40.0, 6.5),
    "blood": (40.0, 1.7),
    "liver": (60.0, 2.4),
    "spleen": (50.0, 2.0),
    "kidney": (35.0, 3.8),
    "bladder": (8.0, 28.0),
    "bone": (650.0, 0.6),
    "marrow": (220.0, 1.6),
    "brain": (35.0, 8.0),
    "aorta": (42.0, 1.7),
}

ANATOMY: tuple[Ellipsoid, ...] = (
    Ellipsoid("fat", (0.0, 0.0, -40.0), (168.0, 118.0, 290.0), zcyl=True),
    Ellipsoid("muscle", (0.0, 0.0, -40.0), (150.0, 102.0, 290.0), zcyl=True),
    Ellipsoid("fat", (0.0, -5.0, 290.0), (62.0, 58.0, 45.0), zcyl=True),  # neck
    Ellipsoid("muscle", (0.0, -5.0, 290.0), (50.0, 46.0, 45.0), zcyl=True),
    Ellipsoid("lung", (-78.0, 5.0, 130.0), (58.0, 72.0, 120.0)),  # right lung (patient right = -x)
    Ellipsoid("lung", (78.0, 5.0, 130.0), (55.0, 72.0, 120.0)),
    Ellipsoid("aorta", (8.0, 45.0, 40.0), (12.0, 12.0, 200.0), zcyl=True),
    Ellipsoid("myocardium", (28.0, -25.0, 50.0), (50.0, 44.0, 52.0)),
    Ellipsoid("blood", (28.0, -25.0, 50.0), (37.0, 31.0, 39.0)),
    Ellipsoid("liver", (-62.0, 0.0, -45.0), (92.0, 78.0, 72.0)),
    Ellipsoid("spleen", (85.0, 35.0, -40.0), (32.0, 38.0, 50.0)),
    Ellipsoid("kidney", (-65.0, 50.0, -130.0), (27.0, 25.0, 52.0)),
    Ellipsoid("kidney", (65.0, 50.0, -122.0), (27.0, 25.0, 52.0)),
    Ellipsoid("bladder", (0.0, -25.0, -290.0), (45.0, 32.0, 32.0)),
    Ellipsoid("bone", (0.0, 70.0, 0.0), (18.0, 16.0, 330.0), zcyl=True),  # spine
    Ellipsoid("marrow", (0.0, 70.0, 0.0), (12.0, 10.0, 330.0), zcyl=True),
    Ellipsoid("bone", (0.0, 0.0, 400.0), (76.0, 92.0, 95.0)),  # skull
    Ellipsoid("brain", (0.0, 0.0, 400.0), (69.0, 85.0, 88.0)),
)
"""Drawn in this order: a later tissue replaces an earlier one."""

MYOCARDIUM = ANATOMY[7], ANATOMY[8]
"""The myocardium is the first ellipsoid without the second."""


@dataclass(frozen=True)
class Tumour:
    """A spherical tumour of uniform activity ``activity_suv``; ``suv_max`` is filled in by :func:`write_study`."""

    name: str
    center: tuple[float, float, float]
    diameter_mm: float
    activity_suv: float


TUMOURS: tuple[Tumour, ...] = (
    Tumour("right lung", (-85.0, -5.0, 150.0), 20.0, 10.0),
    Tumour("liver", (-45.0, 10.0, -60.0), 25.0, 11.0),
    Tumour("mediastinal node", (-12.0, 20.0, 165.0), 16.0, 8.5),
    Tumour("small liver lesion", (-90.0, -20.0, -20.0), 15.0, 7.0),  # SUVmax about 6.4 in a liver of 2.4
)


@dataclass
class TruthTumour:
    """One tumour of a written study and its SUVmax on the PET grid (noise-free, after the PSF)."""

    name: str
    center: tuple[float, float, float]
    diameter_mm: float
    activity_suv: float
    suv_max: float

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Whether patient points (..., 3) lie in the sphere."""
        d = np.linalg.norm(points - np.asarray(self.center), axis=-1)
        return np.asarray(d <= self.diameter_mm / 2.0)


@dataclass
class IndependentStudy:
    """The written files and the truth; ``pet_suv`` and ``ct_hu`` are the images as written (SUVbw with its
    noise, HU), slices feet to head."""

    ct_paths: list[Path]
    pt_paths: list[Path]
    tumours: list[TruthTumour] = field(default_factory=list)
    study_uid: str = ""
    pet_suv: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), dtype=np.float32))
    ct_hu: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), dtype=np.float32))

    @staticmethod
    def in_myocardium(points: np.ndarray) -> np.ndarray:
        """Whether patient points (..., 3) lie in the myocardium (the heart wall, not its blood pool)."""
        outer, inner = MYOCARDIUM
        x, y, z = points[..., 0], points[..., 1], points[..., 2]
        return np.asarray(outer.contains(x, y, z) & ~inner.contains(x, y, z))


@dataclass(frozen=True)
class _Axes:
    """Voxel-centre coordinates (mm) of an axis-aligned grid, z ascending."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray

    @classmethod
    def make(cls, matrix: int, pixel: float, center_xy: tuple[float, float], z0: float, dz: float, n: int) -> _Axes:
        half = (matrix - 1) / 2.0 * pixel
        return cls(
            center_xy[0] - half + pixel * np.arange(matrix),
            center_xy[1] - half + pixel * np.arange(matrix),
            z0 + dz * np.arange(n),
        )

    def refined(self, factor: int) -> _Axes:
        """The grid split ``factor`` times along each axis (sub-voxel centres)."""

        def split(a: np.ndarray) -> np.ndarray:
            step = float(a[1] - a[0])
            offsets = (np.arange(factor) - (factor - 1) / 2.0) * step / factor
            return np.asarray((a[:, None] + offsets[None, :]).ravel())

        return _Axes(split(self.x), split(self.y), split(self.z))


def _tissue_map(axes: _Axes, tumours: tuple[Tumour, ...]) -> tuple[np.ndarray, np.ndarray]:
    """HU and SUV (uniform per tissue) on ``axes`` (z, y, x), tumours last."""
    names = list(TISSUES)
    label = np.zeros((axes.z.size, axes.y.size, axes.x.size), dtype=np.int16)
    for shape in ANATOMY:
        _draw(label, axes, shape, names.index(shape.tissue))
    hu = np.asarray([TISSUES[n][0] for n in names], dtype=np.float32)[label]
    suv = np.asarray([TISSUES[n][1] for n in names], dtype=np.float32)[label]
    for t in tumours:
        r = t.diameter_mm / 2.0
        inside = np.zeros(label.shape, dtype=np.int16)
        _draw(inside, axes, Ellipsoid("tumour", t.center, (r, r, r)), 1)
        hu[inside > 0] = 45.0 if hu[inside > 0].mean() > -300 else 30.0
        suv[inside > 0] = t.activity_suv
    return hu, suv


def _draw(label: np.ndarray, axes: _Axes, shape: Ellipsoid, value: int) -> None:
    """Set ``value`` where ``shape`` covers the grid (its bounding box only)."""
    box = []
    for coords, c, r in ((axes.z, shape.center[2], shape.radii[2]), (axes.y, shape.center[1], shape.radii[1])):
        lo, hi = np.searchsorted(coords, [c - r, c + r])
        box.append(slice(int(lo), int(hi)))
    lo, hi = np.searchsorted(axes.x, [shape.center[0] - shape.radii[0], shape.center[0] + shape.radii[0]])
    box.append(slice(int(lo), int(hi)))
    if any(s.stop <= s.start for s in box):
        return
    inside = shape.contains(axes.x[box[2]][None, None, :], axes.y[box[1]][None, :, None], axes.z[box[0]][:, None, None])
    label[box[0], box[1], box[2]][inside] = value


def _pet_suv(axes: _Axes, tumours: tuple[Tumour, ...], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(noise-free, noisy) SUV on the PET grid: drawn 2 x 2 x 2 finer, blurred by the PSF, averaged down."""
    factor = 2
    fine = axes.refined(factor)
    _, activity = _tissue_map(fine, tumours)
    spacing = (float(fine.z[1] - fine.z[0]), float(fine.y[1] - fine.y[0]), float(fine.x[1] - fine.x[0]))
    sigma = [PSF_FWHM_MM / 2.3548 / s for s in spacing]
    blurred = ndi.gaussian_filter(activity, sigma, mode="constant", cval=0.0)
    n, rows, cols = axes.z.size, axes.y.size, axes.x.size
    clean = blurred.reshape(n, factor, rows, factor, cols, factor).mean(axis=(1, 3, 5)).astype(np.float32)
    noisy = clean + NOISE * np.sqrt(np.maximum(clean, 0.0)) * rng.standard_normal(clean.shape).astype(np.float32)
    return clean, np.maximum(noisy, 0.0).astype(np.float32)


def _truth(axes: _Axes, clean: np.ndarray, tumours: tuple[Tumour, ...]) -> list[TruthTumour]:
    out = []
    zz, yy, xx = np.meshgrid(axes.z, axes.y, axes.x, indexing="ij")
    points = np.stack([xx, yy, zz], axis=-1)
    for t in tumours:
        truth = TruthTumour(t.name, t.center, t.diameter_mm, t.activity_suv, 0.0)
        inside = truth.contains(points)
        if not inside.any():
            raise ValueError(f"tumour {t.name} has no PET voxel centre inside it")
        truth.suv_max = float(clean[inside].max())
        out.append(truth)
    return out


def _common(study: dict[str, str], sop_class: str, sop_uid: str, syntax: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.PatientName, ds.PatientID = "Independent^Phantom", study["patient"]
    ds.PatientBirthDate, ds.PatientSex, ds.PatientAge = "19580314", "F", "068Y"
    ds.PatientWeight, ds.PatientSize = f"{WEIGHT_KG:.1f}", "1.68"
    ds.StudyInstanceUID, ds.StudyID, ds.AccessionNumber = study["study"], "PETCT1", "IND0001"
    ds.StudyDate, ds.StudyTime = study["date"], "083000.000000"
    ds.StudyDescription, ds.ReferringPhysicianName = "PET-CT whole body FDG", "Other^Writer"
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = study["frame"], "XY"
    ds.Manufacturer, ds.ManufacturerModelName = "Independent Test Scanner", "IT-PETCT 1"
    ds.InstitutionName = "Evaluation site"
    ds.PatientPosition, ds.BodyPartExamined = "HFS", "WHOLEBODY"
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    return ds


def _slice_geometry(ds: Dataset, axes: _Axes, k: int, thickness: float) -> None:
    ds.ImagePositionPatient = [f"{axes.x[0]:.4f}", f"{axes.y[0]:.4f}", f"{axes.z[k]:.4f}"]
    ds.SliceLocation = f"{axes.z[k]:.4f}"
    ds.PixelSpacing = [f"{axes.y[1] - axes.y[0]:.6f}", f"{axes.x[1] - axes.x[0]:.6f}"]
    ds.SliceThickness = f"{thickness:.3f}"
    ds.Rows, ds.Columns = axes.y.size, axes.x.size


def _save(ds: Dataset, folder: Path) -> Path:
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _write_ct(folder: Path, study: dict[str, str], axes: _Axes, hu: np.ndarray) -> list[Path]:
    series = generate_uid()
    paths = []
    n = axes.z.size
    for number, k in enumerate(range(n - 1, -1, -1), start=1):  # head to foot
        ds = _common(study, CTImageStorage, generate_uid(), ImplicitVRLittleEndian)
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "CT", series, 201
        ds.SeriesDescription, ds.ImageType = "CT WB 2.5mm", ["ORIGINAL", "PRIMARY", "AXIAL", "CT_SOM5 SPI"]
        ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study["date"]
        ds.SeriesTime, ds.AcquisitionTime, ds.ContentTime = "084512.000000", "084520.500000", "084521.000000"
        ds.InstanceNumber, ds.KVP, ds.ConvolutionKernel = number, "120", "B30f"
        _slice_geometry(ds, axes, k, CT_SLICE_MM)
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
        ds.WindowCenter, ds.WindowWidth = ["40", "-600"], ["400", "1200"]
        ds.PixelData = np.clip(np.rint(hu[k]), -1024, 3071).astype(np.int16).tobytes()
        paths.append(_save(ds, folder))
    return paths


def _item(**values: object) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _write_ct_enhanced(folder: Path, study: dict[str, str], axes: _Axes, hu: np.ndarray) -> list[Path]:
    """The CT as one Enhanced CT instance, frames head to foot (frame 1 at the top), geometry and rescale in the
    functional groups only."""
    ds = _common(study, EnhancedCTImageStorage, generate_uid(), ExplicitVRLittleEndian)
    del ds.ImageOrientationPatient  # in the functional groups, not at the top level
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "CT", generate_uid(), 202
    ds.SeriesDescription, ds.ImageType = "CT WB 2.5mm enhanced", ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study["date"]
    ds.SeriesTime, ds.ContentTime, ds.AcquisitionDateTime = "084512.000000", "084521.000000", study["date"] + "084520"
    ds.InstanceNumber, ds.KVP, ds.ConvolutionKernel = 1, "120", "B30f"
    ds.ContentQualification, ds.ImageComments = "PRODUCT", "independent writer"
    ds.PresentationLUTShape, ds.BurnedInAnnotation, ds.LossyImageCompression = "IDENTITY", "NO", "00"
    ds.AcquisitionNumber, ds.VolumetricProperties, ds.VolumeBasedCalculationTechnique = 1, "VOLUME", "NONE"
    ds.PixelRepresentation = 1
    n = axes.z.size
    ds.NumberOfFrames, ds.Rows, ds.Columns = n, axes.y.size, axes.x.size
    dimension = generate_uid()
    ds.DimensionOrganizationSequence = Sequence([_item(DimensionOrganizationUID=dimension)])
    ds.DimensionIndexSequence = Sequence(
        [
            _item(DimensionOrganizationUID=dimension, DimensionIndexPointer=0x00209057,
                  FunctionalGroupPointer=0x00209111),  # In-Stack Position Number in the Frame Content
        ]
    )  # fmt: skip
    spacing = [f"{axes.y[1] - axes.y[0]:.6f}", f"{axes.x[1] - axes.x[0]:.6f}"]
    ds.SharedFunctionalGroupsSequence = Sequence(
        [
            _item(
                PixelMeasuresSequence=Sequence([_item(PixelSpacing=spacing, SliceThickness=f"{CT_SLICE_MM:.3f}")]),
                PlaneOrientationSequence=Sequence([_item(ImageOrientationPatient=["1", "0", "0", "0", "1", "0"])]),
                PixelValueTransformationSequence=Sequence(
                    [_item(RescaleIntercept="0", RescaleSlope="1", RescaleType="HU")]
                ),
                CTImageFrameTypeSequence=Sequence([_item(FrameType=["ORIGINAL", "PRIMARY", "AXIAL", "NONE"])]),
            )
        ]
    )
    frames = []
    for k in range(n - 1, -1, -1):  # head to foot
        position = [f"{axes.x[0]:.4f}", f"{axes.y[0]:.4f}", f"{axes.z[k]:.4f}"]
        content = _item(StackID="1", InStackPositionNumber=k + 1, DimensionIndexValues=[k + 1])
        frames.append(
            _item(
                FrameContentSequence=Sequence([content]),
                PlanePositionSequence=Sequence([_item(ImagePositionPatient=position)]),
            )
        )
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    stored = np.clip(np.rint(hu[::-1]), -1024, 3071).astype(np.int16)
    ds.PixelData = stored.tobytes()
    return [_save(ds, folder)]


def _radiopharmaceutical(injection: datetime.datetime) -> Dataset:
    radio = Dataset()
    radio.Radiopharmaceutical = "FDG -- fluorodeoxyglucose"
    radio.RadiopharmaceuticalStartDateTime = injection.strftime("%Y%m%d%H%M%S.000000") + "+0100"
    radio.RadionuclideTotalDose = f"{DOSE_BQ:.0f}"
    radio.RadionuclideHalfLife = f"{HALF_LIFE_S:.1f}"
    radio.RadionuclidePositronFraction = "0.97"
    nuclide = Dataset()
    nuclide.CodeValue, nuclide.CodingSchemeDesignator, nuclide.CodeMeaning = "C-111A1", "SRT", "^18^Fluorine"
    radio.RadionuclideCodeSequence = Sequence([nuclide])
    return radio


def _write_pt(
    folder: Path, study: dict[str, str], axes: _Axes, suv: np.ndarray, decay: str, injection: datetime.datetime
) -> list[Path]:
    series = generate_uid()
    start = injection + datetime.timedelta(seconds=UPTAKE_S)
    if decay == "ADMIN":  # Bq/ml as at the injection: SUV = Bq/ml x weight / dose
        bqml = suv.astype(np.float64) * DOSE_BQ / (WEIGHT_KG * 1000.0)
    elif decay == "START":  # Bq/ml as at the scan start: the dose decayed to it
        bqml = suv.astype(np.float64) * DOSE_BQ * 2.0 ** (-UPTAKE_S / HALF_LIFE_S) / (WEIGHT_KG * 1000.0)
    else:
        raise ValueError(f"decay must be ADMIN or START, not {decay!r}")
    n = axes.z.size
    radio = _radiopharmaceutical(injection)
    paths = []
    for number, k in enumerate(range(n - 1, -1, -1), start=1):  # head to foot
        ds = _common(study, PositronEmissionTomographyImageStorage, generate_uid(), ExplicitVRLittleEndian)
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "PT", series, 605
        ds.SeriesDescription, ds.ImageType = "PET WB AC", ["ORIGINAL", "PRIMARY"]
        ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = start.strftime("%Y%m%d")
        bed = start + datetime.timedelta(seconds=150 * (number * 5 // n))  # later beds start later
        ds.SeriesTime = start.strftime("%H%M%S.000000")
        ds.AcquisitionTime = ds.ContentTime = bed.strftime("%H%M%S.000000")
        ds.InstanceNumber, ds.ImageIndex, ds.NumberOfSlices = number, number, n
        _slice_geometry(ds, axes, k, PET_SLICE_MM)
        ds.Units, ds.CountsSource, ds.DecayCorrection = "BQML", "EMISSION", decay
        ds.SeriesType = ["WHOLE BODY", "IMAGE"]
        ds.CorrectedImage = ["NORM", "DTIM", "ATTN", "SCAT", "DECY", "RAN"]
        ds.AttenuationCorrectionMethod, ds.ReconstructionMethod = "CT-based", "PSF+TOF 3i21s"
        ds.RandomsCorrectionMethod, ds.ScatterCorrectionMethod = "DLYD", "Model-based"
        ds.FrameReferenceTime, ds.ActualFrameDuration, ds.DecayFactor = "0", 150000, "1.0"
        ds.RadiopharmaceuticalInformationSequence = Sequence([radio])
        plane = bqml[k]
        slope = max(float(np.abs(plane).max()) / 32000.0, 1e-6)
        ds.RescaleIntercept, ds.RescaleSlope = "0", f"{slope:.10g}"
        ds.PixelData = np.clip(np.rint(plane / float(ds.RescaleSlope)), -32768, 32767).astype(np.int16).tobytes()
        paths.append(_save(ds, folder))
    return paths


def write_study(folder: str | Path, *, seed: int = 0, decay: str = "ADMIN", ct: str = "single") -> IndependentStudy:
    """Write the phantom's CT and PT series under ``folder/ct`` and ``folder/pt`` and return the truth; ``ct``
    "single" writes a CT Image per slice, "enhanced" one Enhanced CT instance."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    study = {
        "patient": f"IND-{seed:05d}",
        "study": generate_uid(),
        "frame": generate_uid(),
        "date": "20261130",
    }
    injection = datetime.datetime(2026, 11, 30, 7, 20, 0)
    pet_n = int((Z_RANGE_MM[1] - Z_RANGE_MM[0]) / PET_SLICE_MM)
    pet_axes = _Axes.make(PET_MATRIX, PET_PIXEL_MM, (0.0, 12.0), Z_RANGE_MM[0] + 1.1, PET_SLICE_MM, pet_n)
    ct_n = int((Z_RANGE_MM[1] - Z_RANGE_MM[0]) / CT_SLICE_MM)
    ct_axes = _Axes.make(CT_MATRIX, CT_PIXEL_MM, (0.0, 5.0), Z_RANGE_MM[0], CT_SLICE_MM, ct_n)
    clean, noisy = _pet_suv(pet_axes, TUMOURS, rng)
    truth = _truth(pet_axes, clean, TUMOURS)
    hu, _ = _tissue_map(ct_axes, TUMOURS)
    (folder / "ct").mkdir(parents=True, exist_ok=True)
    (folder / "pt").mkdir(parents=True, exist_ok=True)
    writers = {"single": _write_ct, "enhanced": _write_ct_enhanced}
    ct_paths = writers[ct](folder / "ct", study, ct_axes, hu)
    pt_paths = _write_pt(folder / "pt", study, pet_axes, noisy, decay, injection)
    return IndependentStudy(ct_paths, pt_paths, truth, study["study"], noisy, hu)


# --- reading the node's results back, with the evaluator's own code (pydicom and highdicom only) ---


def sorted_headers(paths: list[Path]) -> list[Dataset]:
    """The headers of one axial series, feet to head (ascending z). A multi-frame instance gives one header per
    frame (its geometry from the functional groups, Referenced Frame Number the frame)."""
    from pydicom import dcmread

    headers: list[Dataset] = [dcmread(p, stop_before_pixels=True) for p in paths]
    if len(headers) == 1 and int(headers[0].get("NumberOfFrames", 1)) > 1:
        headers = _frame_headers(headers[0])
    return sorted(headers, key=lambda ds: float(ds.ImagePositionPatient[2]))


def _frame_headers(ds: Dataset) -> list[Dataset]:
    """One header per frame of a multi-frame instance, with the single-frame geometry attributes."""
    shared = ds.SharedFunctionalGroupsSequence[0]
    out = []
    for number, frame in enumerate(ds.PerFrameFunctionalGroupsSequence, start=1):
        header = _item(
            SOPInstanceUID=ds.SOPInstanceUID,
            SeriesInstanceUID=ds.SeriesInstanceUID,
            Rows=ds.Rows,
            Columns=ds.Columns,
            ReferencedFrameNumber=number,
            ImagePositionPatient=frame.PlanePositionSequence[0].ImagePositionPatient,
            ImageOrientationPatient=shared.PlaneOrientationSequence[0].ImageOrientationPatient,
            PixelSpacing=shared.PixelMeasuresSequence[0].PixelSpacing,
        )
        out.append(header)
    return out


def voxel_points(headers: Items[Dataset]) -> np.ndarray:
    """Patient (x, y, z) of every voxel centre of an axial series sorted by :func:`sorted_headers`,
    shape (slices, rows, columns, 3)."""
    pos = np.asarray([[float(v) for v in ds.ImagePositionPatient] for ds in headers])
    ori = np.asarray([float(v) for v in headers[0].ImageOrientationPatient])
    dy, dx = (float(v) for v in headers[0].PixelSpacing)
    rows, cols = np.arange(int(headers[0].Rows)), np.arange(int(headers[0].Columns))
    return np.asarray(
        pos[:, None, None, :]
        + rows[None, :, None, None] * dy * ori[None, None, None, 3:]
        + cols[None, None, :, None] * dx * ori[None, None, None, :3]
    )


def nearest_voxel(headers: Items[Dataset], point: tuple[float, float, float]) -> tuple[int, int, int]:
    """(slice, row, column) of the voxel of the sorted axial series ``headers`` nearest to a patient point."""
    p = np.asarray(point)
    pos = np.asarray([[float(v) for v in ds.ImagePositionPatient] for ds in headers])
    ori = np.asarray([float(v) for v in headers[0].ImageOrientationPatient])
    normal = np.cross(ori[:3], ori[3:])
    k = int(np.argmin(np.abs((pos - p) @ normal)))
    dy, dx = (float(v) for v in headers[0].PixelSpacing)
    r = int(np.clip(round(float((p - pos[k]) @ ori[3:]) / dy), 0, int(headers[0].Rows) - 1))
    c = int(np.clip(round(float((p - pos[k]) @ ori[:3]) / dx), 0, int(headers[0].Columns) - 1))
    return k, r, c


def segments_on(seg: Dataset, headers: Items[Dataset]) -> dict[str, np.ndarray]:
    """Each segment of a SEG on the grid of the series ``headers`` (sorted), by Tracking UID."""
    import highdicom as hd

    reader = seg if isinstance(seg, hd.seg.Segmentation) else hd.seg.Segmentation.from_dataset(seg, copy=True)
    if "ReferencedFrameNumber" in headers[0]:  # the frames of one multi-frame instance
        frames = [int(ds.ReferencedFrameNumber) for ds in headers]
        uid = str(headers[0].SOPInstanceUID)
        masks = reader.get_pixels_by_source_frame(uid, frames, assert_missing_frames_are_empty=True)
    else:
        uids = [str(ds.SOPInstanceUID) for ds in headers]
        masks = reader.get_pixels_by_source_instance(uids, assert_missing_frames_are_empty=True)
    return {str(item.TrackingUID): np.asarray(masks[..., n] > 0) for n, item in enumerate(reader.SegmentSequence)}


def referenced_series(seg: Dataset) -> str:
    """The Series Instance UID a SEG was derived from."""
    return str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)


def frame_sources(seg: Dataset) -> set[str]:
    """The SOP Instance UIDs a SEG's frames were derived from."""
    return {
        str(item.ReferencedSOPInstanceUID)
        for frame in seg.PerFrameFunctionalGroupsSequence
        for derivation in frame.DerivationImageSequence
        for item in derivation.SourceImageSequence
    }


def sr_suv_max(sr: Dataset) -> dict[str, float]:
    """SUVbw max (DCM 126401 with Derivation SCT 56851009 Maximum) of each TID 1500 measurement group of an SR,
    by the group's Tracking Unique Identifier."""
    out: dict[str, float] = {}

    def code(item: Dataset, kw: str) -> str:
        seq = item.get(kw) or []
        return str(seq[0].CodeValue) if seq else ""

    def walk(items: Items[Dataset]) -> None:
        for item in items:
            if item.get("ValueType") == "CONTAINER" and code(item, "ConceptNameCodeSequence") == "125007":
                content = item.get("ContentSequence", [])
                tracking = [str(c.UID) for c in content if code(c, "ConceptNameCodeSequence") == "112040"]
                for c in content:
                    if c.get("ValueType") != "NUM" or code(c, "ConceptNameCodeSequence") != "126401":
                        continue
                    mods = [code(m, "ConceptCodeSequence") for m in c.get("ContentSequence", [])]
                    if "56851009" in mods and tracking:
                        out[tracking[0]] = float(c.MeasuredValueSequence[0].NumericValue)
            elif "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(sr.get("ContentSequence", []))
    return out


@dataclass
class LesionVerdict:
    """How the node's results fare on one true tumour."""

    name: str
    segments: list[str]  # tracking UIDs of the PET SEG segments that overlap it
    dice: float  # of the best of them against the sphere (PET voxel centres inside it)
    suv_max_truth: float
    suv_max_sr: float | None  # the SR's SUVbw max of that segment
    on_ct: bool  # the same segment on the CT SEG covers the CT voxel nearest the tumour centre

    @property
    def suv_error(self) -> float | None:
        """Relative error of the SR's SUVmax against the truth."""
        if self.suv_max_sr is None:
            return None
        return (self.suv_max_sr - self.suv_max_truth) / self.suv_max_truth


@dataclass
class Evaluation:
    """The node's results against the truth of an :class:`IndependentStudy`."""

    lesions: list[LesionVerdict]
    myocardium_segments: list[str]  # segments with a voxel in the myocardium
    other_segments: list[str]  # segments that overlap no tumour
    ct_seg_references_ct: bool

    def failures(self, *, min_dice: float = 0.5, max_suv_error: float = 0.10) -> list[str]:
        """What falls short of the acceptance (empty when nothing does): every tumour one segment with Dice
        over ``min_dice``, its SR SUVmax within ``max_suv_error`` of the truth and its segment on the CT too;
        nothing on the myocardium; the CT SEG referencing the CT."""
        out = [] if self.ct_seg_references_ct else ["the CT SEG does not reference the CT"]
        if self.myocardium_segments:
            out.append(f"segments on the myocardium: {self.myocardium_segments}")
        for lesion in self.lesions:
            if len(lesion.segments) != 1:
                out.append(f"{lesion.name}: {len(lesion.segments)} segments")
            if lesion.dice <= min_dice:
                out.append(f"{lesion.name}: Dice {lesion.dice:.2f}")
            if lesion.suv_error is None or abs(lesion.suv_error) >= max_suv_error:
                out.append(f"{lesion.name}: SR SUVmax {lesion.suv_max_sr} against {lesion.suv_max_truth:.2f}")
            if not lesion.on_ct:
                out.append(f"{lesion.name}: its segment on the CT misses its centre")
        return out


def evaluate(study: IndependentStudy, objects: Items[Dataset]) -> Evaluation:
    """Read the node's SEGs and SR (``objects``: a PET SEG, a CT SEG and an SR) back against the truth."""
    pt, ct = sorted_headers(study.pt_paths), sorted_headers(study.ct_paths)
    segs = {referenced_series(ds): ds for ds in objects if ds.Modality == "SEG"}
    pet_seg, ct_seg = segs[str(pt[0].SeriesInstanceUID)], segs[str(ct[0].SeriesInstanceUID)]
    (sr,) = [ds for ds in objects if ds.Modality == "SR"]
    pet_masks, ct_masks = segments_on(pet_seg, pt), segments_on(ct_seg, ct)
    pet_points = voxel_points(pt)
    suv = sr_suv_max(sr)
    verdicts = []
    touched: set[str] = set()
    for tumour in study.tumours:
        truth = tumour.contains(pet_points)
        hits = [uid for uid, m in pet_masks.items() if (m & truth).any()]
        touched |= set(hits)
        dice = {uid: 2.0 * float((pet_masks[uid] & truth).sum()) / (pet_masks[uid].sum() + truth.sum()) for uid in hits}
        best = max(dice, key=lambda uid: dice[uid]) if hits else None
        centre = nearest_voxel(ct, tumour.center)
        verdicts.append(
            LesionVerdict(
                tumour.name,
                hits,
                dice[best] if best else 0.0,
                tumour.suv_max,
                suv.get(best) if best else None,
                bool(best in ct_masks and ct_masks[best][centre]) if best else False,
            )
        )
    heart = study.in_myocardium(pet_points)
    ct_uids = {str(ds.SOPInstanceUID) for ds in ct}
    ct_refs = frame_sources(ct_seg)
    return Evaluation(
        verdicts,
        [uid for uid, m in pet_masks.items() if (m & heart).any()],
        [uid for uid in pet_masks if uid not in touched],
        bool(ct_refs) and ct_refs <= ct_uids,
    )
