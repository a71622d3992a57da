"""Classical lung fields on real CT: the LIDC chest slab, lower chest/abdomen slices, a head CT frame pair."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage as ndi

from dicom_node.findings import Category, Laterality, Quantity
from dicom_node.imaging.ct import load_ct_series
from dicom_node.pipelines import create
from dicom_node.pipelines.ct_lung_field import CtLungField, segment_lungs

ROOT = Path(__file__).resolve().parents[2]
REAL = (ROOT / ".." / "shared" / "data" / "real").resolve()
LIDC = REAL / "ct_lidc0002_slab12" / "dicom"
TSEG = REAL / "ct_totalseg_partialbody_j2k"
ECT = REAL / "ct_misc" / "eCT_Supplemental.dcm"

pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason="shared real data not present")


@pytest.fixture(scope="module")
def lidc_findings():  # type: ignore[no-untyped-def]
    pipe = create("ct_lung_field")
    vol = pipe.load([str(p) for p in sorted(LIDC.glob("*.dcm"))])
    return vol, pipe.run(vol, "cpu")


def test_two_lungs_on_lidc_slab(lidc_findings) -> None:  # type: ignore[no-untyped-def]
    vol, result = lidc_findings
    assert result.pipeline == "ct_lung_field" and not result.nothing_found
    lungs = {f.laterality: f for f in result.findings}
    assert set(lungs) == {Laterality.LEFT, Laterality.RIGHT}
    for f in lungs.values():
        assert f.category is Category.LUNG
        assert f.mask.shape == vol.shape
        # 12 slices x 1.25 mm of upper lobe: each lung 80-250 mL, parenchyma around -850 HU.
        assert 80_000 < (f.measurement(Quantity.VOLUME) or 0) < 250_000
        assert -900 < (f.measurement(Quantity.MEAN_HU) or 0) < -750
    # The patient's left lung is on the image right (columns run towards patient left).
    left_cols = np.nonzero(lungs[Laterality.LEFT].mask)[2].mean()
    right_cols = np.nonzero(lungs[Laterality.RIGHT].mask)[2].mean()
    assert left_cols > 256 > right_cols
    assert not (lungs[Laterality.LEFT].mask & lungs[Laterality.RIGHT].mask).any()


def test_trachea_excluded_and_vessels_filled(lidc_findings) -> None:  # type: ignore[no-untyped-def]
    vol, result = lidc_findings
    both = np.any([f.mask for f in result.findings], axis=0)
    # Trachea: the pure-air blob (about 200 mm2) at the image centre is outside the lung field.
    k = 6
    labels, _ = ndi.label(vol.pixels[k] < -950)
    trachea = labels == labels[260, 261]
    assert labels[260, 261] > 0 and 100 < trachea.sum() < 1000
    assert not both[k][trachea].any()
    # Vessels (bright pixels fully inside a lung) are part of the field.
    inner = ndi.binary_erosion(both[k], iterations=8)
    vessels = inner & (vol.pixels[k] > -300)
    assert vessels.sum() > 20


def test_lidc_nodule_tip_inside_field(lidc_findings) -> None:  # type: ignore[no-untyped-def]
    _, result = lidc_findings
    both = np.any([f.mask for f in result.findings], axis=0)
    # LIDC nodule tip at about col 345, row 363 on the lowest slices.
    assert both[0, 363, 345]


def test_stomach_gas_is_not_lung() -> None:
    vol = load_ct_series(sorted(TSEG.iterdir()))
    fields = segment_lungs(vol)
    # Only a sliver of lung base is in these lower chest / abdomen slices; the gas pockets are excluded.
    assert fields.both.sum() * np.prod(vol.spacing) < 15_000
    result = CtLungField().run(vol, "cpu")
    assert all((f.measurement(Quantity.VOLUME) or 0) < 15_000 for f in result.findings)


def test_head_ct_nothing_found() -> None:
    vol = load_ct_series([ECT])
    result = CtLungField(min_slices=2).run(vol, "cpu")
    assert result.nothing_found
    assert result.conclusions


def test_applies_to_reasons() -> None:
    pipe = CtLungField()
    headers = [pydicom.dcmread(str(p), stop_before_pixels=True) for p in sorted(LIDC.glob("*.dcm"))]
    assert pipe.applies_to(headers) is None
    assert "at least" in (pipe.applies_to(headers[:2]) or "")
    scout = pydicom.dcmread(str(sorted(LIDC.glob("*.dcm"))[0]), stop_before_pixels=True)
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    assert "localizer" in (pipe.applies_to([scout] * 5) or "")
    us = pydicom.Dataset()
    us.Modality = "US"
    assert "not CT" in (pipe.applies_to([us]) or "")


def test_fill_holes_per_slice_matches_scipy_on_each_slice() -> None:
    from dicom_node.pipelines.ct_lung_field import fill_holes_per_slice

    rng = np.random.default_rng(3)
    mask = ndi.binary_opening(rng.random((6, 40, 50)) > 0.45, structure=np.ones((1, 2, 2), bool))
    mask[2] = False  # an empty slice
    mask[3, 10:30, 10:30] = True
    mask[3, 15:20, 15:20] = False  # a square hole
    filled = fill_holes_per_slice(mask)
    assert filled[3, 15:20, 15:20].all()
    for k in range(mask.shape[0]):
        assert np.array_equal(filled[k], ndi.binary_fill_holes(mask[k])), k
