"""The colour term: the synthesised image's colours, as a distribution, against the sources'.

Gram matrices of VGG features say little about which colours occur, so a Gram-only result can
show colours its source never has (purple blotches on grey-green bark, colour fringes on grey
gravel). This term compares the colour distributions directly, level by level of the pyramid: a
sliced Wasserstein distance (Rabin et al. 2011; used for textures by Heitz et al. 2021): the
pixels' colours projected on a few directions of colour space, sorted, against the sources'
sorted projections (their quantiles). Lightness is left to the Gram matrices, but it orders the
comparison: the pixels are ranked by lightness and cut into bins (``BIN_EDGES``), and each bin's
chroma is compared with that of the sources' pixels in the same bin, so that a tint only the
source's light pixels have (a galaxy on black sky) is not matched by tinting dark ones. It is zero
when every bin's projections match, and it pulls each compared pixel towards the colour of its
rank in the source's bin. Four directions in the chroma plane do not pin the joint distribution
(see ``colour_axes``); on levels larger than ``SAMPLE_PIXELS`` only a fixed sample of the
pixels is compared there (the coarser levels hold the rest).

Sorted projections pull a pixel towards the colour of its rank, not towards the nearest colour the
sources have, and against the Gram terms' pull a few pixels stay off (a pale-blue fringe along the
tissue photo's brown glands, 20-25 RGB units from every colour of the photo). So the term has a
second part, the gamut term: each full-size pixel's distance to the nearest of the sources' colours,
beyond ``GAMUT_MARGIN``, squared. It is zero for every colour the sources have, and for any within
the margin of one. It sees level 0 only, the colours a user sees: coarser levels hold mixtures,
which the sorted projections compare.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np

SAMPLE_PIXELS = 2 ** 20  # a level with more pixels is compared on this many (fixed, spread at random)
COLOUR_WEIGHT = 1.0  # --colour-weight default
# Lightness bins, as fractions of a level's pixels ranked darkest first: finer towards either end,
# where a photo's few darkest or lightest pixels (a galaxy on black sky, ink on paper) have colours
# of their own.
BIN_EDGES = (0.0, 1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 3 / 4, 7 / 8, 15 / 16, 31 / 32, 63 / 64, 1.0)
GAMUT_SPACING = 4.0  # RGB units between the nodes of the gamut term's distance table
GAMUT_MARGIN = 10.0  # RGB units a colour may lie from the sources' nearest before the gamut term pulls it
GAMUT_WEIGHT = 10.0  # the gamut term's weight beside the sorted projections' (both times the target's scale)
BIN_STEP = 1024.0  # more than any chroma projection's range in caffe space (at most 255 * sqrt 3)


def colour_axes(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ranking axis (3,), chroma directions (4, 3)) of ``pixels`` (n, 3), float32, unit length:
    their major principal axis, signed to grow with the channels' sum (in photos nearly lightness,
    which it stands for here; in a source whose strongest variation is a hue, that hue), and the
    two minor principal axes a, b with the two halfway between them, (a +- b) / sqrt 2.

    The major axis is left to the Gram matrices: matching its distribution at every level as well
    pulled against the texture's structure (brick: the Gram loss 1.46x at equal iterations with
    it, 1.11x without; its mixtures with the minor axes alone: 1.34x), while the colours that do
    not belong lie off it (orange on brown-and-blue tissue; any tint at all on grey gravel). Two
    pairs of directions in the minor plane see its joint distribution, not only each axis's; the
    pixels' rank on the major axis decides which of the source's colours they are compared with
    (``BIN_EDGES``).
    """
    axes = np.linalg.eigh(np.cov(np.asarray(pixels, np.float64).reshape(-1, 3), rowvar=False))[1]
    major, a, b = axes[:, 2], axes[:, 1], axes[:, 0]  # eigh: smallest variance first
    directions = np.stack([a, b, (a + b) / np.sqrt(2), (a - b) / np.sqrt(2)])
    return (major * np.sign(major.sum() or 1.0)).astype(np.float32), directions.astype(np.float32)


def bin_bounds(n: int, edges=BIN_EDGES) -> np.ndarray:
    """Where each lightness bin starts among n ranked pixels, and n: int64 (B + 1,), nondecreasing
    (``edges`` x n, rounded). A bin may be empty on a tiny level."""
    return np.round(np.asarray(edges) * n).astype(np.int64)


def bin_offsets(bounds: np.ndarray) -> np.ndarray:
    """(n,) float32: ``BIN_STEP`` x the bin of each of n ranked positions (``bin_bounds``): added
    to the projections, one sort orders them bin by bin and within each bin."""
    return (np.repeat(np.arange(len(bounds) - 1), np.diff(bounds)) * BIN_STEP).astype(np.float32)


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

    ``directions``: (k, 3) chroma directions; ``lightness``: (3,) the axis pixels are ranked on;
    ``bounds``: (B + 1,) where each lightness bin starts among the level's n compared pixels
    (``bin_bounds``); ``sorted``: (n, k), bin after bin, the quantiles of each chroma projection of
    the sources' pixels in the same lightness bin (the same fractions of the sources' pixels,
    ranked alike); ``positions``: which pixels (``sample_positions``); ``scale``: 1 / the sources'
    colour variance (the sum over channels), so that the term does not depend on how contrasted
    the source is; ``gamut``: (G, G, G) ``gamut_distances`` of the sources' pixels, on level 0;
    None on coarser levels (no gamut term there).
    """

    directions: np.ndarray
    lightness: np.ndarray
    bounds: np.ndarray
    sorted: np.ndarray
    positions: np.ndarray | None
    scale: float
    gamut: np.ndarray | None


def _some(pixels: np.ndarray) -> np.ndarray:
    """At most ``SAMPLE_PIXELS`` of the sources' (n, 3) pixels (a fixed random choice), float32:
    enough for their covariance and quantiles, without float64 copies of a huge source."""
    if len(pixels) > SAMPLE_PIXELS:
        pixels = pixels[np.random.default_rng(0).choice(len(pixels), SAMPLE_PIXELS, replace=False)]
    return np.asarray(pixels, np.float32)


def binned_quantiles(pixels: np.ndarray, lightness: np.ndarray, directions: np.ndarray,
                     bounds: np.ndarray) -> np.ndarray:
    """The sources' pixels (m, 3) ranked on ``lightness``, cut at the fractions ``bounds`` / n
    marks, and each bin's chroma projections (on ``directions`` (k, 3)) as ``quantiles`` of the
    bin's size: (n, k) float32, n = ``bounds[-1]``."""
    pixels = np.asarray(pixels, np.float64)
    ranked = pixels[np.argsort(pixels @ lightness.astype(np.float64), kind="stable")]
    m, n = len(ranked), int(bounds[-1])
    cuts = np.round(np.asarray(bounds) / n * m).astype(np.int64)
    projected = ranked @ directions.T.astype(np.float64)
    blocks = [quantiles(projected[min(lo, m - 1):max(hi, lo + 1)], size)  # a bin thinner than one of the m: the next pixel
              for lo, hi, size in zip(cuts[:-1], cuts[1:], np.diff(bounds)) if size]
    return np.concatenate(blocks).astype(np.float32)


def gamut_distances(pixels: np.ndarray, spacing: float = GAMUT_SPACING) -> np.ndarray:
    """(G, G, G) float32, G = ceil(255 / ``spacing``) + 1: for each node of a grid over the colour
    cube (caffe space, node (i, j, k) at (i, j, k) x ``spacing`` - the caffe means, in the
    channels' order), the distance in RGB units to the nearest of ``pixels`` (m, 3, caffe space).
    Each pixel counts at its nearest node (Euclidean distance transform), so a distance is within
    ``spacing`` x sqrt(3) / 2 of the exact one."""
    from scipy import ndimage

    from vgg16 import CAFFE_MEAN_BGR

    size = int(np.ceil(255.0 / spacing)) + 1
    nodes = np.rint((np.asarray(pixels, np.float32).reshape(-1, 3) + CAFFE_MEAN_BGR) / spacing).astype(np.int64)
    nodes = np.clip(nodes, 0, size - 1)
    empty = np.ones((size,) * 3, bool)
    empty[nodes[:, 0], nodes[:, 1], nodes[:, 2]] = False
    return ndimage.distance_transform_edt(empty, sampling=spacing).astype(np.float32)


def colour_targets(source_levels: Sequence[Sequence[np.ndarray]], sizes: Sequence[tuple[int, int]]) -> list:
    """One ``ColourTarget`` per pyramid level. ``source_levels``: per source, its levels (h, w, 3),
    level 0 first (caffe space, as the image optimised); ``sizes``: the synthesised canvas's
    level sizes. The axes come from the sources' level 0 and serve every level."""
    pooled0 = _some(np.concatenate([levels[0].reshape(-1, 3) for levels in source_levels]))
    lightness, directions = colour_axes(pooled0)
    scale = 1.0 / max(float(np.trace(np.cov(pooled0.astype(np.float64), rowvar=False))), 1e-6)
    targets = []
    for level, (h, w) in enumerate(sizes):
        pixels = _some(np.concatenate([levels[level].reshape(-1, 3) for levels in source_levels]))
        positions = sample_positions(h, w, seed=level)
        bounds = bin_bounds(h * w if positions is None else len(positions))
        targets.append(ColourTarget(directions, lightness, bounds,
                                    binned_quantiles(pixels, lightness, directions, bounds), positions, scale,
                                    gamut_distances(pixels) if level == 0 else None))
    return targets


def colour_loss(level, target: ColourTarget):
    """The colour term of one level: (N, h, w, 3) images -> a scalar, the sum over frames of the
    mean over directions and compared pixels of (sorted projection - source quantile)^2, times
    ``target.scale``. Each frame's n compared pixels (h * w, or ``len(target.positions)``) are
    ranked on ``target.lightness`` and sorted within their bin (``target.bounds``), so that each
    bin's colours meet ``target.sorted`` (n, k): those of the sources' pixels as light."""
    from keras import ops

    frames, h, w, _ = level.shape
    flat = ops.reshape(level, (frames, h * w, 3))
    if target.positions is not None:
        flat = ops.take(flat, target.positions, axis=1)
    n = flat.shape[1]
    light = ops.matmul(flat, ops.convert_to_tensor(target.lightness[:, None]))[..., 0]  # (N, n)
    # rows of the flattened frames, darkest first in each frame: int32 indices (take_along_axis's
    # int64 ones make TensorFlow print a oneDNN error line), within range below 2^31 / 2^20 frames
    order = ops.argsort(ops.stop_gradient(light), axis=-1) + ops.arange(frames, dtype="int32")[:, None] * n
    ranked = ops.reshape(ops.take(ops.reshape(flat, (frames * n, 3)), ops.reshape(order, (-1,)), axis=0),
                         (frames, n, 3))
    projected = ops.transpose(ops.matmul(ranked, ops.convert_to_tensor(target.directions.T)), (0, 2, 1))
    # one sort for every bin: each ranked position's bin, times a step larger than any projection's
    # range, keeps the bins apart and in order (float32: within 2e-3 of the projections)
    offsets = ops.convert_to_tensor(bin_offsets(target.bounds))
    ordered = ops.sort(projected + offsets, axis=-1) - offsets  # (N, k, n), ascending within each bin
    difference = ordered - ops.convert_to_tensor(target.sorted.T)[None]
    return ops.sum(ops.mean(ops.square(difference), axis=(1, 2))) * target.scale  # frames add up, as Gram terms


def gamut_distance(level, gamut: np.ndarray, spacing: float = GAMUT_SPACING):
    """(N, h, w, 3) caffe-space images -> (N * h * w,): each pixel's distance in RGB units to the
    nearest colour of the table ``gamut`` (``gamut_distances``), interpolated linearly between its
    nodes (differentiable in the pixel; a colour outside the cube reads the cube's face). Within
    ``spacing`` x sqrt(3) of the exact distance: half of it from the table's nodes, half from
    reading between them."""
    from keras import ops

    from vgg16 import CAFFE_MEAN_BGR

    size = gamut.shape[0]
    flat = ops.reshape(level, (-1, 3))
    at = ops.clip((flat + ops.convert_to_tensor(CAFFE_MEAN_BGR)) / spacing, 0.0, size - 1.001)
    corner = ops.floor(ops.stop_gradient(at))
    fraction = at - corner
    corner = ops.cast(corner, "int32")
    index = (corner[:, 0] * size + corner[:, 1]) * size + corner[:, 2]
    table = ops.convert_to_tensor(gamut.reshape(-1))
    distance = 0.0
    for offset in itertools.product((0, 1), repeat=3):  # the 8 nodes around each pixel, trilinear weights
        weight = 1.0
        for axis, side in enumerate(offset):
            weight = weight * (fraction[:, axis] if side else 1.0 - fraction[:, axis])
        distance = distance + weight * ops.take(table, index + (offset[0] * size + offset[1]) * size + offset[2])
    return distance


def gamut_loss(level, target: ColourTarget):
    """The gamut term of one level: (N, h, w, 3) images -> a scalar, the sum over frames of the mean
    over pixels of (distance to the sources' nearest colour - ``GAMUT_MARGIN``)^2 where positive,
    times ``target.scale`` and ``GAMUT_WEIGHT``. Zero while every colour is within the margin of
    one the sources have, and on a level without a table (``target.gamut`` None)."""
    from keras import ops

    if target.gamut is None:
        return 0.0
    excess = ops.relu(gamut_distance(level, target.gamut) - GAMUT_MARGIN)
    return ops.sum(ops.square(excess)) / (level.shape[1] * level.shape[2]) * target.scale * GAMUT_WEIGHT


def colour_term(levels: Sequence, targets: Sequence[ColourTarget], weight: float):
    """``weight`` x the sum of ``colour_loss`` and ``gamut_loss`` over a stage's levels (N, h, w, 3)
    and their targets."""
    return weight * sum(colour_loss(z, t) + gamut_loss(z, t) for z, t in zip(levels, targets, strict=True))
