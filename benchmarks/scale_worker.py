"""A worker process for the scale benchmark: ``python -m benchmarks.scale_worker CONFIG NAME``.

Registers the benchmark pipelines, then runs :class:`dicom_node.worker.Worker` until SIGTERM, exactly as
``dicom-node worker`` does.
"""

from __future__ import annotations

import logging
import signal
import sys

import benchmarks.bench_pipelines  # noqa: F401  (registers bench_noop, bench_wait100)
from dicom_node.db import connect
from dicom_node.intake.routing_check import load_checked_config
from dicom_node.store import Store
from dicom_node.worker import Worker


def main(argv: list[str]) -> int:
    config_path, name = argv
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_checked_config(config_path)
    engine = connect(config.node.database_url())
    worker = Worker(config, engine, Store(config.node.storage), name=name)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop.set())
    signal.signal(signal.SIGINT, lambda *_: worker.stop.set())
    worker.run_forever()
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
