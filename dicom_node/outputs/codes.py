"""Standard codes for the Findings vocabulary (SNOMED CT, DCM, UCUM, LOINC).

Every :class:`~dicom_node.findings.Category`, :class:`~dicom_node.findings.Quantity`,
:class:`~dicom_node.findings.Evaluation` and :class:`~dicom_node.findings.Laterality` maps to a
coded concept here. Where no standard code exists (B-line artefact, nodule composition, shape
regularity, free evaluation values) a code from the private scheme :data:`LOCAL_SCHEME` is used; those
are listed in :data:`LOCAL_CODES` so that a reviewer sees every non-standard code in one place.
"""

from __future__ import annotations

import logging

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicom_node.findings import Category, Evaluation, Laterality, Quantity

logger = logging.getLogger(__name__)

LOCAL_SCHEME = "99DICOMNODE"
"""Private coding scheme designator (the 99 prefix marks a private scheme, PS3.16 section 8)."""

ALGORITHM_FAMILY = codes.DCM.ArtificialIntelligence

MORPHOLOGICALLY_ABNORMAL = codes.SCT.MorphologicallyAbnormalStructure
ANATOMICAL_STRUCTURE = codes.SCT.AnatomicalStructure
LUNG = codes.SCT.Lung

DETECTION_CONFIDENCE = codes.DCM.CertaintyOfFinding
"""Concept of a finding's score: DCM (111012, "Certainty of Finding"), the CAD term for how sure the
detector is that the finding is real, in percent. Not DCM (111047, "Probability of cancer"), which is
the malignancy likelihood evaluation."""

LOCAL_CODES: dict[str, Code] = {
    "b_line": Code("BLINE", LOCAL_SCHEME, "B-line artifact"),
    "composition": Code("COMPOSITION", LOCAL_SCHEME, "Composition"),
    "frame_class": Code("FRAMECLASS", LOCAL_SCHEME, "Frame class"),
    "regularity": Code("REGULARITY", LOCAL_SCHEME, "Shape regularity"),
    "count": Code("COUNT", LOCAL_SCHEME, "Count"),
    "not_applicable": Code("NOTAPPLICABLE", LOCAL_SCHEME, "Algorithm not applicable to input"),
}

SUV_BW = Code("126401", "DCM", "SUVbw")
"""Concept of PET uptake measurements (dcmqi's and QIICR's usage), unit ``{SUVbw}g/ml``; the statistic is
the derivation: SCT Maximum / Mean, DCM (126031, "Peak Value Within ROI")."""
NON_LUNG: frozenset[Category] = frozenset({Category.TUMOUR})
"""Categories whose finding site is not the lung (PET lesions anywhere in the body)."""

# Category -> (segmented property category, segmented property type)
CATEGORY_CODES: dict[Category, tuple[Code, Code]] = {
    Category.LUNG: (ANATOMICAL_STRUCTURE, codes.SCT.Lung),
    Category.NODULE: (MORPHOLOGICALLY_ABNORMAL, codes.SCT.Nodule),
    Category.MASS: (MORPHOLOGICALLY_ABNORMAL, codes.SCT.Mass),
    Category.RIB: (ANATOMICAL_STRUCTURE, codes.SCT.Rib),
    Category.PLEURAL_LINE: (ANATOMICAL_STRUCTURE, codes.SCT.Pleura),
    Category.B_LINE: (MORPHOLOGICALLY_ABNORMAL, LOCAL_CODES["b_line"]),
    Category.CONSOLIDATION: (MORPHOLOGICALLY_ABNORMAL, Code("95436008", "SCT", "Lung consolidation")),
    Category.EFFUSION: (MORPHOLOGICALLY_ABNORMAL, codes.SCT.PleuralEffusion),
    Category.TUMOUR: (MORPHOLOGICALLY_ABNORMAL, codes.SCT.Neoplasm),
}

# Quantity -> (concept name, derivation modifier or None)
QUANTITY_CODES: dict[Quantity, tuple[Code, Code | None]] = {
    Quantity.LONG_AXIS: (codes.SCT.LongAxis, None),
    Quantity.SHORT_AXIS: (codes.SCT.ShortAxis, None),
    Quantity.DIAMETER: (codes.SCT.Diameter, None),
    Quantity.VOLUME: (codes.SCT.Volume, None),
    Quantity.MEAN_HU: (codes.DCM.AttenuationCoefficient, codes.SCT.Mean),
    Quantity.AREA: (codes.SCT.Area, None),
    Quantity.LENGTH: (codes.SCT.Length, None),
    Quantity.REGULARITY: (LOCAL_CODES["regularity"], None),
    Quantity.COUNT: (LOCAL_CODES["count"], None),
    Quantity.SUV_MAX: (SUV_BW, codes.SCT.Maximum),
    Quantity.SUV_MEAN: (SUV_BW, codes.SCT.Mean),
    Quantity.SUV_PEAK: (SUV_BW, codes.DCM.PeakValueWithinROI),
    Quantity.MTV: (codes.DCM.MetabolicVolume, None),
    Quantity.TLG: (codes.DCM.TotalLesionGlycolysis, None),
}

UNIT_MEANINGS: dict[str, str] = {
    "mm": "millimeter",
    "mm2": "square millimeter",
    "mm3": "cubic millimeter",
    "[hnsf'U]": "Hounsfield unit",
    "1": "no units",
    "%": "percent",
    "{count}": "count",
    "{SUVbw}g/ml": "Standardized Uptake Value body weight",
    "ml": "milliliter",
    "g": "gram",
}

EVALUATION_CODES: dict[Evaluation, Code] = {
    Evaluation.MALIGNANCY_LIKELIHOOD: codes.DCM.ProbabilityOfCancer,
    Evaluation.COMPOSITION: LOCAL_CODES["composition"],
    Evaluation.FRAME_CLASS: LOCAL_CODES["frame_class"],
}

# Known evaluation values; anything else becomes a local code (see evaluation_value_code).
EVALUATION_VALUES: dict[str, Code] = {
    "high": codes.SCT.High,
    "moderate": codes.SCT.Moderate,
    "low": codes.SCT.Low,
    "intermediate": codes.SCT.Intermediate,
    "indeterminate": codes.SCT.Indeterminate,
    "benign": codes.SCT.Benign,
    "malignant": codes.SCT.Malignant,
    "calcified": codes.SCT.Calcified,
    "ground_glass": codes.DCM.GroundGlassOpacity,
    "normal": codes.SCT.Normal,
    "abnormal": codes.SCT.Abnormal,
    "pleural_effusion": codes.SCT.PleuralEffusion,
    "consolidation": CATEGORY_CODES[Category.CONSOLIDATION][1],
}

CLINICAL_RESULTS: dict[str, Code] = {
    "normal": codes.SCT.Normal,
    "b_lines": LOCAL_CODES["b_line"],
    "consolidation": CATEGORY_CODES[Category.CONSOLIDATION][1],
    "effusion": codes.SCT.PleuralEffusion,
    "abnormal": codes.SCT.Abnormal,
}
"""Whole-input results (the lung-US cine classification) to the coded overall result of a report;
``abnormal`` is "abnormal, type uncertain" (see :func:`clinical_result`)."""
ABNORMAL_AT = 0.5
"""Probability of abnormal (1 - p(normal)) from which a classified input is abnormal."""
TYPE_SHARE = 0.5
"""Share of the abnormal probability the most likely abnormal class needs to be named: more likely
than all other abnormal classes together; below it the result is "abnormal, type uncertain"."""

LATERALITY_CODES: dict[Laterality, Code] = {
    Laterality.LEFT: codes.SCT.Left,
    Laterality.RIGHT: codes.SCT.Right,
    Laterality.BOTH: codes.SCT.Bilateral,
}

UNIT_CODE_CACHE: dict[str, Code] = {}


def category_codes(category: Category | str) -> tuple[Code, Code]:
    """Segmented property (category, type) codes of a finding category."""
    return CATEGORY_CODES[Category(category)]


def quantity_code(quantity: Quantity | str) -> tuple[Code, Code | None]:
    """Concept name of a measured quantity and its derivation (e.g. Mean for mean HU), if any."""
    return QUANTITY_CODES[Quantity(quantity)]


def unit_code(unit: str) -> Code:
    """The UCUM code of a unit string such as ``"mm"`` or ``"[hnsf'U]"``."""
    if unit not in UNIT_CODE_CACHE:
        UNIT_CODE_CACHE[unit] = Code(unit, "UCUM", UNIT_MEANINGS.get(unit, unit))
    return UNIT_CODE_CACHE[unit]


def evaluation_code(evaluation: Evaluation | str) -> Code:
    """Concept name of a qualitative evaluation."""
    return EVALUATION_CODES[Evaluation(evaluation)]


def evaluation_value_code(value: str) -> Code:
    """Code of an evaluation value: a standard code when known, else a local code of the value."""
    key = value.strip().lower().replace(" ", "_").replace("-", "_")
    if key in EVALUATION_VALUES:
        return EVALUATION_VALUES[key]
    if not key:
        raise ValueError("empty evaluation value")
    logger.debug("evaluation value %r has no standard code; using %s", value, LOCAL_SCHEME)
    return Code(key.upper()[:16], LOCAL_SCHEME, value.strip().replace("_", " ")[:64])


def clinical_result(classification: dict[str, float]) -> str | None:
    """The overall result of a classified input, decided as the hierarchy does: normal vs abnormal
    first (``abnormal`` >= :data:`ABNORMAL_AT`), then the abnormal class when it holds at least
    :data:`TYPE_SHARE` of the abnormal probability, else ``"abnormal"`` (type uncertain).

    Without an ``abnormal`` entry it is the most probable class. ``None`` when the classification has
    none of the classes of :data:`CLINICAL_RESULTS` (e.g. CT, which does not classify).
    """
    known = {k: v for k, v in classification.items() if k in CLINICAL_RESULTS and k != "abnormal"}
    if not known:
        return None
    p_abnormal = classification.get("abnormal")
    if p_abnormal is None:
        return max(known, key=lambda k: known[k])
    if p_abnormal < ABNORMAL_AT:
        return "normal"
    types = {k: v for k, v in known.items() if k != "normal"}
    top = max(types, key=lambda k: types[k], default=None)
    if top is None or types[top] < TYPE_SHARE * p_abnormal:
        return "abnormal"
    return top


def clinical_result_code(classification: dict[str, float]) -> Code | None:
    """Coded overall result of a classified input (:func:`clinical_result`); ``None`` when unclassified."""
    result = clinical_result(classification)
    return None if result is None else CLINICAL_RESULTS[result]


def laterality_code(laterality: Laterality | str) -> Code:
    """SNOMED CT code of a laterality."""
    return LATERALITY_CODES[Laterality(laterality)]


def procedure_code(modality: str) -> Code:
    """The "procedure reported" of a TID 1500 report for ``modality``."""
    if modality.upper() == "CT":
        return codes.LN.CTUnspecifiedBodyRegion
    return codes.SCT.ImagingProcedure
