"""The node's SEG and SR for a real chest CT, opened in the real OHIF viewer (issue 21).

The CT lung-nodule pipeline runs on the real whole-chest CT in ``../shared`` and the node's encoders write
its SEG and TID 1500 SR; CT, SEG and SR go into an Orthanc with the DICOMweb plugin; the released OHIF
build (npm ``@ohif/app``, :mod:`tests.peers.ohif`) is served same-origin with it and driven in Debian's
headless Chromium. Every request that does not go to 127.0.0.1 is blocked and recorded: none may happen.

Checked as a radiologist would see it: the study opens without an error page, page error or console
error; loading the SEG lists the node's segments by their labels, and clicking one jumps to a slice the
segment covers; loading the SR restores its measurements into the measurement panel (tracked), one per
located finding with the finding's name, each on the finding's key slice.

``DICOM_NODE_OHIF_SCREENSHOTS=docs/images`` writes the screenshots (``ohif_seg.png``, ``ohif_sr.png``)
there instead of the test's temporary folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicom_node.findings import Findings
from dicom_node.imaging.volume import Volume
from dicom_node.outputs import codes, encode
from tests.peers.dicomfiles import real, require
from tests.peers.ohif_browser import ViewerSession, archive_of, instance_number, shots_dir, viewer_build
from tests.peers.orthanc import OrthancPeer

pytestmark = [pytest.mark.slow, pytest.mark.viewer]

CT_DIR = "ct_lung_pet_ct_dx/A0001_chest_5mm_lung_kernel"


@pytest.fixture(scope="module")
def dist() -> Path:
    return viewer_build()


@pytest.fixture(scope="module")
def node_output(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Findings, Volume, Path, Path]:
    """The real CT, and the SEG and SR the node writes for it (the pipeline and encoders as the worker runs
    them)."""
    import torch

    from dicom_node.pipelines import create

    torch.set_num_threads(1)
    ct_files = sorted(require(real(CT_DIR)).rglob("*.dcm"))
    pipe = create("ct_lung_nodule")
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in ct_files]
    assert pipe.applies_to(headers) is None
    volume = pipe.load([str(p) for p in ct_files])
    findings = pipe.run(volume, "cpu")
    assert [f for f in findings.findings if f.key_slice is not None], "the real chest CT gave no located finding"
    out = tmp_path_factory.mktemp("ohif_results")
    seg, sr = encode(findings, volume, ["seg", "sr"])
    seg_path, sr_path = out / "seg.dcm", out / "sr.dcm"
    seg.save_as(seg_path, enforce_file_format=True)
    sr.save_as(sr_path, enforce_file_format=True)
    return ct_files, findings, volume, seg_path, sr_path


@pytest.fixture(scope="module")
def archive(node_output: tuple[list[Path], Findings, Volume, Path, Path]) -> Iterator[OrthancPeer]:
    ct_files, _, _, seg_path, sr_path = node_output
    with archive_of([*ct_files, seg_path, sr_path]) as peer:
        yield peer


def test_ohif_shows_the_nodes_seg_and_sr_of_a_real_chest_ct(
    dist: Path,
    node_output: tuple[list[Path], Findings, Volume, Path, Path],
    archive: OrthancPeer,
    tmp_path: Path,
) -> None:
    ct_files, findings, volume, seg_path, _ = node_output
    seg = pydicom.dcmread(seg_path)
    number_of = {str(h.SOPInstanceUID): int(h.InstanceNumber) for h in map(_header, ct_files)}

    def instances_of(k_slices: Any) -> set[int]:
        return {number_of[str(volume.sources[int(k)].SOPInstanceUID)] for k in k_slices}

    folder = shots_dir(tmp_path)
    with ViewerSession(dist, archive) as session:
        session.open_study(str(seg.StudyInstanceUID))
        session.open_series("SEG")
        _check_segments(session.page, seg, findings, volume, instances_of, folder)
        session.open_series("SR")
        _check_measurements(session.page, findings, instances_of, folder)
        session.assert_clean()
    for shot in ("ohif_seg.png", "ohif_sr.png"):
        assert (folder / shot).stat().st_size > 10_000


def _check_segments(
    page: Any, seg: pydicom.Dataset, findings: Findings, volume: Volume, instances_of: Any, folder: Path
) -> None:
    """Load the SEG: every segment is listed under its label, a click jumps to a slice it covers, and the
    first one is drawn where its mask is (hiding it changes the screen inside the mask's box only)."""
    page.get_by_test_id("yes-hydrate-btn").click()
    page.get_by_test_id("panelSegmentation-btn").click()
    rows = page.get_by_test_id("data-row")
    labels = [str(s.SegmentLabel) for s in seg.SegmentSequence]
    for label in labels:
        rows.filter(has_text=label).wait_for()
    assert rows.count() == len(labels)
    overlay = page.get_by_test_id("viewport-overlay-bottom-right")
    for label in labels:
        rows.filter(has_text=label).click()
        page.wait_for_timeout(1500)
        (finding,) = [f for f in findings.findings if f.label[:64] == label]  # the SEG's segment label
        covered = instances_of(finding.mask.reshape(finding.mask.shape[0], -1).any(axis=1).nonzero()[0])
        assert instance_number(overlay.inner_text()) in covered, (label, overlay.inner_text(), covered)
    rows.filter(has_text=labels[0]).click()
    page.wait_for_timeout(1500)
    page.screenshot(path=str(folder / "ohif_seg.png"))
    (first,) = [f for f in findings.findings if f.label[:64] == labels[0]]
    drawn = _drawn_box(page, rows.filter(has_text=labels[0]))
    shown = instance_number(overlay.inner_text())
    (k,) = [k for k in range(volume.shape[0]) if instances_of([k]) == {shown}]
    expected = _mask_box_on_page(page, first.mask[k], volume.sources[k])
    margin = 4  # px: the segment's border line and anti-aliasing
    assert drawn is not None, f"hiding {labels[0]!r} changed nothing on the screen"
    assert drawn[0] >= expected[0] - margin and drawn[1] >= expected[1] - margin, (drawn, expected)
    assert drawn[2] <= expected[2] + margin and drawn[3] <= expected[3] + margin, (drawn, expected)
    # ... and over most of it, not a speck: at least half the mask's extent either way
    assert drawn[2] - drawn[0] >= (expected[2] - expected[0]) / 2, (drawn, expected)
    assert drawn[3] - drawn[1] >= (expected[3] - expected[1]) / 2, (drawn, expected)


def _check_measurements(page: Any, findings: Findings, instances_of: Any, folder: Path) -> None:
    """Load the SR: one tracked measurement per located finding, under the finding's name, on its key slice."""
    rows = page.get_by_test_id("data-row")
    located = [f for f in findings.findings if f.key_slice is not None]
    page.get_by_test_id("yes-hydrate-btn").click()
    page.get_by_test_id("trackedMeasurements-btn").click()
    names = [codes.category_codes(f.category)[1].meaning for f in located]
    for name in names:
        rows.filter(has_text=name).first.wait_for()
    page.wait_for_timeout(1500)
    tracked = page.locator('[data-cy^="measurement-table-row-"]')  # the row and its values, "S: 2 I: 19"
    texts = [tracked.nth(k).inner_text() for k in range(tracked.count())]
    assert len(texts) == len(located), texts
    for finding, name, text in zip(located, names, texts, strict=True):
        assert name in text, (name, text)
        assert instance_number(text) in instances_of([finding.key_slice]), (text, finding.key_slice)
    page.screenshot(path=str(folder / "ohif_sr.png"))
    assert not page.get_by_text("Something went wrong").count()


def _drawn_box(page: Any, row: Any) -> tuple[int, int, int, int] | None:
    """Where on the page the segment of ``row`` is drawn: the bounding box (left, top, right, bottom) of
    what changes in the viewport when the segment is hidden (``None``: nothing changes)."""
    import io

    import numpy as np
    from PIL import Image

    pane = page.get_by_test_id("viewport-pane")
    box = pane.bounding_box()
    shown = np.asarray(Image.open(io.BytesIO(pane.screenshot())).convert("RGB"), dtype=np.int16)
    row.get_by_test_id("data-row-visibility-toggle").click(force=True)
    page.wait_for_timeout(1000)
    hidden = np.asarray(Image.open(io.BytesIO(pane.screenshot())).convert("RGB"), dtype=np.int16)
    row.get_by_test_id("data-row-visibility-toggle").click(force=True)
    page.wait_for_timeout(1000)
    ys, xs = np.nonzero(np.abs(shown - hidden).max(axis=2) > 24)
    if ys.size == 0:
        return None
    return (int(box["x"] + xs.min()), int(box["y"] + ys.min()), int(box["x"] + xs.max()), int(box["y"] + ys.max()))


def _mask_box_on_page(page: Any, mask2d: Any, header: pydicom.Dataset) -> tuple[float, float, float, float]:
    """The bounding box of a slice's mask in page pixels, through the patient coordinates of its pixel edges
    and cornerstone's own world-to-canvas transform of the viewport OHIF shows (``window.cornerstone``)."""
    import numpy as np

    rows, cols = np.nonzero(mask2d)
    origin = np.asarray(header.ImagePositionPatient, dtype=float)
    orientation = np.asarray(header.ImageOrientationPatient, dtype=float)
    row_spacing, col_spacing = (float(v) for v in header.PixelSpacing)
    corners = [
        (origin + c * col_spacing * orientation[:3] + r * row_spacing * orientation[3:]).tolist()
        for r in (rows.min() - 0.5, rows.max() + 0.5)
        for c in (cols.min() - 0.5, cols.max() + 0.5)
    ]
    points = page.evaluate(
        """(corners) => {
            const viewport = window.cornerstone.getEnabledElements()[0].viewport;
            const rect = viewport.canvas.getBoundingClientRect();
            return corners.map((p) => {
                const [x, y] = viewport.worldToCanvas(p);
                return [rect.left + x, rect.top + y];
            });
        }""",
        corners,
    )
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return (min(xs), min(ys), max(xs), max(ys))


def _header(path: Path) -> pydicom.Dataset:
    """SOP Instance UID and Instance Number of a CT file."""
    return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID", "InstanceNumber"])
