"""Animation (``--count`` > 1): the inter-frame loss that ties frames into a loop, and the loop file.

The frames are optimised together as one batch (N, H, W, 3) in caffe space.
Frame i and frame (i + k) mod N should differ by about as much as the source
texture differs from itself moved by k x ``--if-shift`` pixels, so that played
in order the frames make a looping, slowly morphing texture.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from outputs import atomic_write

DISTANCE_EPS = 1e-6  # added under the square root (caffe units squared) so its gradient stays finite
FRAME_MS = 100  # display time of one frame of the animation file, in milliseconds
ANIMATION_FILE = "animation.png"  # the final frames as one looping animated PNG, in the run directory


def frame_distances(x, k: int):
    """RMS distance between each frame and the frame k further on, the sequence looping.

    ``x``: (N, H, W, C) frames (keras tensor or numpy). Returns (N,):
    ``d_k(i) = sqrt(mean over pixels and channels of (x_i - x_{(i + k) mod N})^2)``.
    """
    from keras import ops

    later = ops.roll(x, shift=-k, axis=0)  # later[i] = x[(i + k) mod N]
    return ops.sqrt(ops.mean(ops.square(x - later), axis=(1, 2, 3)) + DISTANCE_EPS)


def interframe_loss(x, target: float, order: int):
    """``sum over k = 1..order of mean over i of (d_k(i) - k * target)^2``; scalar.

    ``x``: (N, H, W, C) frames; ``target``: the distance wanted between
    neighbours (``target_distance``); frames k apart should be k times as far.
    """
    from keras import ops

    total = 0.0
    for k in range(1, order + 1):
        total = total + ops.mean(ops.square(frame_distances(x, k) - k * target))
    return total


def _rms(difference: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(difference))))


def shift_distance(image: np.ndarray, shift: int) -> float:
    """How far an image moves when rolled circularly by ``shift`` pixels; numpy.

    ``image``: (H, W, C). The mean of two RMS distances: image vs image rolled
    ``shift`` px down, and that vs it rolled a further ``shift`` px right.
    """
    image = np.asarray(image, dtype=np.float64)
    down = np.roll(image, shift, axis=0)
    across = np.roll(down, shift, axis=1)
    return (_rms(image - down) + _rms(down - across)) / 2


def target_distance(image: np.ndarray, shift: float) -> float:
    """``shift_distance`` for a fractional ``shift`` >= 0: linear between floor(shift) and floor(shift) + 1.

    ``image``: (H, W, C), the first source in caffe space after resizing.
    """
    low = math.floor(shift)
    fraction = shift - low
    distance = shift_distance(image, low)
    if fraction == 0:
        return distance
    return (1 - fraction) * distance + fraction * shift_distance(image, low + 1)


def unrelated_distance(image: np.ndarray) -> float:
    """RMS distance between two unrelated images with the colour statistics of ``image``; numpy.

    ``image``: (H, W, C). ``sqrt(2 * mean over channels of the variance)``: what
    ``shift_distance`` tends to when the shift is much larger than the texture's
    features. Frames asked to be further apart than this can only get there by
    adding noise that the style loss does not see.
    """
    image = np.asarray(image, dtype=np.float64)
    return float(np.sqrt(2 * np.mean(np.var(image, axis=(0, 1)))))


def unreachable_targets(target: float, unrelated: float, count: int, order: int) -> list[str]:
    """Why the distances asked for cannot all be met, one message per reason (empty: they can).

    ``target``: ``target_distance``; ``unrelated``: ``unrelated_distance`` of the same source.
    """
    reasons = []
    if order * target > unrelated:
        reasons.append(
            f"frames {order} apart are asked to be {order * target:.4g} apart, more than unrelated images of "
            f"this texture ({unrelated:.4g}); the frames can only get there with added noise: lower --if-shift "
            f"or --if-order")
    if 2 * order > count:
        # in a loop of N frames, frames k and N - k apart are the same pairs, held at two distances
        reasons.append(
            f"--if-order {order} with --count {count} asks frames k and {count} - k apart for different "
            f"distances; the frames settle in between (--if-order {count // 2} or less avoids this)")
    return reasons


def measured_distances(x: np.ndarray, order: int) -> list[list[float]]:
    """``d_k(i)`` of finished frames (N, H, W, C) for k = 1..order: ``order`` lists of N floats."""
    from keras import ops

    import autodiff

    distances = autodiff.compile(lambda f: ops.stack([frame_distances(f, k) for k in range(1, order + 1)]))
    return autodiff.to_numpy(distances(autodiff.to_device(x))).astype(float).tolist()  # one program


def save_animation(path: Path, frames: np.ndarray, frame_ms: int = FRAME_MS) -> None:
    """Write RGB uint8 frames (N, H, W, 3) as a looping animated PNG, atomically.

    APNG rather than GIF: lossless and full colour (GIF would dither the
    texture to 256 colours), and every current browser plays it.
    """
    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames]
    atomic_write(path, lambda f: images[0].save(
        f, format="PNG", save_all=True, append_images=images[1:], duration=frame_ms, loop=0))
