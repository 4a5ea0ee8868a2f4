"""Animation: inter-frame distances and target against numpy, the loop file, and small real runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from animation import (
    frame_distances, interframe_loss, measured_distances, save_animation, shift_distance, target_distance,
    unreachable_targets, unrelated_distance,
)
from conftest import EXAMPLE
from synthesize import main

# ---------------------------------------------------------------- closed forms against numpy


def numpy_distance(a: np.ndarray, b: np.ndarray) -> float:
    """RMS over pixels and channels, straight from the definition."""
    return float(np.sqrt(np.mean((a.astype(np.float64) - b) ** 2)))


def test_frame_distances_match_numpy_and_the_loop_wraps():
    x = np.random.default_rng(0).standard_normal((4, 5, 6, 3)).astype(np.float32) * 30
    for k in (1, 2, 3):
        got = np.asarray(frame_distances(x, k))
        expected = [numpy_distance(x[i], x[(i + k) % 4]) for i in range(4)]
        np.testing.assert_allclose(got, expected, rtol=1e-5)
    # the last frame is compared with the first: the sequence loops
    assert float(np.asarray(frame_distances(x, 1))[3]) == pytest.approx(numpy_distance(x[3], x[0]), rel=1e-5)


def test_identical_frames_have_zero_distance_and_a_finite_gradient():
    import tensorflow as tf

    x = tf.constant(np.ones((3, 4, 4, 3), np.float32))
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = interframe_loss(x, 2.0, 1)
    grad = tape.gradient(loss, x).numpy()
    assert np.all(np.asarray(frame_distances(x, 1)) < 1e-2)
    assert np.all(np.isfinite(grad))


def test_interframe_loss_matches_numpy():
    x = np.random.default_rng(1).standard_normal((5, 4, 3, 3)).astype(np.float32) * 10
    target = 7.5
    expected = sum(
        np.mean([(numpy_distance(x[i], x[(i + k) % 5]) - k * target) ** 2 for i in range(5)]) for k in (1, 2)
    )
    assert float(interframe_loss(x, target, 2)) == pytest.approx(expected, rel=1e-5)
    assert [len(d) for d in measured_distances(x, 2)] == [5, 5]


def numpy_shift_distance(image: np.ndarray, s: int) -> float:
    """Rolled s px down, then a further s px right, written out with explicit index arithmetic."""
    h, w, _ = image.shape
    rows = (np.arange(h) - s) % h
    cols = (np.arange(w) - s) % w
    down = image[rows]
    across = down[:, cols]
    return (numpy_distance(image, down) + numpy_distance(down, across)) / 2


def test_target_distance_integer_shift_matches_numpy():
    image = np.random.default_rng(2).uniform(-120, 120, (9, 7, 3)).astype(np.float32)
    for s in (1, 2, 3, 6):  # 6 wraps most of the 7 columns around
        assert shift_distance(image, s) == pytest.approx(numpy_shift_distance(image, s), rel=1e-9)
        assert target_distance(image, float(s)) == pytest.approx(numpy_shift_distance(image, s), rel=1e-9)


def test_target_distance_fractional_shift_interpolates_linearly():
    image = np.random.default_rng(3).uniform(-120, 120, (8, 8, 3)).astype(np.float32)
    d2, d3 = numpy_shift_distance(image, 2), numpy_shift_distance(image, 3)
    assert target_distance(image, 2.25) == pytest.approx(0.75 * d2 + 0.25 * d3, rel=1e-9)
    assert target_distance(image, 2.5) == pytest.approx((d2 + d3) / 2, rel=1e-9)
    # a shift by the full side is no shift at all: the roll wraps
    assert shift_distance(image, 8) == pytest.approx(0.0, abs=1e-12)


def test_smooth_image_moves_less_than_noise():
    y, x = np.mgrid[0:32, 0:32]
    smooth = np.repeat((np.sin(2 * np.pi * x / 32) * np.cos(2 * np.pi * y / 32))[..., None], 3, axis=2) * 100
    noise = np.random.default_rng(4).standard_normal((32, 32, 3)) * 100
    assert target_distance(smooth, 1) < 0.5 * target_distance(noise, 1)


def test_unrelated_distance_is_the_limit_of_large_shifts():
    noise = np.random.default_rng(6).standard_normal((64, 64, 3)) * [10.0, 20.0, 30.0] + 50
    expected = np.sqrt(2 * np.mean([100.0, 400.0, 900.0]))
    assert unrelated_distance(noise) == pytest.approx(expected, rel=0.05)
    assert shift_distance(noise, 17) == pytest.approx(unrelated_distance(noise), rel=0.05)


def test_unreachable_targets():
    assert unreachable_targets(20.0, 55.0, 8, 2) == []
    (too_far,) = unreachable_targets(48.0, 55.0, 8, 2)
    assert "frames 2 apart are asked to be 96 apart" in too_far and "lower --if-shift" in too_far
    (both_ways,) = unreachable_targets(10.0, 55.0, 3, 2)
    assert "--if-order 2 with --count 3" in both_ways and "--if-order 1 or less" in both_ways
    assert unreachable_targets(10.0, 55.0, 4, 2) == []  # frames 2 apart in a loop of 4: the same k both ways


def test_save_animation_writes_a_lossless_looping_apng(tmp_path):
    frames = np.random.default_rng(5).integers(0, 256, (4, 10, 12, 3)).astype(np.uint8)
    path = tmp_path / "animation.png"
    save_animation(path, frames, frame_ms=80)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.is_animated and image.n_frames == 4
        assert image.info["loop"] == 0
        for i in range(4):
            image.seek(i)
            assert image.info["duration"] == 80
            np.testing.assert_array_equal(np.asarray(image.convert("RGB")), frames[i])
    assert not list(tmp_path.glob("*.tmp"))


# ---------------------------------------------------------------- small real runs

SIDE, OCTAVES, FRAMES, ITERATIONS = 72, 2, 3, 20  # 2 octaves with valid padding need sides >= 67


def anim_run_args(output_dir: Path, *extra: str) -> list[str]:
    # --if-shift 1: neighbours are then much closer (about 20) than independent textures (about 55).
    # --if-order 1: in a loop of 3 frames, frames 2 apart are also 1 apart the other way round, so
    # order 2 would ask the same pairs for two distances. --min-positions 1: every Gram matrix counts
    # (the second octave gives block3_conv2 one position), so the loss is gram.style_loss's. --seed noise:
    # frames that start as the noise per_frame_style_losses makes again.
    return ["-s", str(EXAMPLE), "-ow", str(SIDE), "-o", str(OCTAVES), "-m", str(ITERATIONS), "-n", "10",
            "--network", "vgg19", "--output-dir", str(output_dir), "--random-seed", "0", "--seed", "noise",
            "-c", str(FRAMES), "--if-shift", "1", "--if-order", "1", "--margin", "0", "--min-positions", "1",
            *extra]


def finished_run(output_dir: Path, argv: list[str]) -> tuple[Path, dict]:
    assert main(argv) == 0
    (run_dir,) = output_dir.iterdir()
    return run_dir, json.loads((run_dir / "run.json").read_text())


@pytest.fixture(scope="module")
def tied_run(tmp_path_factory):
    """3 frames held firmly at the target distance (--if-weight 1000)."""
    out = tmp_path_factory.mktemp("tied")
    return finished_run(out, anim_run_args(out, "--if-weight", "1000"))


@pytest.fixture(scope="module")
def untied_run(tmp_path_factory):
    """3 frames with --if-weight 0: independent."""
    out = tmp_path_factory.mktemp("untied")
    return finished_run(out, anim_run_args(out, "--if-weight", "0"))


@pytest.fixture(scope="module")
def per_frame_style_losses(vgg19, example_rgb):
    """Style loss of each starting frame on its own, computed like the core path does."""
    from gram import multiscale_grams, source_targets, style_loss
    from seeds import starting_images
    from vgg16 import build_extractor, pixel_bounds, preprocess

    layers = ["block1_pool", "block3_conv2"]
    extractor = build_extractor("vgg19", vgg19.weights, layers, "valid")
    targets = source_targets([preprocess(example_rgb)], extractor, OCTAVES, "valid", "average")
    x0 = starting_images("noise", np.random.default_rng(0), FRAMES, SIDE, SIDE, [preprocess(example_rgb)])
    x0 = np.clip(x0, *pixel_bounds([preprocess(example_rgb)]))  # clipped to the source's range, as the optimiser
    losses = [float(style_loss(multiscale_grams(frame[None], extractor, OCTAVES, "valid"), targets))
              for frame in x0]
    return x0, losses


def test_tied_run_writes_frames_animation_and_record(tied_run):
    run_dir, record = tied_run
    assert run_dir.name == f"out.L2,7.o{OCTAVES}.c{FRAMES}.ifs1.0.{SIDE}x{SIDE}"
    for frame in range(FRAMES):
        for stem in ("Aseed", "I0010", "I0020", "final"):
            assert (run_dir / f"{stem}_F{frame:04d}.png").is_file()
    with Image.open(run_dir / "animation.png") as animation:
        assert animation.n_frames == FRAMES and animation.info["loop"] == 0
        for frame in range(FRAMES):
            animation.seek(frame)
            with Image.open(run_dir / f"final_F{frame:04d}.png") as final:
                np.testing.assert_array_equal(np.asarray(animation.convert("RGB")), np.asarray(final))
    tie = record["interframe"]
    assert (tie["if_weight"], tie["if_shift"], tie["if_order"]) == (1000.0, 1.0, 1)
    assert tie["target_distance"] == pytest.approx(target_distance_of_example(1.0), rel=1e-6)
    assert len(tie["distances"]) == 1 and len(tie["distances"][0]) == FRAMES
    assert tie["unrelated_distance"] > 2 * tie["target_distance"]  # --if-shift 1 ties the frames closely


def target_distance_of_example(shift: float) -> float:
    from images import load_rgb
    from vgg16 import preprocess

    return target_distance(preprocess(load_rgb(EXAMPLE)), shift)


def test_large_if_weight_holds_neighbours_at_the_target_distance(tied_run):
    run_dir, record = tied_run
    t = record["interframe"]["target_distance"]
    for k, distances in enumerate(record["interframe"]["distances"], start=1):
        for d in distances:
            assert abs(d - k * t) <= 0.25 * k * t, (k, d, t)
    # the frames are not identical: the saved images differ from each other
    frames = [np.asarray(Image.open(run_dir / f"final_F{f:04d}.png"), np.float64) for f in range(FRAMES)]
    for i in range(FRAMES):
        assert np.sqrt(np.mean((frames[i] - frames[(i + 1) % FRAMES]) ** 2)) > 0.5 * t
    assert record["final_loss"] < 0.01 * record["initial_loss"]


def test_total_loss_is_style_plus_weighted_interframe(tied_run, per_frame_style_losses):
    _, record = tied_run
    x0, losses = per_frame_style_losses
    expected = sum(losses) + 1000.0 * float(interframe_loss(x0, record["interframe"]["target_distance"], 1))
    assert record["initial_loss"] == pytest.approx(expected, rel=1e-4)


def test_if_weight_0_leaves_frames_independent(untied_run, per_frame_style_losses):
    _, record = untied_run
    _, losses = per_frame_style_losses
    # no inter-frame term: the loss is the sum of each frame's own style loss
    assert record["initial_loss"] == pytest.approx(sum(losses), rel=1e-4)
    t = record["interframe"]["target_distance"]
    assert min(record["interframe"]["distances"][0]) > 1.5 * t  # nothing pulls the frames together
    assert record["final_loss"] < 0.1 * record["initial_loss"]


def test_count_1_adds_no_interframe_term(tmp_path):
    def args(out: Path, *extra: str) -> list[str]:
        return ["-s", str(EXAMPLE), "-ow", str(SIDE), "-o", str(OCTAVES), "-m", "3", "--network", "vgg19",
                "--output-dir", str(out), "--random-seed", "0", *extra]

    run_dir, plain = finished_run(tmp_path / "plain", args(tmp_path / "plain"))
    tied_dir, flagged = finished_run(tmp_path / "flagged", args(tmp_path / "flagged", "--if-weight", "5"))
    assert flagged["initial_loss"] == plain["initial_loss"]
    assert flagged["loss_history"] == plain["loss_history"]
    assert "interframe" not in flagged and "interframe" not in plain
    assert not (tied_dir / "animation.png").exists()
    assert tied_dir.name == run_dir.name == f"out.L2,7.o{OCTAVES}.{SIDE}x{SIDE}"


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("extra, message", [
    (["-c", "3", "--if-order", "3"], "--if-order 3: must be smaller than --count 3"),
    (["-c", "2", "--if-order", "5"], "--if-order 5: must be smaller than --count 2"),
    (["-c", "3", "--if-order", "0"], "--if-order 0: must be at least 1"),
    (["-c", "3", "--if-shift", "0"], "--if-shift 0.0: must be positive"),
    (["-c", "3", "--if-shift", "-2"], "--if-shift -2.0: must be positive"),
    (["-c", "3", "--if-shift", "inf"], "--if-shift inf: must be a finite number"),
    (["-c", "3", "--if-weight", "-1"], "--if-weight -1.0: must not be negative"),
    (["-c", "3", "--if-weight", "nan"], "--if-weight nan: must be a finite number"),
    (["-c", "0"], "--count 0: must be at least 1"),
])
def test_animation_usage_errors_exit_2_naming_the_flag(extra, message, tmp_path, capsys):
    assert main(["-s", str(EXAMPLE), "--output-dir", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert not (tmp_path / "o").exists()


def test_if_shift_must_be_smaller_than_the_resized_source(tmp_path, capsys):
    # the example is 512x512; --source-scale 0.1 makes it 51x51
    argv = ["-s", str(EXAMPLE), "-ss", "0.1", "-c", "3", "--if-shift", "51", "--output-dir", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("synthesize.py: error: --if-shift 51.0: must be smaller")
    assert "51 px" in err[0]
    assert not (tmp_path / "o").exists()


def test_settings_that_cannot_be_met_are_warned(tmp_path, capsys):
    # the defaults --if-shift 5 --if-order 2 on gravel ask frames 2 apart to be about 96 apart, while
    # unrelated gravel images are about 55 apart; and in a loop of 3, frames 2 apart are also 1 apart
    argv = ["-s", str(EXAMPLE), "-ow", str(SIDE), "-o", str(OCTAVES), "-m", "1", "--network", "vgg19",
            "--output-dir", str(tmp_path), "--random-seed", "0", "-c", "3"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "warning: frames 2 apart are asked to be" in err and "lower --if-shift or --if-order" in err
    assert "warning: --if-order 2 with --count 3" in err
