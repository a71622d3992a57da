"""The OHIF viewer (the released ``@ohif/app`` build from npm) served on loopback, same-origin with Orthanc.

OHIF is the reference open viewer for SEG and TID 1500 SR, and strict about both; the viewer tests open
the node's results in it. Three pieces, all on 127.0.0.1:

- :func:`ohif_dist`: the built viewer (``dist/`` of the npm package ``@ohif/app``, pinned to
  :data:`OHIF_VERSION`), fetched once with ``npm pack`` into :data:`CACHE` (ignored by git; ``make ohif``
  fetches it ahead). Never committed.
- :func:`app_config`: the ``app-config.js`` OHIF reads at start: one DICOMweb data source, the proxy's own
  origin, nothing external.
- :class:`OhifServer`: a small threaded HTTP server (standard library only) that serves ``dist/`` (any
  unknown route gets ``index.html``, OHIF routes on the client) and forwards ``/dicom-web/...`` to an
  Orthanc with the DICOMweb plugin. Orthanc 1.10 sends no CORS headers, so viewer and archive must share
  one origin; the ``Host`` header is passed on so the plugin writes BulkDataURIs on the proxy's origin.

Run ``python -m tests.peers.ohif`` to fetch the build (what ``make ohif`` does).
"""

from __future__ import annotations

import http.server
import json
import mimetypes
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

import pytest

OHIF_PACKAGE = "@ohif/app"
OHIF_VERSION = "3.13.2"
REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("DICOM_NODE_OHIF_CACHE", str(REPO / ".cache" / "ohif")))
NPM_TIMEOUT_S = 300
PROXY_TIMEOUT_S = 60
# Headers of Orthanc's answers that are passed on to the browser (hop-by-hop ones are not).
_PASSED_HEADERS = ("Content-Type", "Content-Length", "Content-Disposition", "ETag", "Last-Modified")
_EXTRA_TYPES = {".wasm": "application/wasm", ".js": "text/javascript", ".mjs": "text/javascript"}


class OhifUnavailable(RuntimeError):
    """The OHIF build could not be obtained (npm missing, registry unreachable, bad package)."""


def require_peer(ok: bool, reason: str) -> None:
    """Skip the calling test with ``reason`` when a peer of the viewer test is missing (npm, the registry,
    the DICOMweb plugin, Chromium), or fail it under ``CI``, which must run it: the rule of the PostgreSQL
    tests (``tests/conftest.py``)."""
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI={os.environ['CI']} requires it)", pytrace=False)
    pytest.skip(reason)


def ohif_dist(version: str = OHIF_VERSION, cache: Path = CACHE) -> Path:
    """The ``dist/`` folder of ``@ohif/app@version``, fetched with ``npm pack`` when not cached yet.

    Raises:
        OhifUnavailable: npm is not installed, or it failed (the message says why).
    """
    dist = cache / version / "dist"
    if (dist / "index.html").is_file():
        return dist
    npm = shutil.which("npm")
    if npm is None:
        raise OhifUnavailable("npm is not installed: the OHIF viewer build cannot be fetched")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ohif-", dir=cache) as tmp:
        spec = f"{OHIF_PACKAGE}@{version}"
        try:
            done = subprocess.run(
                [npm, "pack", spec, "--pack-destination", tmp, "--silent"],
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=NPM_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise OhifUnavailable(f"npm pack {spec} took over {NPM_TIMEOUT_S} s") from exc
        tarballs = list(Path(tmp).glob("*.tgz"))
        if done.returncode != 0 or len(tarballs) != 1:
            raise OhifUnavailable(f"npm pack {spec} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        with tarfile.open(tarballs[0]) as tar:
            tar.extractall(tmp, filter="data")
        unpacked = Path(tmp) / "package" / "dist"
        if not (unpacked / "index.html").is_file():
            raise OhifUnavailable(f"{spec} has no dist/index.html")
        dist.parent.mkdir(parents=True, exist_ok=True)
        os.replace(unpacked, dist)  # atomic: a half-extracted build is never taken for a cached one
    return dist


def app_config(origin: str) -> str:
    """OHIF's ``app-config.js``: one DICOMweb data source at ``origin/dicom-web``, nothing else.

    Thumbnails are rendered by OHIF from the frames (Orthanc 1.10's plugin has no ``/rendered``), study
    lists are not fetched on a timer, and no extension that reaches the internet is configured.
    """
    root = f"{origin}/dicom-web"
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "orthanc",
        "configuration": {
            "friendlyName": "Orthanc (dicom-node test)",
            "name": "orthanc",
            "wadoUriRoot": root,
            "qidoRoot": root,
            "wadoRoot": root,
            "qidoSupportsIncludeField": False,
            "supportsReject": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "dicomUploadEnabled": False,
            "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True},
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "showErrorDetails": "always",
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": "orthanc",
        "dataSources": [source],
    }
    return f"/** dicom-node viewer test: OHIF against Orthanc on loopback. */\nwindow.config = {json.dumps(config)};\n"


class _Handler(http.server.BaseHTTPRequestHandler):
    """Static files from ``dist/``, ``/app-config.js`` generated, ``/dicom-web/`` forwarded to Orthanc."""

    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the requests are recorded in :attr:`OhifServer.requests` instead."""

    def do_GET(self) -> None:
        """Answer one GET (a viewer file or a DICOMweb request)."""
        self.server.requests.append(self.path)
        if self.path.startswith("/dicom-web/"):
            self._forward()
        elif self.path.split("?", 1)[0] == "/app-config.js":
            self._send(200, "text/javascript", self.server.config.encode())
        else:
            self._static()

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _static(self) -> None:
        dist = self.server.dist
        rel = urllib.request.url2pathname(self.path.split("?", 1)[0].split("#", 1)[0]).lstrip("/")
        path = (dist / rel).resolve()
        if not path.is_relative_to(dist) or not path.is_file():
            if Path(rel).suffix:  # a missing asset is a 404; a client-side route gets the app
                self._send(404, "text/plain", b"not found")
                return
            path = dist / "index.html"
        content_type = _EXTRA_TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0]
        self._send(200, content_type or "application/octet-stream", path.read_bytes())

    def _forward(self) -> None:
        # Accept only: no Accept-Encoding, so Orthanc answers uncompressed and the body passes unchanged.
        headers = {k: v for k, v in self.headers.items() if k.lower() == "accept"}
        headers["Host"] = self.headers.get("Host", "")
        request = urllib.request.Request(self.server.upstream + self.path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=PROXY_TIMEOUT_S) as resp:
                status, body, answer = resp.status, resp.read(), resp.headers
        except urllib.error.HTTPError as exc:
            status, body, answer = exc.code, exc.read(), exc.headers
        self.send_response(status)
        for name in _PASSED_HEADERS:
            if name in answer and name != "Content-Length":
                self.send_header(name, answer[name])
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, dist: Path, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.dist = dist.resolve()
        self.upstream = upstream.rstrip("/")
        self.origin = f"http://127.0.0.1:{self.server_address[1]}"
        self.config = app_config(self.origin)
        self.requests: list[str] = []


class OhifServer:
    """OHIF and a DICOMweb archive on one loopback origin (see the module docstring).

    Args:
        dist: the OHIF build (:func:`ohif_dist`).
        upstream: the archive's HTTP root, e.g. ``OrthancPeer.base_url`` (its plugin answers ``/dicom-web/``).
    """

    def __init__(self, dist: Path, upstream: str) -> None:
        self._server = _Server(dist, upstream)
        self._thread = threading.Thread(target=self._server.serve_forever, name="ohif-proxy", daemon=True)

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:<port>``: where the viewer is."""
        return self._server.origin

    @property
    def requests(self) -> list[str]:
        """Every path the browser asked for, in order."""
        return self._server.requests

    def viewer_url(self, study_instance_uid: str, mode: str = "viewer") -> str:
        """The URL that opens one study in OHIF's ``mode`` (``viewer`` is the longitudinal mode)."""
        return f"{self.origin}/{mode}?StudyInstanceUIDs={study_instance_uid}"

    def __enter__(self) -> OhifServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()


if __name__ == "__main__":
    try:
        print(ohif_dist())
    except OhifUnavailable as exc:
        sys.exit(f"ohif: {exc}")
