"""A real PACS (Orthanc) pushing studies to the node, as it would on a routing rule."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select

from dicom_node.db import connect, instances
from dicom_node.net.receivers import make_receiver
from dicom_node.store import Store
from tests.nodes import make_config
from tests.peers.dicomfiles import CT_LIDC_SLAB, US_PHANTOM, require
from tests.peers.orthanc import OrthancPeer, free_port


@pytest.mark.parametrize("receiver", ["native", "pynetdicom"])
def test_orthanc_pushes_a_ct_series_and_a_us_cine(tmp_path: Path, receiver: str) -> None:
    port = free_port()
    config = make_config(tmp_path / "storage", port=port, extra_node=f'receiver = "{receiver}"')
    config = config.model_copy(
        update={
            "peers": [*config.peers, config.peers[0].model_copy(update={"ae_title": "ORTHANC", "host": "127.0.0.1"})]
        }
    )
    engine = connect(config.node.database_url())
    node = make_receiver(config, engine, Store(config.node.storage))
    node.start()
    files = sorted((require(CT_LIDC_SLAB) / "dicom").iterdir())
    files += sorted(
        f for f in require(US_PHANTOM).rglob("*.dcm") if "NumberOfFrames" in dcmread(f, stop_before_pixels=True)
    )
    try:
        with OrthancPeer(aet="ORTHANC", modalities={"node": ("NODE", "127.0.0.1", port)}) as pacs:
            ids = [pacs.post("/instances", f.read_bytes())["ID"] for f in files]
            answer = pacs.post("/modalities/node/store", {"Resources": ids, "Synchronous": True}, timeout=120)
            assert answer["FailedInstancesCount"] == 0, answer
        assert node.ingestor.flush()  # type: ignore[attr-defined]
        with engine.connect() as conn:
            stored = {r.sop_uid: r.path for r in conn.execute(select(instances.c.sop_uid, instances.c.path))}
        assert set(stored) == {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
        cine = dcmread(Store(config.node.storage).absolute(stored[str(dcmread(files[-1]).SOPInstanceUID)]))
        assert int(cine.NumberOfFrames) > 1 and cine.pixel_array.shape[0] == int(cine.NumberOfFrames)
    finally:
        node.stop()
