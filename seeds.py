"""Starting images for the optimisation (``--seed``), in caffe space (BGR, means subtracted)."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from vgg16 import CAFFE_MEAN_BGR, pixel_bounds

FULL_RANGE = pixel_bounds()  # RGB 0..255 in caffe space, the default bounds of the starts

SEED_MODES = ("random", "noise", "dark", "symmetric")
PIECE = 8  # coarse-to-fine's random start: the side of each piece of the sources, in coarsest-level pixels
DARK_LEVEL = 10.0  # the original's random start: noise around this pixel value (0..255)
SYMMETRIC_SIGMA = 30.0  # blur of the symmetric start, in pixels
SYMMETRIC_GAIN = 1500.0  # brings the blurred noise back to a visible amplitude
SYMMETRIC_NOISE = 2.0  # standard deviation of the fresh noise added on top


def colour_noise_start(rng: np.random.Generator, count: int, height: int, width: int,
                       pixels: np.ndarray) -> np.ndarray:
    """I.i.d. noise with the colour mean and covariance of ``pixels``. Shape (count, H, W, 3).

    ``pixels``: (n, 3) caffe-space source pixels. The noise has the source's
    brightness, contrast and colour balance (a grey source gives grey noise), so
    the border pixels, which get few constraints, start like the texture and
    not dark: no dark frame.
    """
    mean = pixels.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(pixels, rowvar=False))
    mix = eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))  # mix @ mix.T == covariance
    noise = rng.standard_normal((count, height, width, 3), dtype=np.float32)
    return (noise @ mix.T.astype(np.float32) + mean.astype(np.float32)).astype(np.float32)


def piece_side(piece: int, sources: list[np.ndarray]) -> int:
    """The side ``piece_start`` cuts: ``piece``, brought down to the shorter side of the smallest of
    ``sources`` (images (H_i, W_i, 3)) where that is smaller."""
    return min(piece, *(min(s.shape[:2]) for s in sources))


def piece_start(rng: np.random.Generator, count: int, height: int, width: int, sources: list[np.ndarray],
                piece: int) -> np.ndarray:
    """A collage of square pieces of the sources. Shape (count, H, W, 3), the sources' dtype.

    ``sources``: images (H_i, W_i, 3). The canvas is cut into a grid of squares of side ``piece``
    (those of the last row and column cut short); each is a copy of a square from a random place in
    a random source, the same for every frame only by chance; ``piece`` as ``piece_side`` brings it
    down.
    """
    piece = piece_side(piece, sources)
    out = np.empty((count, height, width, 3), sources[0].dtype)
    for frame in out:
        for top in range(0, height, piece):
            for left in range(0, width, piece):
                source = sources[rng.integers(len(sources))]
                row, col = rng.integers(source.shape[0] - piece + 1), rng.integers(source.shape[1] - piece + 1)
                square = source[row:row + piece, col:col + piece]
                frame[top:top + piece, left:left + piece] = square[:height - top, :width - left]
    return out


def dark_start(rng: np.random.Generator, count: int, height: int, width: int,
               low: np.ndarray = FULL_RANGE[0]) -> np.ndarray:
    """The original's start: N(0, 1) noise 10 pixel values above the darkest allowed, ``low`` ((3,), caffe
    space; by default RGB 0: nearly black). Shape (count, H, W, 3)."""
    noise = rng.standard_normal((count, height, width, 3), dtype=np.float32)
    return (noise + DARK_LEVEL + np.asarray(low, np.float32)).astype(np.float32)


def symmetric_start(rng: np.random.Generator, count: int, height: int, width: int,
                    bounds: tuple = FULL_RANGE) -> np.ndarray:
    """A smooth, mirror-symmetric start around mid grey. Shape (count, H, W, 3).

    n = N(0, 1); n += n flipped vertically; n += n flipped horizontally; each
    channel blurred (sigma 30) and scaled by 1500; plus 2 x fresh N(0, 1). Made for pixels in
    0..255 and mapped linearly onto ``bounds`` ((low, high), each (3,), caffe space; by default
    0..255 itself), so that a narrower range keeps its pattern instead of clipping it flat.
    """
    n = rng.standard_normal((count, height, width, 3)).astype(np.float32)
    n = n + n[:, ::-1]
    n = n + n[:, :, ::-1]
    blurred = gaussian_filter(n, sigma=(0, SYMMETRIC_SIGMA, SYMMETRIC_SIGMA, 0), mode="reflect")
    fresh = rng.standard_normal(n.shape).astype(np.float32)
    start = blurred * SYMMETRIC_GAIN + SYMMETRIC_NOISE * fresh  # caffe space, for 0..255
    low, high = (np.asarray(b, np.float32) for b in bounds)
    return (low + (start + CAFFE_MEAN_BGR) * ((high - low) / 255.0)).astype(np.float32)


def image_start(image: np.ndarray, count: int, margin: int, canvas: tuple[int, int]) -> np.ndarray:
    """Start from a given caffe-space image (H, W, 3): every frame, the hidden margin mirrored.

    Returns (count, *canvas, 3) float32: the image ``margin`` px in from the top-left, mirrored to
    the rest (``synthesize.canvas_side``: H + 2 margin on an open canvas, rounded up on a wrap one).
    """
    height, width = canvas
    pad = ((margin, height - image.shape[0] - margin), (margin, width - image.shape[1] - margin), (0, 0))
    padded = np.pad(image, pad, mode="reflect") if any(sum(p) for p in pad) else image
    return np.repeat(padded[None].astype(np.float32), count, axis=0)


def starting_images(mode: str, rng: np.random.Generator, count: int, height: int, width: int,
                    sources: list[np.ndarray], bounds: tuple = FULL_RANGE, piece: int | None = None
                    ) -> np.ndarray:
    """The ``--seed`` start of the given mode, shape (count, H, W, 3), caffe space.

    ``sources``: the caffe-space source images (H, W, 3); ``noise`` takes the colour statistics of
    all their pixels (``colour_noise_start``), and so does ``random``, unless given a ``piece`` side
    in pixels (coarse-to-fine's start): then it is a collage of the sources in pieces of that side
    (``piece_start``). ``bounds``: (low, high), each (3,), caffe space: the pixel values allowed
    (``vgg16.pixel_bounds``), which ``dark`` starts just above the low end of and ``symmetric`` is
    mapped onto.
    """
    if mode == "random" and piece is not None:
        return piece_start(rng, count, height, width, [np.asarray(s, np.float32) for s in sources], piece)
    if mode in ("random", "noise"):
        pixels = np.concatenate([s.reshape(-1, 3) for s in sources]).astype(np.float64)
        return colour_noise_start(rng, count, height, width, pixels)
    if mode == "dark":
        return dark_start(rng, count, height, width, bounds[0])
    if mode == "symmetric":
        return symmetric_start(rng, count, height, width, bounds)
    raise ValueError(f"unknown seed mode {mode!r}")
