"""No dark, blurred frame: the border measurements, and small real runs with and without the fix."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import REPO
from images import load_rgb
from quality import border_distance, frame_ratios
from synthesize import main


def test_border_distance_closed_form():
    d = border_distance(5, 6)
    assert d[0].tolist() == [0] * 6 and d[2].tolist() == [0, 1, 2, 2, 1, 0]


def test_default_margin_is_the_deepest_layers_reach():
    from synthesize import MARGIN_CAP, default_margin

    # receptive fields: pool1 6 px, conv3_2 32 px (both networks); conv4_1 60 px (VGG16, 3 convs in
    # block 3) and 68 px (VGG19, 4 convs), whose half is capped; valid padding, whose pyramid eats 2 px
    # per side at each reduction, 2^octaves px more
    for network in ("vgg16", "vgg19"):
        for padding in ("reflect", "same"):
            assert default_margin(network, "block1_pool", padding, 4) == 3
            assert default_margin(network, "block3_conv2", padding, 4) == 16
        assert [default_margin(network, "block3_conv2", "valid", o) for o in (1, 2, 3, 4, 5)] == [18, 20, 24, 32, 48]
    assert default_margin("vgg16", "block4_conv1", "reflect", 4) == 30
    assert default_margin("vgg19", "block4_conv1", "reflect", 4) == MARGIN_CAP == 32
    assert default_margin("vgg19", "block4_conv1", "valid", 4) == MARGIN_CAP + 16


def test_every_level_keeps_at_least_the_padded_modes_margin_with_valid_padding():
    # the margin left at each level, in that level's pixels: where the level's first and last pixels
    # are centred, against the image's first pixel (first_centre: 2 with valid, 0 with reflect)
    from synthesize import default_margin

    for octaves in (2, 3, 4, 5):
        margins = {}
        for padding in ("valid", "reflect"):
            m = default_margin("vgg19", "block3_conv2", padding, octaves)
            left = float(m)
            kept = [left]
            for _ in range(octaves - 1):
                left = (left - (2 if padding == "valid" else 0)) / 2
                kept.append(left)
            margins[padding] = kept
        assert all(v >= r for v, r in zip(margins["valid"], margins["reflect"])), (octaves, margins)
    assert margins["reflect"][-1] == 1.0 and margins["valid"][-1] == 1.125  # 5 octaves: 16 / 16, 48 / 16 - 1.875


@pytest.mark.parametrize("padding", ["reflect", "same"])  # valid: in _run below
def test_every_padding_mode_gets_the_hidden_margin(tmp_path, padding):
    # padded modes too: their edge pixels are held less firmly as well (a streaky band, README Clean edges)
    argv = ["-s", str(REPO / "examples" / "gravel.png"), "-ow", "48", "-oh", "40", "-o", "2", "-m", "2",
            "-p", padding, "--canvas", "open", "--network", "vgg19", "--random-seed", "0", "-q", "--output-dir",
            str(tmp_path)]
    assert main(argv) == 0
    run_dir = next(tmp_path.iterdir())
    record = json.loads((run_dir / "run.json").read_text())
    assert record["args"]["margin"] == 16
    assert [s["size"] for s in record["stages"]] == [[36, 40], [72, 80]]  # the canvas: 40 + 32 by 48 + 32, halved
    assert load_rgb(run_dir / "final_F0000.png").shape == (40, 48, 3)


def test_canvas_side_closed_forms():
    from synthesize import canvas_side

    assert canvas_side(96, 20) == 136  # open: the margin on either side
    assert canvas_side(256, 16, 32) == 288 and canvas_side(300, 16, 32) == 352  # wrap: then up to a multiple
    assert canvas_side(40, 16, 8) == 72 and canvas_side(41, 16, 8) == 80


def _wrap_problem(tmp_path, *flags: str, seed: str | None = "noise"):
    """A prepared 41x40 problem (``seed``: --seed; noise by default: a canvas with detail everywhere)."""
    from synthesize import parse_args, prepare

    seeded = ["--seed", seed] if seed else []
    args = parse_args(["-s", str(REPO / "examples" / "gravel.png"), "-sw", "128", "-ow", "41", "-oh", "40", "-o", "2",
                       "--network", "vgg19", "--random-seed", "0", *seeded, "--output-dir", str(tmp_path), *flags])
    return args, prepare(args, log=lambda message: None)


def test_a_wrap_around_canvas_has_no_edge_for_the_loss_to_see(tmp_path):
    # the default canvas wraps around: its loss is the same for the canvas rolled by any multiple of 8 px
    # (every pixel has the same neighbourhood, there is no border; the pyramid's and the pools' halvings keep
    # their phase), where an open canvas's is not
    args, problem = _wrap_problem(tmp_path)
    assert args.canvas == "wrap" and args.margin == 16 and problem.margin == 16
    assert problem.level_sizes == [(72, 80), (36, 40)]  # 40 + 32 by 41 + 32, up to multiples of 8: 2^(1 + 2 pools)
    assert problem.padding == "circular"  # the synthesised image's; the source's targets keep --padding-mode
    x = problem.x0 + np.random.default_rng(1).normal(0, 20, problem.x0.shape).astype(np.float32)
    loss = problem.stage(0).evaluate(x)[0]
    for shift in ((0, 8), (16, 0), (-8, 24)):
        assert problem.stage(0).evaluate(np.roll(x, shift, axis=(1, 2)))[0] == pytest.approx(loss, rel=1e-4)
    args, problem = _wrap_problem(tmp_path, "--canvas", "open")
    assert args.margin == 20 and problem.level_sizes[0] == (80, 81) and problem.padding == "valid"
    x = problem.x0 + np.random.default_rng(1).normal(0, 20, problem.x0.shape).astype(np.float32)
    assert problem.stage(0).evaluate(np.roll(x, (16, 0), axis=(1, 2)))[0] != pytest.approx(
        problem.stage(0).evaluate(x)[0], rel=1e-2)


def test_a_small_wrap_around_canvas_names_the_smallest_output_that_keeps_every_term(tmp_path):
    # 128 px: a 160 px canvas, whose coarsest octave (20 px) gives block3_conv2 5x5 positions; 193 px
    # would do (225 rounds up to 256: 8x8); the open canvas's remedy, reflect padding, is no remedy here
    from synthesize import parse_args, prepare

    args = parse_args(["-s", str(REPO / "examples" / "gravel.png"), "-ow", "128", "--network", "vgg19",
                       "--output-dir", str(tmp_path)])
    (warning,) = prepare(args, log=lambda message: None).warnings
    assert warning.startswith("the output (with its hidden margin): with --octaves 4, block3_conv2 sees octave 4 "
                              "(20x20 px) at 5x5 position(s)")
    assert warning.endswith("; an output of at least 193x193 or --octaves 3 keeps every octave whole")
    # at 80 px --octaves 3 is no remedy: its canvas shrinks too (112 px, not 128: 7x7 positions at 28 px)
    from pyramid import level_sizes
    from synthesize import sparse_terms, sparse_warning

    terms = sparse_terms(level_sizes(128, 128, 4, "circular"), "vgg19", ["block3_conv2"], "circular")
    warning = sparse_warning("the output", terms, 80, 80, 16, "vgg19", "block3_conv2", 4, "circular",
                             "an output of at least {0}x{0}", 64, 32)
    assert warning.endswith("; an output of at least 193x193 keeps every octave whole")


def test_canvas_choices_and_their_errors(tmp_path, capsys):
    from synthesize import parse_args

    def canvas(*flags: str) -> str:
        return parse_args(["-s", "x.png", *flags]).canvas

    assert canvas() == "wrap" and canvas("--margin", "8") == "wrap"
    assert canvas("--margin", "0") == "open"  # the original's canvas
    assert canvas("--canvas", "open") == "open"
    for flags, message in ((["--canvas", "wrap", "--margin", "0"], "--canvas wrap needs a hidden --margin"),
                           (["--canvas", "open", "--tile"], "--canvas open cannot be combined with --tile")):
        assert main(["-s", str(REPO / "examples" / "gravel.png"), *flags, "--output-dir", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.strip().splitlines()[-1].startswith(f"synthesize.py: error: {message}")  # after the usage
        assert not (tmp_path / "o").exists()


def test_a_wrap_around_canvas_starts_from_an_image_mirrored_to_its_size():
    from seeds import image_start

    image = np.arange(5 * 6 * 3, dtype=np.float32).reshape(5, 6, 3)
    start = image_start(image, 2, 2, (16, 16))  # 5 + 4 -> 16 rows, 6 + 4 -> 16 columns
    assert start.shape == (2, 16, 16, 3)
    assert np.array_equal(start[1, 2:7, 2:8], image)  # the image, margin px in from the top-left
    assert np.array_equal(start[0, 7, :10], image[3, np.r_[2, 1, 0:6, 4, 3]])  # mirrored beyond it
    assert image_start(image, 1, 2, (9, 10)).shape == (1, 9, 10, 3)  # an open canvas: the margin on either side
    assert np.array_equal(image_start(image, 1, 0, (5, 6))[0], image)  # no margin: the image itself


def test_frame_ratios_of_a_dark_frame():
    rng = np.random.default_rng(0)
    image = 100 + 20 * rng.standard_normal((64, 64, 3))
    assert frame_ratios(image, 4)[0] == pytest.approx(1.0, abs=0.02)
    framed = image.copy()
    framed[border_distance(64, 64) < 4] = 50  # a flat band at half brightness, no detail
    lum, contrast = frame_ratios(framed, 4)
    assert lum == pytest.approx(0.5, abs=0.02) and contrast == pytest.approx(0.0, abs=1e-9)


def test_band_profile_tells_a_frame_from_a_different_middle():
    from quality import band_profile

    rng = np.random.default_rng(0)
    image = 100 + 20 * rng.standard_normal((128, 128, 3))
    framed = image.copy()
    framed[border_distance(128, 128) < 4] = 50  # a frame: the first ring alone
    profile = band_profile(framed, 4, 32)
    assert profile.shape == (8, 2)
    assert profile[0] == pytest.approx([0.5, 0.0], abs=0.03)
    assert np.allclose(profile[1:], 1.0, atol=0.06), profile
    bright_middle = image.copy()
    bright_middle[32:96, 32:96] *= 1.5  # the interior brighter and busier: every ring below 1
    profile = band_profile(bright_middle, 4, 32)
    assert (profile < 0.8).all(), profile
    for step, depth in [(4, 36), (4, 10), (0, 8)]:  # past a quarter of the side; not a multiple; no ring
        with pytest.raises(ValueError, match="multiple of step"):
            band_profile(image, step, depth)


def test_crop_frame_ratios_are_those_of_crops_and_spread_with_large_regions():
    from quality import crop_frame_ratios, within_frame_ranges

    rng = np.random.default_rng(1)
    wide = 100 + 20 * rng.standard_normal((96, 128, 3))
    wide[:, :, :] *= np.linspace(0.5, 1.5, 128)[None, :, None]  # every column different
    crops = crop_frame_ratios(wide, 96, count=5)
    assert crops.shape == (5, 4)
    possible = [[*frame_ratios(wide[:, left:left + 96], 4), *frame_ratios(wide[:, left:left + 96], 12)]
                for left in range(33)]  # a 96 px crop of a 96x128 image: any of 33 offsets, whole rows
    for row in crops:
        assert np.isclose(possible, row).all(axis=1).any(), row
    noise = 100 + 20 * rng.standard_normal((160, 160, 3))
    assert within_frame_ranges(crop_frame_ratios(noise, 96, count=20)).all()  # stationary: no frame
    patches = noise.copy()  # large dark regions, as a photo of big structures: each crop differs
    for top, left in [(0, 0), (40, 110), (100, 30), (120, 120)]:
        patches[top:top + 30, left:left + 30] *= 0.3
    crops = crop_frame_ratios(patches, 96, count=40)
    assert crops[:, 1].std() > 0.1 and within_frame_ranges(crops).mean() < 0.5
    for size, count in [(200, 5), (40, 5), (96, 0)]:  # larger than the photo; bands reach the middle; none
        with pytest.raises(ValueError, match="need at least one crop"):
            crop_frame_ratios(noise, size, count)


def test_frame_ratios_cli_crops_and_one_line_errors(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("frame_ratios_cli", REPO / "benchmarks" / "frame_ratios.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    brick = str(REPO / "examples" / "brick.png")
    assert cli.main(["--crops", brick, "--size", "128", "--count", "3"]) == 0
    assert "3 crops of 128 px" in capsys.readouterr().out
    for argv, named in [(["--crops", brick, "--size", "600"], "--size 600"), (["--profile"], "IMAGE"),
                        (["--crops", brick, "--count", "0"], "--count 0"),
                        (["--crops", str(REPO / "no_such.png")], "--crops")]:
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        message = err[-1] if err else str(exit_.value.code)
        assert exit_.value.code != 0 and named in message, (argv, message)


def test_colour_outliers_cli_counts_made_up_colours_apart_from_the_other_halfs(tmp_path, capsys):
    import importlib.util

    from PIL import Image

    spec = importlib.util.spec_from_file_location("colour_outliers_cli", REPO / "benchmarks" / "colour_outliers.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    source = np.full((20, 40, 3), 100, np.uint8)
    source[:5, 30:35] = [200, 0, 0]  # red only in the right half
    image = np.full((10, 10, 3), 100, np.uint8)
    image[0, :4] = [200, 0, 0]  # 4 pixels of that red (a faithful copy), 2 of blue (made up)
    image[1, :2] = [0, 0, 255]
    for name, rgb in (("source", source), ("image", image)):
        Image.fromarray(rgb).save(tmp_path / f"{name}.png")
    assert cli.main([str(tmp_path / "source.png"), str(tmp_path / "image.png")]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1].split("\t")
    assert row[1:] == ["6.0000%", "0.0000%", "infx", "2.0000%"]  # against the left half; the whole source
    for argv, named in [([str(tmp_path / "none.png"), str(tmp_path / "image.png")], "SOURCE"),
                        ([str(tmp_path / "source.png"), str(tmp_path / "none.png")], "IMAGE")]:
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert named in str(exit_.value.code) and "\n" not in str(exit_.value.code)


def test_within_frame_ranges_closed_forms():
    from quality import within_frame_ranges

    rows = np.array([[1.0, 1.0, 1.0, 1.0], [1.05, 0.9, 0.95, 1.1], [1.06, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.89]])
    assert within_frame_ranges(rows).tolist() == [True, True, False, False]
    assert within_frame_ranges(np.array([1.0, 1.2])).tolist() == [False]


def _run(tmp_path, texture: str, *flags: str) -> tuple[float, float, float, float]:
    out = tmp_path / f"{texture}{'_'.join(flags)}"
    argv = ["-s", str(REPO / "examples" / f"{texture}.png"), "-sw", "256", "-ow", "128", "-o", "2",
            "-m", "100", "-n", "1000", "--network", "vgg19", "--random-seed", "3", "--output-dir", str(out),
            *flags]
    assert main(argv) == 0
    run_dir = next(out.iterdir())
    record = json.loads((run_dir / "run.json").read_text())
    assert record["args"]["padding_mode"] == "valid"  # the default
    assert record["args"]["margin"] == (16 if "--margin" not in flags else int(flags[flags.index("--margin") + 1]))
    rgb = load_rgb(run_dir / "final_F0000.png")
    assert rgb.shape == (128, 128, 3)  # the hidden margin is cropped away
    return (*frame_ratios(rgb, 4), *frame_ratios(rgb, 12))


def test_default_settings_have_no_frame_and_the_original_start_has_one(tmp_path):
    # Default settings (random start around the source's colours, a wrap-around canvas with a 16 px
    # hidden margin), three textures: measured 2026-11-27 on this machine: luminance 0.99 / 1.00,
    # contrast 0.93 / 0.95 (4 px / 12 px; gravel 1.00, brick 0.80, grass 1.00 in 4 px contrast). On an
    # open canvas (valid padding, 20 px margin): 1.03 / 1.00, 0.95 / 0.90 (gravel 1.07, brick 0.78,
    # grass 1.01); with 16 px: 0.87 / 0.91; with the 8 px margin of before that: 0.80 / 0.86.
    each = [_run(tmp_path, t) for t in ("gravel", "brick", "grass")]
    ratios = np.mean(each, axis=0)
    lum4, con4, lum12, con12 = ratios
    assert 0.95 <= lum4 <= 1.05 and 0.95 <= lum12 <= 1.05, each
    assert con4 >= 0.88 and con12 >= 0.88, each
    # The original's dark start without the margin keeps a dark, blurred frame (measured: 0.58, 0.40).
    dark = _run(tmp_path, "gravel", "--seed", "dark", "--margin", "0")
    assert dark[0] < 0.9 and dark[1] < 0.8, dark


def test_colour_outlier_share_closed_forms():
    from quality import colour_outlier_share

    reference = np.zeros((4, 4, 3), np.uint8)
    reference[:2] = (100, 150, 50)  # two colours: black and one green
    image = np.zeros((10, 10, 3), np.uint8)
    assert colour_outlier_share(image, reference) == 0
    image[0, :5] = (100, 150, 69)  # 19 units from the green: a colour the source has
    image[1, :5] = (100, 150, 71)  # 21 units: one it does not have
    image[2, :2] = (12, 12, 12)  # 20.8 units from black
    assert colour_outlier_share(image, reference) == pytest.approx(7 / 100)
    assert colour_outlier_share(image, reference, threshold=25) == 0


def test_nearest_square_distances_closed_forms(tmp_path, capsys):
    """A piece of the source copies it (0 everywhere); that piece brightened by 20 is 20 from it (the
    source's other squares are far); noise of the same range is far from every square of it."""
    import importlib.util

    from PIL import Image

    from quality import nearest_square_distances

    rng = np.random.default_rng(0)
    source = rng.uniform(0, 200, (40, 48, 3))
    piece = source[5:29, 7:31]
    copied = nearest_square_distances(piece, source, side=8, stride=2)
    assert copied.shape == (9 * 9,) and copied.max() == pytest.approx(0, abs=1e-3)
    np.testing.assert_allclose(nearest_square_distances(piece + 20, source, side=8, stride=2), 20, rtol=1e-4)
    assert nearest_square_distances(rng.uniform(0, 200, (24, 24, 3)), source, side=8, stride=2).min() > 50
    spec = importlib.util.spec_from_file_location("nearest_squares_cli", REPO / "benchmarks" / "nearest_squares.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    Image.fromarray(source.astype(np.uint8)).save(tmp_path / "source.png")
    Image.fromarray(piece.astype(np.uint8)).save(tmp_path / "piece.png")
    assert cli.main([str(tmp_path / "source.png"), str(tmp_path / "piece.png"), "--side", "8"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].split("\t")[1:] == ["0.0", "100.0%", "100.0%"]
    for argv, named in [([str(tmp_path / "none.png"), str(tmp_path / "piece.png")], "SOURCE"),
                        ([str(tmp_path / "source.png"), str(tmp_path / "piece.png"), "--side", "32"], "--side 32")]:
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert named in str(exit_.value.code) and "\n" not in str(exit_.value.code)


@pytest.mark.parametrize("flags, start", [
    ([], {"from": "pieces", "level": 1, "piece": 8}),  # coarse-to-fine's random start
    (["--seed", "noise"], {"from": "noise"}),
    (["--schedule", "plain"], {"from": "noise"}),  # random without a coarse stage: noise
    (["-o", "1"], {"from": "noise"}),
    (["--seed", "dark"], {"from": "dark"}),
])
def test_prepare_records_what_the_run_starts_from(tmp_path, flags, start):
    """The default start is the sources' coarsest level (here level 1 of a 128 px source) in 8 px
    pieces, each a square of it, and x0 its enlargement; the others start from x0 itself."""
    from pyramid import expand_to, source_pyramids
    from vgg16 import preprocess

    args, problem = _wrap_problem(tmp_path, *flags, seed=None)
    assert problem.start == start
    if start["from"] != "pieces":
        assert problem.first_start is None
        return
    level = problem.level_sizes[1]
    assert problem.first_start.shape == (1, *level, 3)
    (source,) = [levels[1] for levels in source_pyramids([preprocess(rgb) for _, rgb in problem.sources], 2, "valid")]
    for top in range(0, level[0] - 8, 8):
        for left in range(0, level[1] - 8, 8):
            square = problem.first_start[0, top:top + 8, left:left + 8]
            assert any(np.allclose(source[i:i + 8, j:j + 8], square, atol=1e-3)
                       for i in range(source.shape[0] - 7) for j in range(source.shape[1] - 7))
    low, high = problem.stage(0).low, problem.stage(0).high  # the pixel bounds
    enlarged = expand_to(problem.first_start, problem.level_sizes, 1, "circular")
    np.testing.assert_allclose(problem.x0, np.clip(enlarged, low, high), atol=1e-3)


def test_colour_outliers_against_the_sources_other_half():
    from quality import colour_outliers_against_source

    source = np.full((20, 40, 3), 100.0)
    source[:5, 30:35] = [200, 0, 0]  # a red patch in the right half: 25 of its 400 pixels
    image = np.full((10, 10, 3), 100.0)
    image[0, :4] = [0, 0, 255]  # 4 blue pixels of 100
    share, crop = colour_outliers_against_source(image, source)
    assert share == pytest.approx(0.04)
    # the crop: the centred 10x10 of the right half (rows 5-14, columns 25-34): no red there
    assert crop == 0
    assert colour_outliers_against_source(source[:, 20:], source)[1] == pytest.approx(25 / 400)


def test_picture_alone_scores_a_crop_of_the_source_below_other_textures_and_blur(tmp_path):
    """picture_quality.picture_alone: the Gram loss of a saved picture by itself, against the run's
    sources as its run.json names them (a relative path is the repository's; every one of them). A
    crop of the source scores far below a crop of another texture and the same crop blurred; against
    two sources, between its scores against each."""
    import importlib.util

    from PIL import Image

    spec = importlib.util.spec_from_file_location("picture_quality_cli", REPO / "benchmarks" / "picture_quality.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    crop = load_rgb(REPO / "examples" / "gravel.png")[64:320:4, 64:320:4]  # 64 px of the source as -sw 128 has it
    blurred = np.asarray(Image.fromarray(crop).resize((16, 16)).resize((64, 64), Image.BILINEAR))
    brick = load_rgb(REPO / "examples" / "brick.png")[:256:4, :256:4]
    args = {"source": ["examples/gravel.png"], "source_scale": None, "source_width": 128, "join_mode": "average",
            "mul": 1.0, "output_width": 64, "output_height": 64, "layers": [2, 7], "octaves": 2,
            "data_dir": "/nonexistent-data-dir"}

    def score(name, rgb, sources=("examples/gravel.png",)):
        Image.fromarray(np.ascontiguousarray(rgb)).save(tmp_path / f"{name}.png")
        return cli.picture_alone({"args": {**args, "source": list(sources)}, "network": "vgg19"},
                                 tmp_path / f"{name}.png")

    itself, other, soft = score("crop", crop), score("brick", brick), score("blurred", blurred)
    assert 0 < itself < other / 4 and itself < soft / 10, (itself, other, soft)
    both = score("crop", crop, ("examples/gravel.png", "examples/brick.png"))
    assert itself < both < score("crop", crop, ("examples/brick.png",)), both
