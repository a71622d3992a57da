"""Shared helpers: processes started in their own group and always stopped, ports, timing, machine facts."""

from __future__ import annotations

import datetime
import logging
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_CACHE = Path(os.environ.get("DICOM_NODE_BENCH_CACHE", "/tmp/dicom-node-bench-cache"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tcp_env(**extra: str) -> dict[str, str]:
    """Environment for dcmtk and Orthanc: without TCP_NODELAY each image stalls about 40 ms on loopback."""
    return dict(os.environ, TCP_NODELAY="1", **extra)


def median(values: Sequence[float]) -> float:
    """Median, NaN for no values."""
    return float(statistics.median(values)) if values else float("nan")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Group:
    """A child process started in its own session, so it and all its children stop together."""

    argv: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> Group:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the group, then SIGKILL it if it does not exit in ``timeout`` seconds."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            _killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        _killpg(self.proc.pid, signal.SIGKILL)  # leftovers of the group (forked children)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def echo(port: int, called_ae: str, timeout: float = 10.0) -> bool:
    """Whether a DICOM SCP answers C-ECHO (dcmtk echoscu)."""
    try:
        result = subprocess.run(
            ["echoscu", "-to", "5", "-aet", "STORESCU", "-aec", called_ae, "127.0.0.1", str(port)],
            capture_output=True,
            env=tcp_env(),
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds (user + system, plus reaped children's) of every live process in the group ``pgid``."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[2]) == pgid:  # field 5 (pgrp), counted after the command name
            total += sum(int(v) for v in fields[11:15]) / tick
    return total


def wait_cpu_quiet(pgid: int, timeout: float = 20.0, window: float = 0.5, share: float = 0.05) -> float:
    """Wait until the group uses under ``share`` of one core over ``window`` seconds; returns the wait."""
    t0 = time.monotonic()
    last = group_cpu_seconds(pgid)
    while time.monotonic() - t0 < timeout:
        time.sleep(window)
        cpu = group_cpu_seconds(pgid)
        if cpu - last < share * window:
            break
        last = cpu
    return time.monotonic() - t0


def git_commit() -> str:
    """The checkout's commit (short), with '+dirty' when tracked files differ."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "missing"
    return out.strip().splitlines()[0] if out.strip() else "unknown"


def machine_info() -> dict[str, str]:
    """Date, commit, CPU, memory, load and peer versions, for the report header."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    import pydicom
    import pynetdicom
    import sqlalchemy

    gpu = "none"
    torch_version = "missing"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
        torch_version = str(torch.__version__)
    except ImportError:
        pass
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "cpu": f"{cpu} x {os.cpu_count()}",
        "memory": mem,
        "gpu": gpu,
        "load average at start": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "python": sys.version.split()[0],
        "pydicom / pynetdicom / sqlalchemy / torch": (
            f"{pydicom.__version__} / {pynetdicom.__version__} / {sqlalchemy.__version__} / {torch_version}"
        ),
        "dcmtk": _tool_version(["storescu", "--version"]).strip("$ "),
        "orthanc": _tool_version(["Orthanc", "--version"]) if shutil.which("Orthanc") else "missing",
        "disk (storage of all servers)": _disk_of(Path("/tmp")),
        "fdatasync of a 512 KB append (median of 50)": f"{fdatasync_ms(Path('/tmp')):.2f} ms",
    }


def fdatasync_ms(folder: Path, n: int = 50, size: int = 512 * 1024) -> float:
    """Median milliseconds of appending ``size`` bytes to a file in ``folder`` and fdatasync'ing it."""
    import tempfile

    block = os.urandom(size)
    times = []
    with tempfile.NamedTemporaryFile(dir=folder, prefix="bench-fsync-") as f:
        for _ in range(n):
            t = time.perf_counter()
            f.write(block)
            f.flush()
            os.fdatasync(f.fileno())
            times.append(1000 * (time.perf_counter() - t))
    return median(times)


def _disk_of(path: Path) -> str:
    try:
        out = subprocess.run(["df", "-hT", str(path)], capture_output=True, text=True, timeout=10).stdout
        parts = out.splitlines()[1].split()
        return f"{parts[0]} ({parts[1]}) at {path}"
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return str(path)
