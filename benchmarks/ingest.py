"""Ingest: dcmtk ``storescu`` pushes one study over 1 or N associations into the node, storescp and Orthanc.

Every run gets a fresh server (empty storage), started before the clock and checked after it: the run
only counts when every instance arrived. Runs are interleaved (node, storescp, Orthanc, node, ...) so
each node/peer pair of runs sees the same machine load.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from sqlalchemy import create_engine, func, select

from benchmarks.common import Group, echo, free_port, group_cpu_seconds, tcp_env, wait_cpu_quiet, wait_for
from benchmarks.nodecfg import node_config, start_node

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 300.0
NODE_DEFAULTS = {"receiver_processes": "4"}  # the setting for several concurrent senders (README)


class Target(Protocol):
    """A receiving SCP under test."""

    name: str
    durability: str
    aet: str
    port: int

    def start(self) -> None: ...

    def stored(self) -> int: ...

    def pgid(self) -> int: ...

    def stop(self) -> None: ...


class NodeTarget:
    """``dicom-node serve``: SQLite in storage/, one idle worker, no routes."""

    name = "node"
    durability = "Success only after fsync (the node's contract); SQLite (WAL, synchronous=FULL) index"
    aet = "NODE"

    def __init__(self, options: dict[str, str] | None = None) -> None:
        self.port = 0
        self.root: Path | None = None
        self.group: Group | None = None
        self.options = dict(options or {})

    def start(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="bench-node-"))
        self.port = free_port()
        text = node_config(self.root / "storage", port=self.port, workers=1, extra=self.options)
        self.durability = describe_node(text)
        self.group = start_node(self.root, text, self.port)
        wait_cpu_quiet(self.group.pid)  # the worker process has finished importing

    def pgid(self) -> int:
        return self.group.pid if self.group is not None else 0

    def stored(self) -> int:
        assert self.root is not None
        from dicom_node.db import instances

        engine = create_engine(f"sqlite:///{self.root / 'storage' / 'node.db'}")
        try:
            with engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(instances)).scalar_one())
        finally:
            engine.dispose()

    def stop(self) -> None:
        if self.group is not None:
            self.group.stop()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)


def describe_node(config_text: str) -> str:
    """The node's durability and receiver settings, as its config validates them."""
    from dicom_node.config import parse_config

    node = parse_config(config_text).node
    settings = [
        f"{key} {getattr(node, key)}" for key in ("durability", "receiver", "receiver_processes") if hasattr(node, key)
    ]
    return "Success only after fsync (node contract); SQLite WAL synchronous=FULL; " + ", ".join(settings)


class NodeTlsTarget(NodeTarget):
    """The node as :class:`NodeTarget`, pushed to over DICOM TLS (``[tls]``, mutual, BCP 195 suites): a
    throwaway CA and certificates made with ``openssl`` (tests.peers.pki); storescu sends ``+tls``."""

    name = "node-tls"

    def __init__(self, options: dict[str, str] | None = None) -> None:
        super().__init__(options)
        self.storescu_args: tuple[str, ...] = ()

    def start(self) -> None:
        from tests.peers.pki import make_pki

        self.root = Path(tempfile.mkdtemp(prefix="bench-node-tls-"))
        pki = make_pki(self.root / "pki")
        plain, self.port = free_port(), free_port()
        text = node_config(self.root / "storage", port=plain, workers=1, extra=self.options)
        text += (
            f'\n[tls]\nport = {self.port}\ncertificate = "{pki.server_cert}"\nprivate_key = "{pki.server_key}"\n'
            f'ca_certificates = "{pki.ca}"\n'
        )
        self.durability = describe_node(text) + "; DICOM TLS 1.2+, mutual, BCP 195 suites"
        self.storescu_args = ("+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca))
        self.group = start_node(self.root, text, plain)  # ready once the plain port answers
        wait_cpu_quiet(self.group.pid)


class StorescpTarget:
    """dcmtk ``storescp --fork``: one process per association, files written without fsync."""

    name = "storescp"
    durability = "plain write, no fsync (dcmtk default)"
    aet = "STORESCP"

    def __init__(self) -> None:
        self.port = 0
        self.root: Path | None = None
        self.group: Group | None = None

    def start(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="bench-storescp-"))
        (self.root / "in").mkdir()
        self.port = free_port()
        self.group = Group(
            ["storescp", "--fork", "-aet", self.aet, "-od", str(self.root / "in"), str(self.port)],
            self.root / "storescp.log",
            env=tcp_env(),
        ).start()
        group = self.group
        try:
            wait_for(lambda: group.alive() and echo(self.port, self.aet), 30, "storescp to answer C-ECHO")
        except BaseException:
            self.stop()
            raise

    def pgid(self) -> int:
        return self.group.pid if self.group is not None else 0

    def stored(self) -> int:
        assert self.root is not None
        return sum(1 for _ in (self.root / "in").iterdir())

    def stop(self) -> None:
        if self.group is not None:
            self.group.stop()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)


class OrthancTarget:
    """Debian's Orthanc via tests.peers.orthanc.OrthancPeer: SQLite index, SyncStorageArea default (fsync)."""

    name = "orthanc"
    durability = "SQLite index + SyncStorageArea=true (fsync per file): Orthanc 1.10 defaults"
    aet = "ORTHANC"

    def __init__(self) -> None:
        self.port = 0
        self.peer: object | None = None

    def start(self) -> None:
        from tests.peers.orthanc import OrthancPeer

        peer = OrthancPeer(aet=self.aet)
        self.peer = peer
        self.port = peer.dicom_port
        wait_cpu_quiet(peer._proc.pid if peer._proc else 0, timeout=10)

    def pgid(self) -> int:
        from tests.peers.orthanc import OrthancPeer

        if isinstance(self.peer, OrthancPeer) and self.peer._proc is not None:
            return self.peer._proc.pid
        return 0

    def stored(self) -> int:
        from tests.peers.orthanc import OrthancPeer

        assert isinstance(self.peer, OrthancPeer)
        return int(self.peer.get("/statistics")["CountInstances"])

    def stop(self) -> None:
        from tests.peers.orthanc import OrthancPeer

        if isinstance(self.peer, OrthancPeer):
            self.peer.terminate()


TARGETS: dict[str, type] = {
    "node": NodeTarget,
    "node-tls": NodeTlsTarget,
    "storescp": StorescpTarget,
    "orthanc": OrthancTarget,
}


@dataclass
class Run:
    """One timed push."""

    target: str
    associations: int
    index: int
    seconds: float
    images: int
    megabytes: float
    settle_s: float = 0.0  # after the senders exit, until the server lists every instance
    server_cpu_s: float = float("nan")  # the server's CPU seconds from before the push to all listed

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.megabytes / self.seconds

    @property
    def cpu_ms_per_image(self) -> float:
        return 1000.0 * self.server_cpu_s / self.images


@dataclass
class IngestResult:
    """All runs of the ingest benchmark."""

    images: int
    megabytes: float
    runs: list[Run] = field(default_factory=list)
    durability: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _all_listed(target: Target, n: int) -> Callable[[], bool]:
    return lambda: target.stored() >= n


def push(
    files: list[Path], aet: str, port: int, associations: int, workdir: Path, extra: tuple[str, ...] = ()
) -> float:
    """Send ``files`` with ``associations`` concurrent storescu processes (``extra`` options: TLS);
    wall seconds until all exit."""
    chunks = [files[i::associations] for i in range(associations)]
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    t0 = time.perf_counter()
    try:
        for i, chunk in enumerate(chunks):
            out = (workdir / f"storescu-{i}.log").open("wb")
            logs.append(out)
            procs.append(
                subprocess.Popen(
                    ["storescu", "-aet", "STORESCU", "-aec", aet, *extra, "127.0.0.1", str(port), *map(str, chunk)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=tcp_env(),
                )
            )
        deadline = t0 + SEND_TIMEOUT_S
        codes = [p.wait(timeout=max(1.0, deadline - time.perf_counter())) for p in procs]
        seconds = time.perf_counter() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for out in logs:
            out.close()
    if any(codes):
        tail = (workdir / "storescu-0.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"storescu exit codes {codes} sending to {aet}:{port}:\n{tail}")
    return seconds


def run_ingest(
    files: list[Path],
    *,
    runs: int,
    associations: tuple[int, ...] = (1, 4),
    targets: tuple[str, ...] = ("node", "node-tls", "storescp", "orthanc"),
    runs_multi: int | None = None,
    node_options: dict[str, str] | None = None,
) -> IngestResult:
    """Time ``runs`` pushes of ``files`` per (associations, target) cell, interleaving the targets.

    The node runs :data:`NODE_DEFAULTS` (several receiver processes, as storescp forks one process
    per association) unless ``node_options`` say otherwise.
    """
    node_options = {**NODE_DEFAULTS, **(node_options or {})}
    total_mb = sum(f.stat().st_size for f in files) / 1e6
    result = IngestResult(images=len(files), megabytes=total_mb)
    workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        for n_assoc in associations:
            n_runs = runs if n_assoc == 1 or runs_multi is None else runs_multi
            for index in range(n_runs):
                for name in targets:
                    target = TARGETS[name](node_options) if name.startswith("node") else TARGETS[name]()
                    target.start()
                    result.durability[name] = target.durability
                    try:
                        cpu0 = group_cpu_seconds(target.pgid())
                        extra = getattr(target, "storescu_args", ())
                        seconds = push(files, target.aet, target.port, n_assoc, workdir, extra)
                        t_sent = time.perf_counter()
                        try:
                            wait_for(_all_listed(target, len(files)), 120, f"{name} to list every instance")
                        except TimeoutError:
                            pass
                        settle = time.perf_counter() - t_sent
                        cpu = group_cpu_seconds(target.pgid()) - cpu0
                        stored = target.stored()
                    finally:
                        target.stop()
                    if stored != len(files):
                        raise RuntimeError(f"{name}: {stored} of {len(files)} instances stored")
                    run = Run(name, n_assoc, index, seconds, len(files), total_mb, settle, cpu)
                    result.runs.append(run)
                    log.info(
                        "ingest %-8s x%d run %d: %.2f s, %.0f images/s, %.1f MB/s (listed +%.2f s), %.1f CPU ms/image",
                        name,
                        n_assoc,
                        index,
                        seconds,
                        run.images_per_s,
                        run.mb_per_s,
                        settle,
                        run.cpu_ms_per_image,
                    )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return result
