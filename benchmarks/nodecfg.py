"""Config files for the node under test (the example config's defaults unless a benchmark needs otherwise)."""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.common import REPO, Group, echo, free_port, wait_for


def node_config(
    storage: Path,
    *,
    port: int,
    database: str = "",
    workers: int = 1,
    quiet_period_s: float = 5.0,
    pipelines: list[str] | None = None,
    dest_port: int | None = None,
    dest_aet: str = "ORTHANC",
    outputs: tuple[str, ...] = ("seg", "sr"),
    extra: dict[str, str] | None = None,
) -> str:
    """A complete node config; a route only when ``pipelines`` is given (CT, to the destination if any).

    ``extra`` adds ``[node]`` keys as TOML source (``{"receiver_processes": "2"}``).
    """
    dest = ""
    if dest_port is not None:
        dest = f"""
[[destinations]]
name = "pacs"
ae_title = "{dest_aet}"
host = "127.0.0.1"
port = {dest_port}
outputs = [{", ".join(f'"{o}"' for o in outputs)}]
"""
    route = ""
    if pipelines:
        route = f"""
[[routes]]
name = "chest-ct"
pipelines = [{", ".join(f'"{p}"' for p in pipelines)}]
destinations = [{'"pacs"' if dest_port is not None else ""}]
[routes.match]
Modality = "CT"
"""
    return f"""
[node]
ae_title = "NODE"
host = "127.0.0.1"
port = {port}
storage = "{storage}"
database = "{database}"
min_free_disk_mb = 0
workers = {workers}
device = "auto"
{"".join(f"{k} = {v}{chr(10)}" for k, v in (extra or {}).items())}
[intake]
quiet_period_s = {quiet_period_s}

[[peers]]
ae_title = "STORESCU"
host = "127.0.0.1"
{dest}{route}"""


def start_node(workdir: Path, config_text: str, port: int, timeout: float = 90.0) -> Group:
    """``dicom-node serve`` in its own process group; returns once it answers C-ECHO."""
    config_path = workdir / "node.toml"
    config_path.write_text(config_text)
    node = Group(
        [sys.executable, "-m", "dicom_node.cli", "serve", "--config", str(config_path), "--log-level", "WARNING"],
        workdir / "node.log",
        cwd=REPO,
    ).start()
    try:
        wait_for(
            lambda: _ready(node, port),
            timeout,
            "the node to answer C-ECHO",
            interval=0.2,
        )
    except BaseException:
        node.stop()
        raise
    return node


def _ready(node: Group, port: int) -> bool:
    if not node.alive():
        raise RuntimeError(f"dicom-node serve exited:\n{node.log_tail()}")
    return echo(port, "NODE")


__all__ = ["free_port", "node_config", "start_node"]
