"""Where the shared real DICOM test data lives, resolved from this file (not from the cwd)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
REAL = (REPO / ".." / "shared" / "data" / "real").resolve()

CT_LIDC_SLAB = REAL / "ct_lidc0002_slab12"
US_CLINICAL = REAL / "us_clinical_samples"
US_PHANTOM = REAL / "us_vendor_deid_phantom"
SEGSR_DCMQI = REAL / "segsr_dcmqi_liver_ct3"
SEGSR_HIGHDICOM = REAL / "segsr_highdicom_refs"


def real(*parts: str) -> Path:
    """Path under the shared real-data folder (may not exist; see :func:`require`)."""
    return REAL.joinpath(*parts)


def require(path: Path | str) -> Path:
    """Return ``path`` (relative paths are taken under :data:`REAL`), or skip the test if it is missing."""
    p = Path(path)
    if not p.is_absolute():
        p = REAL / p
    if not p.exists():
        pytest.skip(f"test data missing: {p}")
    return p


skip_if_missing = require
"""Alias of :func:`require`."""
