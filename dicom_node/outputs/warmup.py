"""Encoding a tiny synthetic CT finding once, ahead of the first study.

The first :func:`~dicom_node.outputs.encode` in a process costs about 0.6 s more than the next ones
(pydicom's and highdicom's lazily built dictionaries, code tables and templates); a worker pays it at
start instead of on a patient's study.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence

import numpy as np

from dicom_node.findings import Category, Finding, Findings, Measurement, Quantity


def warm_up_encoders(kinds: Sequence[str]) -> None:
    """Encode one small finding on a 3-slice synthetic CT as every object kind in ``kinds``."""
    from dicom_node.imaging.ct import load_ct_series
    from dicom_node.outputs import encode
    from dicom_node.synth.dicom_series import write_ct_series

    hu = np.full((3, 16, 16), -800.0, dtype=np.float32)
    hu[:, 6:10, 6:10] = 40.0
    with tempfile.TemporaryDirectory(prefix="dicom-node-warm-up-") as folder:
        paths = write_ct_series(hu, (2.0, 1.0, 1.0), folder, seed=1, series_description="warm-up")
        volume = load_ct_series([str(p) for p in paths])
    mask = volume.pixels > -200
    findings = Findings(pipeline="warm_up", version="0")
    findings.findings.append(
        Finding(
            category=Category.NODULE,
            mask=mask,
            label="warm-up",
            measurements=[Measurement(Quantity.LONG_AXIS, 4.0)],
            key_slice=1,
        )
    )
    encode(findings, volume, list(kinds))
