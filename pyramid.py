"""Gaussian image pyramids (Burt & Adelson, 1983), differentiable through keras.ops.

Level 0 is the image itself; level k+1 is ``reduce(level k)``: the 5-tap
generating kernel applied to every colour channel, vertically and horizontally,
with stride 2. ``Reduction`` is the same step on a torus (circular padding), in
numpy, with its transpose and its exact inverse correction (what --growth keep uses).
"""

from __future__ import annotations

import numpy as np

from padding import EXPLICIT_MODES, filter_padding, pad2d, shrinks

BURT_ADELSON_A = 0.4  # shape parameter a of the generating kernel (0.4: close to a Gaussian)
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


def kernel_response(n: int) -> np.ndarray:
    """(n,) the generating kernel's frequency response on a circle of n pixels (numpy's FFT order;
    real, the kernel being symmetric)."""
    k, angle = generating_kernel().astype(np.float64), 2 * np.pi * np.fft.fftfreq(n)
    return k[2] + 2 * k[3] * np.cos(angle) + 2 * k[4] * np.cos(2 * angle)


def reduction_symbol(m: int) -> np.ndarray:
    """(m,) the frequency response of R R^T on a circle of m coarse pixels, R being one ``reduce`` of
    a circle of 2m: the kernel's autocorrelation at even lags, taps g_j = sum_t k_t k_(t-2j),
    j = -2..2 (0.09 at the highest frequency, 0.5 at the lowest: never 0)."""
    k = generating_kernel().astype(np.float64)
    g = [sum(k[t] * k[t - 2 * j] for t in range(5) if 0 <= t - 2 * j < 5) for j in range(3)]
    angle = 2 * np.pi * np.fft.fftfreq(m)
    return g[0] + 2 * g[1] * np.cos(angle) + 2 * g[2] * np.cos(2 * angle)


class Reduction:
    """``reduce`` with circular padding, R, on one channel of one image (H, W), both sides
    even, in the Fourier domain (scipy.fft, float32: a 8192 px plane's spectrum takes 256 MB); its
    transpose; and the smallest change that makes the image reduce to a given one."""

    def __init__(self, height: int, width: int):
        if height % 2 or width % 2:
            raise ValueError(f"a wrap-around reduction needs even sides, not {height}x{width}")
        self.shape = (height, width)
        self.response = (kernel_response(height)[:, None] * kernel_response(width)[None, : width // 2 + 1]
                         ).astype(np.float32)
        self.symbol = (reduction_symbol(height // 2)[:, None] * reduction_symbol(width // 2)[None, :]
                       ).astype(np.float32)

    def _blur(self, x: np.ndarray) -> np.ndarray:
        from scipy import fft

        return fft.irfft2(fft.rfft2(np.asarray(x, np.float32), workers=-1) * self.response, s=self.shape, workers=-1)

    def reduce(self, x: np.ndarray) -> np.ndarray:
        """(H, W) -> (H/2, W/2): output pixel i centred on input pixel 2i, wrapping around."""
        return self._blur(x)[::2, ::2]

    def transpose(self, z: np.ndarray) -> np.ndarray:
        """(H/2, W/2) -> (H, W): R^T z (zeros between the coarse pixels, then the kernel)."""
        up = np.zeros(self.shape, np.float32)
        up[::2, ::2] = z
        return self._blur(up)

    def correction(self, residual: np.ndarray) -> np.ndarray:
        """R^T (R R^T)^-1 ``residual`` (H/2, W/2) -> (H, W): the smallest image whose subtraction
        changes the reduction by exactly ``residual`` (R R^T is a convolution on the coarse torus:
        a division by ``reduction_symbol`` in the Fourier domain)."""
        from scipy import fft

        return self.transpose(fft.ifft2(fft.fft2(np.asarray(residual, np.float32), workers=-1) / self.symbol,
                                        workers=-1).real)

    def correction_square_sum(self, residual: np.ndarray) -> float:
        """The sum of squares of ``correction(residual)``, from the coarse grid alone: r . (R R^T)^-1 r,
        the sum of |FFT r|^2 / symbol over frequencies, over the coarse pixel count (Parseval)."""
        from scipy import fft

        power = np.abs(fft.fft2(np.asarray(residual, np.float32), workers=-1)) ** 2
        return float(np.sum(power / self.symbol, dtype=np.float64) / residual.size)


def source_pyramids(sources, octaves: int, padding: str) -> list[list[np.ndarray]]:
    """Each caffe-space source's (H, W, C) ``octaves`` levels as numpy (H_k, W_k, C), level 0 first:
    its pyramid as its Gram targets see it (``padding``), compiled once per source shape. The colour
    targets and ``detail.DetailGrowth`` are made from these."""
    import autodiff

    pyramid_of = autodiff.compile(lambda image: gaussian_pyramid(image, octaves, padding))
    return [[autodiff.to_numpy(z)[0] for z in pyramid_of(autodiff.to_device(source[None]))] for source in sources]


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


def _expand_axis(images: np.ndarray, axis: int, n: int, padding: str) -> np.ndarray:
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
    return np.take(images, low, axis=axis) * (1 - frac) + np.take(images, high, axis=axis) * frac


def expand(images: np.ndarray, size: tuple[int, int], padding: str) -> np.ndarray:
    """Upsample numpy images one pyramid level: (N, h, w, C) -> (N, size[0], size[1], C), ``size``
    being the finer level's, so that ``reduce`` of the result is about the input again.

    Each coarse pixel is put back where the window of fine pixels it was made from is centred
    (see ``first_centre``) and the rest is interpolated linearly, so the two levels stay
    registered and every other fine pixel falls exactly on a coarse one. Plain resizing by
    size ratio does neither: with valid padding (262 -> 528 px, not quite 2x) its interpolation
    phase drifts and leaves faint lines every ~60 px that later stages cannot remove. Beyond the
    edges (valid padding's border, which the coarse level does not cover) the coarse image is
    mirrored (wrapped, for circular): repeating the edge pixel instead leaves streaks there.
    """
    images = np.asarray(images, np.float32)
    images = _expand_axis(images, 1, size[0], padding)
    return _expand_axis(images, 2, size[1], padding)


def expand_to(images: np.ndarray, sizes: list[tuple[int, int]], level: int, padding: str) -> np.ndarray:
    """Expand images of pyramid level ``level`` (``sizes``: every level's size, level 0 first) level by
    level up to level 0's size. Shows a coarse stage's image at full size."""
    for k in range(level - 1, -1, -1):
        images = expand(images, sizes[k], padding)
    return images


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
