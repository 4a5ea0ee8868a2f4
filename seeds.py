"""Starting images for the optimisation (``--seed``), in caffe space (BGR, means subtracted)."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from vgg16 import CAFFE_MEAN_BGR

SEED_MODES = ("random", "dark", "symmetric")
DARK_LEVEL = 10.0  # the original's random start: noise around this pixel value (0..255)
SYMMETRIC_SIGMA = 30.0  # blur of the symmetric start, in pixels
SYMMETRIC_GAIN = 1500.0  # brings the blurred noise back to a visible amplitude
SYMMETRIC_NOISE = 2.0  # standard deviation of the fresh noise added on top


def colour_noise_start(rng: np.random.Generator, count: int, height: int, width: int,
                       mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """I.i.d. noise with the source's per-channel mean and standard deviation. Shape (count, H, W, 3).

    ``mean`` and ``std``: (3,) in caffe space (BGR). Unlike the dark start, the
    border pixels then start at the texture's own brightness, so the few
    constraints they get are not fighting a dark start: no dark frame.
    """
    noise = rng.standard_normal((count, height, width, 3), dtype=np.float32)
    return (noise * np.asarray(std, np.float32) + np.asarray(mean, np.float32)).astype(np.float32)


def dark_start(rng: np.random.Generator, count: int, height: int, width: int) -> np.ndarray:
    """The original's start: N(0, 1) noise around pixel value 10 (nearly black). Shape (count, H, W, 3)."""
    noise = rng.standard_normal((count, height, width, 3), dtype=np.float32)
    return noise + DARK_LEVEL - CAFFE_MEAN_BGR


def symmetric_start(rng: np.random.Generator, count: int, height: int, width: int) -> np.ndarray:
    """A smooth, mirror-symmetric start around mid grey. Shape (count, H, W, 3).

    n = N(0, 1); n += n flipped vertically; n += n flipped horizontally; each
    channel blurred (sigma 30) and scaled by 1500; plus 2 x fresh N(0, 1).
    """
    n = rng.standard_normal((count, height, width, 3)).astype(np.float32)
    n = n + n[:, ::-1]
    n = n + n[:, :, ::-1]
    blurred = gaussian_filter(n, sigma=(0, SYMMETRIC_SIGMA, SYMMETRIC_SIGMA, 0), mode="reflect")
    fresh = rng.standard_normal(n.shape).astype(np.float32)
    return (blurred * SYMMETRIC_GAIN + SYMMETRIC_NOISE * fresh).astype(np.float32)


def starting_images(mode: str, rng: np.random.Generator, count: int, height: int, width: int,
                    sources: list[np.ndarray]) -> np.ndarray:
    """The ``--seed`` start of the given mode, shape (count, H, W, 3), caffe space.

    ``sources``: the caffe-space source images (H, W, 3); ``random`` takes their
    pooled per-channel mean and standard deviation.
    """
    if mode == "random":
        pixels = np.concatenate([s.reshape(-1, 3) for s in sources])
        return colour_noise_start(rng, count, height, width, pixels.mean(axis=0), pixels.std(axis=0))
    if mode == "dark":
        return dark_start(rng, count, height, width)
    if mode == "symmetric":
        return symmetric_start(rng, count, height, width)
    raise ValueError(f"unknown seed mode {mode!r}")
