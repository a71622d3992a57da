"""`make demo`: the node's main job end to end on the embedded defaults.

Starts the node (SQLite, the example config's routes and pipelines) on a free port, starts a small
receiving SCP that plays the PACS, writes a synthetic chest CT with nodules and a synthetic FDG PET/CT
(routed to ``pet_tumour``), pushes them to the node over C-STORE, waits for the results, and prints what
came back with the node's own timings.
Everything goes under ``demo-out/`` (git-ignored); run it again for a fresh start.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from sqlalchemy import select

from dicom_node.config import NodeConfig
from dicom_node.db import deliveries, jobs
from dicom_node.intake.routing_check import load_checked_config
from dicom_node.net.scu import send_files
from dicom_node.net.sockets import set_nodelay
from dicom_node.serve import Node, setup_logging

REPO = Path(__file__).resolve().parent.parent
log = logging.getLogger("dicom_node.demo")


class DemoPacs:
    """A receiving SCP standing in for the PACS: keeps what it gets, notes when."""

    def __init__(self, folder: Path, ae_title: str = "DEMO_PACS") -> None:
        self.folder = folder
        self.ae_title = ae_title
        self.received: list[tuple[float, Dataset]] = []
        self.lock = threading.Lock()
        ae = AE(ae_title=ae_title)
        ae.maximum_pdu_size = 0
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(str(cx.abstract_syntax), ALL_TRANSFER_SYNTAXES)
        server = ae.start_server(
            ("127.0.0.1", 0),
            block=False,
            evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay), (evt.EVT_C_STORE, self._store)],
        )
        assert server is not None
        self.server = server
        self.port = int(server.server_address[1])

    def _store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        ds.save_as(self.folder / f"{ds.Modality}_{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        with self.lock:
            self.received.append((time.time(), ds))
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


def demo_config(out: Path, pacs: DemoPacs) -> NodeConfig:
    """The example config, pointed at demo-out/ and at the demo PACS, on a free port."""
    example = load_checked_config(REPO / "config" / "node.example.toml")
    node = example.node.model_copy(update={"storage": out / "storage", "port": 0, "host": "127.0.0.1"})
    pacs_dest = example.destinations[0].model_copy(
        update={
            "ae_title": pacs.ae_title,
            "host": "127.0.0.1",
            "port": pacs.port,
            "outputs": ["seg", "sr", "gsps", "overlay"],
        }
    )
    intake = example.intake.model_copy(update={"quiet_period_s": 2.0, "sweep_interval_s": 0.25})
    queue = example.queue.model_copy(update={"poll_s": 0.2})
    web = example.web.model_copy(update={"port": 0})  # any free port: the demo must not collide with a running node
    return example.model_copy(
        update={"node": node, "destinations": [pacs_dest], "intake": intake, "queue": queue, "web": web}
    )


def make_study(folder: Path, seed: int) -> tuple[list[Path], list[str]]:
    """A synthetic chest CT (phantom with nodules) written as a DICOM series, and what it truly holds."""
    from dicom_node.synth.ct_phantom import make_phantom
    from dicom_node.synth.dicom_series import write_ct_series

    phantom = make_phantom(np.random.default_rng(seed), n_nodules=2, thickness=1.25, size=288, extent_mm=80.0)
    hu = np.full((phantom.hu.shape[0], 512, 512), -1000.0, dtype=np.float32)
    off = (512 - phantom.hu.shape[1]) // 2
    hu[:, off : off + phantom.hu.shape[1], off : off + phantom.hu.shape[2]] = phantom.hu
    truth = [f"{2 * n.radius:.1f} mm {n.composition.replace('_', '-')} {n.shape}" for n in phantom.nodules]
    return write_ct_series(hu, phantom.spacing, folder, seed=seed), truth  # padded to 512 x 512


def make_pet_study(folder: Path, seed: int) -> tuple[list[Path], list[str]]:
    """A synthetic FDG PET/CT of the thorax and upper abdomen (CT and PT series, one study) and its tumours."""
    from dicom_node.synth.pet_dicom import write_pet_ct_study
    from dicom_node.synth.pet_phantom import make_pet_ct_phantom

    phantom = make_pet_ct_phantom(seed, n_lesions=3, pet_slices=50, z_start_mm=250.0)
    ct, pt = write_pet_ct_study(phantom, folder, seed=seed)
    truth = [
        f"{lesion.diameter_mm:.0f} mm {lesion.site} SUV {lesion.suv:.1f}"
        for i, lesion in enumerate(phantom.lesions, start=1)
        if (phantom.lesion_labels == i).any()  # a tumour drawn outside the scanned range is not in the study
    ]
    return [*ct, *pt], truth


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(REPO / "demo-out"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args(argv)
    setup_logging("WARNING")
    log.setLevel(logging.INFO)
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    (out / "received").mkdir(parents=True)

    print("1/4 writing a synthetic chest CT study ...", flush=True)
    files, truth = make_study(out / "study", args.seed)
    print(f"    {len(files)} slices in {out / 'study'}; the phantom's nodules: {', '.join(truth) or 'none'}")
    pet_files, pet_truth = make_pet_study(out / "petct", args.seed)
    print(f"    and a synthetic FDG PET/CT, {len(pet_files)} CT + PT instances; its tumours: {', '.join(pet_truth)}")
    files = [*files, *pet_files]

    pacs = DemoPacs(out / "received")
    config = demo_config(out, pacs)
    node = Node(config, log_level="WARNING")
    t_start = time.time()
    node.start()
    try:
        ready = node.wait_ready(120)
        print(
            f"2/4 node {config.node.ae_title} listening on 127.0.0.1:{node.receiver.port} "
            f"(SQLite at {config.node.database_url()}); worker {'ready' if ready else 'still loading'} "
            f"after {time.time() - t_start:.1f} s (models loaded); demo PACS {pacs.ae_title} on port {pacs.port}"
        )
        t0 = time.time()
        sent = send_files(
            files,
            host="127.0.0.1",
            port=node.receiver.port,
            called_ae=config.node.ae_title,
            calling_ae="DEMO_SCU",
        )
        t_sent = time.time()
        ok = sum(s.ok for s in sent)
        print(
            f"3/4 pushed {ok}/{len(files)} instances over C-STORE in {t_sent - t0:.2f} s "
            f"({ok / max(t_sent - t0, 1e-9):.0f} images/s)",
            flush=True,
        )
        deadline = time.time() + args.timeout
        while time.time() < deadline and not _settled(node):
            time.sleep(0.2)
        t_done = time.time()
        with node.engine.connect() as conn:
            job_rows = conn.execute(select(jobs)).all()
            states = [r.state for r in conn.execute(select(deliveries.c.state))]
        print("4/4 results at the demo PACS:")
        for at, ds in sorted(pacs.received, key=lambda item: item[0]):
            print(
                f"    +{at - t_sent:6.2f} s  {ds.Modality:<4} {ds.SOPClassUID.name:<45} "
                f"series '{ds.get('SeriesDescription', '')}'{_describe(ds)}"
            )
        for _, ds in pacs.received:
            if ds.Modality == "SR":
                for line in sr_lines(ds):
                    print(f"      {line}")
        for job in job_rows:
            print(f"    job {job.id} {job.route}/{job.pipeline}: {job.state}; {job.summary or job.last_error}")
            timings = job.timings or {}
            if timings:
                print("      timings: " + ", ".join(f"{k.removesuffix('_s')} {v:.2f} s" for k, v in timings.items()))
        if not states or any(s != "sent" for s in states):
            print(f"    deliveries not complete within {args.timeout:.0f} s: {states}")
            return 1
        print(
            f"    last instance sent -> all {len(states)} result objects stored: {t_done - t_sent:.2f} s "
            f"(includes the {config.intake.quiet_period_s:g} s quiet period)"
        )
        print(f"    objects saved in {out / 'received'}")
        return 0
    finally:
        node.stop()
        pacs.stop()


def _settled(node: Node) -> bool:
    """True once every job has finished and every delivery is sent or dead."""
    with node.engine.connect() as conn:
        job_states = [r.state for r in conn.execute(select(jobs.c.state))]
        delivery_states = [r.state for r in conn.execute(select(deliveries.c.state))]
    if not job_states or any(s in ("queued", "running", "failed") for s in job_states):
        return False
    return all(s in ("sent", "dead") for s in delivery_states)


def sr_lines(ds: Dataset) -> list[str]:
    """What a radiologist would read in the SR: one line per measurement group, plus the conclusions."""
    lines: list[str] = []

    def walk(items: Any, group: list[str]) -> None:
        for item in items:
            name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
            kind = item.get("ValueType", "")
            if kind == "CONTAINER" and name == "Measurement Group":
                parts: list[str] = []
                walk(item.get("ContentSequence", []), parts)
                lines.append("; ".join(parts))
                continue
            if kind == "TEXT" and name == "Tracking Identifier" and not group:
                group.append(str(item.TextValue))
            elif kind == "NUM" and "MeasuredValueSequence" in item:
                value = item.MeasuredValueSequence[0]
                unit = value.MeasurementUnitsCodeSequence[0].CodeValue
                group.append(f"{name} {float(value.NumericValue):.1f} {unit}")
            elif kind == "CODE" and name in ("Malignancy likelihood", "Composition", "Finding"):
                group.append(f"{name}: {item.ConceptCodeSequence[0].CodeMeaning}")
            if "ContentSequence" in item:
                walk(item.ContentSequence, group)

    walk(ds.get("ContentSequence", []), [])
    return [line for line in lines if line]


def _describe(ds: Dataset) -> str:
    if ds.Modality == "SEG":
        return f", {len(ds.SegmentSequence)} segment(s): " + ", ".join(s.SegmentLabel for s in ds.SegmentSequence)
    if ds.Modality == "SR":
        groups = [item for item in ds.get("ContentSequence", []) if item.get("ValueType") == "CONTAINER"]
        return f", {len(groups)} container(s)"
    return ""


if __name__ == "__main__":
    raise SystemExit(main())
