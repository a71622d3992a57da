"""The node's processes: ``serve`` (receiver, scheduler, sender, N worker processes) and ``worker``.

The receiver and the scheduler (stability sweep, lease housekeeping, sender) live in the main process;
inference runs in separate worker processes so a model never slows down or crashes the receiver.
Everything they share goes through the database, so any process can die and restart.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue as queue_module
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from dicom_node import logfmt
from dicom_node.config import NodeConfig
from dicom_node.db import connect, now
from dicom_node.db.engine import log_event
from dicom_node.delivery import Sender
from dicom_node.intake.stability import StabilitySweep
from dicom_node.live_config import LiveConfig
from dicom_node.net.receivers import make_receiver
from dicom_node.queue import JobQueue
from dicom_node.store import Store

log = logging.getLogger(__name__)

DUE_SLACK_S = 0.02  # a due sweep runs this long after the series' quiet period ends (clock granularity)


def setup_logging(level: str = "INFO") -> None:
    """Log to stderr at ``level``, as text or JSON lines (``DICOM_NODE_LOG_FORMAT``, see :mod:`dicom_node.logfmt`)."""
    logging.basicConfig(level=level, handlers=[logfmt.handler()])
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # one INFO line per copied module, per object


def worker_main(config_json: str, index: int, log_level: str, ready: Any = None, problems: Any = None) -> None:
    """Entry point of one worker process; gets the already validated config as JSON, puts the pipelines
    that could not load on ``problems`` (a multiprocessing Queue) and sets ``ready`` (a multiprocessing
    Event) once its warm-up is over."""
    setup_logging(log_level)
    config = NodeConfig.model_validate_json(config_json)
    from dicom_node.worker import Worker

    engine = connect(config.node.database_url())
    worker = Worker(config, engine, Store(config.node.storage), name=None)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop.set())
    signal.signal(signal.SIGINT, lambda *_: worker.stop.set())
    worker.run_forever(ready, problems)


def receiver_main(config_json: str, index: int, log_level: str) -> None:
    """Entry point of an extra receiver process sharing the port (SO_REUSEPORT), with its own journal."""
    setup_logging(log_level)
    config = NodeConfig.model_validate_json(config_json)
    engine = connect(config.node.database_url(), migrate=False)
    receiver = make_receiver(config, engine, Store(config.node.storage), index)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    receiver.start(reuse_port=True)
    done.wait()
    receiver.stop()


class Node:
    """A running node: receiver + scheduler + sender in this process, workers as child processes."""

    def __init__(
        self, config: NodeConfig, *, log_level: str = "INFO", config_path: Path | None = None, from_file: Any = None
    ) -> None:
        """``config_path``: the file to reload on SIGHUP; ``from_file``: its config before command-line overrides."""
        self.config = config
        self.live = LiveConfig(config_path, from_file or config, config.node.storage) if config_path else None
        self.retiring: list[Any] = []  # workers of a previous config, finishing their current job
        self._workers_lock = threading.Lock()
        self.log_level = log_level
        self.engine = connect(config.node.database_url())
        self.store = Store(config.node.storage)
        self.queue = JobQueue(self.engine, config.queue)
        self.receiver = make_receiver(config, self.engine, self.store)
        self.sweep = StabilitySweep(config, self.engine, self.store, self.queue)
        self.sender = Sender(config, self.engine, self.store)
        self.scheduler = BackgroundScheduler()
        self.workers: list[Any] = []
        self._ready: list[Any] = []  # one multiprocessing Event per worker, set once it is warm
        self._problems: dict[int, Any] = {}  # per worker, a Queue of the pipelines it could not load
        self._broken: dict[int, list[str]] = {}  # what came out of those queues
        self.receivers: list[Any] = []
        self.stopped = threading.Event()
        self.listening = False
        self.web: Any = None

    def start(self) -> None:
        """Start listening, scheduling, extra receiver processes and the worker processes."""
        shared = self.config.node.receiver_processes > 1 and self.config.node.receiver == "native"
        self.receiver.start(reuse_port=shared)
        self.listening = True
        if self.config.web.enabled:
            from dicom_node.web import NodeFacts, WebServer

            facts = NodeFacts(
                lambda: self.listening and not self.stopped.is_set(),
                self.unready_workers,
                self.live.state if self.live else None,
                self.reload if self.live else None,
                self.pipeline_problems,
            )
            self.web = WebServer(self.config, self.engine, facts)
            self.web.start()
        if shared:
            for i in range(1, self.config.node.receiver_processes):
                self.receivers.append(self._spawn(receiver_main, "receiver", i))
        every = self.config.intake.sweep_interval_s
        jobs: list[tuple[Callable[[], object], float]] = [
            (self._sweep, every),
            (self.queue.requeue_expired, 5.0),
            (self.sender.tick, 1.0),
            (self._watch_workers, 2.0),
        ]
        if self.config.retention.enabled:
            from dicom_node.retention import Retention

            jobs.append(
                (Retention(self.config.retention, self.engine, self.store).sweep, self.config.retention.interval_s)
            )
        for func, seconds in jobs:
            self.scheduler.add_job(_guarded(func), "interval", seconds=seconds, max_instances=1, coalesce=True)
        self.scheduler.start()
        for i in range(self.config.node.workers):
            self.workers.append(self._spawn_worker(i))
        if self.live is not None:
            self.live.write_marker()
        log.info(
            "node %s up: port %d, %d worker(s), database %s",
            self.config.node.ae_title,
            self.receiver.port,
            len(self.workers),
            self.engine.url.render_as_string(hide_password=True),
        )

    def _sweep(self) -> None:
        """The stability sweep; when a series falls quiet before the next regular sweep, one more sweep
        is scheduled for that moment (at most one pending), so its job is not queued up to a sweep
        interval late."""
        self.sweep.sweep()
        due = self.sweep.next_due()
        if due is not None and now() < due < now() + self.config.intake.sweep_interval_s:
            self.scheduler.add_job(
                _guarded(self._sweep),
                "date",
                run_date=datetime.fromtimestamp(due + DUE_SLACK_S, tz=UTC),
                id="sweep-due",
                replace_existing=True,
                misfire_grace_time=None,
            )

    def wait_ready(self, timeout: float) -> bool:
        """Wait until every worker has loaded its pipelines' models (see :meth:`Worker.warm_up`); False
        if that took longer than ``timeout`` seconds. Studies received meanwhile are kept and queued."""
        deadline = time.monotonic() + timeout
        return all(event.wait(max(deadline - time.monotonic(), 0.0)) for event in self._ready)

    def _spawn_worker(self, index: int) -> Any:
        ready = mp.get_context("spawn").Event()
        if index < len(self._ready):
            self._ready[index] = ready
        else:
            self._ready.append(ready)
        self._problems[index] = mp.get_context("spawn").Queue()
        self._broken[index] = []
        return self._spawn(worker_main, "worker", index, ready, self._problems[index])

    def pipeline_problems(self) -> list[str]:
        """The routed pipelines that some worker could not load at its warm-up, with the reason."""
        for index, queue in list(self._problems.items()):
            while True:
                try:
                    self._broken[index].append(queue.get_nowait())
                except (queue_module.Empty, OSError, ValueError):
                    break
        return sorted({problem for found in self._broken.values() for problem in found})

    def _spawn(self, main: Any, role: str, index: int, *extra: Any) -> Any:
        """Start ``main(config_json, index, log_level, *extra)`` in a fresh (spawned) child process."""
        ctx = mp.get_context("spawn")
        proc = ctx.Process(
            target=main,
            args=(self.config.model_dump_json(), index, self.log_level, *extra),
            name=f"{role}-{index}",
            daemon=True,
        )
        proc.start()
        return proc

    def unready_workers(self) -> list[str]:
        """The workers that have not loaded their pipelines' models yet (by index)."""
        return [str(i) for i, event in enumerate(self._ready) if not event.is_set()]

    def _watch_workers(self) -> None:
        """Restart dead workers and dead extra receivers. A restarted receiver (same index, same
        journal) replays what its predecessor acknowledged and clears its ``ingest_pending`` marks,
        so the series they hold are routed without waiting for a restart of the node."""
        with self._workers_lock:  # a reload may be replacing the workers
            for i, proc in enumerate(self.workers):
                if not proc.is_alive() and not self.stopped.is_set():
                    log.error("worker %d exited with %s; restarting it", i, proc.exitcode)
                    self.workers[i] = self._spawn_worker(i)
        for i, proc in enumerate(self.receivers):
            if not proc.is_alive() and not self.stopped.is_set():
                log.error("receiver process %d exited with %s; restarting it", i + 1, proc.exitcode)
                self.receivers[i] = self._spawn(receiver_main, "receiver", i + 1)

    def reload(self, who: str = "SIGHUP") -> tuple[bool, str]:
        """Reload routes, peers and destinations from the config file (see :mod:`dicom_node.live_config`)."""
        if self.live is None:
            return False, "no config file to reload"
        ok, message = self.live.reload(self._apply, who)
        log_event(self.engine, "config_reload", message, level="INFO" if ok else "ERROR", user=who)
        return ok, message

    def _apply(self, update: dict[str, Any]) -> None:
        """Swap in reloaded sections: the receiver's AE policy (open associations keep theirs), the sweep's
        routes, the sender's destinations, the web face; the workers are replaced by new ones (the old ones
        finish their current job first)."""
        from dicom_node.net.policy import AssociationPolicy

        self.config = self.config.model_copy(update=update)
        self.receiver.policy = AssociationPolicy(self.config)
        self.sweep.config = self.config
        self.sender.config = self.config
        if self.web is not None:
            self.web.use_config(self.config)  # incl. [[web.users]]
        if "routes" in update or "destinations" in update:
            with self._workers_lock:
                for proc in self.workers:
                    proc.terminate()  # SIGTERM: the worker stops after its current job
                self.retiring = [p for p in self.retiring if p.is_alive()] + self.workers
                self.workers = [self._spawn_worker(i) for i in range(len(self.workers))]
        if self.receivers:
            log.warning("extra receiver processes keep the previous peers until the node restarts")

    def stop(self) -> None:
        """Stop everything; pending work stays in the database."""
        self.stopped.set()
        if self.live is not None:
            self.live.remove_marker()
        self.scheduler.shutdown(wait=True)
        self.receiver.stop()
        self.listening = False
        if self.web is not None:
            self.web.stop()
        for proc in self.workers + self.receivers + self.retiring:
            proc.terminate()
        for proc in self.workers + self.receivers + self.retiring:
            proc.join(timeout=30)
        self.engine.dispose()

    def serve_forever(self) -> None:
        """Run until SIGINT or SIGTERM; SIGHUP reloads the config file (in this loop, not in the handler)."""
        done, hup = threading.Event(), threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: done.set())
        signal.signal(signal.SIGINT, lambda *_: done.set())
        signal.signal(signal.SIGHUP, lambda *_: hup.set())
        self.start()
        while not done.wait(0.2):
            if hup.is_set():
                hup.clear()
                self.reload("SIGHUP")
        log.info("stopping")
        self.stop()


def _guarded(func: Any) -> Any:
    def run() -> None:
        try:
            func()
        except Exception:  # keep the schedule alive; the next tick tries again
            log.exception("%s failed", getattr(func, "__qualname__", func))

    return run
