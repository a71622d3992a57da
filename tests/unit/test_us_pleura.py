"""Choosing the pleura among the network's lines by the anatomy (dicom_node.pipelines.us_pleura)."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_node.pipelines.us_pleura import PLEURA, RIB, locate_pleura, refine_labels, sector_mask
from dicom_node.training.us_pleura_refs import REFS_FILE, read_refs
from dicom_node.training.us_real_data import REAL_LUNG_US, read_clips

SIZE = 200


def _chest(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A linear-probe frame: speckled chest wall, a faint fascia line at 15 %, the pleura at 30 % with two
    rib shadows beginning at it (ribs just above), lung below with an A-line at 60 %; and a label map in
    which every bright line is called pleural line, as the network does on real frames."""
    rng = np.random.default_rng(seed)
    img = 0.35 + 0.08 * rng.standard_normal((SIZE, SIZE))
    labels = np.zeros((SIZE, SIZE), dtype=np.uint8)
    ribs = [(30, 60), (130, 160)]
    for c0, c1 in ribs:
        img[52:60, c0:c1] = 0.8  # rib surface
        img[60:, c0:c1] = 0.05 + 0.02 * rng.standard_normal((SIZE - 60, c1 - c0))  # acoustic shadow
    lung = np.ones(SIZE, dtype=bool)
    for c0, c1 in ribs:
        lung[c0:c1] = False
    img[30:32, :] += 0.2  # fascia: thin, less bright
    img[59:62, lung] = 0.95  # pleura
    img[119:122, lung] = 0.7  # A-line, at twice the depth
    img[62:, lung] = np.clip(img[62:, lung] - 0.1, 0, 1)
    for rows in ((29, 33), (58, 63), (118, 123)):
        labels[rows[0] : rows[1], :] = PLEURA
    labels[29:33, :] = PLEURA  # the fascia across the whole width (the largest line)
    labels[58:63, ~lung] = 0
    labels[118:123, ~lung] = 0
    labels[60:, 30:60] = RIB
    return np.clip(img, 0, 1).astype(np.float32), labels


def test_the_line_where_rib_shadows_begin_is_the_pleura_not_fascia_or_a_line() -> None:
    img, labels = _chest()
    conf = np.full(labels.shape, 0.9, dtype=np.float32)
    field = sector_mask(img[None])
    line = locate_pleura(img, labels, conf, field)
    assert line is not None
    assert abs(line.depth - 0.3) < 0.03, line.depth
    out = refine_labels(img, labels, conf, field)
    rows = np.flatnonzero((out == PLEURA).any(axis=1))
    assert rows.min() >= 55 and rows.max() <= 66, (rows.min(), rows.max())
    assert (out[60:, 30:60] == RIB).mean() > 0.9  # a rib shadow under lit chest wall stays a rib


def test_an_a_line_copy_is_never_chosen_even_when_the_network_labels_it_more() -> None:
    img, labels = _chest(1)
    labels[29:33, :] = 0  # no fascia label
    labels[116:126, :] = PLEURA  # a thick, full-width A-line label
    conf = np.full(labels.shape, 0.9, dtype=np.float32)
    line = locate_pleura(img, labels, conf, sector_mask(img[None]))
    assert line is not None and abs(line.depth - 0.3) < 0.03, line


def test_rib_labels_outside_the_sector_or_along_its_dim_edge_are_dropped() -> None:
    rng = np.random.default_rng(2)
    img = np.zeros((SIZE, SIZE), dtype=np.float32)
    r, c = np.indices(img.shape)
    fan = np.abs(c - SIZE / 2) <= 20 + 0.3 * r  # a convex probe's sector
    img[fan] = 0.4 + 0.05 * rng.standard_normal(int(fan.sum()))
    edge = fan & (np.abs(c - SIZE / 2) > 12 + 0.3 * r)
    img[edge] *= 0.2  # the sector's edge fades, all the way up
    img[60:63][fan[60:63]] = 0.95
    labels = np.zeros(img.shape, dtype=np.uint8)
    labels[60:63][fan[60:63]] = PLEURA
    labels[edge] = RIB
    labels[~fan & (r > 150)] = RIB  # the dark corners outside the sector
    conf = np.full(img.shape, 0.9, dtype=np.float32)
    out = refine_labels(img, labels, conf, sector_mask(img[None]))
    assert not (out == RIB).any()
    assert (out == PLEURA).sum() >= 0.9 * (labels == PLEURA).sum()


def test_references_are_train_part_frames_with_their_method_written_down() -> None:
    header = [line for line in REFS_FILE.read_text().splitlines() if line.startswith("#")]
    assert any("Who/how" in line for line in header)
    refs = read_refs()
    assert len(refs) >= 15 and all(0 < r.row < 1 and 0 <= r.col <= 1 for r in refs)
    if (REAL_LUNG_US / "labels.csv").is_file():
        parts = {c.file: c.part for c in read_clips()}
        assert {parts[r.file] for r in refs} == {"train"}


@pytest.mark.slow  # the network on 21 real frames (about 20 s)
@pytest.mark.skipif(not (REAL_LUNG_US / "labels.csv").is_file(), reason="the real lung-US clips are not present")
def test_pleura_lands_on_the_hand_checked_depth_of_train_frames(tmp_path: object) -> None:
    pytest.importorskip("av", reason="PyAV (the real-us extra) decodes the clips")
    from pathlib import Path

    from dicom_node.training.us_pleura_refs import measure

    result = measure(dicom_dir=Path(str(tmp_path)))
    summary = result["summary"]
    assert isinstance(summary, dict)
    before, after = summary["before"], summary["after"]
    assert after["within_5pct"] >= before["within_5pct"]
    assert after["within_5pct"] >= 0.9 and after["missed"] == 0
