"""The command line: help, validation, and small real runs in process and as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import EXAMPLE, REPO
from synthesize import main, make_parser

ORIGINAL_FLAGS = [  # long, short, default as in the original README
    ("--output-width", "-ow", 512), ("--output-height", "-oh", None), ("--octaves", "-o", 4),
    ("--layers", "-l", [2, 7]), ("--max-iter", "-m", 500), ("--output-prefix", "-op", "out"),
    ("--save-every", "-n", 10), ("--source-scale", "-ss", None), ("--source-width", "-sw", None),
    ("--padding-mode", "-p", "valid"), ("--join-mode", "-j", "average"), ("--count", "-c", 1),
    ("--mul", None, 1.0), ("--if-weight", None, 1.0), ("--if-shift", None, 5.0), ("--if-order", None, 2),
    ("--seed", None, "random"), ("--data-dir", "-d", "model_data"), ("--output-dir", None, "outputs"),
    ("--tol", None, 1e-9), ("--source", "-s", None),
]


def test_every_original_flag_with_its_short_form_and_default():
    parser = make_parser()
    actions = {a.option_strings[0]: a for a in parser._actions if a.option_strings}
    for long, short, default in ORIGINAL_FLAGS:
        action = actions[long]
        if short:
            assert short in action.option_strings
        assert action.default == default, long
    # the original's choices all stay (new ones may be added)
    assert {"valid", "same"} <= set(actions["--padding-mode"].choices)
    assert tuple(actions["--join-mode"].choices) == ("average", "max")
    assert {"random", "symmetric"} <= set(actions["--seed"].choices)
    assert actions["--source"].required and actions["--source"].nargs == "+"
    help_text = parser.format_help()
    assert "(default: 512)" in help_text and "(default: 1e-09)" in help_text


def small_run_args(output_dir: Path, *extra: str) -> list[str]:
    return ["-s", str(EXAMPLE), "-ow", "96", "-o", "2", "-m", "30", "-n", "10", "--network", "vgg19",
            "--output-dir", str(output_dir), "--random-seed", "0", *extra]


def check_run_dir(run_dir: Path, width: int, height: int, snapshots: list[int]) -> dict:
    assert (run_dir / "Acommand.txt").read_text().startswith("synthesize.py -s ")
    names = ["Aseed_F0000.png", "final_F0000.png"] + [f"I{i:04d}_F0000.png" for i in snapshots]
    for name in names:
        with Image.open(run_dir / name) as image:
            assert image.format == "PNG" and image.mode == "RGB" and image.size == (width, height), name
    record = json.loads((run_dir / "run.json").read_text())
    for key in ("network", "backend", "args", "iterations", "initial_loss", "final_loss", "seconds",
                "loss_history"):
        assert key in record, key
    assert record["network"] == "vgg19" and record["backend"] == "tensorflow"
    assert len(record["loss_history"]) == record["iterations"]
    assert not list(run_dir.glob("*.tmp"))
    return record


def test_small_real_run_in_process(tmp_path, capsys):
    assert main(small_run_args(tmp_path, "-oh", "80")) == 0
    run_dir = tmp_path / "out.L2,7.o2.96x80"
    record = check_run_dir(run_dir, 96, 80, [10, 20, 30])
    assert record["iterations"] == 30
    assert record["final_loss"] < 0.1 * record["initial_loss"]
    assert record["args"]["output_height"] == 80
    captured = capsys.readouterr()
    assert str(run_dir) in captured.out  # the summary line names the directory
    warned = [line[len("warning: "):] for line in captured.err.splitlines() if line.startswith("warning: ")]
    assert record["warnings"] == warned == []  # what stderr said, for scripts: nothing to warn about
    # (the wrap-around canvas, 128x112 px with the 16 px margin, rounded to multiples of 8, gives block3_conv2
    # 16x14 positions at the second octave; an open one with valid padding's 20 px margin gave 7x9, under 64)


def test_terms_with_too_few_positions_are_named():
    from pyramid import level_sizes
    from synthesize import dense_side, sparse_terms

    def sparse(side: int, padding: str = "valid", layers=("block1_conv2", "block3_conv2"), least: int = 64) -> list:
        return sparse_terms(level_sizes(side, side, 4, padding), "vgg19", list(layers), padding, least)

    # 256 px plus the 16 px margin valid padding had before, 4 octaves: block3_conv2 sees the coarsest
    # level (33 px) at one position, at 384 px at 5x5; block1_conv2 sees it at 29x29; at 512 px (9x9
    # positions there) or with reflect padding every term has enough; with today's 32 px, 2x2
    assert sparse(288) == [(3, "block3_conv2", (33, 33), (1, 1))]
    assert sparse(320) == [(3, "block3_conv2", (37, 37), (2, 2))]
    assert sparse(416) == [(3, "block3_conv2", (49, 49), (5, 5))]
    assert sparse(544) == [] and sparse(288, "reflect") == []
    assert sparse(128, "reflect") == [(3, "block3_conv2", (16, 16), (4, 4))]
    assert sparse(288, least=1) == []  # (the original's loss)
    assert [term[:2] for term in sparse(288, least=842)] == [  # block1_conv2 at the coarsest: 29x29 = 841
        (1, "block3_conv2"), (2, "block3_conv2"), (3, "block1_conv2"), (3, "block3_conv2")]
    assert sparse(544, least=82) == [(3, "block3_conv2", (65, 65), (9, 9))] and sparse(544, least=81) == []
    # the smallest output that would do: 469 px (501 with the 16 px margin), and not one pixel less;
    # 437 px with today's 32 px
    assert dense_side(256, "vgg19", "block3_conv2", 4, "valid", 16) == 469
    assert dense_side(256, "vgg19", "block3_conv2", 4, "valid", 32) == 437
    # on a wrap-around canvas (16 px margin, then a multiple of 32), 193 px: 225 rounds up to 256, whose
    # coarsest octave, 32 px, gives block3_conv2 8x8 positions
    assert dense_side(1, "vgg19", "block3_conv2", 4, "circular", 16, multiple=32) == 193
    assert sparse(501) == [] and sparse(500) != []


def test_terms_with_too_few_positions_are_left_out_and_warned_about_once_the_checks_pass(tmp_path, capsys):
    # 67 px is the smallest source 2 octaves allow: its second level gives block3_conv2 one position;
    # a 35 px output's on an open canvas (36 px with the 20 px margin of 2 octaves), 2x2
    assert main(small_run_args(tmp_path, "-ow", "35", "-sw", "67", "-m", "1", "--canvas", "open")) == 0
    err = capsys.readouterr().err
    assert ("warning: the output (with its hidden margin): with --octaves 2, block3_conv2 sees octave 2 "
            "(36x36 px) at 2x2 position(s), fewer than --min-positions 64: too few for a Gram matrix to stand "
            "for a texture, so left out of the loss") in err
    assert "an output of at least 83x83 or --octaves 1 or --padding-mode reflect keeps every octave whole" in err
    assert f"warning: --source {EXAMPLE}: with --octaves 2, block3_conv2 sees octave 2 (32x32 px) at 1x1" in err
    assert "a source at least 123 px on its shorter side (--source-width, --source-scale) or --octaves 1" in err
    (record,) = [json.loads(p.read_text()) for p in tmp_path.glob("*/run.json")]
    assert [f"warning: {w}" for w in record["warnings"]] == [
        line for line in err.splitlines() if line.startswith("warning: ")]  # for scripts, as on stderr
    assert record["left_out_terms"] == [{"level": 1, "layer": "block3_conv2"}]
    # bad input is still one line, without the warnings: they come once every check has passed
    blocker = tmp_path / "taken"
    blocker.write_text("keep me")
    assert main(small_run_args(blocker, "-ow", "35", "-sw", "67", "-m", "1")) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"--output-dir {blocker}" in line and blocker.read_text() == "keep me"
    # a threshold that would leave nothing to match is refused
    assert main(small_run_args(tmp_path / "none", "-ow", "35", "-sw", "67", "--min-positions", "100000")) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--min-positions 100000: leaves no Gram matrix in the loss" in line and not (tmp_path / "none").exists()


def test_a_source_alone_can_leave_a_term_out_and_a_level_with_none_is_no_stage(tmp_path, capsys):
    # a 96 px output gives block3_conv2 8x8 positions at its second octave (enough), a 67 px source 1x1
    assert main(small_run_args(tmp_path / "a", "-sw", "67", "-m", "1")) == 0
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "a").glob("*/run.json")]
    assert record["left_out_terms"] == [{"level": 1, "layer": "block3_conv2"}]
    assert len(record["warnings"]) == 1 and record["warnings"][0].startswith(f"--source {EXAMPLE}: ")
    # --layers 7 alone at 35 px on an open canvas: the second octave's only term is left out, so with no
    # colour term that level has nothing to match and coarse-to-fine starts at full size
    assert main(small_run_args(tmp_path / "b", "-ow", "35", "-l", "7", "--colour-weight", "0", "-m", "2",
                               "--canvas", "open")) == 0
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "b").glob("*/run.json")]
    assert [stage["level"] for stage in record["stages"]] == [0] and record["iterations"] == 2
    assert record["final_loss"] < record["initial_loss"]


def test_a_term_left_out_has_no_part_in_the_loss(tmp_path):
    # a 35 px output on an open canvas: its second octave gives block3_conv2 2x2 positions. The per-octave
    # losses at the same start, with that term left out (the default), equal those of keeping every term
    # (--min-positions 1) with block3_conv2 weighted 0 at the second octave and 1 at the first.
    # (--layers 7 2: block3_conv2 first, so that the term left out is not the last of the list)
    from synthesize import parse_args, prepare

    def octave_losses(*extra: str) -> list[float]:
        args = parse_args(small_run_args(tmp_path, "-ow", "35", "-l", "7", "2", "--colour-weight", "0",
                                         "--canvas", "open", *extra))
        problem = prepare(args, log=lambda message: None)
        return [float(v) for v in problem.stage(0).evaluate(problem.x0)[2]]

    left_out = octave_losses()
    kept = octave_losses("--min-positions", "1")
    block1_only = octave_losses("--min-positions", "1", "--layer-weights", "0", "1")
    assert left_out[0] == pytest.approx(kept[0], rel=1e-5)  # the first octave keeps both terms
    assert left_out[1] == pytest.approx(block1_only[1], rel=1e-5)  # the second only block1_conv2's
    assert kept[1] > left_out[1]  # (a Gram loss term is positive)


def test_small_real_run_as_subprocess_never_reuses_a_directory(tmp_path):
    (tmp_path / "out.L2,7.o2.96x96").mkdir()  # a run that exists already
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, str(REPO / "synthesize.py"), *small_run_args(tmp_path, "-m", "20")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    run_dir = tmp_path / "out.L2,7.o2.96x96.0"
    record = check_run_dir(run_dir, 96, 96, [10, 20])
    assert record["final_loss"] < 0.1 * record["initial_loss"]
    assert list((tmp_path / "out.L2,7.o2.96x96").iterdir()) == []  # untouched
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("argv, message", [
    (["-s", "x.png", "-ss", "0.5", "-sw", "100"], "mutually exclusive"),
    (["-s", "x.png", "-ow", "0"], "--output-width 0"),
    (["-s", "x.png", "-l", "2", "2"], "repeated"),
    (["-s", "x.png", "-l", "40"], "--layers 40"),
    (["-s", "x.png", "--mul", "nan"], "--mul nan"),
])
def test_usage_errors_exit_2_with_one_line(argv, message, capsys, tmp_path):
    assert main([*argv, "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert not (tmp_path / "o").exists()


def test_missing_source_is_one_line_exit_1(tmp_path, capsys):
    assert main(["-s", str(tmp_path / "nope.jpg"), "--output-dir", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"synthesize.py: error: --source {tmp_path / 'nope.jpg'}: no such file or directory"]
    assert not (tmp_path / "o").exists()


def test_output_too_small_for_octaves_names_the_minimum(tmp_path, capsys):
    assert main(small_run_args(tmp_path, "-o", "4", "--canvas", "open")) == 2
    err = capsys.readouterr().err
    assert "need at least 213x213 (plus the hidden --margin 32 per side)" in err and "--octaves" in err
