"""Source tasks for transfer learning, made from the natural images that scikit-image ships.

ImageNet weights cannot be downloaded here, so the "natural image" pre-training uses the grayscale
photographs bundled in ``skimage.data`` (no network access):

- :func:`salient_set`: grayscale salient-object segmentation (an "X-Unet"-style whole-network
  source task): a smooth random blob textured with one photograph, pasted with a contrast offset on
  a crop of another; labels 0 background, 1 object, 2 object boundary (a 2-pixel ring).
- :func:`recognition_set`: natural-image recognition (a "V-Unet"-style encoder source task): which
  of the photographs a random crop (scale, flip, rotation, gain) was cut from.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

PHOTOS: tuple[str, ...] = (
    "camera",
    "moon",
    "brick",
    "grass",
    "gravel",
    "coins",
    "clock",
    "cell",
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
)


@lru_cache(maxsize=1)
def natural_images() -> tuple[np.ndarray, ...]:
    """The bundled photographs as grayscale float32 in 0..1 (only those present offline)."""
    import skimage.data
    from skimage.color import rgb2gray

    images: list[np.ndarray] = []
    for name in PHOTOS:
        try:
            img = np.asarray(getattr(skimage.data, name)())
        except (OSError, ValueError, ModuleNotFoundError) as exc:  # would need a download
            logger.info("skimage image %s not available: %s", name, exc)
            continue
        if img.ndim == 3:
            img = rgb2gray(img[..., :3])
        img = img.astype(np.float32)
        img = (img - img.min()) / max(float(img.max() - img.min()), 1e-6)
        images.append(img)
    if not images:
        raise RuntimeError("no natural images available from skimage.data")
    return tuple(images)


def _crop(rng: np.random.Generator, img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    scale = float(rng.uniform(0.3, 1.0))
    side = max(16, int(min(img.shape) * scale))
    r = int(rng.integers(0, img.shape[0] - side + 1))
    c = int(rng.integers(0, img.shape[1] - side + 1))
    patch = img[r : r + side, c : c + side]
    patch = ndimage.zoom(patch, (size[0] / side, size[1] / side), order=1)[: size[0], : size[1]]
    if patch.shape != size:
        patch = np.pad(patch, [(0, size[0] - patch.shape[0]), (0, size[1] - patch.shape[1])], mode="edge")
    patch = np.rot90(patch, int(rng.integers(0, 4)))
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    return np.ascontiguousarray(patch)


def _blob(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    rows, cols = size
    cy, cx = rng.uniform(0.3, 0.7) * rows, rng.uniform(0.3, 0.7) * cols
    radius = rng.uniform(0.15, 0.35) * min(rows, cols)
    yy, xx = np.mgrid[0:rows, 0:cols]
    theta = np.arctan2(yy - cy, xx - cx)
    r = np.hypot(yy - cy, xx - cx)
    shape = np.ones_like(theta)
    for k in range(2, 6):
        shape += rng.uniform(0, 0.25 / k * 2) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.asarray(r < radius * shape)


def salient_set(n: int, seed: int, size: tuple[int, int] = (128, 128)) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 1, H, W) and labels (n, H, W): 0 background, 1 salient object, 2 its boundary."""
    rng = np.random.default_rng(seed)
    photos = natural_images()
    images = np.zeros((n, 1, *size), dtype=np.float32)
    labels = np.zeros((n, *size), dtype=np.int64)
    for i in range(n):
        a, b = rng.choice(len(photos), size=2, replace=False)
        background = _crop(rng, photos[a], size) * rng.uniform(0.3, 0.7)
        obj = _crop(rng, photos[b], size) * rng.uniform(0.3, 0.6) + rng.uniform(0.3, 0.5)
        if rng.random() < 0.3:  # dark object on a bright background
            background, obj = background + 0.4, obj - 0.3
        mask = _blob(rng, size)
        image = np.where(mask, obj, background)
        image = ndimage.gaussian_filter(image, rng.uniform(0.0, 1.0)) + rng.normal(0, 0.03, size)
        images[i, 0] = np.clip(image, 0, 1)
        ring = mask & ~ndimage.binary_erosion(mask, iterations=2)
        labels[i][mask] = 1
        labels[i][ring] = 2
    return images, labels


def recognition_set(n: int, seed: int, size: tuple[int, int] = (128, 128)) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 1, H, W) and classes (n,): the index of the photograph each crop came from."""
    rng = np.random.default_rng(seed)
    photos = natural_images()
    images = np.zeros((n, 1, *size), dtype=np.float32)
    classes = np.zeros(n, dtype=np.int64)
    for i in range(n):
        k = int(rng.integers(0, len(photos)))
        patch = _crop(rng, photos[k], size) * rng.uniform(0.6, 1.2) + rng.normal(0, 0.02, size)
        images[i, 0] = np.clip(patch, 0, 1)
        classes[i] = k
    return images, classes
