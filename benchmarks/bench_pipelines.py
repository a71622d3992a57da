"""Benchmark-only pipelines, registered when this module is imported (never by the node itself).

``bench_noop`` does no work: a job costs only the queue and the worker's own overhead (claim, read the
series headers, commit). ``bench_wait100`` waits 100 ms without using the CPU: a stand-in for a model
that runs on a GPU or a remote service, so more workers can overlap even on a 2-core machine.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicom_node.findings import Findings
from dicom_node.imaging.volume import Volume
from dicom_node.pipelines import register

VERSION = "0.0.0-bench"


class _BenchPipeline:
    name = "bench"
    version = VERSION
    wait_s = 0.0

    def applies_to(self, series: Sequence[Dataset]) -> str | None:
        return None if series else "empty series"

    def load(self, paths: Sequence[str]) -> Volume:
        headers: list[Dataset] = [dcmread(p, stop_before_pixels=True) for p in paths]
        return Volume(np.zeros((len(headers), 4, 4), np.float32), (1.0, 1.0, 1.0), "CT", headers)

    def run(self, volume: Volume, device: str) -> Findings:
        if self.wait_s:
            time.sleep(self.wait_s)
        return Findings(pipeline=self.name, version=self.version)


@register("bench_noop")
class BenchNoop(_BenchPipeline):
    """No work at all."""

    name = "bench_noop"


@register("bench_wait100")
class BenchWait100(_BenchPipeline):
    """100 ms of waiting, no CPU."""

    name = "bench_wait100"
    wait_s = 0.1
