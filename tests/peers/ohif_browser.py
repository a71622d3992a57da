"""One OHIF viewer session for the viewer tests: archive, viewer, browser, and what went wrong.

The set-up every ``tests/e2e/test_ohif_*`` test shares (issue 21):

- :func:`viewer_build`: the released OHIF build (:func:`tests.peers.ohif.ohif_dist`), or skip (fail under CI).
- :func:`archive_of`: a real Orthanc with the DICOMweb plugin holding the given DICOM files.
- :class:`ViewerSession`: OHIF served same-origin with that archive (:class:`tests.peers.ohif.OhifServer`),
  opened in Debian's headless Chromium through Playwright's Python package. Every request that does not
  go to the viewer's loopback origin is blocked and recorded in :attr:`ViewerSession.external`; page
  errors and console errors are recorded in :attr:`ViewerSession.problems`. :meth:`ViewerSession.assert_clean`
  requires both to be empty.
- :func:`shots_dir`, :func:`instance_number`: where screenshots go, and OHIF's "I:19" instance numbers.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.peers.ohif import OhifServer, OhifUnavailable, ohif_dist, require_peer
from tests.peers.orthanc import OrthancPeer, dicomweb_plugin, orthanc_available

CHROMIUM = Path("/usr/bin/chromium")
LOAD_TIMEOUT_MS = 60_000
"""Longest wait for one thing to show in the viewer (the test machine's 2 cores are shared)."""
VIEWPORT = {"width": 1600, "height": 1000}


def viewer_build() -> Path:
    """The OHIF build's ``dist/`` folder; skips the test (fails it under ``CI``) when it cannot be fetched."""
    try:
        return ohif_dist()
    except OhifUnavailable as exc:
        require_peer(False, f"OHIF viewer build unavailable: {exc}")
        raise  # unreachable: require_peer skipped or failed


@contextmanager
def archive_of(paths: Sequence[Path]) -> Iterator[OrthancPeer]:
    """A real Orthanc with the DICOMweb plugin, holding the DICOM files ``paths``."""
    require_peer(orthanc_available(), "Orthanc is not installed")
    require_peer(dicomweb_plugin() is not None, "the Orthanc DICOMweb plugin (orthanc-dicomweb) is not installed")
    with OrthancPeer(aet="PACS", dicomweb=True) as peer:
        for path in paths:
            peer.post("/instances", Path(path).read_bytes())
        yield peer


def shots_dir(tmp_path: Path) -> Path:
    """``DICOM_NODE_OHIF_SCREENSHOTS`` when set (e.g. ``docs/images``), else ``tmp_path``; created."""
    where = os.environ.get("DICOM_NODE_OHIF_SCREENSHOTS")
    folder = Path(where) if where else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def instance_number(text: str) -> int:
    """The instance number in OHIF's "I:19 (19/64)" viewport overlay or "S: 2 I: 19" measurement row."""
    match = re.search(r"I:\s*(\d+)", text)
    assert match, text
    return int(match.group(1))


class ViewerSession:
    """OHIF against ``archive`` in headless Chromium (see the module docstring).

    Args:
        build: the OHIF ``dist/`` folder (:func:`viewer_build`).
        archive: the Orthanc that holds the study (:func:`archive_of`).
    """

    def __init__(self, build: Path, archive: OrthancPeer) -> None:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError as exc:
            require_peer(False, f"Playwright's Python package is not installed: {exc}")
        require_peer(CHROMIUM.exists(), f"no Chromium at {CHROMIUM}")
        self._sync_playwright = sync_playwright
        self.viewer = OhifServer(build, archive.base_url)
        self.problems: list[str] = []
        self.external: list[str] = []
        self._pw: Any = None
        self._browser: Any = None
        self.page: Any = None

    def __enter__(self) -> ViewerSession:
        self.viewer.__enter__()
        try:
            self._pw = self._sync_playwright().start()
            self._pw.selectors.set_test_id_attribute("data-cy")  # OHIF's own tests address its DOM by data-cy
            self._browser = self._pw.chromium.launch(
                executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True
            )
            self.page = self._browser.new_page(viewport=VIEWPORT)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self.page.set_default_timeout(LOAD_TIMEOUT_MS)
        self.page.route("**/*", self._only_loopback)
        self.page.on("pageerror", lambda exc: self.problems.append(f"pageerror: {exc}"))
        self.page.on(
            "console", lambda msg: self.problems.append(f"console.error: {msg.text}") if msg.type == "error" else None
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._browser is not None:
                self._browser.close()
            if self._pw is not None:
                self._pw.stop()
        finally:
            self.viewer.__exit__(exc_type, exc, tb)

    def _only_loopback(self, route: Any) -> None:
        if route.request.url.startswith(self.viewer.origin + "/"):
            route.continue_()
        else:
            self.external.append(route.request.url)
            route.abort()

    def open_study(self, study_instance_uid: str) -> None:
        """Open the study in OHIF's longitudinal viewer and dismiss the first-visit tour."""
        self.page.goto(self.viewer.viewer_url(study_instance_uid))
        self.page.get_by_text("Skip all").click()

    def thumbnail(self, modality: str) -> Any:
        """The study browser's thumbnail of the (only) series of ``modality``."""
        label = self.page.locator('[data-cy="series-modality-label"]', has_text=re.compile(f"^{modality}$"))
        return self.page.locator('[data-cy^="study-browser-thumbnail"]').filter(has=label)

    def open_series(self, modality: str) -> None:
        """Double-click the series of ``modality`` in the study browser (it opens in the active viewport)."""
        self.thumbnail(modality).dblclick()

    def viewport_text(self) -> str:
        """The text OHIF overlays on the active viewport's bottom right ("I:19 (19/64)")."""
        return str(self.page.get_by_test_id("viewport-overlay-bottom-right").first.inner_text())

    def assert_clean(self) -> None:
        """Nothing left 127.0.0.1, no page or console error, no error page, and the archive was read."""
        assert self.external == [], f"requests left 127.0.0.1: {self.external}"
        assert self.problems == [], self.problems
        assert not self.page.get_by_text("Something went wrong").count(), "OHIF shows its error page"
        assert any(p.startswith("/dicom-web/") for p in self.viewer.requests)
