"""Gaussian image pyramids (Burt & Adelson, 1983), differentiable through keras.ops.

Level 0 is the image itself; level k+1 is ``reduce(level k)``: the 5-tap
generating kernel applied to every colour channel, vertically and horizontally,
with stride 2.
"""

from __future__ import annotations

import functools

import numpy as np

from padding import EXPLICIT_MODES, filter_padding, pad2d, shrinks

BURT_ADELSON_A = 0.4  # shape parameter a of the generating kernel (0.4: close to a Gaussian)
SHARPENING = 6.0  # how much of the detail the stage view takes away a coarse canvas puts back (stage_image)
CANVAS_TOLERANCE = 0.01  # stage_canvas: iterate until the image is reproduced to this many pixel units
KERNEL_TAPS = 5  # length of the generating kernel


def generating_kernel(a: float = BURT_ADELSON_A) -> np.ndarray:
    """Burt & Adelson's kernel ``[1/4 - a/2, 1/4, a, 1/4, 1/4 - a/2]``, shape (5,), sums to 1."""
    return np.array([0.25 - a / 2, 0.25, a, 0.25, 0.25 - a / 2], dtype=np.float32)


def reduced_size(n: int, padding: str) -> int:
    """Side length after one ``reduce``: valid: floor((n - 5) / 2) + 1; other modes: ceil(n / 2)."""
    filter_padding(padding)  # rejects unknown modes
    if shrinks(padding):
        return (n - KERNEL_TAPS) // 2 + 1
    return -(-n // 2)


def level_sizes(height: int, width: int, octaves: int, padding: str) -> list[tuple[int, int]]:
    """(height, width) of each of the ``octaves`` levels, level 0 first."""
    sizes = [(height, width)]
    for _ in range(octaves - 1):
        h, w = sizes[-1]
        sizes.append((reduced_size(h, padding), reduced_size(w, padding)))
    return sizes


def reduce(images, padding: str):
    """One pyramid step: (N, H, W, C) -> (N, H', W', C), H' = ``reduced_size(H)``.

    The separable 5x5 kernel is the outer product of the 5-tap kernel, so one
    depthwise convolution with stride 2 equals the vertical-then-horizontal pass.
    """
    from keras import ops

    channels = images.shape[-1]
    k = generating_kernel()
    kernel = np.outer(k, k)[:, :, None, None] * np.ones((1, 1, channels, 1), np.float32)
    kernel = ops.cast(kernel, images.dtype)
    if padding in EXPLICIT_MODES:
        images = pad2d(images, KERNEL_TAPS // 2, padding)
    return ops.depthwise_conv(images, kernel, strides=2, padding=filter_padding(padding))


def gaussian_pyramid(images, octaves: int, padding: str) -> list:
    """The ``octaves`` levels of the Gaussian pyramid of (N, H, W, C) images, level 0 first."""
    levels = [images]
    for _ in range(octaves - 1):
        levels.append(reduce(levels[-1], padding))
    return levels


def first_centre(n: int, padding: str) -> int:
    """Where, in the pixels of a level of side ``n``, the window of ``reduce``'s first output pixel
    is centred; output pixel i is centred at 2i + this. valid: 2; reflect and circular (padded by 2
    first): 0; same (TensorFlow's SAME pads floor(total / 2) at the start): 2 - that."""
    if shrinks(padding):
        return KERNEL_TAPS // 2
    if padding in EXPLICIT_MODES:
        return 0
    pad_total = max((reduced_size(n, padding) - 1) * 2 + KERNEL_TAPS - n, 0)
    return KERNEL_TAPS // 2 - pad_total // 2


def _expand_axis(images, axis: int, n: int, padding: str):
    m = images.shape[axis]
    position = (np.arange(n) - first_centre(n, padding)) / 2  # in coarse pixels
    if padding == "circular":
        low = np.floor(position).astype(int)
        frac = position - low
        low, high = low % m, (low + 1) % m
    else:  # mirrored at the edges: texture, not the streaks that repeating the edge pixel would make
        position = np.clip((m - 1) - np.abs((m - 1) - np.abs(position)), 0, m - 1)
        low = np.floor(position).astype(int)
        high = np.minimum(low + 1, m - 1)
        frac = position - low
    shape = [1] * images.ndim
    shape[axis] = n
    frac = frac.reshape(shape).astype(np.float32)
    if isinstance(images, np.ndarray):
        return np.take(images, low, axis=axis) * (1 - frac) + np.take(images, high, axis=axis) * frac
    from keras import ops  # a backend tensor, inside a compiled loss (``stage_view``)

    frac = ops.cast(frac, images.dtype)
    return ops.take(images, low, axis=axis) * (1 - frac) + ops.take(images, high, axis=axis) * frac


def expand(images, size: tuple[int, int], padding: str):
    """Upsample images one pyramid level: (N, h, w, C) -> (N, size[0], size[1], C), ``size``
    being the finer level's, so that ``reduce`` of the result is about the input again. numpy
    in, numpy out; backend tensors (keras.ops) in, tensors out.

    Each coarse pixel is put back where the window of fine pixels it was made from is centred
    (see ``first_centre``) and the rest is interpolated linearly, so the two levels stay
    registered and every other fine pixel falls exactly on a coarse one. Plain resizing by
    size ratio does neither: with valid padding (262 -> 528 px, not quite 2x) its interpolation
    phase drifts and leaves faint lines every ~60 px that later stages cannot remove. Beyond the
    edges (valid padding's border, which the coarse level does not cover) the coarse image is
    mirrored (wrapped, for circular): repeating the edge pixel instead leaves streaks there.
    """
    from keras import ops

    if not ops.is_tensor(images):
        images = np.asarray(images, np.float32)
    images = _expand_axis(images, 1, size[0], padding)
    return _expand_axis(images, 2, size[1], padding)


def expand_to(images, sizes: list[tuple[int, int]], level: int, padding: str):
    """Expand images of pyramid level ``level`` (``sizes``: every level's size, level 0 first) level by
    level up to level 0's size: the full-size image a coarse stage's canvas stands for (``stage_view``),
    what its snapshots show and what the next stage starts from."""
    for k in range(level - 1, -1, -1):
        images = expand(images, sizes[k], padding)
    return images


def expansion_matrix(m: int, n: int, padding: str) -> np.ndarray:
    """``expand`` along one axis, from m coarse pixels to n fine ones, as an (n, m) matrix."""
    return _expand_axis(np.eye(m, dtype=np.float32)[None, :, :, None], 1, n, padding)[0, :, :, 0]


def contract(images: np.ndarray, sizes: list[tuple[int, int]], level: int, padding: str) -> np.ndarray:
    """The canvas of pyramid ``level`` whose expansion to full size (``expand_to``) comes closest to
    numpy ``images`` (N, sizes[0], C) in least squares: (N, sizes[level], C).

    ``expand_to``'s inverse: a coarse stage's snapshot (its canvas expanded) gives back that canvas,
    so a run resumed in a coarse stage carries on from what it saved; any other image (--init-image)
    gets the smooth canvas that expands to it best.
    """
    images = np.asarray(images, np.float64)
    if level == 0:
        return images.astype(np.float32)
    per_axis = []
    for axis in (0, 1):
        matrix = np.eye(sizes[level][axis])
        for k in range(level - 1, -1, -1):  # expand_to's order: level -> level - 1 -> ... -> 0
            matrix = expansion_matrix(sizes[k + 1][axis], sizes[k][axis], padding).astype(np.float64) @ matrix
        per_axis.append(np.linalg.pinv(matrix))
    rows, cols = per_axis
    return np.einsum("ih,nhwc,jw->nijc", rows, images, cols, optimize=True).astype(np.float32)


def stage_view(images, sizes: list[tuple[int, int]], level: int, padding: str):
    """What the loss of a coarse-to-fine stage at pyramid ``level`` sees of its canvas: images
    (N, sizes[level], C) (keras.ops tensors) expanded to full size (``expand_to``) and reduced back
    to ``level``; the same shape. The identity at level 0.

    A canvas is grown into the next stage by ``expand``, and ``reduce`` of an expanded image is a
    blurred copy of it (the two kernels smooth twice): a stage that optimised its canvas itself
    would hand over coarse levels that lose their finest detail at every growth (the coarse
    octaves' losses 100-1000x what they were). Measured through this view, the canvas is judged
    as the reduction of the very image the next stage starts from, so each growth keeps the
    coarse octaves' losses exactly; and every such image is within the pixel bounds (both
    operators average), which correcting a grown image until it reduces back to the canvas
    cannot promise (it overshoots the bounds where the canvas has contrast no bounded image
    reduces to, and leaves speckles).
    """
    full = expand_to(images, sizes, level, padding)
    for _ in range(level):
        full = reduce(full, padding)
    return full


def stage_image(canvas, sizes: list[tuple[int, int]], level: int, padding: str, bounds=None):
    """The image (N, sizes[level], C) a coarse-to-fine stage's canvas stands for at its level (keras.ops
    tensors or numpy): the canvas with ``SHARPENING`` times the detail ``stage_view`` takes away put
    back, (1 + s) canvas - s stage_view(canvas), within ``bounds`` ((low, high), each broadcastable to
    C: the pixel range; None: unbounded); the canvas itself at level 0. Within the bounds, the image
    grows into a full-size image within them, so the next stage starts from exactly what this one
    was judged on.

    A change of variables for the optimiser, not of the loss: the view smooths its input (most the
    finest detail a coarse level can hold), so a stage that optimised the viewed canvas directly had
    to build that detail up against the smoothing and ended 2-3x above where an unviewed stage ended
    (and the run's final loss 10-15% higher on brick and grass). The stage's loss sees ``stage_level``
    of its canvas, and what grows into the next stage is ``stage_image(canvas)``.
    """
    if level == 0:
        return canvas
    image = (1 + SHARPENING) * canvas - SHARPENING * stage_view(canvas, sizes, level, padding)
    if bounds is None:
        return image
    from keras import ops

    low, high = (ops.cast(np.asarray(b, np.float32), image.dtype) for b in bounds)
    return ops.minimum(ops.maximum(image, low), high)


def stage_level(canvas, sizes: list[tuple[int, int]], level: int, padding: str, bounds=None):
    """What the loss of the coarse-to-fine stage at ``level`` sees of its canvas as that pyramid level:
    ``stage_view(stage_image(canvas, bounds))``, the reduction of the full-size image the canvas grows
    into (keras.ops tensors; the canvas itself at level 0)."""
    if level == 0:
        return canvas
    return stage_view(stage_image(canvas, sizes, level, padding, bounds), sizes, level, padding)


def stage_canvas(image: np.ndarray, sizes: list[tuple[int, int]], level: int, padding: str,
                 rounds: int = 300) -> np.ndarray:
    """``stage_image``'s inverse on numpy images (N, sizes[level], C): the canvas whose stage image is
    ``image``, the fixed point of canvas = (image + s stage_view(canvas)) / (1 + s), iterated from
    ``image`` until it reproduces ``image`` to ``CANVAS_TOLERANCE`` (the view averages, so each round
    shrinks the error by s / (1 + s) or more) or ``rounds`` are done. A weighted average of blurred
    copies of ``image``: within its range of values. The image itself at level 0."""
    image = np.asarray(image, np.float32)
    canvas = image
    view = _host_program("view", tuple(map(tuple, sizes)), level, padding) if level else None
    for _ in range(rounds if level else 0):
        viewed = view(canvas)
        if np.max(np.abs((1 + SHARPENING) * canvas - SHARPENING * viewed - image)) <= CANVAS_TOLERANCE:
            break
        canvas = (image + SHARPENING * viewed) / (1 + SHARPENING)
    return canvas


def host_stage_image(canvas: np.ndarray, sizes: list[tuple[int, int]], level: int, padding: str,
                     bounds=None) -> np.ndarray:
    """``stage_image`` of a numpy canvas, as numpy."""
    if level == 0:
        return np.asarray(canvas, np.float32)
    bounds = None if bounds is None else tuple(tuple(np.broadcast_to(b, (3,)).tolist()) for b in bounds)
    return _host_program("image", tuple(map(tuple, sizes)), level, padding, bounds)(canvas)


@functools.lru_cache(maxsize=None)
def _host_program(kind: str, sizes, level: int, padding: str, bounds=None):
    """numpy -> numpy: ``stage_view`` ("view") or ``stage_image`` ("image") compiled once (one
    program per shape, not one per eager operation: under JAX each would be compiled)."""
    import autodiff

    sizes = [tuple(size) for size in sizes]
    if kind == "view":
        program = autodiff.compile(lambda x: stage_view(x, sizes, level, padding))
    else:
        program = autodiff.compile(lambda x: stage_image(x, sizes, level, padding, bounds))
    return lambda x: np.asarray(autodiff.to_numpy(program(autodiff.to_device(np.asarray(x, np.float32)))),
                                np.float32)


def resize_images(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resample numpy images (N, H, W, C) to (N, size[0], size[1], C), linearly; unchanged if equal.

    Brings the starting image to the size of the first coarse-to-fine stage.
    """
    from scipy.ndimage import zoom

    if tuple(images.shape[1:3]) == tuple(size):
        return images
    factors = (1, size[0] / images.shape[1], size[1] / images.shape[2], 1)
    out = zoom(np.asarray(images, np.float32), factors, order=1, mode="nearest", grid_mode=True)
    return out[:, : size[0], : size[1]]
