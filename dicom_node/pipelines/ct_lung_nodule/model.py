"""The lung-nodule model on arrays: :class:`NoduleModel` (U-Net, components, HU refinement, FPR3D,
Res-MTNet, calibrators) and how it is loaded from a bundle."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from dicom_node.bundles import shipped_bundle
from dicom_node.imaging.series import stack_25d
from dicom_node.networks.calibrator import ScoreModel, calibrator_from_json
from dicom_node.pipelines.ct_lung_nodule.candidates import (
    HU_HI,
    HU_LO,
    Candidate,
    extract_patch,
    extract_patch3d,
)
from dicom_node.pipelines.ct_lung_nodule.features import candidate_features

COMPOSITIONS = ("solid", "part_solid", "ground_glass")
DEFAULT_BUNDLE = shipped_bundle("ct_lung_nodule")
SCREEN_LOGIT = -4.0  # FPR3D single-view logit under which a candidate skips the ensemble's other views
FAINT_MIN_LOGIT = 1.0  # FPR3D logit a faint candidate needs to be kept (chosen on the validation seed)
FAINT_SCREEN_LOGIT = -2.5  # their one-view screen (kept ones scored >= -1.2 there on validation; 80% stop here)
# Second screens, on the mean of the members' unflipped views, whose error against the full ensemble was
# sd 0.45 and at most 3.13 logits on 1,464 candidates (12 validation phantoms of seed 777 and the real
# A0001). A candidate under it keeps that mean: a main candidate under -3 (its full logit stayed under
# -2.37 there), a faint one under -1, two logits below the 1.0 it needs (its full logit stayed under 0.07).
SECOND_SCREEN_LOGIT = -3.0
FAINT_SECOND_SCREEN_LOGIT = -1.0
# A main candidate whose logit is still that mean is read in full only if its detection score could reach
# READ_FLOOR of the operating point were its full logit ESTIMATE_MARGIN higher. With the detector's weight
# on the logit (0.85 per logit), a candidate left with its estimate would need a full logit 3.2 higher than
# the mean to reach the operating point: more than the largest error seen (3.13, 7 sd).
ESTIMATE_MARGIN = 2.0
READ_FLOOR = 0.5  # times min_score


class NoduleModel:
    """The networks plus the numeric steps, on arrays (no DICOM): used by the pipeline and by evaluation."""

    def __init__(
        self,
        unet: Any,
        resmtnet: Any | None,
        device: str = "cpu",
        threshold: float = 0.5,
        min_volume_mm3: float = 8.0,
        batch: int = 16,
        nodule_weight: float = 0.5,
        grow_threshold: float | None = None,
        detector: ScoreModel | None = None,
        malignancy: ScoreModel | None = None,
        diameter: ScoreModel | None = None,
        hu_refine: float | None = None,
        fpr3d: Any | None = None,
        screen_logit: float = SCREEN_LOGIT,
        faint_levels: tuple[float, float] | None = None,
        faint_min_logit: float = FAINT_MIN_LOGIT,
        faint_screen_logit: float = FAINT_SCREEN_LOGIT,
        second_screen_logit: float | None = None,
        faint_second_screen_logit: float | None = None,
    ) -> None:
        self.unet = unet
        self.fpr3d = fpr3d
        self.screen_logit = screen_logit
        self.faint_levels = faint_levels
        self.faint_min_logit = faint_min_logit
        self.faint_screen_logit = faint_screen_logit
        self.second_screen_logit = second_screen_logit
        self.faint_second_screen_logit = faint_second_screen_logit
        self.resmtnet = resmtnet
        self.device = device
        self.threshold = threshold
        self.min_volume_mm3 = min_volume_mm3
        self.batch = batch
        self.nodule_weight = nodule_weight
        self.grow_threshold = threshold if grow_threshold is None else min(grow_threshold, threshold)
        self.detector = detector
        self.malignancy = malignancy
        self.diameter = diameter
        self.hu_refine = hu_refine

    def probabilities(self, norm: np.ndarray, slices: Sequence[int] | None = None) -> np.ndarray:
        """U-Net nodule probability for every slice of a normalized working-grid volume."""
        import torch

        n, h, w = norm.shape
        prob = np.zeros(norm.shape, dtype=np.float32)
        todo = list(range(n)) if slices is None else list(slices)
        if not todo:
            return prob
        ph, pw = (-h) % 16, (-w) % 16
        inputs = stack_25d(norm)
        use_amp = self.device.startswith("cuda")
        with torch.inference_mode():
            for i in range(0, len(todo), self.batch):
                idx = todo[i : i + self.batch]
                x = torch.from_numpy(np.pad(inputs[idx], ((0, 0), (0, 0), (0, ph), (0, pw)))).to(self.device)
                with torch.autocast("cuda", enabled=use_amp):
                    logits = self.unet(x)
                prob[idx] = torch.sigmoid(logits.float())[:, 0, :h, :w].cpu().numpy()
        return prob

    def components(
        self,
        prob: np.ndarray,
        region: np.ndarray,
        spacing: tuple[float, float, float],
        levels: tuple[float, float] | None = None,
    ) -> list[Candidate]:
        """3-D connected components of ``prob >= grow`` inside ``region`` that reach ``seed`` (hysteresis: a
        component needs a confident seed; its outline follows the lower level). ``levels`` = (seed, grow),
        by default (``threshold``, ``grow_threshold``)."""
        seed, grow = (self.threshold, self.grow_threshold) if levels is None else levels
        binary = (prob >= grow) & region
        labels, n = ndi.label(binary)
        if n == 0:
            return []
        if grow < seed:
            seeded = np.zeros(n + 1, dtype=bool)
            seeded[np.unique(labels[(prob >= seed) & binary])] = True
            seeded[0] = False
            labels = np.where(seeded[labels], labels, 0)
        voxel = float(np.prod(spacing))
        out = []
        for i, sl in enumerate(ndi.find_objects(labels), start=1):
            if sl is None:
                continue
            comp = labels[sl] == i
            if comp.sum() * voxel < self.min_volume_mm3:
                continue
            p = prob[sl][comp]
            areas = comp.reshape(comp.shape[0], -1).sum(axis=1)
            k_local = int(np.argmax(areas))
            k = k_local + sl[0].start
            rr, cc = np.nonzero(comp[k_local])
            rr = rr + sl[1].start
            cc = cc + sl[2].start
            out.append(
                Candidate(
                    box=(sl[0], sl[1], sl[2]),
                    local=comp,
                    shape=(int(prob.shape[0]), int(prob.shape[1]), int(prob.shape[2])),
                    prob_max=float(p.max()),
                    prob_mean=float(p.mean()),
                    key_slice=k,
                    center=(k, round(float(rr.mean())), round(float(cc.mean()))),
                )
            )
        return out

    def faint_components(
        self, prob: np.ndarray, region: np.ndarray, spacing: tuple[float, float, float], confident: list[Candidate]
    ) -> list[Candidate]:
        """Components seeded at the low ``faint_levels`` (seed, grow) that touch no ``confident`` candidate
        (none without ``faint_levels`` or an FPR3D network, which must vouch for each: see :meth:`detect`).

        Faint nodules (ground glass, often against the pleura) can peak at a U-Net probability of 0.05,
        below the confident seed; so do many vessels and fissures.
        """
        if self.faint_levels is None or self.fpr3d is None:
            return []
        taken = np.zeros(prob.shape, dtype=bool)
        for c in confident:
            taken[c.box] |= c.local
        return [c for c in self.components(prob, region, spacing, self.faint_levels) if not taken[c.box][c.local].any()]

    def refine(self, norm: np.ndarray, region: np.ndarray, candidates: list[Candidate]) -> None:
        """HU-aware outline inside each component's neighbourhood (in place; no-op unless ``hu_refine``).

        The nodule's level is the 25th HU percentile inside the U-Net component (so a part-solid
        nodule's ground glass counts), the parenchyma's is the median HU below -500 in a shell around
        it; voxels above ``bg + hu_refine * (level - bg)`` within 2 voxels of the component, inside the
        region and connected to the component, form the new mask. This follows the partial-volume
        edge (the truth is "at least half nodule") where the U-Net's outline is smoother.
        """
        if not self.hu_refine:
            return
        n, h, w = norm.shape
        for c in candidates:
            box = tuple(
                slice(max(b.start - 2, 0), min(b.stop + 2, size)) for b, size in zip(c.box, (n, h, w), strict=True)
            )
            comp = np.zeros([b.stop - b.start for b in box], dtype=bool)
            comp[tuple(slice(b.start - o.start, b.stop - o.start) for b, o in zip(c.box, box, strict=True))] = c.local
            hu = norm[box].astype(np.float32) * (HU_HI - HU_LO) + HU_LO
            reg = region[box]
            shell = ndi.binary_dilation(comp, structure=np.ones((3, 5, 5), bool)) & ~comp & reg
            bg_vals = hu[shell & (hu < -500)]
            bg = float(np.median(bg_vals)) if bg_vals.size else -850.0
            level = float(np.percentile(hu[comp], 25))
            if level <= bg:
                continue
            near = ndi.binary_dilation(comp, structure=np.ones((3, 3, 3), bool), iterations=2) & reg
            mask = (hu >= bg + self.hu_refine * (level - bg)) & near
            lab, nl = ndi.label(mask)
            if nl == 0:
                continue
            keep = np.zeros(nl + 1, dtype=bool)
            keep[np.unique(lab[mask & comp])] = True
            keep[0] = False
            mask = keep[lab]
            if not mask.any():
                continue
            c.raw_box, c.raw_local = c.box, c.local
            zz, yy, xx = np.nonzero(mask)
            inner = (
                slice(int(zz.min()), int(zz.max()) + 1),
                slice(int(yy.min()), int(yy.max()) + 1),
                slice(int(xx.min()), int(xx.max()) + 1),
            )
            c.box = tuple(  # type: ignore[assignment]
                slice(int(o.start + i.start), int(o.start + i.stop)) for o, i in zip(box, inner, strict=True)
            )
            c.local = mask[inner]
            areas = c.local.reshape(c.local.shape[0], -1).sum(axis=1)
            k_local = int(np.argmax(areas))
            rr, cc = np.nonzero(c.local[k_local])
            c.key_slice = int(k_local + c.box[0].start)
            c.center = (
                c.key_slice,
                int(round(float(rr.mean())) + c.box[1].start),
                int(round(float(cc.mean())) + c.box[2].start),
            )

    def classify(self, norm: np.ndarray, candidates: list[Candidate]) -> None:
        """Fill each candidate's Res-MTNet outputs in place (no-op without a Res-MTNet)."""
        if self.resmtnet is None or not candidates:
            return
        import torch

        patches = np.stack([extract_patch(norm, c.plane(c.center[0]), *c.center) for c in candidates])
        with torch.inference_mode():
            out = self.resmtnet(torch.from_numpy(patches).to(self.device))
        nod_logit = out["nodule"].float().cpu().numpy()
        mal_logit = out["malignancy"].float().cpu().numpy()
        comp = torch.softmax(out["composition"].float(), dim=1).cpu().numpy()
        diam = out["diameter"].float().cpu().numpy()
        for i, c in enumerate(candidates):
            c.p_nodule = float(1.0 / (1.0 + np.exp(-nod_logit[i])))
            c.p_malignant = float(1.0 / (1.0 + np.exp(-mal_logit[i])))
            c.composition = {name: float(comp[i, j]) for j, name in enumerate(COMPOSITIONS)}
            c.diameter = float(max(diam[i], 0.0))
            c.nodule_weight = self.nodule_weight
            c.features["nodule_logit"] = float(np.clip(nod_logit[i], -20, 20))
            c.features["malignancy_logit"] = float(np.clip(mal_logit[i], -20, 20))
            c.features["diameter_net"] = c.diameter

    def verify(
        self,
        norm: np.ndarray,
        dz: float,
        candidates: list[Candidate],
        screen: float | None = None,
        second_screen: float | None = None,
        full: bool = True,
    ) -> list[Candidate]:
        """The FPR3D logit (nodule vs. false positive, from a 3-D patch) of each candidate as its
        ``fpr_logit`` feature, in place (no-op without an FPR3D network).

        With an ensemble (several members, or the eight flips of each cube), the candidates are screened
        before the full read: a single view of the first member first, and one scoring below ``screen``
        (default ``screen_logit``) keeps that logit, a certain false positive whose detection score it
        leaves near 0; then, when ``second_screen`` is set (default ``second_screen_logit``), the mean
        of every member's unflipped view, and one below it keeps that mean. The rest are read in all
        views, unless not ``full``: they keep the mean, and are returned for :meth:`settle` to read
        those whose detection score could matter.
        """
        if self.fpr3d is None or not candidates:
            return []
        import torch

        cubes = np.stack([extract_patch3d(norm, c, dz) for c in candidates])
        members = list(getattr(self.fpr3d, "members", []))
        views = len(members) * len(getattr(self.fpr3d, "flips", ((),)))
        second = self.second_screen_logit if second_screen is None else second_screen
        with torch.inference_mode():
            if views > 1:
                readers = self.fpr3d.readers(torch.device(self.device))
                z = self._logits(readers[0], cubes)
                keep = z >= (self.screen_logit if screen is None else screen)
                if second is not None and len(readers) > 1 and keep.any():
                    unflipped = z[keep] + sum(self._logits(reader, cubes[keep]) for reader in readers[1:])
                    z[keep] = unflipped / len(readers)
                    keep[keep] = z[keep] >= second
                if full:
                    z[keep] = self._logits(self.fpr3d, cubes[keep])
            else:
                z, keep = self._logits(self.fpr3d, cubes), np.zeros(len(candidates), dtype=bool)
        for c, value in zip(candidates, z, strict=True):
            c.features["fpr_logit"] = float(np.clip(value, -20, 20))
        return [] if full else [c for c, read in zip(candidates, keep, strict=True) if read]

    def settle(self, norm: np.ndarray, dz: float, estimated: list[Candidate]) -> None:
        """Read in full those ``estimated`` candidates (described; their FPR3D logit a screen's mean) whose
        detection score could reach :data:`READ_FLOOR` of the operating point were the full logit
        :data:`ESTIMATE_MARGIN` higher (the detector grows with the logit), and calibrate them again."""
        if not estimated or self.fpr3d is None:
            return
        import torch

        floor = READ_FLOOR * float(getattr(self, "min_score", 0.0))
        detector = self.detector
        todo = [
            c
            for c in estimated
            if detector is None
            or detector({**c.features, "fpr_logit": min(c.features["fpr_logit"] + ESTIMATE_MARGIN, 20.0)}) >= floor
        ]
        if not todo:
            return
        cubes = np.stack([extract_patch3d(norm, c, dz) for c in todo])
        with torch.inference_mode():
            z = self._logits(self.fpr3d, cubes)
        for c, value in zip(todo, z, strict=True):
            c.features["fpr_logit"] = float(np.clip(value, -20, 20))
            self._calibrate(c)

    def _logits(self, net: Any, cubes: np.ndarray) -> np.ndarray:
        """``net``'s logits for ``cubes``, in batches (channels-last 3-D: faster on the CPU)."""
        import torch

        fast = torch.channels_last_3d
        out = [
            net(torch.from_numpy(cubes[i : i + self.batch]).to(self.device).contiguous(memory_format=fast))
            .float()
            .cpu()
            .numpy()
            for i in range(0, len(cubes), self.batch)
        ]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def describe(
        self,
        norm: np.ndarray,
        prob: np.ndarray,
        region: np.ndarray,
        spacing: tuple[float, float, float],
        candidates: list[Candidate],
    ) -> None:
        """Mask features of each candidate, then the bundle's calibrators (detection score, malignancy,
        diameter) where it has them; in place."""
        for c in candidates:
            c.features.update(candidate_features(norm, prob, region, spacing, c))
            self._calibrate(c)

    def _calibrate(self, c: Candidate) -> None:
        """The bundle's calibrators on a described candidate: detection score, malignancy, diameter."""
        if self.detector is not None:
            c.p_detect = self.detector(c.features)
        if self.resmtnet is not None and self.malignancy is not None:
            c.p_malignant = self.malignancy(c.features)
        if self.resmtnet is not None and self.diameter is not None:
            c.diameter = float(max(self.diameter(c.features), 0.0))

    def detect(
        self,
        norm: np.ndarray,
        region: np.ndarray,
        spacing: tuple[float, float, float],
        keep: Callable[[Candidate], bool] | None = None,
        exact: bool = False,
    ) -> list[Candidate]:
        """Probabilities, components, classification and calibration for a normalized working-grid volume.

        ``keep`` (a per-candidate rule, e.g. inside the lungs) is applied once the outlines are final and
        before the networks read the candidates, so that what it drops costs no FPR3D or Res-MTNet time.
        A candidate whose detection score cannot come near the operating point keeps the FPR3D screens'
        estimate (:meth:`settle`) unless ``exact`` (training tables: every logit a full read).
        """
        slices = [int(k) for k in np.nonzero(region.any(axis=(1, 2)))[0]]
        prob = self.probabilities(norm, slices)
        cands = self.components(prob, region, spacing)
        faint = self.faint_components(prob, region, spacing, cands)
        self.refine(norm, region, cands + faint)
        if keep is not None:
            cands = [c for c in cands if keep(c)]
            faint = [c for c in faint if keep(c)]
        if faint:  # FPR3D first: only the faint candidates it takes for nodules are described
            self.verify(
                norm, spacing[0], faint, screen=self.faint_screen_logit, second_screen=self.faint_second_screen_logit
            )
            faint = [c for c in faint if c.features["fpr_logit"] >= self.faint_min_logit]
        estimated = self.verify(norm, spacing[0], cands, full=exact)
        cands += faint
        self.classify(norm, cands)
        self.describe(norm, prob, region, spacing, cands)
        self.settle(norm, spacing[0], estimated)
        return cands


def load_model(bundle: str | Path | None, device: str) -> tuple[NoduleModel, str]:
    """A :class:`NoduleModel` from a bundle folder or a TorchScript/export file; returns (model, version).

    A single-network file is taken as the U-Net (2.5-D, 3 channels in, 1 logit out); classification
    then falls back to the shipped bundle's Res-MTNet when that exists.
    """
    from dicom_node.networks.bundle import load_bundle

    path = Path(bundle) if bundle else DEFAULT_BUNDLE
    b = load_bundle(path, device=device)
    unet = b.network("unet") or b.network("network")
    if unet is None:
        raise ValueError(f"{path}: the bundle has no 'unet' network (has {sorted(b.networks)})")
    resmtnet = b.network("resmtnet")
    if resmtnet is None and path != DEFAULT_BUNDLE and (DEFAULT_BUNDLE / "models" / "model.pt").exists():
        resmtnet = load_bundle(DEFAULT_BUNDLE, device=device).network("resmtnet")
    cfg = b.metadata.get("inference", {}) if isinstance(b.metadata.get("inference"), dict) else {}
    cal = cfg.get("calibrators", {}) if isinstance(cfg.get("calibrators"), dict) else {}
    faint = cfg.get("faint_levels")
    model = NoduleModel(
        unet,
        resmtnet,
        device=device,
        threshold=float(cfg.get("threshold", 0.5)),
        min_volume_mm3=float(cfg.get("min_volume_mm3", 8.0)),
        nodule_weight=float(cfg.get("nodule_weight", 0.5)),
        grow_threshold=float(cfg["grow_threshold"]) if "grow_threshold" in cfg else None,
        hu_refine=float(cfg["hu_refine"]) if cfg.get("hu_refine") else None,
        detector=calibrator_from_json(cal["detection"]) if "detection" in cal else None,
        malignancy=calibrator_from_json(cal["malignancy"]) if "malignancy" in cal else None,
        diameter=calibrator_from_json(cal["diameter"]) if "diameter" in cal else None,
        fpr3d=fpr3d_verifier(b.networks, bool(cfg.get("fpr3d_flips", False))),
        screen_logit=float(cfg.get("fpr3d_screen_logit", SCREEN_LOGIT)),
        faint_levels=(float(faint[0]), float(faint[1])) if faint else None,
        faint_min_logit=float(cfg.get("faint_min_logit", FAINT_MIN_LOGIT)),
        faint_screen_logit=float(cfg.get("faint_screen_logit", FAINT_SCREEN_LOGIT)),
        second_screen_logit=_optional_float(cfg.get("fpr3d_second_screen_logit", SECOND_SCREEN_LOGIT)),
        faint_second_screen_logit=_optional_float(cfg.get("faint_second_screen_logit", FAINT_SECOND_SCREEN_LOGIT)),
    )
    model_min_score = float(cfg.get("min_score", 0.5))
    setattr(model, "min_score", model_min_score)  # noqa: B010
    return model, b.version


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def fpr3d_verifier(networks: dict[str, Any], flips: bool) -> Any | None:
    """The bundle's FPR3D networks ("fpr3d", "fpr3d_2", ...) as one :class:`FPR3DEnsemble` (None without
    any); ``flips`` averages each over the eight flips of its cube."""
    from dicom_node.networks.fpr3d import FPR3DEnsemble, member_name

    members: list[Any] = []
    while member_name(len(members)) in networks:
        members.append(networks[member_name(len(members))])
    return FPR3DEnsemble(members, flips=flips).eval() if members else None
