"""The ``pet_tumour`` pipeline (FDG PET/CT tumours, SUV measures); importing the package registers it."""

from dicom_node.pipelines.pet_tumour.pipeline import PetCtVolume, PetTumour

__all__ = ["PetCtVolume", "PetTumour"]
