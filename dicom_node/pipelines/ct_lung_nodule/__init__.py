"""Chest CT lung nodules: lung field -> 2.5-D U-Net -> 3-D components -> FPR3D, Res-MTNet -> calibrators -> Findings.

1. Lung fields from :mod:`dicom_node.pipelines.ct_lung_field`; the search region is each lung's
   per-slice convex hull (so juxtapleural nodules, which notch the lung outline, stay inside).
2. The lung bounding box is resampled in-plane to 1 mm pixels and every slice goes through a 2.5-D
   U-Net (3 adjacent slices in, nodule probability out).
3. Probabilities >= ``grow_threshold`` inside the region are grouped into 3-D connected components;
   those reaching ``threshold`` somewhere are kept (hysteresis: confident seed, softer outline). With
   ``faint_levels`` and FPR3D, components seeded at those low levels that touch no confident one are
   kept too where FPR3D vouches for them (logit >= ``faint_min_logit``). With ``hu_refine``, each
   outline is redrawn at an HU level between the nodule's and the surrounding parenchyma's.
4. When the bundle has it, a 32 mm cube around each component (isotropic 1 mm, with its mask) goes
   through FPR3D, an ensemble of 3-D networks (optionally over the cube's eight flips) that tells a
   nodule from a vessel by what continues above and below; then each component's patch (3 slices + its
   mask on the key slice) goes through Res-MTNet: nodule vs. false positive (vessels, bronchial walls),
   malignancy, composition, diameter.
5. Features of each component (size, elongation, HU statistics, dense tissue around it, pleural
   contact, outline shape of the mask and of an HU-defined outline) and the network logits go through
   the bundle's calibrators (:mod:`dicom_node.networks.calibrator`, stored as JSON in its metadata and
   fitted on calibration data). In the shipped bundle: detection score, a logistic model on
   ``DETECT_FEATURES`` (the FPR3D logit included); malignancy probability, gradient-boosted trees
   (:class:`~dicom_node.networks.boosted.BoostedTrees`) on ``MALIGNANCY_TREE_FEATURES`` (every feature
   but size); diameter, a linear model on Res-MTNet's diameter and the key-slice axes. Without a
   calibrator, the networks' outputs are used.
6. Components scoring >= ``min_score`` become Findings (Category.NODULE) with the mask on the
   original grid, long/short axis (mm) on the key slice, volume (mm3), mean HU, diameter (network),
   evaluations ``malignancy_likelihood`` in {"low", "intermediate", "high"} and ``composition`` in
   {"solid", "part_solid", "ground_glass"}; ``score`` = the detection score.

Modules: :mod:`.candidates` (candidates, search region, patches), :mod:`.features` (candidate
features), :mod:`.model` (:class:`NoduleModel`, bundle loading), :mod:`.detection` (a volume in,
candidates back on its grid), :mod:`.pipeline` (the registered ``ct_lung_nodule`` pipeline).

Research use only, not for diagnosis.
"""

from dicom_node.networks.calibrator import Calibrator, ScoreModel, calibrator_from_json
from dicom_node.pipelines.ct_lung_nodule.candidates import (
    HU_HI,
    HU_LO,
    PATCH,
    WORK_MM,
    Candidate,
    extract_patch,
    extract_patch3d,
    long_short_axes,
    search_region,
)
from dicom_node.pipelines.ct_lung_nodule.detection import (
    MALIGNANCY_CUTS,
    Detection,
    detect_in_volume,
    malignancy_key,
)
from dicom_node.pipelines.ct_lung_nodule.features import (
    DETECT_FEATURES,
    MALIGNANCY_TREE_FEATURES,
    candidate_features,
)
from dicom_node.pipelines.ct_lung_nodule.model import (
    COMPOSITIONS,
    DEFAULT_BUNDLE,
    FAINT_MIN_LOGIT,
    FAINT_SCREEN_LOGIT,
    SCREEN_LOGIT,
    NoduleModel,
    fpr3d_verifier,
    load_model,
)
from dicom_node.pipelines.ct_lung_nodule.pipeline import CtLungNodule  # importing it registers the pipeline

__all__ = [
    "COMPOSITIONS",
    "DEFAULT_BUNDLE",
    "DETECT_FEATURES",
    "FAINT_MIN_LOGIT",
    "FAINT_SCREEN_LOGIT",
    "HU_HI",
    "HU_LO",
    "MALIGNANCY_CUTS",
    "MALIGNANCY_TREE_FEATURES",
    "PATCH",
    "SCREEN_LOGIT",
    "WORK_MM",
    "Calibrator",
    "Candidate",
    "CtLungNodule",
    "Detection",
    "NoduleModel",
    "ScoreModel",
    "calibrator_from_json",
    "candidate_features",
    "detect_in_volume",
    "extract_patch",
    "extract_patch3d",
    "fpr3d_verifier",
    "load_model",
    "long_short_axes",
    "malignancy_key",
    "search_region",
]
