"""How much memory an evaluation needs, and how to make it fit: the whole image at once, or in tiles.

The activations of every pyramid level (kept for the backward pass, with their
gradients) dominate: 1.5 GiB at 512x512 and 11 GiB at 2048x2048 with the
defaults. When they do not fit in the memory there is (the machine's, the GPU's,
or ``--max-memory``), each level too large to be done whole is cut into the
largest tiles that fit (``tiles.py``), so a size is refused only when not even
one tile fits next to the image-sized arrays of the optimiser.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

from errors import UsageError
from optimize import MEMORY as MEMORY_PAIRS  # correction pairs L-BFGS keeps when they fit

# Calibrated on this project's machine (TensorFlow 2.21, CPU): peak RSS 1.30 GiB at 512x512 and
# 2.93 GiB at 1024x1024 (4 octaves, layers 2 7); this estimate gives 1.5 and 3.4 GiB.
BYTES_PER_ACTIVATION = 2 * 4  # a float32 activation kept for the backward pass, and its gradient
BASE_MEMORY = 0.9 * 2**30  # TensorFlow, the weights and the rest of the process, in bytes
IMAGE_VECTORS = 8  # image-sized float32 arrays of an L-BFGS step besides the correction pairs
MEASURED_VECTORS = 2  # without an optimiser (an evaluation, a source): the image, on the host and the device
TILED_VECTORS = 4  # more when tiled: the extended levels (4/3), a level's gradient on the host, the backward pass
FEWEST_PAIRS = 3  # kept at least, however large the image
EFFICIENT_TILE = 8  # tiles at least this many halos long: windows at most 1.27x their tile's area
UNITS = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_size(text: str) -> float:
    """``--max-memory``: '4G', '512M', '1.5GiB', '6000MB' (binary units) -> bytes. Raises ValueError."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgtKMGT])(i?[bB])?\s*", text)
    if not match:
        raise ValueError(f"{text!r} is not a size with a unit, e.g. 4G or 512M")
    return float(match.group(1)) * UNITS[match.group(2).lower()]


def gib(n: float) -> str:
    """Bytes as '0.93 GiB' or '11.4 GiB'."""
    return f"{n / 2**30:.2f} GiB" if n < 10 * 2**30 else f"{n / 2**30:.1f} GiB"


@dataclass(frozen=True)
class Plan:
    """How one canvas is evaluated: ``tiles`` None (the whole image in one program) or one tile
    side per level (None: that level whole); ``pairs`` L-BFGS correction pairs to keep (room is
    left for them only when the plan is for an optimised image); ``need`` estimated bytes."""

    tiles: tuple[int | None, ...] | None
    pairs: int
    need: float

    @property
    def tiled(self) -> bool:
        """Evaluated level by level (``tiles.TiledLoss``), not as one program."""
        return self.tiles is not None


def _activations(network: str, deepest: str, height: int, width: int, padding: str) -> float:
    from vgg16 import activation_floats

    return activation_floats(network, deepest, height, width, padding) * BYTES_PER_ACTIVATION


def _fixed(image_floats: float, pairs: int | None, tiled: bool) -> float:
    """Bytes besides the activations: the process, and image-sized arrays (``pairs`` None: no
    optimiser, only the image and its pyramid: a source's targets)."""
    vectors = (MEASURED_VECTORS if pairs is None else IMAGE_VECTORS + 2 * pairs) + (TILED_VECTORS if tiled else 0)
    return BASE_MEMORY + image_floats * 4 * vectors


def _window(network: str, layers: Sequence[str], padding: str, tiles: int) -> tuple[int, int]:
    """(side of the window of a tile ``tiles`` alignment units long, the alignment)."""
    from tiles import reach

    r = reach(network, layers, padding)
    return tiles * r.align + r.before + r.after, r.align


def largest_tile(room: float, network: str, layers: Sequence[str], padding: str, side: int) -> int | None:
    """The largest tile side (a multiple of the alignment, at most ``side`` rounded up) whose window's
    activations fit in ``room`` bytes; None if not even the smallest does."""
    from vgg16 import layer_names

    deepest = max(layers, key=layer_names(network).index)
    align = _window(network, layers, padding, 1)[1]

    def fits(units: int) -> bool:
        window = _window(network, layers, padding, units)[0]
        return _activations(network, deepest, window, window, padding) <= room

    low, high = 0, -(-side // align)  # fits(low) or low == 0; the answer is in low..high
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low * align if low else None


def plan(network: str, layers: Sequence[str], padding: str, sizes: Sequence[tuple[int, int]], count: int,
         budget: float | None, what: str = "memory", optimised: bool = True,
         subject: str = "the output size", remedy: str = "lower --output-width/--output-height or --count") -> Plan:
    """How to evaluate a canvas whose pyramid levels have ``sizes`` (finest first) in ``budget``
    bytes (None: unknown, the whole image). The whole image in one program when it fits with
    ``MEMORY_PAIRS`` pairs; else level by level (``tiles.TiledLoss``), each level whole or in the
    largest tiles that fit, keeping fewer pairs (down to ``FEWEST_PAIRS``) rather than use tiles
    shorter than ``EFFICIENT_TILE`` halos (if no number of pairs gets there, the most pairs that
    fit). ``optimised`` False: an image only measured (a source's targets), no optimiser's arrays.
    Raises UsageError naming ``subject`` and ``remedy`` when not even the smallest tile fits.
    """
    from vgg16 import layer_names

    deepest = max(layers, key=layer_names(network).index)
    height, width = sizes[0]
    image = count * height * width * 3
    levels = [count * _activations(network, deepest, h, w, padding) for h, w in sizes]
    options = list(range(MEMORY_PAIRS, FEWEST_PAIRS - 1, -1)) if optimised else [None]  # pairs to try
    whole = _fixed(image, options[0], False) + sum(levels)
    if budget is None or whole <= budget:
        return Plan(None, MEMORY_PAIRS, whole)
    smallest, align = _window(network, layers, padding, 1)
    halo = smallest - align
    fitting = []
    for pairs in options:
        room = budget - _fixed(image, pairs, True)
        tiles = tuple(None if level <= room else largest_tile(room, network, layers, padding, max(h, w))
                      for (h, w), level in zip(sizes, levels, strict=True))
        if any(tile is None and level > room for tile, level in zip(tiles, levels)):
            continue  # some level fits neither whole nor in tiles
        windows = [_window(network, layers, padding, tile // align)[0] for tile in tiles if tile is not None]
        need = _fixed(image, pairs, True) + max(
            [level for level, tile in zip(levels, tiles) if tile is None]
            + [_activations(network, deepest, window, window, padding) for window in windows])
        fitting.append(Plan(tiles, pairs or MEMORY_PAIRS, need))
        # fewer pairs rather than tiles so short that their windows' margins add much work
        if min((tile for tile in tiles if tile is not None), default=math.inf) >= EFFICIENT_TILE * halo:
            return fitting[-1]
    if fitting:
        return fitting[0]
    least = _fixed(image, options[-1], True) + _activations(network, deepest, smallest, smallest, padding)
    raise UsageError(f"{subject} needs at least {gib(least)} of {what} (the program, the image's arrays and "
                     f"the smallest tile) but {gib(budget)} is available; {remedy}")
