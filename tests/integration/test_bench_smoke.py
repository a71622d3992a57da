"""Smoke test of the benchmark harness: the report's ratio arithmetic and a tiny real scale-out run."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.ingest import IngestResult, Run
from benchmarks.report import Report, key_ratios, markdown, write
from benchmarks.scale import run_scale
from tests.conftest import require_postgres
from tests.peers.dicomfiles import CT_LIDC_SLAB, require


def _ingest() -> IngestResult:
    res = IngestResult(images=500, megabytes=262.0)
    seconds = {("node", 1): [2.0, 2.5], ("storescp", 1): [1.0, 0.5], ("orthanc", 1): [4.0, 5.0]}
    for (target, assoc), values in seconds.items():
        for i, s in enumerate(values):
            res.runs.append(Run(target, assoc, i, s, 500, 262.0, 0.0, 1.0))
    return res


def test_report_pairs_runs_by_index_and_takes_the_median_ratio(tmp_path: Path) -> None:
    res = _ingest()
    ratios = key_ratios(res)
    # node/storescp per pair: 250/500 = 0.5 and 200/1000 = 0.2 -> median 0.35
    assert ratios["1 assoc node/storescp"] == pytest.approx(0.35)
    # node/orthanc: 250/125 = 2.0 and 200/100 = 2.0
    assert ratios["1 assoc node/orthanc"] == pytest.approx(2.0)
    rep = Report(machine={"date": "today"}, command="test", ingest=res)
    text = markdown(rep)
    assert "node/orthanc = **2.00** (target >= 1.5): met" in text
    assert "node/storescp = **0.35** (target >= 0.5): NOT met" in text
    md = write(rep, tmp_path)
    assert md.read_text().startswith("# dicom-node benchmarks")
    assert (tmp_path / "latest.json").exists()


@pytest.mark.postgres
@pytest.mark.slow
def test_scale_runs_real_workers_on_postgres() -> None:
    require_postgres()
    sample = sorted((require(CT_LIDC_SLAB) / "dicom").iterdir())[0]
    runs = run_scale(sample, worker_counts=(1,), jobs={"bench_noop": 6, "bench_wait100": 3})
    assert [(r.pipeline, r.workers, r.jobs) for r in runs] == [("bench_noop", 1, 6), ("bench_wait100", 1, 3)]
    wait = next(r for r in runs if r.pipeline == "bench_wait100")
    assert wait.seconds >= 0.3  # three jobs of 100 ms each on one worker cannot overlap
    assert all(r.jobs_per_s > 0 for r in runs)


@pytest.mark.slow
def test_inference_peak_rss_is_the_childs_own_not_this_processs() -> None:
    import numpy as np

    from benchmarks.infer_child import vm_hwm_mb
    from benchmarks.inference import run_one

    folder = require(CT_LIDC_SLAB) / "dicom"
    ballast = np.ones(1 << 27)  # 1 GiB, resident: os.wait4 would report at least this for any child
    run = run_one("ct_lung_field", "cpu", "slab", folder, 12)
    assert run.error == "" and run.run_s > 0
    assert run.baseline_rss_mb <= run.peak_rss_mb < vm_hwm_mb() - 512
    del ballast
