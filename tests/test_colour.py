"""The colour term: closed forms of its pieces, then what it does to a real run's colours."""

import json

import numpy as np
import pytest

import autodiff
from colour import (BIN_STEP, GAMUT_MARGIN, GAMUT_SPACING, GAMUT_WEIGHT, bin_bounds, bin_offsets, binned_quantiles,
                    colour_axes, colour_loss, colour_targets, colour_term, gamut_distance, gamut_distances, gamut_loss,
                    quantiles, sample_positions)
from vgg16 import CAFFE_MEAN_BGR


def test_directions_span_the_minor_principal_axes():
    rng = np.random.default_rng(0)
    grey = rng.uniform(0, 255, (500, 1)) * np.ones((1, 3)) + rng.normal(0, [1, 2, 0.5], (500, 3))  # along (1,1,1)
    lightness, d = colour_axes(grey)
    assert d.shape == (4, 3)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(d[:2] @ d[:2].T, np.eye(2), atol=1e-6)
    np.testing.assert_allclose(d @ np.ones(3) / np.sqrt(3), 0, atol=0.01)  # the major axis (lightness) left out
    np.testing.assert_allclose(d[2], (d[0] + d[1]) / np.sqrt(2), atol=1e-6)
    np.testing.assert_allclose(d[3], (d[0] - d[1]) / np.sqrt(2), atol=1e-6)


def test_quantiles():
    values = np.array([[3.0], [1.0], [2.0], [4.0]])
    np.testing.assert_allclose(quantiles(values, 4)[:, 0], [1, 2, 3, 4])  # n = m: the sorted samples
    np.testing.assert_allclose(quantiles(values, 2)[:, 0], [1.5, 3.5])  # the middle of each half
    np.testing.assert_allclose(quantiles(np.arange(1000.0)[:, None], 10)[:, 0], np.arange(50, 1000, 100) - 0.5)


def test_ranking_axis_and_bins():
    rng = np.random.default_rng(0)
    grey = rng.uniform(0, 255, (500, 1)) * np.ones((1, 3)) + rng.normal(0, [1, 2, 0.5], (500, 3))
    lightness, directions = colour_axes(grey)
    np.testing.assert_allclose(lightness, np.ones(3) / np.sqrt(3), atol=0.01)  # signed: lighter is larger
    np.testing.assert_allclose(colour_axes(-grey)[0], lightness, atol=1e-6)
    np.testing.assert_allclose(lightness @ directions.T, 0, atol=1e-6)
    np.testing.assert_array_equal(bin_bounds(640), [0, 10, 20, 40, 80, 160, 320, 480, 560, 600, 620, 630, 640])
    np.testing.assert_array_equal(bin_bounds(5), [0, 0, 0, 0, 1, 1, 2, 4, 4, 5, 5, 5, 5])  # tiny: empty bins
    np.testing.assert_array_equal(bin_offsets(np.array([0, 2, 2, 5])), np.array([0, 0, 2, 2, 2]) * BIN_STEP)


def test_binned_quantiles_keep_each_lightness_bins_own_colours():
    # the darker half grey, the lighter half tinted one way or the other: the lighter bins get the
    # tints, the darker ones none, each bin's quantiles as many as its share of n
    light = np.linspace(0, 200, 400)[:, None] * np.ones((1, 3))
    tint = np.where(np.arange(400) >= 200, np.where(np.arange(400) % 2, 10.0, -10.0), 0.0)
    pixels = light + tint[:, None] * np.array([1.0, -1.0, 0.0]) / np.sqrt(2)
    lightness, directions = colour_axes(pixels)
    bounds = bin_bounds(80)
    table = binned_quantiles(pixels, lightness, directions, bounds)
    assert table.shape == (80, 4)
    np.testing.assert_allclose(table[:40], 0, atol=0.1)  # the darker half's bins: grey (PCA tilts a little)
    assert np.abs(table[40:]).max() > 9  # the lighter half's: tinted, both ways
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        assert np.all(np.diff(table[lo:hi], axis=0) >= 0)  # each bin sorted on its own
    assert binned_quantiles(pixels[::80], lightness, directions, bin_bounds(640)).shape == (640, 4)  # 5 pixels


def test_sample_positions(monkeypatch):
    import colour

    assert sample_positions(64, 64) is None
    monkeypatch.setattr(colour, "SAMPLE_PIXELS", 100)
    positions = sample_positions(30, 40, seed=3)
    assert len(positions) == 100 == len(np.unique(positions)) and np.all(np.diff(positions) > 0)
    assert positions.max() < 1200 and positions.dtype == np.int32
    np.testing.assert_array_equal(positions, sample_positions(30, 40, seed=3))  # fixed for a run


def _loss_and_gradient(image, target):
    from keras import ops

    evaluate = autodiff.compile(autodiff.value_and_grad(lambda x: (colour_loss(x, target), ops.zeros((1,)))))
    loss, grad, _ = evaluate(autodiff.to_device(image.astype(np.float32)))
    return float(loss), autodiff.to_numpy(grad)


def test_zero_for_the_sources_own_pixels_in_any_order_and_it_pulls_strange_colours_back():
    rng = np.random.default_rng(1)
    source = rng.uniform(-60, 60, (12, 10, 3)) * [1.0, 0.8, 0.2]  # little of the third channel
    target = colour_targets([[source]], [(12, 10)])[0]
    shuffled = rng.permutation(source.reshape(-1, 3)).reshape(1, 12, 10, 3)
    loss, _ = _loss_and_gradient(shuffled, target)
    assert loss == pytest.approx(0.0, abs=1e-9)
    strange = shuffled.copy()
    strange[0, 4, 5, 2] += 80.0  # one pixel with far more of the third channel than the source has
    loss, grad = _loss_and_gradient(strange, target)
    assert loss > 0
    assert grad[0, 4, 5, 2] > 0 and np.abs(grad[0, 4, 5, 2]) == np.abs(grad).max()  # descent pulls it back


def test_gamut_distances_on_the_grid_and_between_its_nodes():
    # one colour on a node (RGB 100 in every channel: node 25): the table is the exact distance
    # from every node, and a pixel between nodes reads it linearly along each axis
    grey = np.full((1, 3), 100.0) - CAFFE_MEAN_BGR
    table = gamut_distances(grey)
    assert table.shape == (65, 65, 65) and table[25, 25, 25] == 0.0
    nodes = np.stack(np.meshgrid(*[np.arange(65)] * 3, indexing="ij"), -1) * GAMUT_SPACING
    np.testing.assert_allclose(table, np.linalg.norm(nodes - 100.0, axis=-1), rtol=1e-6)
    pixels = np.array([[100.0, 100.0, 100.0], [112.0, 100.0, 100.0], [106.0, 100.0, 100.0],
                       [106.0, 106.0, 100.0], [0.0, 300.0, 100.0]]) - CAFFE_MEAN_BGR
    read = autodiff.to_numpy(autodiff.compile(lambda x: gamut_distance(x, table))(
        autodiff.to_device(pixels.reshape(1, 1, 5, 3).astype(np.float32))))
    # on nodes exact; halfway between 4 and 8 units off: 6; a corner of four nodes: their mean;
    # off the cube (300): its face (RGB 256)
    corner = np.mean([np.hypot(a, b) for a in (4.0, 8.0) for b in (4.0, 8.0)])
    np.testing.assert_allclose(read, [0.0, 12.0, 6.0, corner, np.hypot(100.0, 156.0 - 0.004)], rtol=1e-4)


def test_a_colour_off_the_sources_gamut_costs_and_is_pulled_to_the_nearest_one():
    from keras import ops

    rng = np.random.default_rng(4)
    source = rng.uniform(-40, 40, (12, 10, 1)) * np.ones(3)  # greys only
    target, coarser = colour_targets([[source, source[::2, ::2]]], [(12, 10), (6, 5)])
    np.testing.assert_allclose(target.gamut, gamut_distances(source), rtol=1e-6)
    assert coarser.gamut is None and gamut_loss(np.full((1, 6, 5, 3), 99.0, np.float32), coarser) == 0.0
    evaluate = autodiff.compile(autodiff.value_and_grad(lambda x: (gamut_loss(x, target), ops.zeros((1,)))))

    def loss_and_gradient(image):
        loss, grad, _ = evaluate(autodiff.to_device(image.astype(np.float32)))
        return float(loss), autodiff.to_numpy(grad)

    own = rng.permutation(source.reshape(-1, 3)).reshape(1, 12, 10, 3)
    assert loss_and_gradient(own)[0] == 0.0  # the sources' own colours, in any order
    tint = GAMUT_MARGIN - GAMUT_SPACING * np.sqrt(3) - 0.01  # the most a table read can be off (``gamut_distance``)
    near = own + np.array([1.0, -1.0, 0.0]) * tint / np.sqrt(2)
    assert tint > 2 and loss_and_gradient(near)[0] == 0.0  # tinted, but within the margin of a grey
    tinted = own.copy()
    tinted[0, 3, 4] += np.array([1.0, -1.0, 0.0]) * 30 / np.sqrt(2)  # one pixel 30 units off every grey
    loss, grad = loss_and_gradient(tinted)
    # its distance to the greys through the table: 30 (within the grid's rounding); mean over 120 pixels
    excess = 30.0 - GAMUT_MARGIN
    assert loss == pytest.approx(excess ** 2 / 120 * target.scale * GAMUT_WEIGHT, rel=0.3)
    assert np.count_nonzero(grad.reshape(-1, 3).any(axis=1)) == 1  # only that pixel is pulled
    assert np.dot(grad[0, 3, 4], [1.0, -1.0, 0.0]) > 0 and abs(grad[0, 3, 4].sum()) < 0.3 * np.abs(grad).max()
    # (descent takes the tint off, not its lightness) and colour_term adds it to the sorted term's
    image = autodiff.to_device(tinted.astype(np.float32))
    together = autodiff.compile(lambda x: colour_term([x], [target], 2.0))(image)
    sorted_term = autodiff.compile(lambda x: colour_loss(x, target))(image)
    assert float(autodiff.to_numpy(together)) == pytest.approx(2.0 * (float(autodiff.to_numpy(sorted_term)) + loss),
                                                               rel=1e-5)


def test_it_sees_which_colours_go_with_which_lightness():
    # the source's lightest quarter tinted either way, the rest grey; the image has the same
    # colours, as a set, but the tints on its darkest quarter: each chroma projection's
    # distribution alone is the source's (one bin for all pixels: a loss of 1e-6), while the term
    # compares each lightness bin with the source's and pulls the dark pixels back to grey
    import dataclasses

    rng = np.random.default_rng(3)
    light = np.sort(rng.uniform(-100, 100, 256))
    tint = np.where(np.arange(256) >= 192, np.where(np.arange(256) % 2, 20.0, -20.0), 0.0)
    axis = np.array([1.0, -1.0, 0.0]) / np.sqrt(2)
    source = (light[:, None] * np.ones((1, 3)) / np.sqrt(3) + tint[:, None] * axis).reshape(16, 16, 3)
    target = colour_targets([[source]], [(16, 16)])[0]
    own, _ = _loss_and_gradient(rng.permutation(source.reshape(-1, 3)).reshape(1, 16, 16, 3), target)
    assert own == pytest.approx(0.0, abs=1e-9)
    swapped = (light[:, None] * np.ones((1, 3)) / np.sqrt(3) + tint[::-1, None] * axis).reshape(1, 16, 16, 3)
    one_bin = dataclasses.replace(target, bounds=np.array([0, 256]), sorted=binned_quantiles(
        source.reshape(-1, 3), target.lightness, target.directions, np.array([0, 256])))
    assert _loss_and_gradient(swapped, one_bin)[0] < 1e-5
    loss, grad = _loss_and_gradient(swapped, target)
    assert loss > 0.03
    dark = slice(0, 64)
    assert np.all(np.sign(grad.reshape(256, 3)[dark] @ axis) == np.sign(tint[::-1][dark]))  # descent: to grey


def test_frames_are_ranked_each_on_its_own_and_add_up():
    # two frames in one call: the loss is the sum of each frame's alone and each frame's gradient
    # its own (every frame ranked among its own pixels, not the other's)
    rng = np.random.default_rng(5)
    source = rng.uniform(-60, 60, (12, 10, 3)) * [1.0, 0.6, 0.3]
    target = colour_targets([[source]], [(12, 10)])[0]
    frames = np.stack([rng.uniform(-60, 60, (12, 10, 3)), rng.uniform(-20, 90, (12, 10, 3))])
    both, grad = _loss_and_gradient(frames, target)
    alone = [_loss_and_gradient(frames[i:i + 1], target) for i in range(2)]
    assert both == pytest.approx(alone[0][0] + alone[1][0], rel=1e-5)
    for i in range(2):
        np.testing.assert_allclose(grad[i], alone[i][1][0], rtol=1e-4, atol=1e-9)


def test_a_source_of_other_size_compares_as_its_distribution():
    # m = 2n source pixels (each of the image's twice): the quantiles are the image's own, loss 0;
    # thinned to m < n (every other pixel of a smooth ramp): near 0
    rng = np.random.default_rng(6)
    image = rng.uniform(-50, 50, (1, 8, 8, 3)) * [1.0, 0.7, 0.4]
    twice = np.concatenate([image[0], image[0]], axis=1)  # (8, 16, 3)
    assert _loss_and_gradient(image, colour_targets([[twice]], [(8, 8)])[0])[0] == pytest.approx(0.0, abs=1e-9)
    ramp = np.linspace(-1, 1, 16 * 16)[:, None] * [40.0, 25.0, 10.0] + np.sin(np.arange(256))[:, None] * [0, 3, -3]
    thinned = colour_targets([[ramp[::2].reshape(8, 16, 3)]], [(16, 16)])[0]
    full = _loss_and_gradient(ramp.reshape(1, 16, 16, 3), colour_targets([[ramp.reshape(16, 16, 3)]], [(16, 16)])[0])
    assert full[0] == pytest.approx(0.0, abs=1e-9)
    assert _loss_and_gradient(ramp.reshape(1, 16, 16, 3), thinned)[0] < 0.05


def test_scale_makes_it_independent_of_the_sources_contrast():
    rng = np.random.default_rng(2)
    source, image = rng.normal(0, 10, (16, 16, 3)), rng.normal(3, 12, (1, 16, 16, 3))
    low = _loss_and_gradient(image, colour_targets([[source]], [(16, 16)])[0])[0]
    high = _loss_and_gradient(image * 4, colour_targets([[source * 4]], [(16, 16)])[0])[0]
    assert high == pytest.approx(low, rel=1e-4)


def test_sampled_levels_compare_the_sampled_pixels_only(monkeypatch):
    import colour

    monkeypatch.setattr(colour, "SAMPLE_PIXELS", 50)
    rng = np.random.default_rng(4)
    source = rng.uniform(0, 50, (10, 10, 3))
    target = colour_targets([[source]], [(10, 10)])[0]
    assert target.positions is not None and target.sorted.shape == (50, 4)
    image = rng.uniform(0, 50, (1, 10, 10, 3))
    unused = np.setdiff1d(np.arange(100), target.positions)
    _, grad = _loss_and_gradient(image, target)
    assert np.all(grad.reshape(100, 3)[unused] == 0) and np.any(grad != 0)


def test_a_real_run_keeps_the_sources_colours(tmp_path):
    # a grey source: with a strong colour term the result has next to no colour (chroma: how far a
    # pixel's channels are from their mean); with none, the original's loss alone, the total is the
    # Gram loss and colour creeps in (measured: 99th percentile chroma 12 against 2.7)
    from conftest import EXAMPLE
    from images import load_rgb
    from synthesize import main

    chroma = {}
    for weight in ("0", "10"):
        out = tmp_path / weight
        argv = ["-s", str(EXAMPLE), "-ow", "64", "-o", "2", "-p", "reflect", "--margin", "0", "-m", "30",
                "--network", "vgg19", "--random-seed", "2", "--colour-weight", weight, "--output-dir", str(out), "-q"]
        assert main(argv) == 0
        run_dir = next(out.iterdir())
        record = json.loads((run_dir / "run.json").read_text())
        rgb = load_rgb(run_dir / "final_F0000.png").astype(np.float64)
        chroma[weight] = np.percentile(np.abs(rgb - rgb.mean(axis=-1, keepdims=True)).max(axis=-1), 99)
        if weight == "0":
            assert record["final_gram_loss"] == pytest.approx(record["final_loss"], rel=1e-5)
        else:
            assert record["final_loss"] > record["final_gram_loss"]
    assert chroma["10"] < 0.5 * chroma["0"]


def test_the_result_keeps_to_the_sources_range_of_values_unless_told_otherwise(tmp_path):
    # A grey source of 90..160, light dots on a darker ground: by default (--pixel-range source) no pixel
    # of the result is darker or brighter than the source's; with --pixel-range full (0..255, the
    # original's) the sharp dots' Gram matrices pull pixels past both ends (measured: 66..222). The
    # colour term is left out: its gamut part pulls such pixels back too (80..168 with it).
    from PIL import Image

    from images import load_rgb
    from synthesize import main

    rows, cols = np.mgrid[:96, :96]
    grey = np.full((96, 96), 90, np.uint8)
    for y, x in np.random.default_rng(4).integers(0, 96, (40, 2)):
        grey[(rows - y) ** 2 + (cols - x) ** 2 < 9] = 160
    Image.fromarray(np.repeat(grey[..., None], 3, axis=-1)).save(tmp_path / "dots.png")
    ranges = {}
    for mode in ("source", "full"):
        out = tmp_path / mode
        argv = ["-s", str(tmp_path / "dots.png"), "-ow", "64", "-o", "2", "-p", "reflect", "-m", "20",
                "--network", "vgg19", "--random-seed", "2", "--pixel-range", mode, "--colour-weight", "0",
                "--output-dir", str(out), "-q"]
        assert main(argv) == 0
        run_dir = next(out.iterdir())
        assert json.loads((run_dir / "run.json").read_text())["args"]["pixel_range"] == mode
        rgb = load_rgb(run_dir / "final_F0000.png")
        ranges[mode] = (int(rgb.min()), int(rgb.max()))
    assert ranges["source"][0] >= 90 and ranges["source"][1] <= 160, ranges
    assert ranges["full"][0] < 80 and ranges["full"][1] > 170, ranges
