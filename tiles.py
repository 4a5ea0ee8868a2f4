"""The loss and its gradient one tile at a time, for images whose activations do not fit in memory.

The texture loss is a sum of Gram terms, and a Gram matrix is a sum over pixel
positions, so both can be computed from tiles of each pyramid level with only
one tile's activations alive at once. The loss is the same; only where it is
computed changes:

1. pyramid: every level of the image, as a whole (3 channels: small);
2. pass 1: each tile of a level runs through the network inside a *window*
   that adds the margin (halo) its layers' receptive fields need; the tile's
   own feature pixels (``owned``) add their share to every Gram matrix;
3. with the Gram matrices complete, dL/dG = 2 w (G - T) is fixed; pass 2 runs
   each window forward and backward on <dL/dG, its share> and adds the
   window's input gradient into the level's gradient;
4. the pyramid's adjoint carries the levels' gradients back to the image,
   one level at a time (autodiff of each reduction, which is linear).

A level that fits in memory as a whole is done as a whole, in one forward and
backward pass. Exact at the borders in every padding mode: windows start at
multiples of the deepest layer's stride, so every layer's pixel grid is the
whole image's; with ``valid`` padding the level is extended by zeros (no output
pixel looks there) and with ``circular`` by wrapping around, so that all of a
level's windows have one shape; with ``same`` and ``reflect`` a window at an
image edge ends there and pads as the whole image does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

import autodiff
from padding import shrinks
from vgg16 import layer_names, layer_sizes, receptive_fields

EXTENDED_MODES = ("valid", "circular")  # levels extended before windows are cut: all windows one shape


@dataclass(frozen=True)
class Reach:
    """How far the requested layers see: a window needs ``before`` input pixels ahead of its
    tile and ``after`` behind it (both multiples of ``align``), and starts at a multiple of
    ``align``, the deepest layer's stride."""

    before: int
    after: int
    align: int


def reach(network: str, layers: Sequence[str], padding: str) -> Reach:
    """The halo and alignment tiles of an input to ``layers`` (names) need (see ``Reach``)."""
    names = layer_names(network)
    deepest = max(layers, key=names.index)
    fields = receptive_fields(network, deepest, padding)
    wanted = [fields[names.index(name)] for name in layers]
    align = fields[-1][0]
    before = max(-first for _, first, _ in wanted)
    after = max(last - (stride - 1) for stride, _, last in wanted)
    up = lambda n: -(-n // align) * align  # noqa: E731
    return Reach(up(before), up(after), align)


@dataclass(frozen=True)
class Window:
    """One tile of one level: the window cut from the extended level and the feature pixels it owns."""

    start: tuple[int, int]  # top-left corner in the extended level
    size: tuple[int, int]  # height, width
    owned: tuple[tuple[int, int, int, int], ...]  # per layer: rows r0:r1, cols c0:c1 of the window's layer grid


@dataclass(frozen=True)
class Tiling:
    """How one pyramid level (height x width) is cut: extended by ``extend`` ((top, bottom),
    (left, right); zeros with valid padding, wrapped with circular), then into ``windows``,
    whose owned pixels cover every layer's pixels exactly once."""

    size: tuple[int, int]
    tile: tuple[int, int]  # tile height and width (the last ones may be smaller)
    extend: tuple[tuple[int, int], tuple[int, int]]
    windows: tuple[Window, ...]
    layer_sizes: tuple[tuple[int, int], ...]  # every requested layer's size for the whole level

    @property
    def shapes(self) -> set[tuple[int, int]]:
        """The distinct window sizes (one compiled program each)."""
        return {w.size for w in self.windows}


def balanced_tile(n: int, most: int, align: int) -> int:
    """A tile length <= ``most`` (a multiple of ``align``) that cuts ``n`` into as few tiles as
    ``most`` does, of nearly equal length: less work wasted on the last one."""
    count = -(-n // most)
    return min(most, -(-(-(-n // count)) // align) * align)


def _axis(n: int, tile: int, reach_: Reach, padding: str, strides_sizes) -> tuple[tuple[int, int], list]:
    """Cut one axis of length n: ((extend before, after), [(window start in the extended axis,
    window length, [(owned first, owned end) per layer, in the window's layer grid]), ...])."""
    blocks = list(range(0, n, tile))
    extended = padding in EXTENDED_MODES
    cuts = []
    for number, block in enumerate(blocks):
        last = number == len(blocks) - 1
        if extended:
            start, end = block - reach_.before, block + tile + reach_.after
        else:  # same, reflect: a window at an edge ends there and pads as the whole level does
            start, end = max(0, block - reach_.before), min(n, block + tile + reach_.after)
        owned = []
        for stride, size in strides_sizes:
            first = min(block // stride, size)
            end_ = size if last else min((block + tile) // stride, size)
            end_ = max(first, end_)  # the last block may own nothing of a deep valid layer
            owned.append((first - start // stride, end_ - start // stride) if end_ > first else (0, 0))
        cuts.append((start, end - start, owned))
    if not extended:
        return (0, 0), cuts
    low = -min(start for start, _, _ in cuts)
    high = max(start + length for start, length, _ in cuts) - n
    return (low, high), [(start + low, length, owned) for start, length, owned in cuts]


def tile_level(height: int, width: int, tile: int, network: str, layers: Sequence[str], padding: str) -> Tiling:
    """Cut a height x width level into tiles of at most ``tile`` (a multiple of the alignment) per side."""
    reach_ = reach(network, layers, padding)
    if tile % reach_.align:
        raise ValueError(f"tile {tile} is not a multiple of {reach_.align}")
    names = layer_names(network)
    deepest = max(layers, key=names.index)
    fields = receptive_fields(network, deepest, padding)
    all_sizes = layer_sizes(network, deepest, height, width, padding)
    indices = [names.index(name) for name in layers]
    sizes = tuple(all_sizes[i] for i in indices)
    tiles = (balanced_tile(height, tile, reach_.align), balanced_tile(width, tile, reach_.align))
    rows_extend, rows = _axis(height, tiles[0], reach_, padding, [(fields[i][0], s[0]) for i, s in zip(indices, sizes)])
    cols_extend, cols = _axis(width, tiles[1], reach_, padding, [(fields[i][0], s[1]) for i, s in zip(indices, sizes)])
    windows = tuple(
        Window((r0, c0), (rn, cn), tuple((*ro, *co) for ro, co in zip(r_owned, c_owned, strict=True)))
        for r0, rn, r_owned in rows for c0, cn, c_owned in cols
    )
    return Tiling((height, width), tiles, (rows_extend, cols_extend), windows, sizes)


def extend(level, tiling: Tiling | None, padding: str):
    """The level (N, H, W, C) extended as ``tiling`` says (keras.ops, differentiable): zeros
    (valid) or wrapped around (circular); unchanged for a level done whole or in same/reflect."""
    from keras import ops

    if tiling is None or tiling.extend == ((0, 0), (0, 0)):
        return level
    (top, bottom), (left, right) = tiling.extend
    if shrinks(padding):
        return ops.pad(level, [[0, 0], [top, bottom], [left, right], [0, 0]])
    _, h, w, _ = level.shape
    rows = np.arange(-top, h + bottom) % h
    cols = np.arange(-left, w + right) % w
    return ops.take(ops.take(level, rows.astype(np.int32), axis=1), cols.astype(np.int32), axis=2)


def _runs(start: int, length: int, n: int, wrap: bool) -> list[tuple[int, int, int]]:
    """Where the extended-axis pixels start .. start+length-1 (the extension's first pixel is -``start``
    of the level when ``start`` counts from the extension) land in a level of n pixels: (offset in
    the window, pixel of the level, count) runs; wrapped around (circular) or dropped (valid: the
    zeros added there are not pixels of the image)."""
    runs, offset = [], 0
    while offset < length:
        pixel = start + offset
        if 0 <= pixel < n or wrap:
            pixel %= n
            count = min(length - offset, n - pixel)
            runs.append((offset, pixel, count))
        else:  # outside the level, not wrapped: skip to where it enters, or stop
            count = -pixel if pixel < 0 else length - offset
        offset += count
    return runs


def add_window(gradient: np.ndarray, window_gradient: np.ndarray, frame: int, window: Window, tiling: Tiling,
               padding: str) -> None:
    """Add a window's input gradient (h, w, C) into the level's gradient (N, H, W, C), in place,
    through the extension: wrapped around (circular) or dropped where the extension added zeros."""
    (top, _), (left, _) = tiling.extend
    wrap = padding == "circular"
    height, width = tiling.size
    rows = _runs(window.start[0] - top, window.size[0], height, wrap)
    cols = _runs(window.start[1] - left, window.size[1], width, wrap)
    for r_offset, row, r_count in rows:
        for c_offset, col, c_count in cols:
            gradient[frame, row:row + r_count, col:col + c_count] += \
                window_gradient[r_offset:r_offset + r_count, c_offset:c_offset + c_count]


def owned_only(features, owned):
    """``features`` (1, h, w, c) with every pixel outside rows owned[0]:owned[1] and columns
    owned[2]:owned[3] (an int tensor (4,)) set to zero."""
    from keras import ops

    _, h, w, _ = features.shape
    rows, cols = ops.arange(h, dtype="int32"), ops.arange(w, dtype="int32")
    in_rows = ops.logical_and(rows >= owned[0], rows < owned[1])
    in_cols = ops.logical_and(cols >= owned[2], cols < owned[3])
    mask = ops.logical_and(in_rows[:, None], in_cols[None, :])
    return features * ops.cast(mask, features.dtype)[None, :, :, None]


class TiledLoss:
    """The multi-scale Gram loss of ``octaves`` pyramid levels, its gradient and its per-level
    values, computed tile by tile where a level's ``Tiling`` says so.

    ``plans``: one ``Tiling`` per level, or None for a level done whole.
    ``targets``: (c, c) numpy arrays, level-major (level 0 layer a, level 0 layer b, ...);
    ``weights``: one per target (both None when only ``grams`` is wanted). ``interframe``: keras.ops, x -> scalar (already weighted),
    added to the loss; None for one frame. ``absent``: finer levels this stage's loss lacks
    (NaN at the front of the per-level values, as the whole-image loss reports them).
    ``colour``: (weight, one ``colour.ColourTarget`` per level) of the colour term, computed on
    each level whole (an image-sized sort), or None.
    ``on_progress(fraction)``: called as the tiles of one evaluation are done.
    """

    def __init__(self, extractor, network: str, layers: Sequence[str], padding: str, octaves: int,
                 plans: Sequence[Tiling | None], targets: Sequence[np.ndarray] | None,
                 weights: Sequence[float] | None, count: int, interframe: Callable | None = None, absent: int = 0,
                 colour: tuple | None = None):
        self.extractor, self.padding, self.octaves = extractor, padding, octaves
        self.plans, self.count, self.interframe, self.absent = list(plans), count, interframe, absent
        self.colour = colour
        self.layers = len(layers)
        self.targets = [np.asarray(t, np.float64) for t in targets or ()]
        self.device_targets = [autodiff.to_device(t) for t in targets or ()]
        self.weights = list(weights or ())
        self.on_progress: Callable[[float], None] = lambda fraction: None
        self._programs: dict = {}
        if len(self.plans) != octaves or targets is not None and len(self.targets) != octaves * self.layers:
            raise ValueError("one plan per level and one target per (level, layer) expected")

    # -- the compiled pieces, each built once per shape

    def _program(self, key, build: Callable):
        if key not in self._programs:
            self._programs[key] = autodiff.compile(build())
        return self._programs[key]

    def _levels(self, x) -> list:
        """The pyramid of x, each level extended for its windows."""
        from pyramid import gaussian_pyramid

        return [extend(z, plan, self.padding)
                for z, plan in zip(gaussian_pyramid(x, self.octaves, self.padding), self.plans, strict=True)]

    def _features(self, window) -> list:
        out = self.extractor(window)
        return list(out) if isinstance(out, (list, tuple)) else [out]

    def _share(self, level: int, window: Window):
        """(z, start, owned) -> the window's share of each layer's Gram matrix, (c, c) each."""
        from keras import ops

        from gram import gram_matrix

        plan = self.plans[level]

        def share(z, start, owned):
            features = self._features(ops.slice(z, start, (1, *window.size, 3)))
            return tuple(gram_matrix(owned_only(f, owned[k]), positions=h * w)[0]
                         for k, (f, (h, w)) in enumerate(zip(features, plan.layer_sizes, strict=True)))

        return self._program(("share", level, window.size), lambda: share)

    def _share_gradient(self, level: int, window: Window):
        """(z, start, owned, dL/dG per layer) -> the window's input gradient (1, h, w, 3)."""
        from keras import ops

        from gram import gram_matrix

        plan = self.plans[level]

        def share_gradient(z, start, owned, slopes):
            def surrogate(window_image):
                features = self._features(window_image)
                total = sum(ops.sum(slope * gram_matrix(owned_only(f, owned[k]), positions=h * w)[0])
                            for k, (f, slope, (h, w)) in enumerate(zip(features, slopes, plan.layer_sizes,
                                                                       strict=True)))
                return total, ops.zeros((1,))

            return autodiff.value_and_grad(surrogate)(ops.slice(z, start, (1, *window.size, 3)))[1]

        return self._program(("gradient", level, window.size), lambda: share_gradient)

    def _whole(self, level: int):
        """(z, targets) -> (per-layer terms (layers,), dL/dz): a level done whole."""
        from keras import ops

        from gram import gram_matrix, style_terms, weighted_sum

        weights = self.weights[level * self.layers:(level + 1) * self.layers]

        def whole(z, targets):
            def loss(z_):
                terms = style_terms([gram_matrix(f) for f in self._features(z_)], targets)
                if not any(weights):  # a level with no Gram term: a zero that still depends on z_
                    return 0.0 * ops.sum(z_), ops.stack(terms)
                return weighted_sum(weights, terms), ops.stack(terms)

            _, grad, terms = autodiff.value_and_grad(loss)(z)
            return terms, grad

        return self._program(("whole", level), lambda: whole)

    def _colour(self, level: int, size: tuple[int, int]):
        """z (the level as extended) -> (the weighted colour term (1,), its gradient (count, *size, 3)):
        the colour term of the level itself (``size``), without what extending added."""
        from keras import ops

        from colour import colour_term

        weight, targets = self.colour
        plan = self.plans[level]
        (top, _), (left, _) = ((0, 0), (0, 0)) if plan is None else plan.extend

        def colour(z):
            def loss(z_):
                term = colour_term([z_], [targets[level]], weight)
                return term, ops.reshape(term, (1,))

            inside = ops.slice(z, (0, top, left, 0), (self.count, *size, 3))
            _, grad, term = autodiff.value_and_grad(loss)(inside)
            return term, grad

        return self._program(("colour", level), lambda: colour)

    def _backward(self, level: int, shape: tuple[int, ...]):
        """(z, gradient, coarser) -> (inter-frame loss (1,), dL/dz): the whole gradient of a level's
        image z, its own terms' ``gradient`` plus what ``coarser`` (the next level's gradient; not
        given at the coarsest) sends back through the pyramid's reduction. The reduction is linear,
        so z only gives the shape (zeros, made on the device), except at level 0, where z is the
        image itself and the inter-frame loss adds its gradient. One level at a time: never more
        than two levels' images alive, not the whole pyramid's."""
        from keras import ops

        from pyramid import reduce

        inter_here = self.interframe is not None and level == 0

        def backward(z, gradient, coarser=None):
            if coarser is None and not inter_here:  # the coarsest level: its own terms alone
                return ops.zeros((1,)), gradient

            def pulled_back(z_):
                total = ops.zeros(()) if coarser is None else ops.sum(reduce(z_, self.padding) * coarser)
                inter = self.interframe(z_) if inter_here else ops.zeros(())
                return total + inter, ops.reshape(inter, (1,))

            _, grad, inter = autodiff.value_and_grad(pulled_back)(z)
            return inter, grad + gradient

        if level == 0:
            return self._program(("backward", level), lambda: backward)
        return self._program(("backward", level), lambda: lambda *rest: backward(ops.zeros(shape, "float32"), *rest))

    # -- the passes

    def _work(self) -> int:
        return sum(3 * self.count * len(plan.windows) for plan in self.plans if plan is not None)

    def _grams(self, level: int, z, progress: Callable[[int], None]) -> np.ndarray:
        """Pass 1 of a tiled level: its Gram matrices, float64 (layers, count, c, c) as a list."""
        plan = self.plans[level]
        grams = None
        for frame in range(self.count):
            for window in plan.windows:
                shares = self._share(level, window)(z, np.array([frame, *window.start, 0], np.int32),
                                                     np.array(window.owned, np.int32))
                shares = [autodiff.to_numpy(s).astype(np.float64) for s in shares]
                if grams is None:
                    grams = [np.zeros((self.count, *s.shape)) for s in shares]
                for g, s in zip(grams, shares, strict=True):
                    g[frame] += s
                progress(1)
        return grams

    def grams(self, x) -> list[np.ndarray]:
        """The Gram matrices of every (level, layer), level-major, (count, c, c) float64 each:
        pass 1 only (the sources' targets)."""
        levels = self._program(("levels",), lambda: self._levels)(x)
        out = []
        for level, (z, plan) in enumerate(zip(levels, self.plans, strict=True)):
            if plan is None:
                from gram import gram_matrix

                whole = self._program(("grams", level), lambda: lambda z_: [gram_matrix(f) for f in
                                                                           self._features(z_)])
                out += [autodiff.to_numpy(g).astype(np.float64) for g in whole(z)]
            else:
                out += self._grams(level, z, lambda units: None)
        return out

    def __call__(self, x) -> tuple[float, object, np.ndarray]:
        """(loss, dL/dx (a backend tensor, x's shape), per-level loss (absent + octaves,)) at x,
        a backend tensor (count, H, W, 3)."""
        from gram import weighted_sum
        from pyramid import level_sizes

        levels = self._program(("levels",), lambda: self._levels)(x)
        sizes = level_sizes(x.shape[1], x.shape[2], self.octaves, self.padding)
        total_work, done = max(self._work(), 1), [0]

        def progress(units: int) -> None:
            done[0] += units
            self.on_progress(done[0] / total_work)

        per_level, cotangents = [], []  # a level's cotangent: a device tensor (whole) or numpy (tiled)
        colour_total = 0.0
        for level, (z, plan) in enumerate(zip(levels, self.plans, strict=True)):
            chunk = slice(level * self.layers, (level + 1) * self.layers)
            weights = self.weights[chunk]
            colour_grad = None
            if self.colour is not None:
                term, colour_grad = self._colour(level, sizes[level])(z)
                colour_total += float(autodiff.to_numpy(term)[0])
            if plan is None:
                terms, grad = self._whole(level)(z, tuple(self.device_targets[chunk]))
                terms = autodiff.to_numpy(terms).astype(np.float64)
                per_level.append(float(weighted_sum(weights, terms)))
                cotangents.append(grad if colour_grad is None else grad + colour_grad)
                continue
            grams = self._grams(level, z, progress)
            differences = [g - t for g, t in zip(grams, self.targets[chunk], strict=True)]
            per_level.append(weighted_sum(weights, [float(np.sum(d * d)) for d in differences]))
            gradient = np.zeros((self.count, *sizes[level], 3), np.float32)  # the level's, not extended
            if colour_grad is not None:
                gradient += autodiff.to_numpy(colour_grad)
                del colour_grad
            for frame in range(self.count):
                slopes = tuple((2 * w * d[frame] if w else np.zeros_like(d[frame])).astype(np.float32)
                               for w, d in zip(weights, differences))
                for window in plan.windows:
                    start = np.array([frame, *window.start, 0], np.int32)
                    g = self._share_gradient(level, window)(z, start, np.array(window.owned, np.int32), slopes)
                    add_window(gradient, autodiff.to_numpy(g)[0], frame, window, plan, self.padding)
                    progress(2)
            cotangents.append(gradient)
            del gradient
        del levels, z
        grad = None  # dL/d(level's image), from the coarsest level down to the image
        for level in range(self.octaves - 1, -1, -1):
            cotangent, cotangents[level] = cotangents[level], None  # each goes as soon as it is used
            if isinstance(cotangent, np.ndarray):
                cotangent = autodiff.to_device(cotangent)
            coarser = [] if grad is None else [grad]
            if level == 0:
                inter, grad = self._backward(0, x.shape)(x, cotangent, *coarser)
            else:
                _, grad = self._backward(level, (self.count, *sizes[level], 3))(cotangent, *coarser)
            del cotangent
        loss = sum(per_level) + colour_total + float(autodiff.to_numpy(inter)[0])
        aux = np.array([math.nan] * self.absent + per_level, np.float32)
        return loss, grad, aux
