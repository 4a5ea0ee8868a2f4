"""Tiled loss and gradient (tiles.py) and the memory plan that chooses them (memory.py):
closed forms first, then tile by tile against the whole image with real VGG-19 weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

import autodiff
import memory
from animation import interframe_loss
from errors import UsageError
from gram import loss_per_level, multiscale_grams, source_targets
from optimize import Minimiser
from pyramid import level_sizes
from reporting import Reporter
from tiles import TiledLoss, balanced_tile, reach, tile_level
from vgg16 import build_extractor, preprocess, receptive_fields

from conftest import EXAMPLE

LAYERS = ["block1_pool", "block3_conv2"]  # the default --layers 2 7


def test_receptive_fields_closed_form():
    # conv1_1 sees a 3x3 neighbourhood; pool1 doubles the stride; valid convs start at their window
    assert receptive_fields("vgg19", "block1_pool", "same") == [(1, -1, 1), (1, -2, 2), (2, -2, 3)]
    assert receptive_fields("vgg19", "block3_conv2", "valid")[-1] == (4, 0, 31)
    assert receptive_fields("vgg19", "block3_conv2", "reflect")[-1] == (4, -14, 17)
    # halo rounded up to the deepest stride, 4 after two pools
    valid, same = reach("vgg19", LAYERS, "valid"), reach("vgg19", LAYERS, "same")
    assert (valid.before, valid.after, valid.align) == (0, 28, 4)  # 31 - 3, rounded up to 4
    assert (same.before, same.after, same.align) == (16, 16, 4)  # 14 and 17 - 3, rounded up


def test_balanced_tiles():
    assert balanced_tile(1000, 512, 4) == 500  # two tiles of 500, not 512 + 488
    assert balanced_tile(100, 512, 4) == 100
    assert balanced_tile(1030, 512, 4) == 344  # three of at most 344
    assert balanced_tile(1030, 512, 4) % 4 == 0


@pytest.mark.parametrize("padding", ["valid", "same", "reflect", "circular"])
@pytest.mark.parametrize("size,tile", [((96, 80), 32), ((101, 90), 36), ((64, 64), 64)])
def test_every_layer_pixel_is_owned_by_exactly_one_window(padding, size, tile):
    if padding == "circular":
        size = (96, 64)  # periodic sides are multiples of the deepest stride
    tiling = tile_level(*size, tile, "vgg19", LAYERS, padding)
    for k, (h, w) in enumerate(tiling.layer_sizes):
        count = np.zeros((h, w), int)
        for window in tiling.windows:
            r0, r1, c0, c1 = window.owned[k]
            assert 0 <= r0 <= r1 and 0 <= c0 <= c1
            # the window's layer grid starts at its start / the layer's stride in the global one
            scale = (2, 4)[k]  # block1_pool, block3_conv2
            top = (window.start[0] - tiling.extend[0][0]) // scale
            left = (window.start[1] - tiling.extend[1][0]) // scale
            count[top + r0:top + r1, left + c0:left + c1] += 1
        assert (count == 1).all(), (k, count)
    # valid and circular: one window shape per level (one compiled program)
    if padding in ("valid", "circular"):
        assert len(tiling.shapes) == 1


@pytest.fixture(scope="module")
def example_targets(vgg19, example_rgb):
    def targets(padding, octaves):
        extractor = build_extractor("vgg19", vgg19.weights, LAYERS, padding)
        return source_targets([preprocess(example_rgb[:128, :128])], extractor, octaves, padding, "average")
    return targets


def whole_and_tiled(vgg19, targets, padding, shape, tile, frames_weight=0.0, octaves=2, colour=None):
    """(whole-image loss, gradient, per-level) and the same tile by tile (every level larger than a
    tile tiled), at one random image. ``colour``: (weight, a source image) of a colour term."""
    from colour import colour_targets as make_colour_targets, colour_term
    from pyramid import gaussian_pyramid, source_pyramids

    extractor = build_extractor("vgg19", vgg19.weights, LAYERS, padding)
    weights = [1.0, 0.5] * octaves
    device_targets = [autodiff.to_device(t) for t in targets]
    inter = (lambda x: frames_weight * interframe_loss(x, 20.0, 1)) if frames_weight else None
    sizes = level_sizes(shape[1], shape[2], octaves, padding)
    colour_targets = colour and make_colour_targets(source_pyramids([preprocess(colour[1])], octaves, "reflect"),
                                                    sizes)

    def loss_fn(x):
        total, per_level = loss_per_level(multiscale_grams(x, extractor, octaves, padding), device_targets,
                                          weights, octaves)
        if colour:
            total = total + colour_term(gaussian_pyramid(x, octaves, padding), colour_targets, colour[0])
        return (total + inter(x) if inter else total), per_level

    x = preprocess(np.random.default_rng(1).uniform(30, 220, shape)).astype(np.float32)
    whole = Minimiser(loss_fn, shape).evaluate(x)
    tilings = [None if max(h, w) <= tile else tile_level(h, w, tile, "vgg19", LAYERS, padding) for h, w in sizes]
    assert tilings[0] is not None and len(tilings[0].windows) > 1
    tiled = TiledLoss(extractor, "vgg19", LAYERS, padding, octaves, tilings, targets, weights, shape[0], inter,
                      colour=colour and (colour[0], colour_targets))
    loss, grad, per_level = tiled(autodiff.to_device(x))
    return whole, (loss, autodiff.to_numpy(grad), per_level)


def assert_close(whole, tiled):
    (loss, grad, per_level), (t_loss, t_grad, t_per_level) = whole, tiled
    assert abs(t_loss - loss) <= 1e-4 * loss, (t_loss, loss)
    assert np.abs(t_grad - grad).max() <= 1e-4 * np.abs(grad).max()
    np.testing.assert_allclose(t_per_level, per_level, rtol=1e-4)


@pytest.mark.parametrize("padding,size,tile", [
    ("valid", (96, 80), 32),      # tiles that do not divide the image, zero-extended windows
    ("valid", (90, 101), 24),
    ("same", (96, 80), 32),       # windows at the edges end there and pad as the whole image
    ("reflect", (100, 90), 36),
    ("reflect", (96, 96), 48),    # every level tiled (48 px level 1 in two tiles)
    ("circular", (96, 64), 32),   # --tile: windows wrap around
])
def test_tiled_loss_and_gradient_equal_the_whole_image(vgg19, example_targets, padding, size, tile):
    targets = example_targets("reflect" if padding == "circular" else padding, 2)
    assert_close(*whole_and_tiled(vgg19, targets, padding, (1, *size, 3), tile))


@pytest.mark.parametrize("padding,size,tile", [("valid", (96, 80), 32), ("circular", (96, 64), 32)])
def test_tiled_with_the_colour_term(vgg19, example_targets, padding, size, tile):
    # the colour term is computed on each level whole, without what the windows' extension adds;
    # a colour photo, so that the sorting matters (a grey one's quantiles are all alike)
    from images import load_rgb

    targets = example_targets("reflect" if padding == "circular" else padding, 2)
    colour_source = load_rgb(EXAMPLE.parent / "ihc.png")[:160, :160]
    assert_close(*whole_and_tiled(vgg19, targets, padding, (2, *size, 3), tile, colour=(5.0, colour_source)))


def test_tiled_with_two_frames_and_the_interframe_loss(vgg19, example_targets):
    targets = example_targets("reflect", 2)
    assert_close(*whole_and_tiled(vgg19, targets, "reflect", (2, 88, 72, 3), 40, frames_weight=0.7))


def test_tiled_source_grams_equal_the_whole(vgg19, example_rgb):
    from synthesize import source_grams

    extractor = build_extractor("vgg19", vgg19.weights, LAYERS, "reflect")
    image = preprocess(example_rgb[:150, :120])
    whole = source_targets([image], extractor, 3, "reflect", "average")
    (tiled,) = source_grams([image], [memory.Plan((48, 48, None), 0, 0.0)], extractor, "vgg19", LAYERS, "reflect", 3)
    for w, t in zip(whole, tiled, strict=True):
        np.testing.assert_allclose(t, w, rtol=1e-4, atol=1e-6 * np.abs(w).max())


def test_memory_plan_whole_tiled_or_refused():
    sizes = level_sizes(528, 528, 4, "valid")
    whole = memory.plan("vgg19", LAYERS, "valid", sizes, 1, 24 * 2**30)
    assert whole.tiles is None and not whole.tiled and whole.pairs == 10
    assert 1.0 * 2**30 < whole.need < 2.5 * 2**30  # measured peak at 512 px: 1.3 GiB
    tiled = memory.plan("vgg19", LAYERS, "valid", sizes, 1, 1.2 * 2**30)
    assert tiled.tiled and tiled.tiles[0] < 528 and tiled.need <= 1.2 * 2**30
    assert tiled.tiles[-1] is None  # the 63 px level fits whole
    big = level_sizes(8208, 8208, 4, "valid")
    assert memory.plan("vgg19", LAYERS, "valid", big, 1, None).tiles is None  # memory unknown: whole
    with pytest.raises(UsageError, match=r"needs at least .* GiB of memory .* but 4\.00 GiB is available"):
        memory.plan("vgg19", LAYERS, "valid", big, 1, 4 * 2**30)
    # a measured image (a source, the benchmark's evaluation) has no optimiser's arrays: 8 GiB do
    with pytest.raises(UsageError):
        memory.plan("vgg19", LAYERS, "valid", big, 1, 8 * 2**30)
    measured = memory.plan("vgg19", LAYERS, "valid", big, 1, 8 * 2**30, optimised=False)
    assert measured.tiled and measured.tiles[0] >= 512 and measured.need <= 8 * 2**30


def test_levels_that_fit_one_at_a_time_but_not_together_are_done_level_by_level(vgg19, example_targets):
    # a budget just below the whole image's need: every level fits whole, not all at once
    sizes = level_sizes(528, 528, 4, "valid")
    need = memory.plan("vgg19", LAYERS, "valid", sizes, 1, None).need
    tight = memory.plan("vgg19", LAYERS, "valid", sizes, 1, need - 2**20)
    assert tight.tiled and tight.tiles == (None, None, None, None) and tight.need <= need - 2**20
    # and such a plan computes the same loss, one level at a time
    targets = example_targets("valid", 2)
    extractor = build_extractor("vgg19", vgg19.weights, LAYERS, "valid")
    x = preprocess(np.random.default_rng(3).uniform(30, 220, (1, 80, 80, 3))).astype(np.float32)
    device_targets = [autodiff.to_device(t) for t in targets]
    whole = Minimiser(lambda x: loss_per_level(multiscale_grams(x, extractor, 2, "valid"), device_targets,
                                               [1.0] * 4, 2), x.shape).evaluate(x)
    by_level = TiledLoss(extractor, "vgg19", LAYERS, "valid", 2, [None, None], targets, [1.0] * 4, 1)
    loss, grad, per_level = by_level(autodiff.to_device(x))
    assert_close(whole, (loss, autodiff.to_numpy(grad), per_level))


def test_parse_size():
    assert memory.parse_size("4G") == 4 * 2**30
    assert memory.parse_size("512m") == 512 * 2**20
    assert memory.parse_size("1.5GiB") == 1.5 * 2**30
    for bad in ("4", "G", "-1G", "4X", ""):
        with pytest.raises(ValueError):
            memory.parse_size(bad)


def small_budget(megabytes: float) -> str:
    """A --max-memory this many MiB above what the process itself is estimated to take."""
    return f"{memory.BASE_MEMORY / 2**20 + megabytes:.0f}M"


def test_cli_tiles_when_memory_is_short_and_gets_the_same_run(tmp_path, capsys):
    from synthesize import main

    # the default coarse-to-fine schedule: the coarse stage whole, the full-size stage (and the
    # starting loss) in tiles
    argv = ["-s", str(EXAMPLE), "-sw", "160", "-ow", "96", "-o", "2", "-m", "6", "--network", "vgg19",
            "--random-seed", "2"]
    assert main([*argv, "-q", "--output-dir", str(tmp_path / "whole")]) == 0
    assert main([*argv, "--max-memory", small_budget(12), "--output-dir", str(tmp_path / "tiled")]) == 0
    err = capsys.readouterr().err
    assert "computing the loss level by level (level 0 in" in err
    whole, tiled = (json.loads(next((tmp_path / name).iterdir()).joinpath("run.json").read_text())
                    for name in ("whole", "tiled"))
    assert whole["memory"]["plans"][0]["tiles"] is None
    assert tiled["memory"]["plans"][0]["tiles"][0] < 112 and "--max-memory" in tiled["memory"]["budget_of"]
    assert [stage["level"] for stage in tiled["stages"]] == [1, 0]
    assert tiled["evaluations"] == whole["evaluations"]
    np.testing.assert_allclose(tiled["loss_history"], whole["loss_history"], rtol=1e-4)


@pytest.mark.parametrize("value", ["4", "lots", "0.5K"])
def test_bad_max_memory_is_one_line(value, tmp_path, capsys):
    from synthesize import main

    status = main(["-s", str(EXAMPLE), "--max-memory", value, "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and f"--max-memory {value}" in err[-1] and not (tmp_path / "o").exists()


def test_too_little_memory_even_for_one_tile_is_refused(tmp_path, capsys):
    from synthesize import main

    status = main(["-s", str(EXAMPLE), "-ow", "4096", "--max-memory", "1G", "--network", "vgg19",
                   "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "--max-memory 1G" in err[0] and "smallest tile" in err[0]
    assert not (tmp_path / "o").exists()
    # a source too large for the memory even in tiles is named as such
    status = main(["-s", str(EXAMPLE), "-ss", "8", "-ow", "64", "-p", "reflect", "--max-memory", "1G",
                   "--network", "vgg19", "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and f"--source {EXAMPLE} needs at least" in err[0], err
    assert "--source-width" in err[0] and not (tmp_path / "o").exists()


def test_progress_moves_within_an_evaluation(monkeypatch):
    import io

    import reporting

    clock = [100.0]
    monkeypatch.setattr(reporting.time, "monotonic", lambda: clock[0])
    stream = io.StringIO()
    reporter = Reporter(stream=stream)
    reporter.start(10, 0, "synthesising")
    clock[0] += 5
    reporter.partial(0.25)  # the first tiles of the first evaluation, 5 s in: said at once
    clock[0] += 5
    reporter.partial(0.5)  # within 30 s of the last line: quiet
    lines = stream.getvalue().splitlines()
    assert lines[-1].startswith("iteration 1/10: evaluation 25% done") and "left" in lines[-1]
    assert len(lines) == 2
    # 20 s per evaluation: 15 s for this one, 9 more iterations of 20 s
    assert "3 min 15 s left" in lines[-1]


def test_window_gradients_land_on_the_level_through_the_extension():
    from tiles import _runs

    # a window from 3 pixels before a 5-pixel level to 7 inside: wrapped around (circular) it
    # covers pixels 2, 3, 4, then 0..4, then 0, 1; valid's zero extension is dropped
    assert _runs(-3, 10, 5, wrap=True) == [(0, 2, 3), (3, 0, 5), (8, 0, 2)]
    assert _runs(-3, 10, 5, wrap=False) == [(3, 0, 5)]
    assert _runs(2, 4, 5, wrap=False) == [(0, 2, 3)]
