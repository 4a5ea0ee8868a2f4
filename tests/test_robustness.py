"""Bad input of every kind: one clear stderr line, the right exit status, nothing lost or overwritten."""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import autodiff
import synthesize
from conftest import EXAMPLE, REPO, interrupt_cli
from errors import UsageError
from images import expand_sources, load_rgb
from optimize import NonFiniteLoss, lbfgs
from synthesize import main

SMALL = ["-ow", "72", "-o", "2", "-m", "6", "-n", "3", "--network", "vgg19", "--random-seed", "0"]


def run_cli(capsys, argv) -> tuple[int, list[str]]:
    status = main(argv)
    return status, capsys.readouterr().err.strip().splitlines()


def texture(size=(96, 96)) -> np.ndarray:
    """A crop of the example texture, RGB uint8."""
    return np.asarray(Image.open(EXAMPLE).convert("RGB"))[: size[0], : size[1]]


# ---------------------------------------------------------------- odd but valid images


def test_grayscale_palette_cmyk_are_converted(tmp_path):
    rgb = texture()
    Image.fromarray(rgb).convert("L").save(tmp_path / "gray.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "pal.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    for name in ("gray.png", "pal.png", "cmyk.jpg"):
        out = load_rgb(tmp_path / name)
        assert out.shape == (96, 96, 3) and out.dtype == np.uint8, name
        assert abs(float(out.mean()) - float(rgb.mean())) < 6, name


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:4, :, 3] = 255  # top half opaque red-ish, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = load_rgb(tmp_path / "a.png")
    np.testing.assert_array_equal(out[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(out[7, 7], [255, 255, 255])


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as check:
        assert check.mode.startswith("I")  # really a 16-bit file
    out = load_rgb(tmp_path / "deep.png")
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255 and 120 < out[32, 0, 0] < 136


def test_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), color) for color in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    out = load_rgb(tmp_path / "anim.gif")
    assert out[0, 0, 0] > 200 and out[0, 0, 2] < 50


def test_exif_orientation_is_honoured(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 10, 20))  # white band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = load_rgb(tmp_path / "rot.jpg")
    assert out.shape == (40, 20, 3)  # portrait once rotated
    assert out[:10].mean() > 200 and out[-10:].mean() < 50  # the band is now at the top


def test_odd_source_runs_end_to_end(tmp_path, capsys):
    values = (texture((96, 96)).mean(axis=2) * 257).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    status, err = run_cli(capsys, ["-s", str(tmp_path / "deep.png"), *SMALL, "--output-dir", str(tmp_path / "o")])
    assert status == 0, err
    assert (tmp_path / "o" / "out.L2,7.o2.72x72" / "final_F0000.png").exists()


# ---------------------------------------------------------------- bad sources


def _bad_sources(tmp_path: Path) -> dict[str, tuple[str, str]]:
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "zero.png").write_bytes(b"")
    good_jpg = tmp_path / "good.jpg"
    Image.fromarray(texture()).save(good_jpg, quality=90)
    (tmp_path / "cut.jpg").write_bytes(good_jpg.read_bytes()[:600])
    good_png = tmp_path / "good.png"
    Image.fromarray(texture()).save(good_png)
    (tmp_path / "cut.png").write_bytes(good_png.read_bytes()[:2000])
    return {  # name -> (path, expected part of the message)
        "missing": (str(tmp_path / "nope.jpg"), "no such file or directory"),
        "empty directory": (str(tmp_path / "empty_dir"), "directory has no .jpg or .png files"),
        "not an image": (str(tmp_path / "notes.txt"), "not an image Pillow can read"),
        "zero bytes": (str(tmp_path / "zero.png"), "not an image Pillow can read"),
        "truncated jpeg": (str(tmp_path / "cut.jpg"), "unreadable or damaged image"),
        "truncated png": (str(tmp_path / "cut.png"), "unreadable or damaged image"),
    }


@pytest.mark.parametrize("case", ["missing", "empty directory", "not an image", "zero bytes",
                                  "truncated jpeg", "truncated png"])
def test_bad_source_is_one_line_exit_1(case, tmp_path, capsys):
    path, expected = _bad_sources(tmp_path)[case]
    status, err = run_cli(capsys, ["-s", path, *SMALL, "--output-dir", str(tmp_path / "o")])
    assert status == 1
    assert len(err) == 1 and err[0].startswith(f"synthesize.py: error: --source {path}: ") and expected in err[0]
    assert not (tmp_path / "o").exists()


def test_directory_source_takes_jpg_and_png_only(tmp_path):
    Image.fromarray(texture()).save(tmp_path / "b.png")
    Image.fromarray(texture()).save(tmp_path / "a.jpg")
    (tmp_path / "c.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    Image.fromarray(texture()).save(tmp_path / "sub" / "d.png")
    assert [p.name for p in expand_sources([str(tmp_path)])] == ["a.jpg", "b.png"]


def test_source_too_small_names_minimum_and_flags(tmp_path, capsys):
    Image.fromarray(texture((50, 60))).save(tmp_path / "small.png")
    status, err = run_cli(capsys, ["-s", str(tmp_path / "small.png"), *SMALL, "--output-dir", str(tmp_path / "o")])
    assert status == 2 and len(err) == 1
    assert "is 60x50" in err[0] and "at least 67x67" in err[0]
    for flag in ("--octaves", "--source-width", "--padding-mode reflect"):
        assert flag in err[0]


# ---------------------------------------------------------------- numbers and options


@pytest.mark.parametrize("extra, flag", [
    (["-ow", "0"], "--output-width 0"), (["-ow", "-5"], "--output-width -5"),
    (["-oh", "100000"], "--output-height 100000"), (["-o", "0"], "--octaves 0"), (["-o", "40"], "--octaves 40"),
    (["-m", "0"], "--max-iter 0"), (["-n", "0"], "--save-every 0"), (["-c", "0"], "--count 0"),
    (["-l", "7", "7"], "--layers 7 7"), (["-l", "-1"], "--layers -1"), (["-l", "21"], "--layers 21"),
    (["--network", "vgg16", "-l", "18"], "--layers 18"),
    (["-ss", "0.5", "-sw", "64"], "mutually exclusive"), (["-ss", "0"], "--source-scale 0"),
    (["-ss", "inf"], "--source-scale inf"), (["-sw", "0"], "--source-width 0"),
    (["--mul", "nan"], "--mul nan"), (["--mul", "-1"], "--mul -1"), (["--tol", "inf"], "--tol inf"),
    (["--tol", "-1"], "--tol -1"), (["--if-weight", "nan"], "--if-weight nan"),
    (["--colour-weight", "-1"], "--colour-weight -1"), (["--colour-weight", "nan"], "--colour-weight nan"),
    (["-ow", "abc"], "--output-width"), (["-p", "mirror"], "--padding-mode"),
])
def test_bad_numbers_are_usage_errors(extra, flag, tmp_path, capsys):
    status, err = run_cli(capsys, ["-s", str(EXAMPLE), *SMALL, *extra, "--output-dir", str(tmp_path / "o")])
    assert status == 2
    assert flag in err[-1] and err[-1].startswith("synthesize.py: error:")
    assert not (tmp_path / "o").exists()


def test_usage_error_as_subprocess_has_no_traceback(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "synthesize.py"), "-s", "x.png", "-o", "0"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and "--octaves 0" in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == "" and not (tmp_path / "outputs").exists()


def test_memory_plan_refuses_and_force_overrides(monkeypatch, tmp_path, capsys):
    from pyramid import level_sizes

    layers, sizes = ["block1_pool", "block3_conv2"], level_sizes(8016, 8016, 4, "valid")
    monkeypatch.setattr(autodiff, "machine_memory", lambda: 2.0 * 2**30)
    budget, what = synthesize.memory_budget(synthesize.parse_args(["-s", "x.png"]))
    assert budget == 2.0 * 2**30 and what == "memory"
    # an 8000 px square: even its image-sized arrays (the optimiser's) exceed 2 GiB, tiles or not
    with pytest.raises(UsageError, match=r"needs at least .* GiB of memory .* 2\.00 GiB is available.*--force"):
        synthesize.plan_memory("vgg19", layers, "valid", sizes, 1, budget, what, force=False)
    assert synthesize.plan_memory("vgg19", layers, "valid", sizes, 1, budget, what, force=True).tiles is None
    status, err = run_cli(capsys, ["-s", str(EXAMPLE), "-ow", "8000", "--network", "vgg19",
                                   "--output-dir", str(tmp_path / "o")])
    assert status == 2 and "--force" in err[-1] and not (tmp_path / "o").exists()


def test_on_a_gpu_the_plan_uses_its_memory(monkeypatch):
    monkeypatch.setattr(autodiff, "accelerator_memory", lambda: 1.0 * 2**30)
    args = synthesize.parse_args(["-s", "x.png"])
    assert synthesize.memory_budget(args) == (1.0 * 2**30, "GPU memory")
    args = synthesize.parse_args(["-s", "x.png", "--max-memory", "512M"])
    assert synthesize.memory_budget(args) == (0.5 * 2**30, "memory (--max-memory 512M)")


@pytest.mark.parametrize("where", ["run", "evaluate"])  # in the full-size stage; at the starting loss
def test_device_out_of_memory_is_one_line_and_keeps_the_image(where, tmp_path, capsys, monkeypatch):
    # what JAX raises when the GPU cannot allocate
    import optimize

    real = getattr(optimize.Minimiser, where)

    def failing(self, *args, **kwargs):
        if self.shape[1] > 60:  # full size (104 px: 72 plus the 16 px margin, wrapped; the coarse stage 52)
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 12884901888 bytes.")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(optimize.Minimiser, where, failing)
    status, err = run_cli(capsys, ["-s", str(EXAMPLE), *SMALL, "-q", "--output-dir", str(tmp_path)])
    assert status == 1 and len(err) == 1, err
    assert "ran out of memory at 104x104" in err[0] and "lower --output-width/--output-height" in err[0]
    run_dir = next(tmp_path.iterdir())
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "out-of-memory" and (run_dir / "final_F0000.png").is_file()
    assert autodiff.is_out_of_memory(MemoryError()) and not autodiff.is_out_of_memory(ValueError("shape"))


# ---------------------------------------------------------------- output directory and disk


def test_output_dir_that_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("keep me")
    status, err = run_cli(capsys, ["-s", str(EXAMPLE), *SMALL, "--output-dir", str(blocker)])
    assert status == 1 and len(err) == 1 and f"--output-dir {blocker}" in err[0]
    assert blocker.read_text() == "keep me"


def test_output_dir_not_writable(tmp_path, capsys, monkeypatch):
    real_mkdir = Path.mkdir

    def refuse(self, *args, **kwargs):  # root may write anywhere: simulate a read-only volume
        if self.parent == tmp_path / "ro":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_mkdir(self, *args, **kwargs)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(Path, "mkdir", refuse)
    status, err = run_cli(capsys, ["-s", str(EXAMPLE), *SMALL, "--output-dir", str(tmp_path / "ro")])
    assert status == 1 and len(err) == 1 and "Permission denied" in err[0] and "--output-dir" in err[0]


def test_disk_full_while_saving_leaves_no_partial_file(tmp_path, capsys, monkeypatch):
    real_save = Image.Image.save
    calls = []

    def save(self, fp, *args, **kwargs):
        calls.append(1)
        if len(calls) >= 3:  # seed and first snapshot fit; then the disk is full
            fp.write(b"\x89PNG partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    status, err = run_cli(capsys, ["-s", str(EXAMPLE), *SMALL, "--output-dir", str(tmp_path / "o")])
    assert status == 1 and "No space left on device" in err[-1] and "could not write" in err[-1]
    run_dir = tmp_path / "o" / "out.L2,7.o2.72x72"
    assert sorted(p.name for p in run_dir.iterdir()) == ["Acommand.txt", "Aseed_F0000.png", "I0003_F0000.png", "run.json"]
    for png in run_dir.glob("*.png"):
        with Image.open(png) as image:
            image.load()  # every file under a final name is complete


# ---------------------------------------------------------------- signals


def test_a_signal_swallowed_by_a_finalizer_still_stops_the_run(monkeypatch):
    # a signal that arrives while the garbage collector runs a finalizer raises there, where Python
    # only prints exceptions: a CI run went on for 9000 iterations after its SIGINT so. Nor is it
    # printed (a traceback on stderr after Ctrl-C, as under JAX's collector callback); other
    # exceptions there still are
    import os
    import sys

    from synthesize import Interrupted, raise_if_signalled, signals_interrupt

    printed = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: printed.append(type(info.exc_value)))

    class Finalised:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(1000))  # the handler runs here, and its exception goes nowhere

    class Failing:
        def __del__(self):
            raise ValueError("a finalizer's own error")

    with signals_interrupt():
        raise_if_signalled()  # nothing yet
        Finalised()  # collected at once
        Failing()
        with pytest.raises(Interrupted) as caught:
            raise_if_signalled()
    assert caught.value.exit_status == 130
    assert printed == [ValueError]


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_result_and_records_interruption(sig, status, tmp_path):
    args = ["-s", str(EXAMPLE), "-ow", "72", "-o", "2", "-m", "100000", "-n", "2", "--tol", "0",
            "--network", "vgg19", "--output-dir", str(tmp_path)]
    run_dir = tmp_path / "out.L2,7.o2.72x72"
    returncode, err = interrupt_cli(args, run_dir / "I0004_F0000.png", sig)
    assert returncode == status, err
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "interrupted" and record["interrupted_at_iteration"] >= 4
    assert record["exit_status"] == status
    assert len(record["loss_history"]) == record["iterations"] == record["interrupted_at_iteration"]
    with Image.open(run_dir / "final_F0000.png") as image:
        assert image.size == (72, 72)
    assert "Traceback" not in err and "interrupted" in err


# ---------------------------------------------------------------- non-finite loss


def test_nan_mid_run_keeps_last_finite_iterate():
    target = np.arange(6, dtype=np.float32).reshape(2, 3)
    curvature = np.logspace(0, 4, 6).reshape(2, 3).astype(np.float32)  # ill-conditioned: many iterations

    def loss_fn(x):  # NaN once any pixel passes 2.5 on its way to the target (0..5)
        from keras import ops

        diff = ops.subtract(x, target)
        loss = ops.sum(ops.multiply(curvature, diff * diff))
        return loss + ops.where(ops.max(x) > 2.5, float("nan"), 0.0), ops.zeros((0,))

    seen = []
    progress = None
    with pytest.raises(NonFiniteLoss, match="stopped being finite at evaluation"):
        from optimize import Progress

        progress = Progress()
        lbfgs(loss_fn, np.zeros((2, 3), np.float32), max_iter=100, tol=0,
              on_iteration=lambda p: seen.append(p.best_x.copy()), progress=progress)
    assert seen  # some iterations were accepted before the NaN
    np.testing.assert_array_equal(progress.best_x, seen[-1])  # the last accepted, finite iterate
    assert np.all(np.isfinite(progress.best_x)) and len(progress.loss_history) == len(seen)


def test_non_finite_loss_exits_1_and_keeps_the_image(tmp_path, capsys):
    status, err = run_cli(capsys, ["-s", str(EXAMPLE), *SMALL, "--mul", "1e38", "--output-dir", str(tmp_path)])
    assert status == 1 and any("loss" in line and "inf" in line for line in err)
    run_dir = next(tmp_path.iterdir())
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "non-finite" and record["exit_status"] == 1
    assert (run_dir / "final_F0000.png").exists()


# ---------------------------------------------------------------- weights and unexpected errors


def test_corrupt_vgg19_file_in_data_dir(tmp_path, capsys):
    data = tmp_path / "weights"
    data.mkdir()
    (data / "vgg_normalised.pth").write_bytes(b"\x80\x02garbage")
    status, err = run_cli(capsys, ["-s", str(EXAMPLE), *SMALL, "-d", str(data), "--output-dir", str(tmp_path / "o")])
    assert status == 1 and len(err) == 1 and str(data / "vgg_normalised.pth") in err[0]
    assert (data / "vgg_normalised.pth").read_bytes() == b"\x80\x02garbage"
    assert not (tmp_path / "o").exists()


def test_unexpected_error_is_one_line_unless_debug(tmp_path, capsys, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("something broke\nsecond line")

    monkeypatch.setattr(synthesize, "load_sources", boom)
    status, err = run_cli(capsys, ["-s", str(EXAMPLE), *SMALL, "--output-dir", str(tmp_path)])
    assert status == 1 and err == ["synthesize.py: error: unexpected RuntimeError: something broke "
                                   "(run again with --debug for the traceback)"]
    with pytest.raises(RuntimeError):
        main(["-s", str(EXAMPLE), *SMALL, "--output-dir", str(tmp_path), "--debug"])
