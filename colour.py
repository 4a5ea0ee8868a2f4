"""The colour term: the synthesised image's colours, as a distribution, against the sources'.

Gram matrices of VGG features say little about which colours occur, so a Gram-only result can
show colours its source never has (purple blotches on grey-green bark, colour fringes on grey
gravel). This term compares the colour distributions directly, level by level of the pyramid: a
sliced Wasserstein distance (Rabin et al. 2011; used for textures by Heitz et al. 2021): the
pixels' colours projected on a few directions of colour space, sorted, against the sources'
sorted projections (their quantiles). It is zero when every projection's distribution matches,
and it pulls each compared pixel towards the colour of its rank in the source. Four directions in
the chroma plane do not pin the joint distribution, and lightness is left to the Gram matrices
(see ``colour_directions``); on levels larger than ``SAMPLE_PIXELS`` only a fixed sample of the
pixels is compared there (the coarser levels hold the rest).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

SAMPLE_PIXELS = 2 ** 20  # a level with more pixels is compared on this many (fixed, spread at random)
COLOUR_WEIGHT = 1.0  # --colour-weight default


def colour_directions(pixels: np.ndarray) -> np.ndarray:
    """Unit directions (4, 3) of colour space to project on: the two minor principal axes of
    ``pixels`` (n, 3) and the two halfway between them, (a +- b) / sqrt 2. float32.

    The major axis, in photos nearly luminance, is left to the Gram matrices: matching its
    distribution at every level as well pulled against the texture's structure (brick: the Gram
    loss 1.46x at equal iterations with it, 1.11x without; its mixtures with the minor axes
    alone: 1.34x), while the colours that do not belong lie off it (orange on brown-and-blue
    tissue; any tint at all on grey gravel). Two pairs of directions in that plane see its joint
    distribution, not only each axis's.
    """
    pixels = np.asarray(pixels, np.float64).reshape(-1, 3)
    _, axes = np.linalg.eigh(np.cov(pixels, rowvar=False))  # columns, smallest variance first
    a, b = axes[:, 1], axes[:, 0]
    return np.stack([a, b, (a + b) / np.sqrt(2), (a - b) / np.sqrt(2)]).astype(np.float32)


def quantiles(values: np.ndarray, n: int) -> np.ndarray:
    """(m, k) samples per column -> (n, k): each column's n quantiles at (i + 1/2) / n, i = 0..n-1
    (linear between the sorted samples). What n sorted samples of the same distribution are near."""
    ordered = np.sort(np.asarray(values, np.float64), axis=0)
    m = ordered.shape[0]
    at = (np.arange(n) + 0.5) / n * m - 0.5
    return np.stack([np.interp(at, np.arange(m), column) for column in ordered.T], axis=1)


def sample_positions(height: int, width: int, seed: int = 0) -> np.ndarray | None:
    """The pixels (flat indices, int32, sorted) a level of this size is compared on: None (all)
    up to ``SAMPLE_PIXELS``, else that many, drawn once without replacement: spread over the whole
    level without a pattern that a grid would print into the image."""
    if height * width <= SAMPLE_PIXELS:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(height * width, SAMPLE_PIXELS, replace=False)).astype(np.int32)


@dataclass
class ColourTarget:
    """What one pyramid level's colours are compared with.

    ``directions``: (k, 3); ``sorted``: (n, k), the sources' quantiles of each projection for the
    level's n compared pixels; ``positions``: which pixels (``sample_positions``); ``scale``: 1 /
    the sources' colour variance (the sum over channels), so that the term does not depend on
    how contrasted the source is.
    """

    directions: np.ndarray
    sorted: np.ndarray
    positions: np.ndarray | None
    scale: float


def _some(pixels: np.ndarray) -> np.ndarray:
    """At most ``SAMPLE_PIXELS`` of the sources' (n, 3) pixels (a fixed random choice), float32:
    enough for their covariance and quantiles, without float64 copies of a huge source."""
    if len(pixels) > SAMPLE_PIXELS:
        pixels = pixels[np.random.default_rng(0).choice(len(pixels), SAMPLE_PIXELS, replace=False)]
    return np.asarray(pixels, np.float32)


def colour_targets(source_levels: Sequence[Sequence[np.ndarray]], sizes: Sequence[tuple[int, int]]) -> list:
    """One ``ColourTarget`` per pyramid level. ``source_levels``: per source, its levels (h, w, 3),
    level 0 first (caffe space, as the image optimised); ``sizes``: the synthesised canvas's
    level sizes. The directions come from the sources' level 0 and serve every level."""
    pooled0 = _some(np.concatenate([levels[0].reshape(-1, 3) for levels in source_levels]))
    directions = colour_directions(pooled0)
    scale = 1.0 / max(float(np.trace(np.cov(pooled0.astype(np.float64), rowvar=False))), 1e-6)
    targets = []
    for level, (h, w) in enumerate(sizes):
        pixels = _some(np.concatenate([levels[level].reshape(-1, 3) for levels in source_levels]))
        positions = sample_positions(h, w, seed=level)
        n = h * w if positions is None else len(positions)
        targets.append(ColourTarget(directions, quantiles(pixels @ directions.T.astype(np.float64), n)
                                    .astype(np.float32), positions, scale))
    return targets


def colour_loss(level, target: ColourTarget):
    """The colour term of one level: (N, h, w, 3) images -> a scalar, the sum over frames of the
    mean over directions and compared pixels of (sorted projection - source quantile)^2, times
    ``target.scale``."""
    from keras import ops

    n, h, w, _ = level.shape
    flat = ops.reshape(level, (n, h * w, 3))
    if target.positions is not None:
        flat = ops.take(flat, target.positions, axis=1)
    projected = ops.matmul(flat, ops.convert_to_tensor(target.directions.T))  # (N, n, k)
    ordered = ops.sort(ops.transpose(projected, (0, 2, 1)), axis=-1)  # (N, k, n), each row ascending
    difference = ordered - ops.convert_to_tensor(target.sorted.T)[None]
    return ops.sum(ops.mean(ops.square(difference), axis=(1, 2))) * target.scale  # frames add up, as Gram terms


def colour_term(levels: Sequence, targets: Sequence[ColourTarget], weight: float):
    """``weight`` x the sum of ``colour_loss`` over a stage's levels (N, h, w, 3) and their targets."""
    return weight * sum(colour_loss(z, t) for z, t in zip(levels, targets, strict=True))


def source_colour_targets(sources: Sequence[np.ndarray], octaves: int, padding: str,
                          sizes: Sequence[tuple[int, int]]) -> list[ColourTarget]:
    """``colour_targets`` of caffe-space sources (H, W, 3) for a canvas whose levels have ``sizes``:
    each source's pyramid (``padding``, as its Gram targets) compiled once per source shape."""
    import autodiff
    from pyramid import gaussian_pyramid

    pyramid_of = autodiff.compile(lambda image: gaussian_pyramid(image, octaves, padding))
    levels = [[autodiff.to_numpy(z)[0] for z in pyramid_of(autodiff.to_device(source[None]))] for source in sources]
    return colour_targets(levels, sizes)
