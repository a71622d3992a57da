"""Settings shared by the encoders (who made the object, how it is numbered)."""

from __future__ import annotations

from dataclasses import dataclass

from dicom_node import __version__ as NODE_VERSION

KINDS: tuple[str, ...] = ("seg", "sr", "gsps", "overlay")
"""Object kinds :func:`dicom_node.outputs.encode` can produce, in the order they are built."""

SERIES_OFFSETS: dict[str, int] = {"seg": 0, "sr": 1, "gsps": 2, "overlay": 3, "paired_seg": 4}
"""Series Number of each result series after :attr:`EncodeOptions.series_number`; ``paired_seg`` is the SEG on
a paired series (the CT of a PET/CT), the next ones for further paired series."""


@dataclass(frozen=True)
class EncodeOptions:
    """Who made the result objects and how they are labelled.

    Attributes:
        series_number: Series Number of the SEG; SR, GSPS, overlay and the SEG on a paired series (the CT of a
            PET/CT) take the next numbers.
        manufacturer: Manufacturer of the results (General Equipment module).
        node_name: Name of this node: device observer name in SR, device serial number.
        institution_name: Institution Name written into the results, if any.
        seg_type: ``"BINARY"`` (default) or ``"LABELMAP"`` (Orthanc 1.10 needs UnknownSopClassAccepted).
        max_contour_points: Most points of an outline polygon in SR/GSPS.
    """

    series_number: int = 900
    manufacturer: str = "dicom-node"
    node_name: str = "dicom-node"
    institution_name: str | None = None
    seg_type: str = "BINARY"
    max_contour_points: int = 64

    def __post_init__(self) -> None:
        if self.seg_type not in ("BINARY", "LABELMAP"):
            raise ValueError(f"seg_type must be BINARY or LABELMAP, got {self.seg_type!r}")
        if not 0 < self.series_number < 2**31 - 16:
            raise ValueError(f"series_number out of range: {self.series_number}")

    @property
    def software_versions(self) -> str:
        return f"dicom-node {NODE_VERSION}"

    def equipment(self, pipeline: str, version: str) -> dict[str, str]:
        """General Equipment keyword arguments for highdicom constructors: the same on every object."""
        return {
            "manufacturer": self.manufacturer,
            "manufacturer_model_name": pipeline[:64],
            "software_versions": f"{pipeline} {version}"[:64],
            "device_serial_number": self.node_name[:64],
        }

    def series_number_of(self, kind: str) -> int:
        """Series Number of the result series of ``kind``."""
        return self.series_number + SERIES_OFFSETS[kind]
