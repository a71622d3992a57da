"""The Findings contract: what a pipeline returns and what the output encoders consume.

Pipelines know nothing of DICOM encoding; encoders know nothing of models. Both speak this module.
Vocabulary is kept as small string enums here; :mod:`dicom_node.outputs` maps each member to its
standard code (SNOMED CT, DCM, UCUM).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np


class Category(StrEnum):
    """What a finding's mask marks (becomes the SEG segment's property type)."""

    LUNG = "lung"
    NODULE = "nodule"
    MASS = "mass"  # a lung lesion of 30 mm or more (Fleischner glossary): reported whole, never as a nodule
    RIB = "rib"
    PLEURAL_LINE = "pleural_line"
    B_LINE = "b_line"
    CONSOLIDATION = "consolidation"
    EFFUSION = "effusion"
    TUMOUR = "tumour"  # a PET/CT tumour (hypermetabolic lesion that is not physiological uptake)


class Quantity(StrEnum):
    """Measured quantities; each has one fixed UCUM unit (see :data:`UNITS`)."""

    LONG_AXIS = "long_axis"
    SHORT_AXIS = "short_axis"
    DIAMETER = "diameter"
    VOLUME = "volume"
    MEAN_HU = "mean_hu"
    AREA = "area"
    LENGTH = "length"
    REGULARITY = "regularity"
    COUNT = "count"
    SUV_MAX = "suv_max"  # PET: SUVbw, maximum in the lesion
    SUV_MEAN = "suv_mean"
    SUV_PEAK = "suv_peak"  # mean SUVbw of the hottest 1 ml sphere (PERCIST)
    MTV = "mtv"  # metabolic tumour volume
    TLG = "tlg"  # total lesion glycolysis = SUVmean x MTV


UNITS: dict[Quantity, str] = {
    Quantity.LONG_AXIS: "mm",
    Quantity.SHORT_AXIS: "mm",
    Quantity.DIAMETER: "mm",
    Quantity.VOLUME: "mm3",
    Quantity.MEAN_HU: "[hnsf'U]",
    Quantity.AREA: "mm2",
    Quantity.LENGTH: "mm",
    Quantity.REGULARITY: "1",
    Quantity.COUNT: "{count}",
    Quantity.SUV_MAX: "{SUVbw}g/ml",
    Quantity.SUV_MEAN: "{SUVbw}g/ml",
    Quantity.SUV_PEAK: "{SUVbw}g/ml",
    Quantity.MTV: "ml",
    Quantity.TLG: "g",
}


class Evaluation(StrEnum):
    """Coded qualitative evaluations a finding may carry."""

    MALIGNANCY_LIKELIHOOD = "malignancy_likelihood"
    COMPOSITION = "composition"
    FRAME_CLASS = "frame_class"


class Laterality(StrEnum):
    LEFT = "left"
    RIGHT = "right"
    BOTH = "both"


@dataclass(frozen=True)
class Measurement:
    """One measured value; the unit follows from the quantity."""

    quantity: Quantity
    value: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "quantity", Quantity(self.quantity))
        if not np.isfinite(self.value):
            raise ValueError(f"measurement {self.quantity.value} is not finite: {self.value}")

    @property
    def unit(self) -> str:
        return UNITS[self.quantity]


@dataclass
class Finding:
    """One thing a pipeline found, with its mask aligned to the volume it ran on.

    ``mask`` has exactly the shape of ``Volume.pixels`` (slices or frames, rows, columns).
    ``evaluations`` maps an :class:`Evaluation` to a free value key such as ``"high"``,
    ``"solid"`` or ``"b_lines"`` (the encoders hold the codes for known values).
    ``key_slice`` is the slice/frame index a viewer should open on (the largest cross-section).
    """

    category: Category
    mask: np.ndarray
    label: str = ""
    measurements: list[Measurement] = field(default_factory=list)
    evaluations: dict[Evaluation, str] = field(default_factory=dict)
    score: float = 1.0
    laterality: Laterality | None = None
    key_slice: int | None = None

    def __post_init__(self) -> None:
        self.category = Category(self.category)
        if self.laterality is not None:
            self.laterality = Laterality(self.laterality)
        self.evaluations = {Evaluation(k): v for k, v in self.evaluations.items()}
        self.mask = np.asarray(self.mask, dtype=bool)
        if self.mask.ndim != 3:
            raise ValueError(f"finding mask must be 3-D (slices, rows, cols), got shape {self.mask.shape}")
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"finding score must be in [0, 1], got {self.score}")
        if not self.label:
            self.label = self.category.value.replace("_", " ")
        if self.key_slice is None and self.mask.any():
            self.key_slice = int(np.argmax(self.mask.reshape(self.mask.shape[0], -1).sum(axis=1)))

    def measurement(self, quantity: Quantity | str) -> float | None:
        """The value of ``quantity`` if this finding carries it."""
        quantity = Quantity(quantity)
        for m in self.measurements:
            if m.quantity is quantity:
                return m.value
        return None


@dataclass
class Findings:
    """Everything one pipeline run produced for one volume.

    An empty ``findings`` list is a result ("nothing found"), reported as such. ``not_applicable``
    carries the reason when the pipeline refused the input (e.g. "does not look like lung ultrasound").
    ``classification`` holds study/cine-level class probabilities; ``conclusions`` short sentences.
    """

    pipeline: str
    version: str
    findings: list[Finding] = field(default_factory=list)
    conclusions: list[str] = field(default_factory=list)
    classification: dict[str, float] = field(default_factory=dict)
    not_applicable: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def nothing_found(self) -> bool:
        return not self.findings and self.not_applicable is None

    def summary(self) -> str:
        """One line for logs and the CLI (no patient data)."""
        if self.not_applicable:
            return f"{self.pipeline} {self.version}: not applicable ({self.not_applicable})"
        if not self.findings:
            return f"{self.pipeline} {self.version}: no findings"
        counts: dict[str, int] = {}
        for f in self.findings:
            counts[f.category.value] = counts.get(f.category.value, 0) + 1
        parts = ", ".join(f"{n} {c}{'' if n == 1 else 's'}" for c, n in sorted(counts.items()))
        return f"{self.pipeline} {self.version}: {parts}"
