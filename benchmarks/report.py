"""The report: markdown tables (``latest.md``), a plot (``latest.png``) and the raw numbers (``latest.json``)."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import median
from benchmarks.e2e import STAGES, E2ERun
from benchmarks.inference import InferenceRun
from benchmarks.ingest import IngestResult, Run
from benchmarks.scale import ScaleRun
from benchmarks.soak import SUMMARY, SoakResult, markdown_lines

log = logging.getLogger(__name__)

# The targets: ratio of the node's durable ingest to each peer, per association count.
INGEST_TARGETS = {(1, "orthanc"): 1.5, (1, "storescp"): 0.5, (4, "storescp"): 1.0}
E2E_TARGET_S = {133: 15.0}


@dataclass
class Report:
    """Everything one benchmark run measured (sections left None did not run)."""

    machine: dict[str, str]
    command: str
    quick: bool = False
    ingest: IngestResult | None = None
    e2e: list[E2ERun] | None = None
    inference: list[InferenceRun] | None = None
    scale: list[ScaleRun] | None = None
    soak: SoakResult | None = None
    errors: dict[str, str] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def ingest_ratios(result: IngestResult) -> dict[int, list[dict[str, float]]]:
    """Per association count, per run index: the node's and each peer's images/s and the ratios."""
    by: dict[tuple[str, int, int], Run] = {(r.target, r.associations, r.index): r for r in result.runs}
    out: dict[int, list[dict[str, float]]] = {}
    for assoc in sorted({r.associations for r in result.runs}):
        rows = []
        for index in sorted({r.index for r in result.runs if r.associations == assoc}):
            node = by.get(("node", assoc, index))
            if node is None:
                continue
            row = {"index": float(index), "node": node.images_per_s}
            tls = by.get(("node-tls", assoc, index))
            if tls is not None:  # DICOM TLS beside plain: the cost of encryption
                row["node-tls"] = tls.images_per_s
                row["node-tls/node"] = tls.images_per_s / node.images_per_s
            for peer in ("storescp", "orthanc"):
                other = by.get((peer, assoc, index))
                if other is not None:
                    row[peer] = other.images_per_s
                    row[f"node/{peer}"] = node.images_per_s / other.images_per_s
            rows.append(row)
        out[assoc] = rows
    return out


def key_ratios(result: IngestResult) -> dict[str, float]:
    """Median node/peer ratio per (associations, peer), e.g. ``{"1 assoc node/orthanc": 0.9}``, and the
    median TLS/plain ratio of the node (``"1 assoc node-tls/node"``)."""
    out = {}
    for assoc, rows in ingest_ratios(result).items():
        for ratio in ("node/storescp", "node/orthanc", "node-tls/node"):
            values = [r[ratio] for r in rows if ratio in r]
            if values:
                out[f"{assoc} assoc {ratio}"] = median(values)
    return out


def markdown(rep: Report) -> str:
    """The whole report as markdown."""
    lines = ["# dicom-node benchmarks", ""]
    if rep.quick:
        lines += ["**Quick (smoke) run: one run per cell and small studies; not the real figures.**", ""]
    lines += [f"Command: `{rep.command}`", ""]
    lines += _table(["", ""], [[k, v] for k, v in rep.machine.items()])
    took = ", ".join(f"{k} {v / 60:.1f} min" for k, v in rep.durations.items())
    lines += ["", f"Wall time per section: {took}.", ""]
    if rep.ingest is not None:
        lines += _ingest_md(rep.ingest)
    if rep.e2e is not None:
        lines += _e2e_md(rep.e2e, rep.notes.get("e2e", []))
    if rep.inference is not None:
        lines += _inference_md(rep.inference)
    if rep.scale is not None:
        lines += _scale_md(rep.scale)
    if rep.soak is not None:
        lines += ["## 5. Soak", "", SUMMARY, ""]
        lines += [*markdown_lines(rep.soak), ""]
    if rep.errors:
        lines += ["## Sections that failed", ""]
        for name, err in rep.errors.items():
            lines += [f"- **{name}**: `{err.strip().splitlines()[-1] if err.strip() else err}`"]
        lines += [""]
    return "\n".join(lines) + "\n"


def _ingest_md(res: IngestResult) -> list[str]:
    per_assoc = sorted({r.associations for r in res.runs})
    runs_per = {a: len({r.index for r in res.runs if r.associations == a}) for a in per_assoc}
    lines = [
        "## 1. Ingest",
        "",
        f"{res.images} CT instances (512 x 512, 16-bit, Explicit VR Little Endian), {res.megabytes:.0f} MB "
        "of files, sent by dcmtk `storescu` (TCP_NODELAY=1 for every dcmtk and Orthanc process) over "
        + " and ".join(f"{a} association{'s' if a > 1 else ''}" for a in per_assoc)
        + " (N concurrent `storescu` processes, files split evenly). Every run starts a fresh, empty server; "
        "the clock runs from starting the senders to the last one exiting, and the run only counts when the "
        "server holds every instance ('listed +s': the longest wait, after the senders exited, until the "
        "server's index listed them all; a node that acknowledges from a journal indexes later). "
        "Server CPU ms/image: CPU time of the server's process group (all threads and processes) from "
        "before the push until all were listed, per image: less sensitive to other load on the machine than "
        "wall time. Each server runs as it would be deployed for concurrent senders: storescp with `--fork` "
        "(a process per association), the node with 4 receiver processes on one port (`receiver_processes`; "
        "its durability column says which), Orthanc with its thread pool. "
        "node-tls is the same node pushed to over DICOM TLS (`[tls]`: TLS 1.2+, BCP 195 suites, client "
        "certificates required; storescu `+tls`). "
        "Runs are interleaved node, node-tls, storescp, Orthanc so each node/peer pair "
        "shares the same moment's machine load. MB/s counts file bytes. Median of "
        + ", ".join(f"{runs_per[a]} run(s) with {a} association(s)" for a in per_assoc)
        + ".",
        "",
    ]
    rows = []
    for target in ("node", "node-tls", "storescp", "orthanc"):
        for assoc in per_assoc:
            cell = [r for r in res.runs if r.target == target and r.associations == assoc]
            if not cell:
                continue
            rows.append(
                [
                    f"**{target}**" if target == "node" else target,
                    str(assoc),
                    _fmt(median([r.images_per_s for r in cell]), 0),
                    _fmt(median([r.mb_per_s for r in cell]), 0),
                    ", ".join(_fmt(r.images_per_s, 0) for r in cell),
                    _fmt(max(r.settle_s for r in cell), 2),
                    _fmt(median([r.cpu_ms_per_image for r in cell]), 1),
                    res.durability.get(target, ""),
                ]
            )
    lines += _table(
        [
            "receiver",
            "assoc.",
            "images/s (median)",
            "MB/s",
            "each run (images/s)",
            "listed +s",
            "server CPU ms/image",
            "durability",
        ],
        rows,
    )
    lines += ["", "Node / peer, per pair of runs (same run index, back to back):", ""]
    rows = []
    ratios = ingest_ratios(res)
    for assoc, items in ratios.items():
        for item in items:
            rows.append(
                [
                    str(assoc),
                    str(int(item["index"]) + 1),
                    _fmt(item["node"], 0),
                    _fmt(item.get("storescp"), 0),
                    _fmt(item.get("node/storescp"), 2),
                    _fmt(item.get("orthanc"), 0),
                    _fmt(item.get("node/orthanc"), 2),
                ]
            )
    lines += _table(
        ["assoc.", "run", "node img/s", "storescp img/s", "node/storescp", "Orthanc img/s", "node/Orthanc"], rows
    )
    lines += ["", "Targets (issue 6, median of the per-pair ratios):", ""]
    med = key_ratios(res)
    for (assoc, peer), goal in INGEST_TARGETS.items():
        value = med.get(f"{assoc} assoc node/{peer}")
        if value is None:
            continue
        mark = "met" if value >= goal else "NOT met"
        lines += [f"- {assoc} association(s), node/{peer} = **{value:.2f}** (target >= {goal:g}): {mark}"]
    for assoc in per_assoc:
        value = med.get(f"{assoc} assoc node-tls/node")
        if value is not None:
            lines += [f"- {assoc} association(s), DICOM TLS / plain = **{value:.2f}** (the cost of encryption)"]
    return [*lines, ""]


def _e2e_md(runs: list[E2ERun], notes: list[str]) -> list[str]:
    lines = [
        "## 2. End to end",
        "",
        "`dicom-node serve` (SQLite, quiet period 5 s, sweep every 1 s, one worker, the example config's "
        "queue settings) with one CT route to a fresh Orthanc; `storescu` sends the study over one association. "
        "Total = from `storescu` exiting (last C-STORE answered) to Orthanc holding every result object "
        "(the SR, and the SEG when something was found: see Findings below) "
        "(polled every 0.1 s). Stages come from the node's own records: quiet = series.routed_at - last "
        "instances.received_at; queue = jobs.started_at - routed_at; load/inference/encode/store = the job's "
        "`timings`; worker other = finished_at - started_at - those; delivery = last deliveries.sent_at - "
        "jobs.finished_at. Medians over runs.",
        "",
    ]
    lines += [f"- {n}" for n in notes]
    if notes:
        lines += [""]
    groups: dict[tuple[str, str], list[E2ERun]] = {}
    for r in runs:
        groups.setdefault((r.study, r.pipeline), []).append(r)
    headers = ["slices", "pipeline", "runs", "**total s**", "node records s"] + [k for k, _ in STAGES]
    rows = []
    for (_study, pipeline), items in groups.items():
        rows.append(
            [
                str(items[0].slices),
                pipeline,
                str(len(items)),
                f"**{_fmt(median([r.total_s for r in items]), 2)}**",
                _fmt(median([r.node_total_s for r in items]), 2),
            ]
            + [_fmt(median([r.stages.get(k, float("nan")) for r in items]), 2) for k, _ in STAGES]
        )
    lines += _table(headers, rows)
    lines += ["", "Stages: " + "; ".join(f"{k} = {desc}" for k, desc in STAGES) + ".", ""]
    for (_study, _pipeline), items in groups.items():
        slices = items[0].slices
        if slices in E2E_TARGET_S:
            value = median([r.total_s for r in items])
            target = E2E_TARGET_S[slices]
            lines += [
                f"- Target for {slices} slices: <= {target:g} s including the 5 s quiet period: "
                f"**{value:.1f} s**, {'met' if value <= target else 'NOT met'}."
            ]
        found = "; ".join(sorted({r.summary for r in items}))
        stored = ", ".join(sorted({o for r in items for o in r.objects}))
        lines += [f"- Findings, {slices} slices: {found} (stored in Orthanc: {stored or 'nothing'})."]
    lines += [""]
    return lines


def _inference_md(runs: list[InferenceRun]) -> list[str]:
    lines = [
        "## 3. Inference",
        "",
        "Each registered pipeline that accepts the CT series, in a fresh process per (pipeline, study, "
        "device): `create(name).load(paths)` then `.run(volume, device)`. Peak RSS is that process's "
        "own high-water mark (`VmHWM`), interpreter and imports included (baseline = before loading).",
        "",
    ]
    rows = []
    for r in runs:
        rows.append(
            [
                r.pipeline,
                r.device,
                str(r.slices),
                _fmt(r.load_s, 2),
                _fmt(r.run_s, 2),
                _fmt(r.per_slice_ms, 1),
                _fmt(r.per_study_s, 2),
                _fmt(r.peak_rss_mb, 0),
                _fmt(r.baseline_rss_mb, 0),
                _fmt(r.gpu_peak_mb, 0) if r.gpu_peak_mb is not None else "-",
                (r.error or r.summary).replace("|", "/"),
            ]
        )
    lines += _table(
        [
            "pipeline",
            "device",
            "slices",
            "load s",
            "run s",
            "ms / slice",
            "per study s",
            "peak RSS MB",
            "baseline MB",
            "GPU peak MB",
            "result",
        ],
        rows,
    )
    return [*lines, ""]


def _scale_md(runs: list[ScaleRun]) -> list[str]:
    lines = [
        "## 4. Scale",
        "",
        "PostgreSQL 127.0.0.1:5432, a new database per worker count; N worker processes "
        "(`dicom_node.worker.Worker`, started and idle first), then M one-instance jobs committed at once. "
        "jobs/s = M / (last finished_at - first started_at). `bench_noop` does no work (queue and worker "
        "overhead only: claim, headers, load, commit); `bench_wait100` waits 100 ms without CPU (a model on a "
        "GPU or a remote service). No destinations, so nothing is encoded or sent.",
        "",
    ]
    base = {r.pipeline: r.jobs_per_s for r in runs if r.workers == 1}
    rows = [
        [
            r.pipeline,
            str(r.workers),
            str(r.jobs),
            _fmt(r.seconds, 2),
            f"**{_fmt(r.jobs_per_s, 1)}**",
            _fmt(r.jobs_per_s / base[r.pipeline], 2) if r.pipeline in base else "-",
        ]
        for r in sorted(runs, key=lambda r: (r.pipeline, r.workers))
    ]
    lines += _table(["pipeline", "workers", "jobs", "seconds", "jobs/s", "x 1 worker"], rows)
    return [*lines, ""]


def to_json(rep: Report) -> dict[str, Any]:
    """Raw numbers for later comparison."""
    return asdict(rep)


def write(rep: Report, out: Path) -> Path:
    """Write latest.md, latest.json and latest.png (when matplotlib is installed) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    md = out / "latest.md"
    text = markdown(rep)
    png = out / "latest.png"
    if plot(rep, png):
        text += f"\n![benchmark plot]({png.name})\n"
    md.write_text(text)
    (out / "latest.json").write_text(json.dumps(to_json(rep), indent=1, default=str) + "\n")
    return md


def plot(rep: Report, path: Path) -> bool:
    """A 2 x 2 figure: ingest, end-to-end stages, inference per slice, scale. False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot")
        return False
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    title = f"dicom-node benchmarks {rep.machine.get('date', '')} ({rep.machine.get('commit', '')})"
    fig.suptitle(title + (" - QUICK smoke run" if rep.quick else ""))
    _plot_ingest(axes[0][0], rep.ingest)
    _plot_e2e(axes[0][1], rep.e2e)
    _plot_inference(axes[1][0], rep.inference)
    _plot_scale(axes[1][1], rep.scale)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _empty(ax: Any, title: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _plot_ingest(ax: Any, res: IngestResult | None) -> None:
    if res is None or not res.runs:
        return _empty(ax, "Ingest")
    assocs = sorted({r.associations for r in res.runs})
    targets = ["node", "storescp", "orthanc"]
    width = 0.8 / len(targets)
    for i, target in enumerate(targets):
        values = [
            median([r.images_per_s for r in res.runs if r.target == target and r.associations == a]) for a in assocs
        ]
        xs = [j + (i - 1) * width for j in range(len(assocs))]
        bars = ax.bar(xs, values, width, label=target)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(range(len(assocs)), [f"{a} assoc." for a in assocs])
    ax.set_ylabel("images/s (median)")
    ax.set_title(f"Ingest: {res.images} CT instances by storescu")
    ax.legend()


def _plot_e2e(ax: Any, runs: list[E2ERun] | None) -> None:
    if not runs:
        return _empty(ax, "End to end")
    groups: dict[str, list[E2ERun]] = {}
    for r in runs:
        groups.setdefault(f"{r.slices} slices\n{r.pipeline}", []).append(r)
    labels = list(groups)
    bottoms = [0.0] * len(labels)
    for key, _desc in STAGES:
        values = [max(0.0, median([r.stages.get(key, 0.0) for r in groups[g]])) for g in labels]
        ax.barh(labels, values, left=bottoms, label=key)
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    for i, g in enumerate(labels):
        ax.text(bottoms[i], i, f" {median([r.total_s for r in groups[g]]):.1f} s", va="center")
    ax.set_xlim(0, max(bottoms) * 1.15)
    ax.set_xlabel("seconds from last instance sent to results in Orthanc")
    ax.set_title("End to end (node's own stage records)")
    ax.set_ylim(-0.6, len(labels) - 0.4 + 0.5 * len(labels))
    ax.legend(fontsize=7, loc="upper center", ncol=4)


def _plot_inference(ax: Any, runs: list[InferenceRun] | None) -> None:
    ok = [r for r in runs or [] if not r.error]
    if not ok:
        return _empty(ax, "Inference")
    labels = [f"{r.pipeline}\n{r.device}, {r.slices} sl." for r in ok]
    bars = ax.bar(labels, [r.per_slice_ms for r in ok])
    ax.bar_label(bars, labels=[f"{r.per_slice_ms:.0f} ms\n{r.peak_rss_mb:.0f} MB" for r in ok], fontsize=8)
    ax.margins(y=0.2)
    ax.set_ylabel("ms per slice (peak RSS on bars)")
    ax.set_title("Inference")
    ax.tick_params(axis="x", labelsize=7)


def _plot_scale(ax: Any, runs: list[ScaleRun] | None) -> None:
    if not runs:
        return _empty(ax, "Scale")
    for pipeline in sorted({r.pipeline for r in runs}):
        items = sorted((r for r in runs if r.pipeline == pipeline), key=lambda r: r.workers)
        ax.plot([r.workers for r in items], [r.jobs_per_s for r in items], marker="o", label=pipeline)
    ax.set_xticks(sorted({r.workers for r in runs}))
    ax.set_xlabel("worker processes (PostgreSQL)")
    ax.set_ylabel("jobs/s")
    ax.set_title("Scale-out")
    ax.legend()
