"""The node's processes: ``serve`` (receiver, scheduler, sender, N worker processes) and ``worker``.

The receiver and the scheduler (stability sweep, lease housekeeping, sender) live in the main process;
inference runs in separate worker processes so a model never slows down or crashes the receiver.
Everything they share goes through the database, so any process can die and restart.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from dicom_node.config import NodeConfig
from dicom_node.db import connect, now
from dicom_node.delivery import Sender
from dicom_node.intake.stability import StabilitySweep
from dicom_node.net.receivers import make_receiver
from dicom_node.queue import JobQueue
from dicom_node.store import Store

log = logging.getLogger(__name__)

DUE_SLACK_S = 0.02  # a due sweep runs this long after the series' quiet period ends (clock granularity)


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # one INFO line per copied module, per object


def worker_main(config_json: str, index: int, log_level: str, ready: Any = None) -> None:
    """Entry point of one worker process; gets the already validated config as JSON, and sets
    ``ready`` (a multiprocessing Event) once its models are loaded."""
    setup_logging(log_level)
    config = NodeConfig.model_validate_json(config_json)
    from dicom_node.worker import Worker

    engine = connect(config.node.database_url())
    worker = Worker(config, engine, Store(config.node.storage), name=None)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop.set())
    signal.signal(signal.SIGINT, lambda *_: worker.stop.set())
    worker.run_forever(ready)


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

    def __init__(self, config: NodeConfig, *, log_level: str = "INFO") -> None:
        self.config = config
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

            facts = NodeFacts(lambda: self.listening and not self.stopped.is_set(), self.unready_workers)
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
        return self._spawn(worker_main, "worker", index, ready)

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
        for i, proc in enumerate(self.workers):
            if not proc.is_alive() and not self.stopped.is_set():
                log.error("worker %d exited with %s; restarting it", i, proc.exitcode)
                self.workers[i] = self._spawn_worker(i)

    def stop(self) -> None:
        """Stop everything; pending work stays in the database."""
        self.stopped.set()
        self.scheduler.shutdown(wait=True)
        self.receiver.stop()
        self.listening = False
        if self.web is not None:
            self.web.stop()
        for proc in self.workers + self.receivers:
            proc.terminate()
        for proc in self.workers + self.receivers:
            proc.join(timeout=30)
        self.engine.dispose()

    def serve_forever(self) -> None:
        """Run until SIGINT or SIGTERM."""
        done = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: done.set())
        signal.signal(signal.SIGINT, lambda *_: done.set())
        self.start()
        done.wait()
        log.info("stopping")
        self.stop()


def _guarded(func: Any) -> Any:
    def run() -> None:
        try:
            func()
        except Exception:  # keep the schedule alive; the next tick tries again
            log.exception("%s failed", getattr(func, "__qualname__", func))

    return run
