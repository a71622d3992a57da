"""A real Orthanc (Debian's ``/usr/sbin/Orthanc``) on loopback, for integration tests.

Each :class:`OrthancPeer` has its own temporary directory, JSON configuration and free ports (the Debian
package may already run a system Orthanc on 4242/8042, so fixed ports are never used). It can be stopped and
started again on the same ports and storage, to simulate "PACS down, then back".

Example::

    with OrthancPeer(modalities={"NODE": ("NODE", "127.0.0.1", 11112)}) as pacs:
        ...  # C-STORE to 127.0.0.1:pacs.dicom_port, AE pacs.aet
        assert pacs.instances()
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

logger = logging.getLogger(__name__)

ORTHANC_BINARY = "/usr/sbin/Orthanc"
# Where Debian's orthanc-dicomweb puts the DICOMweb plugin (the first that exists is loaded).
DICOMWEB_PLUGINS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def orthanc_available() -> bool:
    """Whether the Orthanc binary is installed."""
    return Path(ORTHANC_BINARY).exists() or shutil.which("Orthanc") is not None


def dicomweb_plugin() -> Path | None:
    """The installed Orthanc DICOMweb plugin (Debian ``orthanc-dicomweb``), or ``None``."""
    return next((Path(p) for p in DICOMWEB_PLUGINS if Path(p).exists()), None)


class OrthancPeer:
    """A private Orthanc server on loopback.

    Args:
        aet: Orthanc's own AE title.
        modalities: AE definitions Orthanc knows (``{"name": (aet, host, port)}``), so it accepts
            associations from, and can C-STORE/C-MOVE to, our AE.
        extra_config: further keys merged into the JSON configuration.
        start: start the server in the constructor.
        startup_timeout: seconds to wait for the REST API to answer.
        dicomweb: load the DICOMweb plugin (QIDO-RS / WADO-RS under ``/dicom-web/``, for viewers);
            ``RuntimeError`` when it is not installed.
    """

    def __init__(
        self,
        aet: str = "ORTHANC",
        modalities: dict[str, tuple[str, str, int]] | None = None,
        extra_config: dict[str, Any] | None = None,
        *,
        start: bool = True,
        startup_timeout: float = 30.0,
        dicomweb: bool = False,
    ) -> None:
        self.aet = aet
        self.dicom_port = free_port()
        self.http_port = free_port()
        while self.http_port == self.dicom_port:
            self.http_port = free_port()
        self.startup_timeout = startup_timeout
        self.root = Path(tempfile.mkdtemp(prefix="orthanc-peer-"))
        self.config_path = self.root / "orthanc.json"
        config: dict[str, Any] = {
            "Name": f"test-{aet}",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"),
            "StorageCompression": False,
            "DicomAet": aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "DicomServerEnabled": True,
            "HttpServerEnabled": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SslEnabled": False,
            "Plugins": [],
            "UnknownSopClassAccepted": True,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": {name: [m_aet, host, port] for name, (m_aet, host, port) in (modalities or {}).items()},
            "SaveJobs": False,
            "OverwriteInstances": True,
            "HttpDescribeErrors": True,
        }
        if dicomweb:
            plugin = dicomweb_plugin()
            if plugin is None:
                raise RuntimeError(f"the Orthanc DICOMweb plugin is not installed (looked at {DICOMWEB_PLUGINS})")
            config["Plugins"] = [str(plugin)]
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": False}
        config.update(extra_config or {})
        self.config_path.write_text(json.dumps(config, indent=2))
        self.log_path = self.root / "orthanc.log"
        self._proc: subprocess.Popen[bytes] | None = None
        if start:
            self.start()

    # -- lifecycle -------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def base_url(self) -> str:
        """The REST root, e.g. ``http://127.0.0.1:8042``."""
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        """Start (or restart) the server on the same ports and storage; wait until REST answers."""
        if self.running:
            return
        env = dict(os.environ, TCP_NODELAY="1")
        log = self.log_path.open("ab")
        binary = ORTHANC_BINARY if Path(ORTHANC_BINARY).exists() else (shutil.which("Orthanc") or "Orthanc")
        self._proc = subprocess.Popen(
            [binary, str(self.config_path)],
            cwd=self.root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self._proc.returncode}:\n{self.log_tail()}")
            try:
                self.get("/system")
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.1)
                continue
            if self._dicom_port_open():
                logger.debug("orthanc up: dicom %d http %d", self.dicom_port, self.http_port)
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {self.startup_timeout} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL); storage and ports are kept for :meth:`start`."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout)
        self._proc = None

    def terminate(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> OrthancPeer:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.terminate()

    def log_tail(self, n: int = 40) -> str:
        """The last ``n`` lines of Orthanc's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def _dicom_port_open(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.dicom_port), timeout=0.5):
                return True
        except OSError:
            return False

    # -- REST ------------------------------------------------------------------------------------------

    def get(self, path: str, timeout: float = 10.0) -> Any:
        """GET ``path`` from the REST API and decode the JSON answer."""
        with urllib.request.urlopen(self.base_url + path, timeout=timeout) as resp:
            return json.loads(resp.read())

    def get_bytes(self, path: str, timeout: float = 30.0) -> bytes:
        """GET ``path`` and return the raw body (e.g. ``/instances/{id}/file``)."""
        with urllib.request.urlopen(self.base_url + path, timeout=timeout) as resp:
            return bytes(resp.read())

    def post(self, path: str, body: Any, timeout: float = 30.0, method: str = "POST") -> Any:
        """POST (or ``method``: PUT) a JSON body (or raw bytes) and decode the JSON answer."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def delete(self, path: str, timeout: float = 10.0) -> None:
        """DELETE a resource (``/instances/{id}``, ``/studies/{id}``...)."""
        req = urllib.request.Request(self.base_url + path, method="DELETE")
        with urllib.request.urlopen(req, timeout=timeout):
            pass

    def instances(self) -> list[str]:
        """Orthanc IDs of every stored instance."""
        return list(self.get("/instances"))

    def studies(self) -> list[str]:
        """Orthanc IDs of every stored study."""
        return list(self.get("/studies"))

    def instance_tags(self, orthanc_id: str) -> dict[str, Any]:
        """``/instances/{id}/simplified-tags``: keyword -> value."""
        return dict(self.get(f"/instances/{orthanc_id}/simplified-tags"))

    def find(self, level: str, query: dict[str, str]) -> list[str]:
        """``/tools/find`` at ``level`` ("Patient", "Study", "Series", "Instance"); returns Orthanc IDs."""
        return list(self.post("/tools/find", {"Level": level, "Query": query}))

    def sop_instance_uids(self) -> set[str]:
        """SOP Instance UIDs of everything stored."""
        out: set[str] = set()
        for oid in self.instances():
            out.add(str(self.get(f"/instances/{oid}")["MainDicomTags"]["SOPInstanceUID"]))
        return out

    def series_of_study(self, study_instance_uid: str) -> list[dict[str, Any]]:
        """Series resources (with MainDicomTags and Instances) of the study with this UID."""
        ids = self.find("Study", {"StudyInstanceUID": study_instance_uid})
        out: list[dict[str, Any]] = []
        for sid in ids:
            out.extend(self.get(f"/studies/{sid}/series"))
        return out

    def clear(self) -> None:
        """Delete every stored patient (and so every instance)."""
        for pid in self.get("/patients"):
            self.delete(f"/patients/{pid}")
