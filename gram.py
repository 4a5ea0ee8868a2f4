"""Gram matrices of VGG features at every pyramid level, texture targets, and the loss.

A texture is described by one Gram matrix per (pyramid level, layer) pair,
level-major: [level 0 layer a, level 0 layer b, level 1 layer a, ...].
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from pyramid import gaussian_pyramid

JOIN_MODES = ("average", "max")


def gram_matrix(features, positions: int | None = None):
    """Gram matrix of feature maps: (N, h, w, c) -> (N, c, c), ``F^T F / positions / c``.

    ``positions``: the pixel count the sum is normalised by, h * w (the whole
    map) unless given: a tile's share of a larger map's Gram matrix passes the
    map's, so that the shares of all tiles add up to the map's Gram matrix.
    """
    from keras import ops

    _, h, w, c = features.shape
    flat = ops.reshape(features, (-1, h * w, c))
    return ops.matmul(ops.transpose(flat, (0, 2, 1)), flat) / float((positions or h * w) * c)


def multiscale_features(images, extractor: Callable, octaves: int, padding: str) -> list:
    """Feature maps of every (level, layer), level-major, for caffe-space images (N, H, W, 3).

    ``extractor`` maps (N, h, w, 3) to a list of feature maps, one per layer.
    Returns a list of ``octaves * layers`` tensors of shape (N, h_l, w_l, c_l).
    """
    return level_features(gaussian_pyramid(images, octaves, padding), extractor)


def level_features(levels: Sequence, extractor: Callable) -> list:
    """Feature maps of every (level, layer), level-major, for pyramid levels already made."""
    features = []
    for level in levels:
        features += _as_list(extractor(level))
    return features


def level_grams(levels: Sequence, extractor: Callable) -> list:
    """Gram matrices of every (level, layer), level-major, for pyramid levels already made: tensors (N, c, c)."""
    return [gram_matrix(f) for f in level_features(levels, extractor)]


def multiscale_grams(images, extractor: Callable, octaves: int, padding: str) -> list:
    """Gram matrices of every (level, layer), level-major: ``octaves * layers`` tensors (N, c, c)."""
    return level_grams(gaussian_pyramid(images, octaves, padding), extractor)


def _as_list(outputs) -> list:
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def source_targets(
    sources: Sequence[np.ndarray], extractor: Callable, octaves: int, padding: str, join_mode: str,
    mul: float = 1.0,
) -> list[np.ndarray]:
    """Target Gram matrices from caffe-space source images (each (H, W, 3), sizes may differ).

    Each source gives one Gram matrix per (level, layer); several sources are
    joined per matrix by ``join_mode`` (``average``: elementwise mean, ``max``:
    elementwise maximum), then multiplied by ``mul``. Returns (c, c) float32 arrays.
    """
    grams_of = grams_program(extractor, octaves, padding)
    return join_grams([grams_of(image) for image in sources], join_mode, mul)


def grams_program(extractor: Callable, octaves: int, padding: str) -> Callable:
    """A caffe-space image (H, W, 3), numpy -> its (c, c) Gram matrices of every (level, layer),
    numpy, level-major; compiled once per image shape, for any number of images."""
    import autodiff

    compiled = autodiff.compile(lambda image: multiscale_grams(image, extractor, octaves, padding))
    return lambda image: [autodiff.to_numpy(g)[0] for g in compiled(autodiff.to_device(image[None]))]


def join_grams(per_source: Sequence[Sequence[np.ndarray]], join_mode: str, mul: float = 1.0) -> list[np.ndarray]:
    """Targets from each source's (c, c) Gram matrices (one list per source, level-major): joined
    per matrix by ``join_mode``, times ``mul``; float32."""
    if join_mode not in JOIN_MODES:
        raise ValueError(f"unknown join mode {join_mode!r}")
    join = np.mean if join_mode == "average" else np.max
    return [(join(np.stack(grams), axis=0) * mul).astype(np.float32) for grams in zip(*per_source, strict=True)]


def style_terms(grams: Sequence, targets: Sequence) -> list:
    """One loss term per (level, layer): ``sum over frames, i, j of (G_ij - T_ij)^2``.

    ``grams``: list of (N, c, c); ``targets``: matching list of (c, c). Returns scalars.
    """
    from keras import ops

    return [ops.sum(ops.square(gram - target)) for gram, target in zip(grams, targets, strict=True)]


def term_weights(octave_weights: Sequence[float], layer_weights: Sequence[float]) -> list[float]:
    """Weight of each (level, layer) term, level-major: ``octave_weights[l] * layer_weights[k]``."""
    return [float(w_o) * float(w_l) for w_o in octave_weights for w_l in layer_weights]


def style_loss(grams: Sequence, targets: Sequence):
    """The unweighted texture loss, a scalar: the sum of ``style_terms``."""
    return loss_per_level(grams, targets, [1.0] * len(grams), 1)[0]


def weighted_sum(weights: Sequence[float], terms: Sequence):
    """``sum of w * t`` over the terms whose weight is not 0 (scalars: tensors or floats; 0 if none):
    a term of weight 0 (left out for too few positions, or weighted so) takes no part, not even as
    0 x inf = NaN in the loss or its gradient."""
    return sum((w * t for w, t in zip(weights, terms, strict=True) if w), 0.0)


def loss_per_level(grams: Sequence, targets: Sequence, weights: Sequence[float], levels: int):
    """The weighted loss split by pyramid level: (total scalar, (levels,) tensor)."""
    from keras import ops

    terms = style_terms(grams, targets)
    per_level = ops.stack([ops.convert_to_tensor(weighted_sum(w, t), "float32")
                           for w, t in zip(_chunks(list(weights), levels), _chunks(terms, levels), strict=True)])
    return ops.sum(per_level), per_level


def _chunks(items: list, parts: int) -> list[list]:
    size, rest = divmod(len(items), parts)
    if rest:
        raise ValueError(f"{len(items)} terms do not split into {parts} levels")
    return [items[i * size:(i + 1) * size] for i in range(parts)]
