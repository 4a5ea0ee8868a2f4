"""--tile: circular padding wraps exactly, sizes that wrap, the seam metric, and small real runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

import synthesize
from conftest import REPO
from images import load_rgb, repeat_2x2
from outputs import run_dir_name, tiled_preview_file
from pyramid import gaussian_pyramid
from quality import seam_ratio
from synthesize import main, nearest_multiples, tile_multiple
from vgg16 import build_extractor, pools_through

LAYERS = ["block1_conv1", "block1_pool", "block2_conv2", "block2_pool", "block3_conv2"]


def _roll(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Roll (N, H, W, C) circularly by dy rows and dx columns."""
    return np.roll(x, (dy, dx), axis=(1, 2))


def _caffe_noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Random caffe-space images (1, H, W, 3), float32, with pixel-like contrast."""
    rng = np.random.default_rng(seed)
    return (40 * rng.standard_normal((1, height, width, 3))).astype(np.float32)


# ---------------------------------------------------------------- circular padding is exact


def test_network_output_of_a_rolled_image_is_the_rolled_output(vgg19):
    # a layer after p poolings sees a roll of (dy, dx) as a roll of (dy / 2^p, dx / 2^p)
    x = _caffe_noise(32, 48)
    dy, dx = 8, -12  # multiples of 2^2, the most poolings among LAYERS
    model = build_extractor("vgg19", vgg19.weights, LAYERS, "circular")
    plain = [np.asarray(f) for f in model(x)]
    rolled = [np.asarray(f) for f in model(_roll(x, dy, dx))]
    for name, a, b in zip(LAYERS, plain, rolled, strict=True):
        scale = 2 ** pools_through("vgg19", name)
        np.testing.assert_allclose(b, _roll(a, dy // scale, dx // scale), rtol=1e-4,
                                   atol=1e-4 * float(np.abs(a).max()), err_msg=name)


def test_circular_layers_are_the_zero_padded_ones_where_no_padding_is_seen(vgg19):
    # away from the edges, where no window reaches the padding, every layer must equal the zero-padded
    # ("same") network's; with the roll test above (every position is away from the edges in some roll)
    # that is exactness
    from vgg16 import layer_names, receptive_fields

    x = _caffe_noise(64, 48, seed=2)
    wrapped = [np.asarray(f) for f in build_extractor("vgg19", vgg19.weights, LAYERS, "circular")(x)]
    zeros = [np.asarray(f) for f in build_extractor("vgg19", vgg19.weights, LAYERS, "same")(x)]
    fields = dict(zip(layer_names("vgg19"), receptive_fields("vgg19", "block3_conv2", "same")))
    for name, a, b in zip(LAYERS, wrapped, zeros, strict=True):
        assert a.shape == b.shape, name
        stride, first, last = fields[name]
        inner = [slice(-(first // stride) + 1, (n - 1 - last) // stride) for n in (64, 48)]  # whole windows inside
        assert inner[0].stop - inner[0].start >= 2, name
        np.testing.assert_allclose(a[:, inner[0], inner[1]], b[:, inner[0], inner[1]], rtol=1e-4,
                                   atol=1e-4 * float(np.abs(b).max()), err_msg=name)
        assert np.abs(a - b).max() > 1e-3 * np.abs(b).max(), name  # and not near the edges


def test_other_padding_modes_are_not_periodic(vgg19):
    # the control: with reflect padding the same check fails near the borders
    x = _caffe_noise(32, 48)
    model = build_extractor("vgg19", vgg19.weights, ["block1_conv2"], "reflect")
    a, b = np.asarray(model(x)), np.asarray(model(_roll(x, 8, 12)))
    assert np.abs(b - _roll(a, 8, 12)).max() > 0.01 * np.abs(a).max()


def test_pyramid_levels_of_a_rolled_image_are_rolled_levels():
    x = _caffe_noise(32, 48, seed=1)
    dy, dx = 12, 8  # multiples of 2^2, for the 3rd level
    plain = gaussian_pyramid(x, 3, "circular")
    rolled = gaussian_pyramid(_roll(x, dy, dx), 3, "circular")
    for level, (a, b) in enumerate(zip(plain, rolled, strict=True)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == (1, 32 >> level, 48 >> level, 3)
        np.testing.assert_allclose(b, _roll(a, dy >> level, dx >> level), atol=1e-3, err_msg=f"level {level}")


# ---------------------------------------------------------------- sizes that wrap


def test_tile_multiple_closed_form():
    assert tile_multiple("vgg19", "block3_conv2", 4) == 2 ** (3 + 2)  # defaults: 32
    assert tile_multiple("vgg19", "block1_pool", 1) == 2  # a pool still halves
    assert tile_multiple("vgg19", "block1_conv2", 1) == 1  # convs wrap at any size
    # layer 9 is pool3 in VGG16 but conv3_4 in VGG19
    assert tile_multiple("vgg16", "block3_pool", 2) == 16 and tile_multiple("vgg19", "block3_conv4", 2) == 8


def test_nearest_multiples():
    assert nearest_multiples(100, 8) == [96, 104]
    assert nearest_multiples(5, 8) == [8]


@pytest.mark.parametrize("extra, message", [
    (["-ow", "100", "-o", "2"], "--output-width 100: --tile needs a multiple of 8"),
    (["-ow", "100", "-o", "2"], "nearest that work: 96 or 104"),
    (["-ow", "96", "-oh", "90", "-o", "2"], "--output-height 90: --tile needs a multiple of 8"),
    (["-ow", "100"], "multiple of 32"),  # default --octaves 4
    (["-ow", "40", "-o", "2", "-l", "9"], "poolings down to block3_pool of vgg16"),  # auto may pick vgg16
    (["-ow", "64", "--margin", "5"], "--margin 5 cannot be combined with --tile"),
])
def test_tile_usage_errors_exit_2(extra, message, capsys, tmp_path):
    assert main(["-s", "x.png", "--tile", *extra, "--output-dir", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_tile_forces_margin_0_and_keeps_the_padding_mode_for_targets():
    args = synthesize.parse_args(["-s", "x.png", "--tile", "-ow", "64"])
    assert args.margin == 0 and args.padding_mode == "valid"
    assert synthesize.parse_args(["-s", "x.png", "--tile", "-ow", "64", "--margin", "0"]).margin == 0
    help_text = synthesize.make_parser().format_help()
    assert "--tile" in help_text and "Replaces --padding-mode" in help_text


def test_file_and_directory_names():
    assert tiled_preview_file(0, 1) == "tiled_preview.png"
    assert tiled_preview_file(1, 3) == "tiled_preview_F0001.png"
    assert run_dir_name("out", [2, 7], 4, 256, 256, tile=True) == "out.L2,7.o4.tile.256x256"
    assert repeat_2x2(np.arange(6).reshape(1, 2, 3)).shape == (2, 4, 3)


# ---------------------------------------------------------------- the seam metric


def test_seam_ratio_closed_form():
    # a horizontal ramp 0..3 on 4x4: inside, half the steps are 1 (mean 0.5); across the seams,
    # the column seam jumps by 3 and the row seam by 0 (mean 1.5): ratio 3
    ramp = np.repeat(np.tile(np.arange(4.0), (4, 1))[..., None], 3, axis=2)
    assert seam_ratio(ramp) == pytest.approx(3.0)
    # i.i.d. noise: a seam step is like any other step
    noise = np.random.default_rng(0).uniform(0, 255, (256, 256, 3))
    assert seam_ratio(noise) == pytest.approx(1.0, abs=0.05)


def _small_run(out, *flags: str, count: int = 1, max_iter: int = 60) -> tuple[dict, object]:
    argv = ["-s", str(REPO / "examples" / "brick.png"), "-sw", "256", "-ow", "64", "-o", "2", "-m",
            str(max_iter), "-n", "1000", "--network", "vgg19", "--random-seed", "3", "--output-dir", str(out),
            "-c", str(count), "--if-order", "1", *flags]
    assert main(argv) == 0
    run_dir = next(out.iterdir())
    return json.loads((run_dir / "run.json").read_text()), run_dir


def test_real_run_with_tile_has_no_seam(tmp_path):
    # Measured on this machine (brick, 64 px, 60 iterations): 0.95 with --tile, 1.53 without (8 px margin then).
    record, run_dir = _small_run(tmp_path / "tile", "--tile")
    assert record["final_loss"] < 0.01 * record["initial_loss"]  # a texture, not the starting noise
    final = load_rgb(run_dir / "final_F0000.png")
    with_tile = seam_ratio(final)
    assert with_tile < 1.3
    assert record["seam_ratios"] == [pytest.approx(with_tile, abs=1e-4)]
    preview = load_rgb(run_dir / "tiled_preview.png")
    assert preview.shape == (128, 128, 3)
    np.testing.assert_array_equal(preview[64:, 64:], final)
    assert run_dir.name.endswith(".tile.64x64")

    record, run_dir = _small_run(tmp_path / "plain")
    without = seam_ratio(load_rgb(run_dir / "final_F0000.png"))
    print(f"seam ratio with --tile {with_tile:.3f}, without {without:.3f}")
    assert np.isfinite(without) and "seam_ratios" not in record
    assert not (run_dir / "tiled_preview.png").exists()


def test_every_frame_gets_a_preview(tmp_path):
    record, run_dir = _small_run(tmp_path, "--tile", count=2, max_iter=3)
    assert len(record["seam_ratios"]) == 2
    for frame in (0, 1):
        assert load_rgb(run_dir / f"tiled_preview_F{frame:04d}.png").shape == (128, 128, 3)
    assert not (run_dir / "tiled_preview.png").exists()
