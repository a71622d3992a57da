"""Building test configs and running the node (in-process parts, or the real `dicom-node serve`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from dicom_node.config import NodeConfig, parse_config
from tests.peers.orthanc import free_port


def node_config_text(
    storage: Path,
    *,
    db_url: str = "",
    port: int | None = None,
    dest_port: int | None = None,
    dest_aet: str = "ORTHANC",
    quiet_period_s: float = 0.5,
    workers: int = 1,
    extra_node: str = "",
    outputs: str = '["seg", "sr"]',
    retry_for_hours: float = 1.0,
    pipelines: str = '["ct_lung_field"]',
    min_free_disk_mb: int = 0,
    match: str = 'Modality = "CT"',
    more_peers: tuple[str, ...] = (),
) -> str:
    """A complete config for tests: peers STORESCU/TESTSCU/ECHOSCU (and the AE titles of ``more_peers`` from
    127.0.0.1), one destination, one CT route."""
    extra_peers = "".join(f'\n[[peers]]\nae_title = "{aet}"\nhost = "127.0.0.1"\n' for aet in more_peers)
    dest = ""
    dest_names = "[]"
    if dest_port is not None:
        dest = f"""
[[destinations]]
name = "pacs"
ae_title = "{dest_aet}"
host = "127.0.0.1"
port = {dest_port}
outputs = {outputs}
retry_for_hours = {retry_for_hours}
retry_backoff_s = 0.5
retry_backoff_max_s = 1.0
"""
        dest_names = '["pacs"]'
    return f"""
[node]
ae_title = "NODE"
host = "127.0.0.1"
port = {port if port is not None else free_port()}
storage = "{storage}"
database = "{db_url}"
min_free_disk_mb = {min_free_disk_mb}
workers = {workers}
device = "cpu"
{extra_node}

[intake]
quiet_period_s = {quiet_period_s}
sweep_interval_s = 0.2

[queue]
max_attempts = 2
lease_s = 10
heartbeat_s = 1
backoff_base_s = 0.5
backoff_max_s = 1
poll_s = 0.2

[[peers]]
ae_title = "STORESCU"
host = "127.0.0.1"

[[peers]]
ae_title = "ECHOSCU"

[[peers]]
ae_title = "TESTSCU"
{extra_peers}{dest}
[[routes]]
name = "chest-ct"
pipelines = {pipelines}
destinations = {dest_names}
[routes.match]
{match}
"""


def make_config(storage: Path, **kwargs: object) -> NodeConfig:
    return parse_config(node_config_text(storage, **kwargs))  # type: ignore[arg-type]


def wait_for(predicate: Callable[[], object], timeout: float = 60.0, interval: float = 0.2, what: str = "") -> object:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or predicate}")
        time.sleep(interval)


def tcp_env() -> dict[str, str]:
    """Environment for dcmtk and Orthanc: without TCP_NODELAY each image stalls about 40 ms on loopback."""
    return dict(os.environ, TCP_NODELAY="1")


class ServeProcess:
    """`dicom-node serve` as a child process (so it can be killed with SIGKILL)."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dicom_node.cli", "serve", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        """SIGKILL the whole process group (server and its workers), no chance to clean up."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
