"""Pipelines: volume in, Findings out. No DICOM networking, no database."""

from dicom_node.pipelines.base import Pipeline, available, create, register

__all__ = ["Pipeline", "available", "create", "register"]
