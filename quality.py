"""Measurements that judge a result beyond its final loss: frames at the border, wrap seams, colours
the source lacks, how much of the source it copies, and what each coarse-to-fine growth did to the
coarse octaves."""

from __future__ import annotations

import numpy as np

LUMA = np.array([0.299, 0.587, 0.114])  # Rec. 601 luminance weights of R, G, B


def luminance(rgb: np.ndarray) -> np.ndarray:
    """RGB (H, W, 3), any range -> luminance (H, W), float64, same range."""
    return np.asarray(rgb, dtype=np.float64) @ LUMA


def border_distance(height: int, width: int) -> np.ndarray:
    """(H, W) int array: each pixel's distance in pixels to the nearest image edge (0 at the edge)."""
    rows = np.minimum(np.arange(height), np.arange(height)[::-1])
    cols = np.minimum(np.arange(width), np.arange(width)[::-1])
    return np.minimum(rows[:, None], cols[None, :])


def _against_interior(y: np.ndarray, distance: np.ndarray, low: int, high: int) -> tuple[float, float]:
    """(luminance ratio, contrast ratio) of the pixels of luminance ``y`` (H, W) whose ``distance``
    to the edge is in low..high-1 against the interior: the central half of the image (pixels at
    least a quarter of the smaller side away from every edge). Mean over the interior's mean (1 =
    no dark or light frame); standard deviation over the interior's (1 = as detailed as the
    middle; a blurred rim gives less)."""
    outer = y[(distance >= low) & (distance < high)]
    inner = y[distance >= min(y.shape) // 4]
    return float(outer.mean() / inner.mean()), float(outer.std() / inner.std())


def frame_ratios(rgb: np.ndarray, band: int) -> tuple[float, float]:
    """(luminance ratio, contrast ratio) of the outer ``band`` pixels of an RGB image (H, W, 3)
    against its interior (see ``_against_interior``)."""
    y = luminance(rgb)
    return _against_interior(y, border_distance(*y.shape), 0, band)


FRAME_RANGES = ((0.95, 1.05), (0.9, 1.1))  # (luminance, contrast) ratios within which no frame shows


def band_profile(rgb: np.ndarray, step: int = 4, depth: int = 64) -> np.ndarray:
    """``frame_ratios`` of each ``step`` px ring from the edge of an RGB image (H, W, 3) inwards,
    to ``depth`` px: (depth // step, 2). A frame shows in the outer rings only; ratios off 1 at
    every depth mean that the middle differs from the rest. ``depth`` must be a multiple of
    ``step`` and at most a quarter of the smaller side (deeper rings would reach the interior)."""
    y = luminance(rgb)
    if step < 1 or depth < step or depth % step or depth > min(y.shape) // 4:
        raise ValueError(f"rings of {step} px to {depth} px deep need depth a multiple of step and at most "
                         f"{min(y.shape) // 4} px (a quarter of the smaller side) in a {y.shape[0]}x{y.shape[1]} image")
    distance = border_distance(*y.shape)
    return np.array([_against_interior(y, distance, start, start + step) for start in range(0, depth, step)])


def crop_frame_ratios(rgb: np.ndarray, size: int, count: int = 300, bands: tuple[int, ...] = (4, 12),
                      seed: int = 0) -> np.ndarray:
    """``frame_ratios`` of ``count`` random ``size`` px square crops of a photo (H, W, 3), each
    band's (luminance, contrast) in turn: (count, 2 len(bands)). What pictures without any frame
    score: the spread says how far one picture's ratios move with where its content falls (wide
    for sources of large structures or regions). ``size`` must fit the photo and be at least 4x
    the widest band (so that no band reaches the interior); ``count`` at least 1."""
    height, width = rgb.shape[:2]
    if count < 1 or min(bands) < 1 or not 4 * max(bands) <= size <= min(height, width):
        raise ValueError(f"{count} crops of {size} px with bands {', '.join(map(str, bands))} px: need at least one "
                         f"crop, bands of at least 1 px and a side from 4x the widest band to {min(height, width)} "
                         f"px (the {height}x{width} image's smaller side)")
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(count):
        top, left = rng.integers(0, height - size + 1), rng.integers(0, width - size + 1)
        crop = rgb[top:top + size, left:left + size]
        rows.append([ratio for band in bands for ratio in frame_ratios(crop, band)])
    return np.array(rows)


def within_frame_ranges(ratios: np.ndarray) -> np.ndarray:
    """Which rows of (luminance, contrast) pairs, (n, 2 k) or one row (2 k,), have every ratio
    within ``FRAME_RANGES``: bool (n,)."""
    ratios = np.atleast_2d(ratios)
    (lum_low, lum_high), (con_low, con_high) = FRAME_RANGES
    lum, con = ratios[:, 0::2], ratios[:, 1::2]
    return np.all((lum >= lum_low) & (lum <= lum_high), axis=1) & np.all((con >= con_low) & (con <= con_high), axis=1)


def seam_ratio(rgb: np.ndarray) -> float:
    """How visible the wrap seams of an image are when it is tiled: 1 = like any other pixel step.

    RGB (H, W, C), any range. Mean absolute difference between the pixels that
    become neighbours across the seams (last column and first column, last row
    and first row) over the same mean for neighbouring pixels inside the image
    (every horizontally or vertically adjacent pair), all channels pooled.
    """
    x = np.asarray(rgb, dtype=np.float64)
    across = np.concatenate([np.abs(x[:, -1] - x[:, 0]).ravel(), np.abs(x[-1] - x[0]).ravel()])
    inside = np.concatenate([np.abs(np.diff(x, axis=1)).ravel(), np.abs(np.diff(x, axis=0)).ravel()])
    return float(across.mean() / inside.mean())


def colour_outlier_share(rgb: np.ndarray, reference: np.ndarray, threshold: float = 20.0) -> float:
    """Share of ``rgb``'s pixels further than ``threshold`` (Euclidean, RGB units 0-255) from every
    colour that ``reference`` contains: colours the source does not have.

    ``rgb``, ``reference``: RGB images (H, W, 3) of any sizes. 0 when every pixel's colour is within
    ``threshold`` of one of the reference's; a false-colour blotch shows as its share of pixels.
    """
    from scipy.spatial import cKDTree

    colours = np.unique(np.asarray(reference, np.float64).reshape(-1, 3), axis=0)
    pixels = np.asarray(rgb, np.float64).reshape(-1, 3)
    distance, _ = cKDTree(colours).query(pixels, distance_upper_bound=threshold)
    return float(np.mean(np.isinf(distance)))  # no reference colour within the threshold


def colour_outliers_against_source(rgb: np.ndarray, source: np.ndarray, threshold: float = 20.0) -> tuple[float, float]:
    """(share of ``rgb``'s pixels with colours the source lacks, the same share for a real photo):
    ``colour_outlier_share`` against the left half of ``source`` (H, W, 3), for the image and for
    a centred crop of the source's right half as large as the image (or the half, if smaller)."""
    half = source.shape[1] // 2
    reference, other = source[:, :half], source[:, half:]
    h, w = min(rgb.shape[0], other.shape[0]), min(rgb.shape[1], other.shape[1])
    top, left = (other.shape[0] - h) // 2, (other.shape[1] - w) // 2
    crop = other[top:top + h, left:left + w]
    return colour_outlier_share(rgb, reference, threshold), colour_outlier_share(crop, reference, threshold)


def _squares(rgb: np.ndarray, side: int, stride: int) -> np.ndarray:
    """(n, side * side * 3) float32: the side x side squares of ``rgb`` (H, W, 3), every ``stride`` px."""
    windows = np.lib.stride_tricks.sliding_window_view(np.asarray(rgb, np.float32), (side, side), axis=(0, 1))
    return windows[::stride, ::stride].reshape(-1, 3 * side * side)  # (the order of the values is the same for all)


def nearest_square_distances(rgb: np.ndarray, source: np.ndarray, side: int = 16, stride: int = 4,
                             candidates: int = 8, components: int = 48) -> np.ndarray:
    """For each ``side`` x ``side`` square of ``rgb`` (H, W, 3), every ``stride`` px: the RMS distance
    (RGB units 0-255) to the nearest square of ``source`` (h, w, 3) at any position. 0 where the
    image copies the source; a new texture keeps its distance. Shape (n,).

    Approximate: the ``candidates`` nearest in ``components`` principal components of the source's
    squares (scipy's k-d tree), of which the nearest is measured exactly.
    """
    from scipy.spatial import cKDTree

    library = _squares(source, side, 1)
    mean = library.mean(axis=0)
    basis = np.linalg.svd(library[::max(1, len(library) // 5000)] - mean, full_matrices=False)[2][:components]
    tree = cKDTree((library - mean) @ basis.T)
    queries = _squares(rgb, side, stride)
    _, index = tree.query((queries - mean) @ basis.T, k=min(candidates, len(library)))
    index = index.reshape(len(queries), -1)
    return np.array([np.sqrt(np.mean((library[i] - q) ** 2, axis=1)).min() for q, i in zip(queries, index)])


def growth_damage(record: dict, window: int = 10) -> list[dict]:
    """For each coarse-to-fine stage after the first, in a run.json ``record`` (its ``stages`` and
    ``octave_loss_history``): how the coarse octaves' losses compare with those the previous stage
    ended with, right after the growth (``after_growth``) and at worst during the stage's first
    ``window`` iterations (``first_iterations``); each a list over the coarse octaves (k > the
    stage's level), finest first. 1 means kept; 100 means a hundredfold worse. ``reduced_back``:
    the stage's record of it (per frame, or None: not tried, or a run from before it). The same
    for the picture (``drift_after``, ``drift_first``, from the stage's ``coarse_drift``): how far
    each coarser pyramid level of the canvas lies from the previous stage's result, RMS in pixel
    values (0-255, over all frames; 0 means kept), finest first; a run records it for its first
    ``optimize.DRIFT_WINDOW`` iterations only; None for a run from before it."""
    history, done, rows, previous = record["octave_loss_history"], 0, [], None
    for stage in record.get("stages", []):  # (written when a run ends: none while it runs or if killed)
        n, level = stage["iterations"], stage["level"]
        if previous is not None and n:
            coarse = [k for k in range(level + 1, len(previous)) if previous[k]]
            start = stage.get("initial_octave_losses") or [None] * len(previous)
            drift = stage.get("coarse_drift")
            rows.append({
                "level": level,
                "drift_after": drift[0] if drift else None,
                "drift_first": [max(level) for level in zip(*drift[1:window + 1])] if drift and len(drift) > 1
                else None,
                "after_growth": [start[k] / previous[k] if start[k] is not None else None for k in coarse],
                "first_iterations": [max(history[done + i][k] for i in range(min(window, n))) / previous[k]
                                     for k in coarse],
                "reduced_back": stage.get("reduced_back")})
        if n:
            previous = history[done + n - 1]
        done += n
    return rows


def worst_growth(rows: list[dict], keys: tuple[str, str] = ("after_growth", "first_iterations")
                 ) -> tuple[float | None, float | None]:
    """The largest value over all growths and coarse octaves of ``growth_damage``'s rows: (right
    after a growth, during a stage's first iterations), the losses' multiples or, with ``keys``
    ("drift_after", "drift_first"), the pictures' drift; None where there is none (a plain run, or
    a growth without its record)."""
    after = [r for row in rows for r in row[keys[0]] or [] if r is not None]
    first = [r for row in rows for r in row[keys[1]] or []]
    return (max(after) if after else None), (max(first) if first else None)
