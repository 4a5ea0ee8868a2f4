"""Boundary conditions shared by the network's convolutions and the pyramid's reduction.

- ``valid``: no padding; every 3x3 conv loses one pixel per side, every 5-tap
  reduction two, so borders are never made up but each level shrinks.
- ``same``: zero padding (in caffe space: the ImageNet mean colour); sizes kept.
- ``reflect``: mirror padding without repeating the edge pixel; sizes kept, and
  border pixels take part in as many filter windows as inner ones, with no
  artificial edge for the loss to see.
- ``circular``: wrap-around padding, for periodic (tileable) images.
"""

from __future__ import annotations

PADDING_MODES = ("valid", "same", "reflect")  # the --padding-mode choices
EXPLICIT_MODES = ("reflect", "circular")  # padded by ``pad2d`` before an unpadded filter


def shrinks(mode: str) -> bool:
    """True when filters lose border pixels (``valid``), False when sizes are kept."""
    return mode == "valid"


def pad2d(images, amount: int, mode: str):
    """Pad (N, H, W, C) by ``amount`` pixels on every side: (N, H + 2a, W + 2a, C).

    ``mode`` is ``reflect`` or ``circular``.
    """
    from keras import ops

    if amount == 0:
        return images
    if mode == "reflect":
        return ops.pad(images, [[0, 0], [amount, amount], [amount, amount], [0, 0]], mode="reflect")
    if mode == "circular":
        rows = ops.concatenate([images[:, -amount:], images, images[:, :amount]], axis=1)
        return ops.concatenate([rows[:, :, -amount:], rows, rows[:, :, :amount]], axis=2)
    raise ValueError(f"pad2d does not pad in mode {mode!r}")


def filter_padding(mode: str) -> str:
    """The ``padding`` argument of a Keras/keras.ops filter in this mode (after ``pad2d``)."""
    if mode == "same":
        return "same"
    if mode == "valid" or mode in EXPLICIT_MODES:
        return "valid"
    raise ValueError(f"unknown padding mode {mode!r}")


def make_pad_layer(amount: int, mode: str, name: str):
    """A Keras layer applying ``pad2d(x, amount, mode)``."""
    import keras

    class Pad2D(keras.layers.Layer):
        def call(self, inputs):
            return pad2d(inputs, amount, mode)

        def compute_output_shape(self, shape):
            grow = lambda n: None if n is None else n + 2 * amount  # noqa: E731
            return (shape[0], grow(shape[1]), grow(shape[2]), shape[3])

    return Pad2D(name=name)
