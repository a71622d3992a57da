"""What the CT nodule model reads: lung noise brought into its training range, gross noise and contrast
refused (on phantoms)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from dicom_node.pipelines.ct_lung_nodule.contrast import ENHANCED_VESSEL_HU, vessel_core_hu
from dicom_node.pipelines.ct_lung_nodule.noise import MAX_NOISE_HU, TARGET_NOISE_HU, harmonise, lung_noise
from dicom_node.pipelines.ct_lung_nodule.scope import contrast_enhanced, too_noisy
from dicom_node.synth.ct_phantom import Phantom, make_phantom


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_phantom(np.random.default_rng(8), n_nodules=1)  # 2.5 mm, enough vessel cores (6,106 px)


def _noisy(hu: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """Correlated noise as CT shows it (the phantom generator's kind), ``sigma`` HU."""
    noise = ndi.gaussian_filter(np.random.default_rng(seed).standard_normal(hu.shape).astype(np.float32), (0, 0.7, 0.7))
    return (hu + sigma * noise / noise.std()).astype(np.float32)


def test_lung_noise_grows_with_the_noise_and_is_brought_back_to_the_target(phantom: Phantom) -> None:
    quiet = lung_noise(phantom.hu, phantom.lung)
    assert quiet is not None and quiet <= TARGET_NOISE_HU + 1  # the training range
    levels = [lung_noise(_noisy(phantom.hu, s), phantom.lung) for s in (40.0, 80.0, 160.0)]
    assert all(v is not None for v in levels) and levels == sorted(levels) and levels[0] > quiet  # type: ignore[type-var]
    for sigma in (80.0, 160.0):
        smoothed, used = harmonise(_noisy(phantom.hu, sigma), phantom.lung)
        after = lung_noise(smoothed, phantom.lung)
        assert used > 0 and after is not None and abs(after - TARGET_NOISE_HU) < 2.0, (sigma, used, after)
    same, used = harmonise(phantom.hu, phantom.lung, target=max(quiet + 1, TARGET_NOISE_HU))
    assert used == 0 and same is phantom.hu  # a quiet series is read as it is


def test_gross_noise_is_refused_with_the_reason() -> None:
    assert too_noisy(None) is None and too_noisy(MAX_NOISE_HU) is None
    reason = too_noisy(MAX_NOISE_HU + 30)
    assert reason is not None and f"{MAX_NOISE_HU + 30:.0f} HU" in reason and "noise" in reason


def test_enhanced_lung_vessels_read_as_contrast(phantom: Phantom) -> None:
    """Phantom vessels hold unenhanced blood (20-60 HU); raised by 150 HU, as intravenous contrast does,
    the series reads as enhanced and is refused with the measured HU."""
    plain = vessel_core_hu(phantom.hu, phantom.lung, phantom.spacing)
    assert plain is not None and plain < ENHANCED_VESSEL_HU and contrast_enhanced(plain) is None
    field = np.stack([ndi.binary_fill_holes(ndi.binary_closing(k, np.ones((9, 9), bool)) | k) for k in phantom.lung])
    vessels = field & (phantom.hu > -400) & (phantom.labels == 0)  # the lung mask leaves the vessels out
    weight = np.clip((phantom.hu + 400.0) / 400.0, 0.0, 1.0)  # partial volume: thin vessels enhance less
    enhanced = (phantom.hu + 150.0 * vessels * weight).astype(np.float32)
    value = vessel_core_hu(enhanced, phantom.lung, phantom.spacing)
    assert value is not None and value > ENHANCED_VESSEL_HU
    reason = contrast_enhanced(value)
    assert reason is not None and "contrast" in reason and f"{value:.0f} HU" in reason
    assert vessel_core_hu(phantom.hu, np.zeros_like(phantom.lung), phantom.spacing) is None  # no lung, no reading
