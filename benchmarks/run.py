"""``make bench``: ingest, end to end, inference and scale-out in one run; writes benchmarks/results/.

Usage::

    python -m benchmarks.run                      # everything, real figures -> benchmarks/results/latest.*
    python -m benchmarks.run --quick              # smoke run: 1 run per cell, small study -> /tmp
    python -m benchmarks.run --only ingest,scale  # some sections only
    python -m benchmarks.run --pipeline ct_lung_nodule   # the end-to-end route's pipeline

Studies are synthetic chest CTs written once into the cache folder (``--cache``, default
``/tmp/dicom-node-bench-cache`` or ``$DICOM_NODE_BENCH_CACHE``). Every server is started on free ports
in its own process group and stopped in ``finally`` blocks.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import DEFAULT_CACHE, RESULTS, machine_info
from benchmarks.data import Study, chest_ct, real_chest_ct, warm_page_cache
from benchmarks.report import Report, key_ratios, markdown, write

log = logging.getLogger("benchmarks.run")

SECTIONS = ("ingest", "e2e", "inference", "scale", "soak")
QUICK_OUT = Path("/tmp/dicom-node-bench-quick")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 1 run per cell, a 48-slice study")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {', '.join(SECTIONS)}")
    p.add_argument("--runs", type=int, help="ingest runs per cell with 1 association (default 5; quick 1)")
    p.add_argument("--runs-multi", type=int, help="ingest runs per cell with 4 associations (default --runs)")
    p.add_argument("--e2e-runs", type=int, help="end-to-end runs of the 133-slice study (default 3; quick 1)")
    p.add_argument("--e2e-runs-large", type=int, default=1, help="end-to-end runs of the 500-slice study")
    p.add_argument("--pipeline", default="ct_lung_nodule", help="pipeline of the end-to-end route")
    p.add_argument("--inference-pipelines", default="", help="comma-separated (default: every CT pipeline)")
    p.add_argument(
        "--node-option",
        action="append",
        default=[],
        metavar="KEY=TOML",
        help="extra [node] setting for the node under test, e.g. receiver_processes=2 or durability='\"file\"'",
    )
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where generated studies are kept")
    p.add_argument("--out", type=Path, help=f"results folder (default {RESULTS}; quick: {QUICK_OUT})")
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    args.runs = args.runs or (1 if args.quick else 5)  # a 500-image run lasts 0.3-1.2 s: 5 pairs steady the median
    args.e2e_runs = args.e2e_runs or (1 if args.quick else 3)
    args.out = args.out or (QUICK_OUT if args.quick else RESULTS)
    args.node_options = {}
    for item in args.node_option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            p.error(f"--node-option wants KEY=VALUE, got {item!r}")
        args.node_options[key.strip()] = value.strip()
    return args


class Studies:
    """The benchmark's studies, generated on first use."""

    def __init__(self, cache: Path, quick: bool) -> None:
        self.cache = cache
        self.quick = quick

    def large(self) -> Study:
        """500 slices (ingest, end to end); quick: 48."""
        return chest_ct(48, 1.0, self.cache) if self.quick else chest_ct(500, 0.625, self.cache)

    def small(self) -> Study:
        """133 slices (end to end); quick: the 48-slice study. Seed 14 gives this study two nodules the
        pipeline is meant to find (10.8 mm solid lobulated, 8.2 mm ground-glass spiculated), so the end
        to end run encodes and delivers a SEG; seed 11's are 3.6 and 4.5 mm ground glass, below the
        6 mm the detector is specified for."""
        return self.large() if self.quick else chest_ct(133, 2.5, self.cache, seed=14)

    def e2e(self) -> list[Study]:
        """The end-to-end studies; the real whole chest (when ../shared has it) beside the 133-slice phantom,
        so that both are measured on the same machine in the same run."""
        if self.quick:
            return [self.large()]
        real = real_chest_ct()
        return [self.small(), *([real] if real else []), self.large()]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("benchmarks").setLevel(logging.INFO)
    command = "python -m benchmarks.run" + ("".join(f" {shlex.quote(a)}" for a in (argv or sys.argv[1:])))
    rep = Report(machine=machine_info(), command=command, quick=args.quick)
    studies = Studies(args.cache, args.quick)
    steps: dict[str, Callable[[], None]] = {
        "ingest": lambda: _ingest(rep, studies, args),
        "e2e": lambda: _e2e(rep, studies, args),
        "inference": lambda: _inference(rep, studies, args),
        "scale": lambda: _scale(rep, studies, args),
        "soak": lambda: _soak(rep, args),
    }
    t_all = time.perf_counter()
    for name in args.sections:
        log.info("== %s ==", name)
        t0 = time.perf_counter()
        try:
            steps[name]()
        except KeyboardInterrupt:
            rep.errors[name] = "interrupted"
            break
        except Exception as exc:  # one failing section must not lose the others' figures
            log.error("%s failed: %s", name, exc)
            rep.errors[name] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        rep.durations[name] = time.perf_counter() - t0
        write(rep, args.out)  # partial results survive a later crash
    md = write(rep, args.out)
    print(markdown(rep))
    if rep.ingest is not None:
        print("Key ratios: " + ", ".join(f"{k} = {v:.2f}" for k, v in key_ratios(rep.ingest).items()))
    print(f"wrote {md} (and latest.png, latest.json) in {(time.perf_counter() - t_all) / 60:.1f} min")
    return 1 if rep.errors else 0


def _ingest(rep: Report, studies: Studies, args: Any) -> None:
    from benchmarks.ingest import run_ingest

    study = studies.large()
    warm_page_cache(study.files)
    rep.ingest = run_ingest(study.files, runs=args.runs, runs_multi=args.runs_multi, node_options=args.node_options)


def _e2e(rep: Report, studies: Studies, args: Any) -> None:
    from benchmarks.e2e import run_e2e

    rep.e2e = []
    for study in studies.e2e():
        warm_page_cache(study.files)
        runs = args.e2e_runs if study.slices <= 133 or args.quick else args.e2e_runs_large
        for index in range(runs):
            rep.e2e.append(
                run_e2e(study.files, study.name, pipeline=args.pipeline, index=index, node_options=args.node_options)
            )
            write(rep, args.out)
    rep.notes["e2e"] = [
        f"{s.slices} slices: {s.thickness:g} mm "
        + (
            "real whole-chest CT (Lung-PET-CT-Dx A0001, adenocarcinoma)"
            if s.name.startswith("real-")
            else "synthetic chest CT phantom (lungs, vessels, 2 nodules)"
        )
        + f", {s.bytes / 1e6:.0f} MB"
        for s in studies.e2e()
    ]


def _inference(rep: Report, studies: Studies, args: Any) -> None:
    from benchmarks.inference import run_inference

    chosen = [s for s in {s.name: s for s in (studies.small(), studies.large())}.values()]
    only = [p.strip() for p in args.inference_pipelines.split(",") if p.strip()] or None
    rep.inference = run_inference([(s.name, s.folder, s.slices) for s in chosen], only=only)
    if not args.quick and (only is None or "pet_tumour" in only):  # the PET/CT model on its own study
        from benchmarks.data import pet_ct
        from benchmarks.inference import devices, run_one

        pet = pet_ct(args.cache)
        rep.inference += [run_one("pet_tumour", device, pet.name, pet.folder, 150) for device in devices()]


def _scale(rep: Report, studies: Studies, args: Any) -> None:
    from benchmarks.scale import run_scale

    sample = studies.small().files[0]
    if args.quick:
        rep.scale = run_scale(sample, worker_counts=(1, 2), jobs={"bench_noop": 40, "bench_wait100": 16})
    else:
        rep.scale = run_scale(sample)


def _soak(rep: Report, args: Any) -> None:
    from benchmarks.soak import run_soak

    rep.soak = run_soak(30 if args.quick else None)  # $DICOM_NODE_SOAK_S seconds of sending (default 60)
    if rep.soak.lost or rep.soak.hidden:
        raise RuntimeError(f"soak: {rep.soak.lost} lost and {rep.soak.hidden} hidden acknowledged instance(s)")


if __name__ == "__main__":
    sys.exit(main())
