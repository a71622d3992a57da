"""The in-memory image a pipeline runs on."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset


@dataclass
class Volume:
    """Pixels plus the geometry and the source headers needed to reference them.

    ``pixels`` is (slices or frames, rows, columns), float32: Hounsfield units for CT,
    grayscale 0..1 for ultrasound. ``spacing`` is (between slices, row, column) in mm; for
    ultrasound cines the first entry is 0 (frames are in time, not space).
    ``sources`` holds the source instances' headers (no pixel data): one per slice for a
    single-frame series in slice order, or a single dataset for a multi-frame instance, in which case
    ``frame_numbers[i]`` is the 1-based frame of that dataset shown in ``pixels[i]``.
    ``crop`` is (row0, col0, row1, col1) when ``pixels`` is a crop of the stored image (ultrasound
    region): encoders must pad masks back to the full image with it.
    """

    pixels: np.ndarray
    spacing: tuple[float, float, float]
    modality: str
    sources: list[Dataset]
    frame_numbers: list[int] | None = None
    crop: tuple[int, int, int, int] | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.pixels.ndim != 3:
            raise ValueError(f"volume pixels must be 3-D, got shape {self.pixels.shape}")
        if not self.sources:
            raise ValueError("a volume needs at least one source dataset")
        if self.frame_numbers is None and len(self.sources) != self.pixels.shape[0]:
            raise ValueError(
                f"{len(self.sources)} source datasets for {self.pixels.shape[0]} slices; "
                "single-frame series need one source per slice"
            )
        if self.frame_numbers is not None and len(self.frame_numbers) != self.pixels.shape[0]:
            raise ValueError("frame_numbers must have one entry per slice")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (int(self.pixels.shape[0]), int(self.pixels.shape[1]), int(self.pixels.shape[2]))

    @property
    def is_multiframe(self) -> bool:
        return self.frame_numbers is not None

    @property
    def full_shape(self) -> tuple[int, int, int]:
        """Shape of the stored image (before ``crop``)."""
        if self.crop is None:
            return self.shape
        src = self.sources[0]
        return (self.shape[0], int(src.Rows), int(src.Columns))

    def paired_volumes(self) -> list[Volume]:
        """Other series of the same Frame of Reference that the findings are also encoded on (a SEG each, the
        masks carried over through both geometries): the CT of a PET/CT. Empty for a plain volume."""
        return []

    def uncrop(self, mask: np.ndarray) -> np.ndarray:
        """Place a mask of ``shape`` into the full stored image grid."""
        if self.crop is None:
            return mask
        r0, c0, r1, c1 = self.crop
        full = np.zeros(self.full_shape, dtype=mask.dtype)
        full[:, r0:r1, c0:c1] = mask
        return full


def geometry_only(volume: Volume) -> Volume:
    """``volume`` without its pixels: the same sources, spacing, frames and shape, the pixels a read-only
    zero-stride array (no memory). For a grid kept only to write results on, such as a PET/CT's CT."""
    empty = np.broadcast_to(np.zeros((), dtype=np.float32), volume.shape)
    return Volume(
        pixels=empty,
        spacing=volume.spacing,
        modality=volume.modality,
        sources=volume.sources,
        frame_numbers=volume.frame_numbers,
        crop=volume.crop,
        notes=list(volume.notes),
    )
