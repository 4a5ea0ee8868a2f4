"""Coarse-to-fine growth with the sources' own fine detail.

A coarse-to-fine stage's result, level k+1 of the canvas, becomes the start of the next stage, level
k. Enlarged alone (``pyramid.expand``) it is a blurred picture: its new finest octave starts far
from the texture, and reducing it again gives a blurred coarse level, far (in loss, 67-3160x on
the examples) from what the coarse stage had built. ``DetailGrowth`` adds what the sources have at that scale:

- for every pixel of the coarse level, the source pixel whose ``PATCH`` x ``PATCH`` neighbourhood,
  at that level of the source's pyramid, is nearest (in the ``DIMS`` principal components of all
  the sources' neighbourhoods; approximate nearest neighbour in those, ``EPS``);
- around where that pixel sits one level finer, the source's Laplacian band: its level k less the
  enlargement of its level k+1 (Burt & Adelson 1983);
- the bands' 3x3 blocks blended with the tent weights of linear interpolation, added to the
  smooth enlargement.

Where the coarse result looks locally like a source, the grown image is what that source has
there one level finer (a Laplacian pyramid's reconstruction), so it reduces back to about the
coarse result, and its finest octave starts with edges and grain rather than blur. This is the
idea of De Bonet (1997) and Wei & Levoy (2000), filling a pyramid's finer level from the source
where the coarser levels' neighbourhoods match, used here only for the start of each stage: the
optimiser then matches the Gram matrices as before.

Elsewhere it reduces back only to about it, and the coarse octaves, which the previous stage had
brought far lower than the new one starts, lose hundreds of times what they had (gravel's last
growth at 256 px: 380x). With --growth keep (the default), on a canvas that wraps around
(circular padding), each frame of the grown image is then corrected until it reduces back to
the coarse result (``reduce_back``: solved exactly in the Fourier domain by
``pyramid.Reduction``, alternated with the pixel bounds), so that the growth keeps what the
previous stage built, if that correction is not much stronger than the sources' own detail at
that level (``REALISABLE``). The first stage, started from noise, can keep detail at its finest
scale that a reduced image does not have (gravel: 47% of the variance above half its highest
frequency, the photo's level 29%); reproducing it exactly took swings of up to 167 pixel values
(an RMS twice the detail's), which the new octave then paid for (its loss 36x higher), and held
to less (Tikhonov's correction) it was still worse than none. Such a growth is left as the detail
made it: on every example, the first.
"""

from __future__ import annotations

import numpy as np

PATCH = 5  # side of the coarse neighbourhoods compared, pixels
DIMS = 24  # principal components of a neighbourhood (of PATCH * PATCH * 3) used to compare them
EPS = 1.0  # approximate nearest neighbours, within (1 + EPS) of the nearest's distance: 6x faster, and 97%
# of them are the nearest (on the gravel example, in the canvas of a finished run)
MAX_CANDIDATES = 1 << 18  # source pixels kept per level (a random subset of all the sources' beyond this)
QUERY_PIXELS = 1 << 16  # canvas pixels looked up at a time (bounds the neighbourhoods' memory)
TENT = np.array([0.5, 1.0, 0.5], np.float32)  # weights of fine pixels -1, 0, +1 from a coarse pixel's place
REALISABLE = 1.3  # a frame is reduced back if that takes an RMS of at most this times the sources' Laplacian
# band's at that level (see the module). On the five examples (256 and 512 px, valid and reflect, seed 5) later
# growths took 0.41-1.04 times it, first growths 1.69-3.72; with 1.0 the tissue photo's second growth with
# -p reflect (1.04) was left at 7x
PROJECTIONS = 10  # exact corrections alternated with the pixel bounds (each makes the next one smaller)


def neighbourhoods(image: np.ndarray, mode: str) -> np.ndarray:
    """(h, w, C) -> (h, w, C, PATCH, PATCH): every pixel's neighbourhood, the image extended beyond
    its edges by numpy's ``mode`` (``wrap`` or ``reflect``). A view: index it before ``flat``."""
    r = PATCH // 2
    padded = np.pad(image, [(r, r), (r, r), (0, 0)], mode=mode)
    return np.lib.stride_tricks.sliding_window_view(padded, (PATCH, PATCH), axis=(0, 1))


def flat(windows: np.ndarray) -> np.ndarray:
    """(..., C, PATCH, PATCH) neighbourhoods -> (P, C * PATCH * PATCH), a copy."""
    return windows.reshape(-1, np.prod(windows.shape[-3:]))


def laplacian_band(fine: np.ndarray, coarse: np.ndarray, padding: str) -> np.ndarray:
    """A source's Laplacian band at a level: the level (H, W, C) less the enlargement of the next one
    (h, w, C) of its pyramid (``padding``): what that level has that the next does not."""
    from pyramid import expand

    return fine - expand(coarse[None], fine.shape[:2], padding)[0]


class Library:
    """The sources' neighbourhoods at one level, searchable, and the detail each stands for."""

    def __init__(self, pairs: list[tuple[np.ndarray, np.ndarray]], padding: str, rng: np.random.Generator):
        """``pairs``: per source, its pyramid's levels k (H, W, C) and k + 1 (h, w, C), made with
        ``padding``; at most ``MAX_CANDIDATES`` of all their pixels are kept, chosen by ``rng``
        evenly over the sources' pixels."""
        from scipy.spatial import cKDTree

        axes = [[self.candidates(m, n, padding) for m, n in zip(coarse.shape[:2], fine.shape[:2])]
                for fine, coarse in pairs]
        counts = np.array([len(rows) * len(cols) for rows, cols in axes])
        total = int(counts.sum())
        self.empty = total == 0
        if self.empty:
            return
        chosen = np.arange(total) if total <= MAX_CANDIDATES else np.sort(rng.choice(total, MAX_CANDIDATES,
                                                                                     replace=False))
        starts = np.concatenate([[0], np.cumsum(counts)])
        features, blocks, squares, values = [], [], 0.0, 0
        for (fine, coarse), (rows, cols), first, last in zip(pairs, axes, starts[:-1], starts[1:]):
            band = laplacian_band(fine, coarse, padding)
            squares, values = squares + float(np.sum(np.square(band, dtype=np.float64))), values + band.size
            k = chosen[(chosen >= first) & (chosen < last)] - first  # this source's, row-major
            if not k.size:
                continue
            rows, cols = rows[k // len(cols)], cols[k % len(cols)]
            features.append(flat(neighbourhoods(coarse, "reflect")[rows, cols]))
            fine_rows, fine_cols = (fine_places(m, n, padding)[pick] for m, n, pick in
                                    zip(coarse.shape[:2], fine.shape[:2], (rows, cols)))
            blocks.append(band[fine_rows[:, :, None], fine_cols[:, None, :]])  # (P, 3, 3, C)
        features = np.concatenate(features)
        self.band_rms = np.sqrt(squares / values)  # of all the sources' bands, every pixel: how strong their detail is
        self.blocks = np.concatenate(blocks)
        self.mean = features.mean(axis=0)
        sample = features[rng.choice(len(features), min(len(features), 20000), replace=False)] - self.mean
        self.basis = np.linalg.svd(sample.astype(np.float64), full_matrices=False)[2][:DIMS].T.astype(np.float32)
        self.tree = cKDTree(self.project(features))

    @staticmethod
    def candidates(m: int, n: int, padding: str) -> np.ndarray:
        """The coarse pixels (of ``m``) whose neighbourhood lies inside the level and whose block of
        fine pixels inside the finer level (of ``n``), along one axis."""
        r = PATCH // 2
        inside = np.all(fine_places(m, n, padding) < n, axis=1) & (np.arange(m) >= r) & (np.arange(m) < m - r)
        return np.flatnonzero(inside)

    def project(self, features: np.ndarray) -> np.ndarray:
        """(P, C * PATCH * PATCH) neighbourhoods -> (P, DIMS) coordinates."""
        return (features - self.mean) @ self.basis

    def nearest_blocks(self, features: np.ndarray) -> np.ndarray:
        """(P, C * PATCH * PATCH) neighbourhoods -> (P, 3, 3, C) the detail of the nearest source pixels."""
        _, index = self.tree.query(self.project(features), k=1, eps=EPS, workers=-1)
        return self.blocks[index]


def fine_places(m: int, n: int, padding: str) -> np.ndarray:
    """Where coarse pixel i's block lands on a finer level of side ``n`` (the coarse has ``m``):
    (m, 3) fine indices of offsets -1, 0, +1 around its place (``pyramid.first_centre``); circular:
    wrapped around, other modes: ``n`` (one past the level) where off it. Distinct for distinct i."""
    from pyramid import first_centre

    places = 2 * np.arange(m)[:, None] + first_centre(n, padding) + np.arange(-1, 2)[None]
    if padding == "circular":
        return places % n
    return np.where((places >= 0) & (places < n), places, n)


def tent_sums(places: np.ndarray, n: int) -> np.ndarray:
    """(n,) the sum of ``TENT`` weights each fine pixel gets from ``fine_places``' (m, 3) places."""
    sums = np.zeros(n + 1, np.float32)
    np.add.at(sums, places, np.broadcast_to(TENT, places.shape))
    return sums[:n]


def reduce_back(grown: np.ndarray, coarse: np.ndarray, rms: float, bounds) -> np.ndarray | None:
    """One frame ``grown`` (H, W, C) corrected until it reduces to ``coarse`` (H/2, W/2, C) on a
    wrap-around canvas, channel by channel: the exact correction (``Reduction.correction``), then
    ``PROJECTIONS`` - 1 more, each after clipping to ``bounds`` ((low, high), each a number or per
    channel (C,)): alternating projections onto the two sets, ending inside the bounds. None if the
    first correction's RMS (over the frame) would exceed ``rms`` (found on the coarse grid)."""
    from pyramid import Reduction

    h, w, c = grown.shape
    reduction = Reduction(h, w)
    low, high = (np.broadcast_to(np.asarray(b, np.float32), (c,)) for b in bounds)
    residuals = [reduction.reduce(grown[:, :, k]) - coarse[:, :, k] for k in range(c)]
    if np.sqrt(sum(reduction.correction_square_sum(r) for r in residuals) / grown.size) > rms:
        return None
    out = np.empty(grown.shape, np.float32)
    for k, residual in enumerate(residuals):
        x = np.clip(grown[:, :, k] - reduction.correction(residual), low[k], high[k])
        for _ in range(PROJECTIONS - 1):
            x = np.clip(x - reduction.correction(reduction.reduce(x) - coarse[:, :, k]), low[k], high[k])
        out[:, :, k] = x
    return out


class DetailGrowth:
    """Grows a coarse stage's canvas one pyramid level with the sources' detail (see the module)."""

    def __init__(self, source_levels: list[list[np.ndarray]], padding: str, seed: int,
                 bounds=(-np.inf, np.inf), keep: bool = True):
        """``source_levels``: per source, its pyramid's levels (H_k, W_k, 3), caffe space, level 0 first
        (``pyramid.source_pyramids``), made with ``padding``; ``seed`` picks the candidates kept;
        ``bounds``: the pixel bounds (low, high), each broadcastable to (3,), that a correction keeps;
        ``keep``: correct each growth to reduce back (--growth keep), or add the detail only (detail)."""
        self.source_levels = source_levels
        self.padding = padding
        self.seed = seed
        self.bounds = bounds
        self.keep = keep
        self.corrected = None  # per frame, whether the last growth was reduced back (None: not tried)

    def library(self, level: int) -> Library:
        """The sources' ``Library`` for growing into ``level`` (built each time: a run grows into each
        level once, and the library is not kept)."""
        pairs = [(levels[level], levels[level + 1]) for levels in self.source_levels]
        return Library(pairs, self.padding, np.random.default_rng([self.seed, level]))

    def __call__(self, x: np.ndarray, size: tuple[int, int], padding: str, level: int) -> np.ndarray:
        """(N, h, w, C) level ``level`` + 1 of the canvas -> (N, size[0], size[1], C) the start of level
        ``level``: ``with_detail``; with ``keep``, on a wrap-around canvas (circular ``padding``), then
        each frame corrected to reduce back to its frame of ``x`` if that takes at most ``REALISABLE``
        times the sources' detail (``reduce_back``; ``corrected`` says for which, None where not tried)."""
        library = self.library(level)
        grown = self.with_detail(x, size, padding, library)
        self.corrected = None
        halves = tuple(size) == (2 * x.shape[1], 2 * x.shape[2])  # a wrap-around canvas's levels do
        if self.keep and padding == "circular" and halves and not library.empty:
            self.corrected = []
            for frame in range(len(grown)):  # each on its own: frames grow independently
                corrected = reduce_back(grown[frame], x[frame], REALISABLE * library.band_rms, self.bounds)
                self.corrected.append(corrected is not None)
                if corrected is not None:
                    grown[frame] = corrected
        return grown

    @staticmethod
    def with_detail(x: np.ndarray, size: tuple[int, int], padding: str, library: Library) -> np.ndarray:
        """(N, h, w, C) -> (N, size[0], size[1], C): ``pyramid.expand`` of ``x`` plus the detail of
        ``library``'s nearest neighbourhoods, blended (see the module)."""
        from pyramid import expand

        x = np.asarray(x, np.float32)
        smooth = expand(x, size, padding)
        if library.empty:  # no source has a neighbourhood that deep: nothing to copy
            return smooth
        (n, h, w, c), (height, width) = x.shape, size
        rows, cols = fine_places(h, height, padding), fine_places(w, width, padding)
        detail = np.zeros((n, height + 1, width + 1, c), np.float32)  # the last row and column: off the level
        chunk = max(1, QUERY_PIXELS // w)
        mode = "wrap" if padding == "circular" else "reflect"
        for frame in range(n):
            near = neighbourhoods(x[frame], mode)
            for top in range(0, h, chunk):
                span = slice(top, min(top + chunk, h))
                blocks = library.nearest_blocks(flat(near[span]))
                blocks = blocks.reshape(span.stop - top, w, 3, 3, c)
                for a in range(3):
                    for b in range(3):
                        target = (frame, rows[span, a, None], cols[None, :, b])
                        detail[target] += TENT[a] * TENT[b] * blocks[:, :, a, b]
        # the weights each fine pixel got, row's times column's; none: valid padding's outermost pixels
        weight = np.outer(tent_sums(rows, height), tent_sums(cols, width))
        np.divide(1.0, weight, out=weight, where=weight > 0)
        detail = detail[:, :height, :width]
        detail *= weight[None, :, :, None]
        smooth += detail
        return smooth
