"""Synthetic chest phantoms and nodule rendering: HU realism, partial volume, ground truth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from dicom_node.pipelines.ct_lung_nodule import long_short_axes
from dicom_node.synth.ct_nodule import random_spec, render_occupancy
from dicom_node.synth.ct_phantom import make_phantom


@pytest.fixture(scope="module")
def phantom():  # type: ignore[no-untyped-def]
    return make_phantom(np.random.default_rng(7), n_nodules=3, thickness=2.5, size=224, extent_mm=30.0)


def test_phantom_hu_ranges(phantom) -> None:  # type: ignore[no-untyped-def]
    hu, lung = phantom.hu, phantom.lung
    assert hu.shape == (12, 224, 224) and hu.dtype == np.float32
    assert phantom.spacing == (2.5, 1.0, 1.0)
    parenchyma = hu[lung & (phantom.labels == 0)]
    assert -920 < np.median(parenchyma) < -780  # aerated lung
    assert np.median(hu[:, :5, :5]) < -950  # air outside the body
    assert (hu > 300).sum() > 500  # ribs / spine
    assert lung.mean() > 0.1


def test_phantom_nodule_truth(phantom) -> None:  # type: ignore[no-untyped-def]
    assert 1 <= len(phantom.nodules) <= 3
    for i, spec in enumerate(phantom.nodules, start=1):
        mask = phantom.labels == i
        if spec.radius * 2 < 5:
            continue
        assert mask.any()
        k = int(np.argmax(mask.reshape(mask.shape[0], -1).sum(axis=1)))
        long_axis, short_axis = long_short_axes(mask[k], (1.0, 1.0))
        # The rendered mask's long axis is within a few mm of (or larger than, for lobes) the design.
        assert long_axis > 0.5 * 2 * spec.radius
        assert short_axis <= long_axis
        if spec.composition == "solid" and spec.shape != "calcified":
            assert np.median(phantom.hu[mask]) > -450


def test_partial_volume_dims_small_nodule_on_thick_slices() -> None:
    spec = random_spec(np.random.default_rng(1), (0.0, 0.0, 0.0), diameter=4.0, shape="smooth", composition="solid")
    axis = np.arange(-6, 7, dtype=float)
    thin, _, _ = render_occupancy(spec, np.array([0.0]), axis, axis, thickness=1.0)
    thick, _, _ = render_occupancy(spec, np.array([0.0]), axis, axis, thickness=5.0)
    assert thin.max() == pytest.approx(1.0, abs=0.05)
    assert thick.max() < 0.9  # a 4 mm nodule fills less than 90 % of a 5 mm slice


def test_long_short_axes_of_an_ellipse() -> None:
    yy, xx = np.mgrid[0:80, 0:80]
    ellipse = ((yy - 40) / 10.0) ** 2 + ((xx - 40) / 20.0) ** 2 <= 1.0
    long_axis, short_axis = long_short_axes(ellipse, (0.5, 0.5))
    assert long_axis == pytest.approx(20.5, abs=0.6)  # 41 pixels x 0.5 mm
    assert short_axis == pytest.approx(10.5, abs=0.6)
    assert long_short_axes(np.zeros((4, 4), bool), (1.0, 1.0)) == (0.0, 0.0)


def test_hilar_vessels_are_large_soft_tissue_tubes_taken_out_of_the_lung() -> None:
    kw = {"n_nodules": 0, "thickness": 2.5, "size": 224, "extent_mm": 30.0}
    plain = make_phantom(np.random.default_rng(7), **kw)
    hilar = make_phantom(np.random.default_rng(7), hilar=True, **kw)
    taken = plain.lung & ~hilar.lung  # same body and lungs up to the hilar draws
    assert taken.sum() * 2.5 > 3000  # several ml of lung became hilar vessel
    assert -100 < float(np.median(hilar.hu[taken])) < 120  # soft tissue, as the other vessels
    assert not (hilar.lung & ~plain.lung).any()
    radii = [r for _, _, r in hilar.vessels]
    assert max(radii) >= 6.0 and max(r for _, _, r in plain.vessels) < 6.0
    # A cross-section at least 12 mm across in some slice (an in-plane trunk or a through-plane branch).
    assert max(float(ndi.distance_transform_edt(t).max()) for t in taken) >= 6.0
