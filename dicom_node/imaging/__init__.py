"""Series to volumes: CT slices to HU volumes, ultrasound frames to grayscale stacks."""

from dicom_node.imaging.volume import Volume

__all__ = ["Volume"]
