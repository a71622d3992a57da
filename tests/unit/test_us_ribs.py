"""Rib shadows found along the probe's beams below the chosen pleural line (dicom_node.pipelines.us_ribs)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from dicom_node.pipelines.us_pleura import B_LINE, PLEURA, RIB, refine_labels, sector_mask
from dicom_node.pipelines.us_ribs import apex_of, find_rib_shadows
from dicom_node.training.us_pleura_refs import RIB_REFS_FILE, read_rib_refs
from dicom_node.training.us_real_data import REAL_LUNG_US, read_clips

SIZE = 200
APEX = (-150.0, 100.0)  # (row, col) of a convex probe's virtual apex above the image
PLEURA_D = 60.0  # depth of the pleura along the beams (pixels from the probe face)
RIBS = ((-0.26, -0.17), (0.12, 0.21))  # beam angles (radians) of two ribs


def _fan() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(beam angle, depth along the beam, inside the sector) of every pixel of a convex probe's image."""
    r, c = np.indices((SIZE, SIZE), dtype=float)
    radius = np.hypot(c - APEX[1], r - APEX[0])
    theta = np.arctan2(c - APEX[1], r - APEX[0])
    depth = radius + APEX[0]  # the probe face is the arc through row 0 above the apex's column
    fan = (np.abs(theta) <= 0.45) & (depth >= 0) & (depth < SIZE)
    return theta, depth, fan


def _convex_frame(
    seed: int, ribs: tuple[tuple[float, float], ...] = RIBS, fading_edge: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A convex frame: speckled chest wall, the pleura as an arc, lung with an A-line below it, and in ``ribs``
    a bright rib surface just above the pleura with an anechoic shadow along the beams to the bottom; the
    network's labels call the pleura where it shows and no rib. Returns the image, labels, truth shadows."""
    rng = np.random.default_rng(seed)
    theta, depth, fan = _fan()
    img = np.where(depth < PLEURA_D, 0.4, 0.3) * (1 + 0.25 * rng.standard_normal((SIZE, SIZE)))
    img[np.abs(depth - 2 * PLEURA_D) <= 1.5] = 0.6  # A-line
    in_rib = np.zeros((SIZE, SIZE), dtype=bool)
    for lo, hi in ribs:
        in_rib |= (theta >= lo) & (theta <= hi)
    line = (np.abs(depth - PLEURA_D) <= 1.5) & ~in_rib
    img[line] = 0.9
    img[in_rib & (np.abs(depth - (PLEURA_D - 5)) <= 2)] = 0.85  # the rib's cortex, a bit above the pleura
    shadow = in_rib & (depth > PLEURA_D - 3)
    img[shadow] = 0.04 * (1 + 0.3 * rng.standard_normal(int(shadow.sum())))
    if fading_edge:
        img[np.abs(theta) > 0.33] *= 0.2  # the sector's edge fades, from the skin down
    img[~fan] = 0.0
    labels = np.zeros((SIZE, SIZE), dtype=np.uint8)
    labels[line & fan] = PLEURA
    return np.clip(img, 0, 1).astype(np.float32), labels, shadow & fan


def test_the_apex_of_the_built_fan_is_found() -> None:
    img, _, _ = _convex_frame(0)
    apex = apex_of(sector_mask(img[None]))
    assert apex is not None
    assert abs(apex[0] - APEX[0]) < 15 and abs(apex[1] - APEX[1]) < 3, apex


def test_two_rib_shadows_fanned_along_the_beams_are_both_found() -> None:
    img, labels, truth = _convex_frame(1)
    out = refine_labels(img, labels, np.full(labels.shape, 0.9, np.float32), sector_mask(img[None]))
    rib = out == RIB
    halves = [truth & (np.indices(truth.shape)[1] < 100), truth & (np.indices(truth.shape)[1] >= 100)]
    for shadow in halves:
        assert (rib & shadow).sum() >= 0.7 * shadow.sum(), (rib & shadow).sum() / shadow.sum()
    near_truth = ndimage.binary_dilation(truth, iterations=6)
    assert (rib & near_truth).sum() >= 0.95 * rib.sum()  # the labels follow the fanned shadows
    assert (out == PLEURA).any()  # the pleural line stays


def test_no_shadow_is_found_on_a_frame_whose_only_dark_beams_are_the_fading_sector_edges() -> None:
    img, labels, _ = _convex_frame(2, ribs=(), fading_edge=True)
    sector = sector_mask(img[None])
    out = refine_labels(img, labels, np.full(labels.shape, 0.9, np.float32), sector)
    assert not (out == RIB).any()


def test_the_dark_lung_between_two_b_lines_is_no_rib_shadow() -> None:
    rng = np.random.default_rng(3)
    theta, depth, fan = _fan()
    img = np.where(depth < PLEURA_D, 0.4, 0.06) * (1 + 0.25 * rng.standard_normal((SIZE, SIZE)))
    labels = np.zeros((SIZE, SIZE), dtype=np.uint8)
    for centre in (-0.12, 0.08):
        comet = (np.abs(theta - centre) <= 0.03) & (depth > PLEURA_D)
        img[comet] = 0.8
        labels[comet & fan] = B_LINE
    line = np.abs(depth - PLEURA_D) <= 1.5
    img[line] = 0.9
    img[~fan] = 0.0
    labels[line & fan] = PLEURA
    out = refine_labels(
        np.clip(img, 0, 1).astype(np.float32), labels, np.full(labels.shape, 0.9, np.float32), sector_mask(img[None])
    )
    assert not (out == RIB).any()


def test_find_rib_shadows_gives_one_mask_per_rib_along_the_beams() -> None:
    img, _, truth = _convex_frame(4)
    sector = sector_mask(img[None])
    line_rows = np.full(SIZE, -1)
    _, depth, _ = _fan()
    for c in range(SIZE):  # the pleura's row per column, as the pipeline's chosen line gives it
        col = np.flatnonzero(np.abs(depth[:, c] - PLEURA_D) <= 1.0)
        line_rows[c] = int(col.mean()) if col.size else 0
    masks = find_rib_shadows(img, sector, line_rows, apex_of(sector))
    assert len(masks) == 2
    halves = [truth & (np.indices(truth.shape)[1] < 100), truth & (np.indices(truth.shape)[1] >= 100)]
    for mask, shadow in zip(sorted(masks, key=lambda m: float(np.nonzero(m)[1].mean())), halves, strict=True):
        assert (mask & shadow).sum() >= 0.7 * shadow.sum()  # each mask is one rib, found along its beams
        assert (mask & ndimage.binary_dilation(shadow, iterations=6)).sum() >= 0.95 * mask.sum()


def test_rib_references_are_train_part_frames_with_their_method_written_down() -> None:
    header = [line for line in RIB_REFS_FILE.read_text().splitlines() if line.startswith("#")]
    assert any("Who/how" in line for line in header)
    refs = read_rib_refs()
    shadows = sum(len(r.shadows) for r in refs)
    assert shadows >= 25 and sum(bool(r.shadows) for r in refs) >= 12
    assert all(0 <= a < b <= 1 for r in refs for a, b in r.shadows)
    if (REAL_LUNG_US / "labels.csv").is_file():
        parts = {c.file: c.part for c in read_clips()}
        assert {parts[r.file] for r in refs} == {"train"}


@pytest.mark.slow  # the network on 49 real frames (about 30 s)
@pytest.mark.skipif(not (REAL_LUNG_US / "labels.csv").is_file(), reason="the real lung-US clips are not present")
def test_hand_marked_rib_shadows_of_train_frames_are_covered(tmp_path: object) -> None:
    pytest.importorskip("av", reason="PyAV (the real-us extra) decodes the clips")
    from pathlib import Path

    from dicom_node.training.us_pleura_refs import measure

    ribs = measure(dicom_dir=Path(str(tmp_path)))["ribs"]
    assert isinstance(ribs, dict)
    before, after = ribs["before"], ribs["after"]
    assert after["shadows"] >= 25
    assert after["shadows_hit"] >= 17 and after["shadows_hit"] > before["shadows_hit"]
    assert after["false_rib_column_share_with_shadows"] <= 0.05


def test_the_rib_finding_counts_rib_regions_not_specks_and_claims_no_network_confidence_it_lacks() -> None:
    from dicom_node.findings import Quantity
    from dicom_node.pipelines.us_lung import rib_finding

    labels = np.zeros((2, SIZE, SIZE), dtype=np.uint8)
    labels[1, 60:, 30:50] = RIB  # a rib the network labelled
    labels[1, 60:, 120:140] = RIB  # a rib the anatomy added along the beams
    labels[1, 10:12, 180:182] = RIB  # a speck of rib label
    network = labels.copy()
    network[1, 60:, 120:140] = 0
    confidence = np.full(labels.shape, 0.9, dtype=np.float32)
    found = rib_finding(labels, network, confidence, np.array([True, True]))
    assert found is not None
    finding, text = found
    assert finding.key_slice == 1
    assert [m.value for m in finding.measurements if m.quantity is Quantity.COUNT] == [2.0]
    assert "1 of them found along the probe's beams" in text
    assert 0.4 < finding.score < 0.5  # 0.9 on the network's half of the rib pixels, 0 on the anatomy's
    assert rib_finding(labels, network, confidence, np.array([True, False])) is None  # frame 1 is not lung-like
