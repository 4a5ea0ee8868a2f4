"""Day-to-day use: reproducibility, starting images, resuming, per-scale weights, progress, pictures."""

from __future__ import annotations

import io
import json
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import EXAMPLE, interrupt_cli
from gram import loss_per_level, multiscale_grams, source_targets, style_terms, term_weights
from reporting import Reporter
from synthesize import main

BASE = ["-s", str(EXAMPLE), "-ow", "72", "-o", "2", "-n", "5", "--network", "vgg19"]


def _run(tmp_path: Path, name: str, *flags: str) -> Path:
    out = tmp_path / name
    assert main([*BASE, "--output-dir", str(out), *flags]) == 0
    return next(out.iterdir())


def _record(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def test_same_random_seed_same_pngs_different_seed_different(tmp_path):
    a = _run(tmp_path, "a", "-m", "8", "--random-seed", "7")
    b = _run(tmp_path, "b", "-m", "8", "--random-seed", "7")
    c = _run(tmp_path, "c", "-m", "8", "--random-seed", "8")
    for name in ("Aseed_F0000.png", "I0005_F0000.png", "final_F0000.png"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "final_F0000.png").read_bytes() != (c / "final_F0000.png").read_bytes()
    assert _record(a)["random_seed"] == 7 and _record(a)["loss_history"] == _record(b)["loss_history"]


def test_drawn_seed_is_printed_and_recorded(tmp_path, capsys):
    run_dir = _run(tmp_path, "d", "-m", "2")
    seed = _record(run_dir)["random_seed"]
    assert f"--random-seed {seed}" in capsys.readouterr().err


def test_init_image_of_a_result_starts_at_its_loss(tmp_path):
    # without the hidden margin the saved image is the whole optimised canvas
    first = _run(tmp_path, "first", "-m", "40", "-p", "reflect", "--margin", "0", "--random-seed", "1")
    again = _run(tmp_path, "again", "-m", "1", "-p", "reflect", "--margin", "0", "--init-image",
                 str(first / "final_F0000.png"))
    assert _record(again)["initial_loss"] == pytest.approx(_record(first)["final_loss"], rel=0.01)
    assert (again / "Aseed_F0000.png").read_bytes() == (first / "final_F0000.png").read_bytes()


def test_init_image_is_resized_and_used_for_every_frame(tmp_path):
    Image.new("RGB", (30, 20), (200, 40, 40)).save(tmp_path / "red.png")
    run_dir = _run(tmp_path, "r", "-m", "1", "-p", "reflect", "--init-image", str(tmp_path / "red.png"))
    seed = np.asarray(Image.open(run_dir / "Aseed_F0000.png"))
    assert seed.shape == (72, 72, 3) and np.abs(seed.astype(int) - [200, 40, 40]).max() <= 1


def test_bad_init_image_names_the_flag(tmp_path, capsys):
    (tmp_path / "x.png").write_text("no")
    assert main([*BASE, "-m", "1", "--init-image", str(tmp_path / "x.png"), "--output-dir", str(tmp_path / "o")]) == 1
    assert f"--init-image {tmp_path / 'x.png'}: not an image" in capsys.readouterr().err


def test_resume_continues_an_interrupted_run(tmp_path):
    args = [*BASE, "-m", "100000", "-n", "2", "--tol", "0", "--random-seed", "3", "--output-dir", str(tmp_path)]
    first = tmp_path / "out.L2,7.o2.72x72"
    returncode, err = interrupt_cli(args, first / "I0004_F0000.png", signal.SIGINT)
    assert returncode == 130, err
    done = _record(first)["iterations"]
    assert done >= 4

    assert main(["--resume", str(first), "-m", str(done + 4), "-q"]) == 0
    second = tmp_path / "out.L2,7.o2.72x72.0"  # a new run directory
    record = _record(second)
    assert record["resumed_from"] == str(first) and record["start_iteration"] == done
    assert record["iterations"] == done + 4 and len(record["loss_history"]) == 4
    assert (second / "Aseed_F0000.png").read_bytes() == (first / "final_F0000.png").read_bytes()
    assert (second / f"I{done + 4:04d}_F0000.png").exists() or (done + 4) % 2
    assert record["args"]["random_seed"] == 3 and record["args"]["max_iter"] == done + 4
    assert record["final_loss"] < record["initial_loss"]
    # coarse-to-fine (the default) carries on in the stage the first run had reached, never coarser
    assert record["stages"][0]["level"] == _record(first)["level"] and record["level"] == 0


def test_resume_errors(tmp_path, capsys):
    assert main(["--resume", str(tmp_path / "none")]) == 1
    assert "no such run directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["--resume", str(tmp_path / "empty")]) == 1
    assert "no run.json" in capsys.readouterr().err


# ---------------------------------------------------------------- per-scale weights


def _identity(x):
    return [x, 2 * x]  # two "layers"


def test_octave_and_layer_weights_change_the_loss_as_computed_by_hand():
    rng = np.random.default_rng(0)
    source, image = rng.standard_normal((24, 24, 3)), rng.standard_normal((1, 20, 20, 3)).astype(np.float32)
    targets = source_targets([source], _identity, 2, "valid", "average")
    grams = multiscale_grams(image, _identity, 2, "valid")
    terms = [float(t) for t in style_terms(grams, targets)]  # level 0 layer a, level 0 layer b, level 1 a, 1 b
    weights = term_weights([2.0, 0.5], [1.0, 3.0])
    assert weights == [2.0, 6.0, 0.5, 1.5]
    total, per_level = loss_per_level(grams, targets, weights, 2)
    expected = [2 * terms[0] + 6 * terms[1], 0.5 * terms[2] + 1.5 * terms[3]]
    np.testing.assert_allclose(np.asarray(per_level), expected, rtol=1e-5)
    assert float(total) == pytest.approx(sum(expected), rel=1e-5)


def test_octave_weights_scale_the_recorded_octave_losses(tmp_path):
    # --seed noise: the same start for both (the default's pieces are cut at the coarsest level with a
    # Gram term, which octave weight 0 moves)
    plain = _record(_run(tmp_path, "p", "-m", "1", "--random-seed", "2", "--seed", "noise"))
    weighted = _record(_run(tmp_path, "w", "-m", "1", "--random-seed", "2", "--seed", "noise", "--octave-weights",
                            "3", "0", "--layer-weights", "1", "1"))
    # same start: the initial loss is 3 x the plain run's octave-0 loss at that start
    start_plain = plain["initial_loss"]
    assert weighted["initial_loss"] < 3 * start_plain
    assert weighted["octave_loss_history"][0][1] == 0.0


@pytest.mark.parametrize("flags, message", [
    (["--octave-weights", "1", "1", "1"], "give 2 values"),
    (["--layer-weights", "1"], "give 2 values"),
    (["--layer-weights", "1", "-1"], "not negative"),
    (["--octave-weights", "0", "0"], "at least one weight"),
    (["--octave-weights", "nan", "1"], "finite"),
])
def test_wrong_weights_are_refused(flags, message, tmp_path, capsys):
    assert main([*BASE, *flags, "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and flags[0] in err


# ---------------------------------------------------------------- progress and pictures


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_reporter_plain_lines_bar_and_quiet():
    plain = io.StringIO()
    reporter = Reporter(stream=plain, save_every=5)
    reporter.start(10)
    for i in range(1, 11):
        reporter.update(i, 1.0 / i)
    reporter.close()
    lines = plain.getvalue().splitlines()
    assert lines[0] == "synthesising: 10 iterations"
    assert [line.split()[1] for line in lines[1:]] == ["5/10", "10/10"] and "left" in lines[-1]

    tty = _Tty()
    reporter = Reporter(stream=tty)
    reporter.start(10)
    reporter.update(3, 0.5)
    reporter.close()
    assert "3/10" in tty.getvalue() and "loss 0.5" in tty.getvalue()

    quiet = io.StringIO()
    reporter = Reporter(quiet=True, stream=quiet)
    reporter.start(10)
    reporter.message("hello")
    reporter.update(10, 0.1)
    assert quiet.getvalue() == ""


def test_quiet_run_prints_only_the_summary(tmp_path, capsys):
    assert main([*BASE, "-m", "3", "-q", "--output-dir", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.startswith("finished: 3 iterations")


def test_loss_and_progress_pictures(tmp_path):
    run_dir = _run(tmp_path, "pics", "-m", "12", "--random-seed", "0")
    with Image.open(run_dir / "loss.png") as loss, Image.open(run_dir / "progress.png") as sheet:
        loss.load()
        sheet.load()
        assert loss.format == sheet.format == "PNG"
        assert loss.size == (600, 400)
        assert sheet.width == 4 * 128 and sheet.height == 144  # start, I0005, I0010, final
    assert len(_record(run_dir)["octave_loss_history"]) == 12
