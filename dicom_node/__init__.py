"""dicom-node: a radiology AI node that sits beside a PACS."""

__version__ = "0.1.0"
