"""Inference: each registered CT pipeline on each study, one fresh process per (pipeline, study, device).

A pipeline counts as a CT pipeline when its ``applies_to`` accepts the benchmark's CT series. Peak RSS
is the child's own high-water mark (``VmHWM`` of its address space, which it reports itself), so one
pipeline's memory never hides another's. Not ``os.wait4``'s ``ru_maxrss``: Linux carries the parent's
high-water mark over into a child's at ``exec``, so that figure is never below this benchmark
process's own peak (seen: 2,555 MB for every pipeline, a 13 MB child reported as 1.5 GB).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import REPO

log = logging.getLogger(__name__)

CHILD_TIMEOUT_S = 600.0


@dataclass
class InferenceRun:
    """One pipeline on one study."""

    pipeline: str
    device: str
    study: str
    slices: int
    load_s: float = float("nan")
    run_s: float = float("nan")
    wall_s: float = float("nan")
    peak_rss_mb: float = float("nan")
    after_load_rss_mb: float = float("nan")
    baseline_rss_mb: float = float("nan")
    gpu_peak_mb: float | None = None
    torch_threads: int | None = None
    version: str = ""
    summary: str = ""
    error: str = ""

    @property
    def per_slice_ms(self) -> float:
        return 1000.0 * self.run_s / self.slices

    @property
    def per_study_s(self) -> float:
        return self.load_s + self.run_s


def ct_pipelines(headers_from: list[Path]) -> list[str]:
    """Registered pipelines whose ``applies_to`` accepts this CT series."""
    from pydicom import dcmread

    from dicom_node.pipelines import available, create

    headers = [dcmread(f, stop_before_pixels=True) for f in headers_from]
    names = []
    for name in available():
        try:
            if create(name).applies_to(headers) is None:
                names.append(name)
        except Exception as exc:  # a pipeline that cannot even be created is reported, not fatal
            log.warning("pipeline %s: cannot check applicability: %s", name, exc)
            names.append(name)
    return names


def devices() -> list[str]:
    """cpu, plus cuda when torch sees a GPU."""
    try:
        import torch

        return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    except ImportError:
        return ["cpu"]


def run_one(pipeline: str, device: str, study: str, folder: Path, slices: int) -> InferenceRun:
    """Run ``pipeline`` on the study in ``folder`` in a child process, which reports its own peak RSS."""
    out = InferenceRun(pipeline=pipeline, device=device, study=study, slices=slices)
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.infer_child", pipeline, device, str(folder)],
            cwd=REPO,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        code = _wait(proc, CHILD_TIMEOUT_S)
        out.wall_s = time.perf_counter() - t0
        stdout.seek(0)
        stderr.seek(0)
        text, err = stdout.read().decode(errors="replace"), stderr.read().decode(errors="replace")
    if code is None:
        out.error = f"timed out after {CHILD_TIMEOUT_S:.0f} s"
        return out
    if code != 0:
        lines = [line for line in err.strip().splitlines() if line.strip()]
        out.error = lines[-1][:300] if lines else f"exit {code}"
        return out
    report = json.loads(text.strip().splitlines()[-1])
    if "not_applicable" in report:
        out.error = f"not applicable: {report['not_applicable']}"
        return out
    for key in (
        "load_s",
        "run_s",
        "after_load_rss_mb",
        "baseline_rss_mb",
        "peak_rss_mb",
        "gpu_peak_mb",
        "torch_threads",
        "version",
        "summary",
    ):
        setattr(out, key, report[key])
    log.info(
        "inference %s on %s (%s): load %.2f s, run %.2f s (%.1f ms/slice), peak RSS %.0f MB",
        pipeline,
        study,
        device,
        out.load_s,
        out.run_s,
        out.per_slice_ms,
        out.peak_rss_mb,
    )
    return out


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """``proc``'s exit code; after ``timeout`` seconds its group is killed and None returned."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        return None


def run_inference(studies: list[tuple[str, Path, int]], only: list[str] | None = None) -> list[InferenceRun]:
    """Every CT pipeline (or those in ``only``) on every study, on every device."""
    first = studies[0][1]
    names = only or ct_pipelines(sorted(f for f in first.iterdir() if f.suffix == ".dcm"))
    runs = []
    for device in devices():
        for name in names:
            for study, folder, slices in studies:
                runs.append(run_one(name, device, study, folder, slices))
    return runs
