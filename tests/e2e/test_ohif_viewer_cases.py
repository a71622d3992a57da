"""The node's results for a chest CT with nothing found and for a real lung-US cine, opened in OHIF (issue 21).

The set-up is :mod:`tests.e2e.test_ohif_viewer`'s (:mod:`tests.peers.ohif_browser`): the real pipeline on
real images, every object the node can send (SEG, SR, GSPS, overlay images) written by its encoders, a
real Orthanc with the DICOMweb plugin, the released OHIF build in headless Chromium, no request off
loopback, no page or console error, no error page.

- A real chest CT on which the nodule pipeline finds nothing (the 24 slices of the real A0001 chest
  furthest from its tumour): the CT and the overlay image open; no SEG is sent; the SR opens without an
  error, OHIF lists nothing to track (the report has no measurement group, rightly), and the report OHIF
  loaded says "No abnormality" and that the pipeline found nothing.
- A real lung-US clip (``../shared/data/real/us_pocus_ccby``, wrapped as US multi-frame DICOM as the
  project does), run through the lung-US pipeline: the cine and the overlay images open; the SR's
  located findings are tracked, each under its finding's name and on its key frame.

What OHIF 3.13 cannot show is asserted as what it does (README, "See it in OHIF"): it has no handler for
presentation states (the GSPS is listed as unsupported, and opening it shows nothing), and its SEG viewport
needs a SEG with Pixel Measures and a frame of reference, which a SEG on an uncalibrated US cine without a
frame of reference has not: the US SEG is recognised as a SEG but not opened here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.sr.codedict import codes as dicom_codes

from dicom_node.findings import Findings
from dicom_node.imaging.volume import Volume
from dicom_node.outputs import codes, encode, kind_of
from tests.peers.dicomfiles import real, require
from tests.peers.ohif_browser import ViewerSession, archive_of, viewer_build
from tests.peers.orthanc import OrthancPeer

pytestmark = [pytest.mark.slow, pytest.mark.viewer]

CT_DIR = "ct_lung_pet_ct_dx/A0001_chest_5mm_lung_kernel"
CT_SLICES = 24
"""The real chest's slices furthest from its tumour (the tumour is boxed on slices 42-52 of 64 from the feet)."""
US_CLIP = "Cov_convex_volpecelli_sonographic_v1.mov"
"""A real convex-probe COVID-19 clip with B-lines (physicians' label)."""
US_FRAMES = 16
OUTPUT_KINDS = ["seg", "sr", "gsps", "overlay"]
# What OHIF's display set service knows of each series: handler, load state, tracked measurements.
DISPLAY_SETS_JS = """() => window.services.displaySetService.getActiveDisplaySets().map((d) => ({
    modality: d.Modality,
    series: d.SeriesInstanceUID,
    handler: d.SOPClassHandlerId,
    unsupported: Boolean(d.unsupported),
    loaded: d.isLoaded === true,
    rehydratable: d.isRehydratable === true,
    measurements: Array.isArray(d.measurements) ? d.measurements.length : null,
}))"""
OHIF_EMPTY_SR_ERROR = "Cannot destructure property 'displaySetInstanceUID' of 'measurement' as it is undefined"
"""OHIF 3.13.2's SR viewport on a TID 1500 report without measurement groups
(``_getViewportReferencedDisplaySetData``)."""
LOAD_JS = """async (series) => {
    const d = window.services.displaySetService.getActiveDisplaySets().find((s) => s.SeriesInstanceUID === series);
    if (!d.isLoaded) {
        await d.load();
    }
}"""
SR_CONTENT_JS = """(series) => {
    const d = window.services.displaySetService.getActiveDisplaySets().find((s) => s.SeriesInstanceUID === series);
    return JSON.stringify(d.instance.ContentSequence);
}"""


@dataclass
class Case:
    """One study as the node leaves it: the source files, the findings and the objects it sends."""

    sources: list[Path]
    volume: Volume
    findings: Findings
    objects: dict[str, list[pydicom.Dataset]]
    paths: list[Path]

    @property
    def study(self) -> str:
        return str(self.volume.sources[0].StudyInstanceUID)

    def series(self, kind: str) -> str:
        (uid,) = {str(ds.SeriesInstanceUID) for ds in self.objects[kind]}
        return uid


def _run(pipeline: str, sources: list[Path], out: Path) -> Case:
    """The pipeline and the encoders as the worker runs them, every output kind."""
    import torch

    from dicom_node.pipelines import create

    torch.set_num_threads(1)
    pipe = create(pipeline)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sources]
    assert pipe.applies_to(headers) is None
    volume = pipe.load([str(p) for p in sources])
    findings = pipe.run(volume, "cpu")
    assert findings.not_applicable is None, findings.not_applicable
    objects: dict[str, list[pydicom.Dataset]] = {}
    paths: list[Path] = []
    for k, ds in enumerate(encode(findings, volume, OUTPUT_KINDS)):
        objects.setdefault(kind_of(ds), []).append(ds)
        paths.append(out / f"{k}_{kind_of(ds)}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return Case(sources, volume, findings, objects, paths)


@pytest.fixture(scope="module")
def build() -> Path:
    return viewer_build()


@pytest.fixture(scope="module")
def ct_nothing_found(tmp_path_factory: pytest.TempPathFactory) -> Case:
    files = sorted(require(real(CT_DIR)).rglob("*.dcm"))
    z = {p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in files}
    case = _run("ct_lung_nodule", sorted(files, key=z.__getitem__)[:CT_SLICES], tmp_path_factory.mktemp("ct"))
    assert not case.findings.findings, "the pipeline found something on the slab: pick another one"
    return case


@pytest.fixture(scope="module")
def us_cine(tmp_path_factory: pytest.TempPathFactory) -> Case:
    pytest.importorskip("av", reason="PyAV (the real-us extra) decodes the clips")
    from dicom_node.training.us_real_data import REAL_LUNG_US, read_clips, write_clip

    require(REAL_LUNG_US / "labels.csv")
    (clip,) = [c for c in read_clips() if c.name == US_CLIP]
    folder = tmp_path_factory.mktemp("us")
    case = _run("us_lung", [write_clip(clip, folder / "source", n=US_FRAMES)], folder)
    assert [f for f in case.findings.findings if f.key_slice is not None], "the real clip gave no located finding"
    return case


@pytest.fixture
def archive(request: pytest.FixtureRequest) -> Iterator[OrthancPeer]:
    case: Case = request.getfixturevalue(request.param)
    with archive_of([*case.sources, *case.paths]) as peer:
        yield peer


def _display_sets(session: ViewerSession) -> dict[str, dict[str, object]]:
    """OHIF's display sets by series UID."""
    return {str(d["series"]): d for d in session.page.evaluate(DISPLAY_SETS_JS)}


def _load_display_set(session: ViewerSession, series: str) -> dict[str, object]:
    """Have OHIF load one series' display set (as opening it does) and return what it knows of it."""
    session.page.evaluate(LOAD_JS, series)
    shown = _display_sets(session)[series]
    assert shown["loaded"], shown
    return shown


def _check_presentation_state_unsupported(session: ViewerSession, case: Case) -> None:
    """OHIF 3.13 lists the node's GSPS, flagged as a SOP class it does not support; opening it is harmless."""
    gsps = _display_sets(session)[case.series("gsps")]
    assert gsps["unsupported"] and gsps["modality"] == "PR", gsps
    session.open_series("PR")
    session.page.wait_for_timeout(2000)


def _check_overlay(session: ViewerSession, case: Case) -> None:
    """The overlay images open as images, as many as the node wrote."""
    session.open_series("OT")
    _wait_for_stack(session, len(case.objects["overlay"]))


def _wait_for_stack(session: ViewerSession, count: int) -> None:
    """Until the active viewport shows an image of ``count`` ("I:41 (1/24)", "1/1")."""
    overlay = session.page.get_by_test_id("viewport-overlay-bottom-right")
    overlay.filter(has_text=re.compile(rf"\b\d+/{count}\b")).first.wait_for()


@pytest.mark.parametrize("archive", ["ct_nothing_found"], indirect=True)
def test_ohif_opens_the_nodes_report_of_a_real_chest_ct_with_nothing_found(
    build: Path, ct_nothing_found: Case, archive: OrthancPeer, tmp_path: Path
) -> None:
    case = ct_nothing_found
    assert "seg" not in case.objects  # nothing to segment: no SEG is sent
    with ViewerSession(build, archive) as session:
        page = session.page
        session.open_study(case.study)
        _wait_for_stack(session, CT_SLICES)
        assert not session.thumbnail("SEG").count()
        _check_overlay(session, case)
        page.screenshot(path=str(tmp_path / "ohif_ct_nothing_found.png"))
        _check_presentation_state_unsupported(session, case)
        sr = _load_display_set(session, case.series("sr"))
        # OHIF's TID 1500 handler read it, found nothing to track (rightly: no measurement group) ...
        assert "dicom-sr" in str(sr["handler"]) and sr["measurements"] == 0 and not sr["rehydratable"], sr
        # ... and holds the report's overall result and its text
        content = page.evaluate(SR_CONTENT_JS, case.series("sr"))
        assert json.dumps(dicom_codes.DCM.NoAbnormality.meaning) in content
        assert f"{case.findings.pipeline} {case.findings.version} ran and found nothing." in content
        # Opened in a viewport, OHIF 3.13.2's SR viewport fails on a report without measurements (it reads
        # the first measurement unconditionally, README "See it in OHIF"): its error panel in that viewport,
        # with that error and no other; the viewer goes on (the CT opens again in the same viewport).
        session.open_series("SR")
        page.get_by_text("Show Details").first.click()
        details = page.get_by_role("dialog")
        details.get_by_text(OHIF_EMPTY_SR_ERROR).first.wait_for(state="attached")
        details.get_by_role("button", name="Close").click()
        assert not page.get_by_test_id("yes-hydrate-btn").count()
        session.open_series("CT")
        _wait_for_stack(session, CT_SLICES)
        session.assert_clean()


@pytest.mark.parametrize("archive", ["us_cine"], indirect=True)
def test_ohif_shows_the_nodes_report_of_a_real_lung_us_cine(
    build: Path, us_cine: Case, archive: OrthancPeer, tmp_path: Path
) -> None:
    case = us_cine
    located = [f for f in case.findings.findings if f.key_slice is not None]
    with ViewerSession(build, archive) as session:
        page = session.page
        session.open_study(case.study)
        _wait_for_stack(session, US_FRAMES)  # the cine
        seg = _display_sets(session)[case.series("seg")]
        assert "dicom-seg" in str(seg["handler"]) and not seg["unsupported"], seg  # recognised, not opened
        _check_overlay(session, case)
        _check_presentation_state_unsupported(session, case)
        session.open_series("SR")
        page.get_by_test_id("yes-hydrate-btn").click()
        page.get_by_test_id("trackedMeasurements-btn").click()
        rows = page.get_by_test_id("data-row")
        names = [codes.category_codes(f.category)[1].meaning for f in located]
        for name in names:
            rows.filter(has_text=name).first.wait_for()
        assert rows.count() == len(located), [rows.nth(k).inner_text() for k in range(rows.count())]
        for finding, name in zip(located, names, strict=True):
            rows.filter(has_text=name).first.click()
            page.wait_for_timeout(1500)
            frame = re.search(r"\((\d+)/\d+\)", session.viewport_text())
            key_frame = (case.volume.frame_numbers or [])[int(finding.key_slice or 0)]
            assert frame and int(frame.group(1)) == key_frame, (name, session.viewport_text(), key_frame)
        page.screenshot(path=str(tmp_path / "ohif_us_sr.png"))
        session.assert_clean()
