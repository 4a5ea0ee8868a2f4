"""Starting images for the optimisation (``--seed``), in caffe space (BGR, means subtracted)."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from vgg16 import CAFFE_MEAN_BGR

SEED_MODES = ("random", "symmetric")
DARK_LEVEL = 10.0  # the original's random start: noise around this pixel value (0..255)
SYMMETRIC_SIGMA = 30.0  # blur of the symmetric start, in pixels
SYMMETRIC_GAIN = 1500.0  # brings the blurred noise back to a visible amplitude
SYMMETRIC_NOISE = 2.0  # standard deviation of the fresh noise added on top


def random_start(rng: np.random.Generator, count: int, height: int, width: int) -> np.ndarray:
    """The original's dark start: N(0, 1) noise around pixel value 10. Shape (count, H, W, 3)."""
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


def starting_images(mode: str, rng: np.random.Generator, count: int, height: int, width: int) -> np.ndarray:
    """The ``--seed`` start of the given mode, shape (count, H, W, 3), caffe space."""
    if mode == "random":
        return random_start(rng, count, height, width)
    if mode == "symmetric":
        return symmetric_start(rng, count, height, width)
    raise ValueError(f"unknown seed mode {mode!r}")
