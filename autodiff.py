"""The one backend-specific step: loss and gradient of a keras.ops function, compiled once.

Everything else (network, pyramid, Gram matrices, loss) is written with
keras.ops and runs on any Keras backend; differentiating it is not part of
keras.ops, so it lives here.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Callable

import numpy as np

from errors import SynthesisError

SUPPORTED_BACKENDS = ("tensorflow",)


@contextlib.contextmanager
def _native_stderr_captured():
    """Send what native code writes to file descriptor 2 into a temporary file.

    The captured text is replayed on stderr if the body raises, so nothing
    useful is lost; otherwise it is dropped.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            capture.seek(0)
            sys.stderr.write(capture.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def init_backend(verbose: bool = False) -> None:
    """Import Keras and start its backend, hiding TensorFlow's start-up log unless ``verbose``.

    TensorFlow logs device probing (CUDA, oneDNN) from native code before any
    log level applies; those lines are noise for a user of this tool.
    """
    context = contextlib.nullcontext() if verbose else _native_stderr_captured()
    with context:
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.list_physical_devices()


def backend_name() -> str:
    """The Keras backend in use (``KERAS_BACKEND``, tensorflow by default)."""
    import keras

    return keras.backend.backend()


def make_value_and_grad(loss_fn: Callable, shape: tuple[int, ...]) -> Callable:
    """Compile ``loss_fn`` with its gradient.

    ``loss_fn`` maps a float32 tensor of ``shape`` to ``(loss, aux)``: a scalar
    and a small tensor of extra values to report (e.g. the loss per octave).
    Returns ``f(x) -> (loss, grad, aux)`` taking a float32 numpy array of
    ``shape`` and giving a Python float, a float32 array of ``shape`` and aux
    as a numpy array. Traced once for the fixed shape, never retraced.
    """
    backend = backend_name()
    if backend != "tensorflow":
        raise SynthesisError(
            f"KERAS_BACKEND={backend} is not supported: the loss gradient is implemented for "
            f"{', '.join(SUPPORTED_BACKENDS)} only"
        )
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32)], jit_compile=False)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss, aux = loss_fn(x)
        return loss, tape.gradient(loss, x), aux

    def value_and_grad(x: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        loss, grad, aux = step(tf.constant(x, dtype=tf.float32))
        return float(loss.numpy()), grad.numpy(), aux.numpy()

    return value_and_grad


def make_deterministic(seed: int) -> None:
    """Seed the backend and ask it for deterministic kernels, so a run repeats bit for bit."""
    import keras

    keras.utils.set_random_seed(seed)
    if backend_name() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
