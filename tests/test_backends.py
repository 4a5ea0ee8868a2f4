"""Every feature end to end on every Keras backend installed here (tensorflow; jax and torch when
their packages are), each run a synthesize.py subprocess with KERAS_BACKEND set. The in-process
tests elsewhere run on tensorflow only: a process starts one backend."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import EXAMPLE, REPO, backend_env, installed_backends, interrupt_cli

REFERENCE = json.loads((Path(__file__).parent / "data" / "lbfgs_reference.json").read_text())["real"]
# --margin 0: the hidden border is numpy cropping, the same on every backend, and would make
# these canvases 2.25x larger
SMALL = ["-s", str(EXAMPLE), "-ow", "64", "-p", "reflect", "-o", "2", "--margin", "0", "-q", "--network", "vgg19"]


@pytest.fixture(params=installed_backends())
def backend(request, tmp_path_factory, monkeypatch) -> str:
    # one JAX compilation cache for the whole session: the same shapes compile once
    monkeypatch.setenv("TEXTURE_JAX_CACHE", str(tmp_path_factory.getbasetemp() / "jax-cache"))
    return request.param


def cli(backend: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "synthesize.py"), *argv], env=backend_env(backend),
                          capture_output=True, text=True, timeout=600)


def run_dir(out: Path) -> Path:
    (found,) = [p for p in out.iterdir() if p.is_dir()]
    return found


def record(out: Path) -> dict:
    return json.loads((run_dir(out) / "run.json").read_text())


def test_the_same_steps_as_the_host_optimiser_it_replaced(backend, tmp_path):
    # lbfgs_reference.json: this run's losses with the numpy L-BFGS of commit a2ae687 (TensorFlow).
    # Measured: 3e-7 relative on tensorflow; 5e-4 on jax and torch, whose convolutions sum in
    # another order. That optimiser knew the Gram loss alone (--colour-weight 0), on a reflect-padded
    # canvas without a hidden border (--margin 0), pixels bounded to 0..255 (--pixel-range full)
    done = cli(backend, *REFERENCE["argv"], "--colour-weight", "0", "--margin", "0", "--pixel-range", "full",
               "--output-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    got = record(tmp_path)
    assert got["backend"] == backend and got["device"]
    assert got["evaluations"] == REFERENCE["evaluations"]
    np.testing.assert_allclose(got["loss_history"], REFERENCE["loss_history"], rtol=2e-3)


def test_coarse_to_fine_with_tile_and_resume_and_same_seed(backend, tmp_path):
    # the default schedule on a periodic canvas; then resumed; the seed repeats bit for bit
    argv = [*SMALL, "--tile", "-m", "8", "-n", "4", "--random-seed", "5"]
    for name in ("a", "b"):
        done = cli(backend, *argv, "--output-dir", str(tmp_path / name))
        assert done.returncode == 0, done.stderr
    a, b = run_dir(tmp_path / "a"), run_dir(tmp_path / "b")
    assert (a / "final_F0000.png").read_bytes() == (b / "final_F0000.png").read_bytes()
    first = record(tmp_path / "a")
    assert [s["level"] for s in first["stages"]] == [1, 0] and first["seam_ratios"][0] < 2
    assert (a / "tiled_preview.png").is_file()
    done = cli(backend, "--resume", str(a), "-m", "12", "-q", "--output-dir", str(tmp_path / "c"))
    assert done.returncode == 0, done.stderr
    resumed = record(tmp_path / "c")
    assert resumed["start_iteration"] == 8 and resumed["iterations"] == 12
    assert resumed["final_loss"] < first["final_loss"]


def test_animation_and_init_image(backend, tmp_path):
    start = tmp_path / "start.png"
    Image.open(EXAMPLE).convert("RGB").resize((64, 64)).save(start)
    done = cli(backend, *SMALL, "-c", "2", "--if-order", "1", "--if-shift", "2", "-m", "4", "--schedule", "plain",
               "--init-image", str(start), "--output-dir", str(tmp_path / "o"))
    assert done.returncode == 0, done.stderr
    got = record(tmp_path / "o")
    assert (run_dir(tmp_path / "o") / "animation.png").is_file() and len(got["interframe"]["distances"][0]) == 2
    for frame in ("Aseed_F0000.png", "Aseed_F0001.png"):  # every frame starts from the image
        seed = np.asarray(Image.open(run_dir(tmp_path / "o") / frame), np.int16)
        assert np.abs(seed - np.asarray(Image.open(start), np.int16)).max() <= 1


def test_non_finite_loss_stops_with_exit_1(backend, tmp_path):
    done = cli(backend, *SMALL, "-m", "5", "--mul", "1e38", "--output-dir", str(tmp_path))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert record(tmp_path)["status"] == "non-finite"


def test_interruption_saves_the_image(backend, tmp_path):
    argv = [*SMALL, "-m", "100000", "-n", "2", "--tol", "0", "--schedule", "plain", "--output-dir", str(tmp_path)]
    out = tmp_path / "out.L2,7.o2.64x64"
    returncode, err = interrupt_cli(argv, out / "I0004_F0000.png", signal.SIGINT, backend)
    assert returncode == 130, err
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    assert (out / "final_F0000.png").is_file() and "Traceback" not in err


def test_tiled_run_takes_the_same_steps(backend, tmp_path):
    # --max-memory too small for the whole image: the loss in tiles (one window shape: the wrap-around
    # canvas's levels are wrapped before windows are cut), on every backend the same losses as the whole
    # image's
    import memory

    argv = ["-s", str(EXAMPLE), "-sw", "160", "-ow", "96", "-o", "2", "-m", "3", "-q", "--network", "vgg19",
            "--random-seed", "4", "--schedule", "plain"]
    for name, extra in (("whole", []), ("tiled", ["--max-memory", f"{memory.BASE_MEMORY / 2**20 + 12:.0f}M"])):
        done = cli(backend, *argv, *extra, "--output-dir", str(tmp_path / name))
        assert done.returncode == 0, done.stderr
    whole, tiled = record(tmp_path / "whole"), record(tmp_path / "tiled")
    assert tiled["memory"]["plans"][0]["tiles"][0] < 112 and whole["memory"]["plans"][0]["tiles"] is None
    np.testing.assert_allclose(tiled["loss_history"], whole["loss_history"], rtol=1e-4)


def test_compilation_time_counts_nested_spans_once():
    from autodiff import covered_seconds

    # time two spans share counts once; a span inside another adds nothing
    assert covered_seconds([(0.0, 10.0), (2.0, 3.0), (5.0, 12.0), (20.0, 21.0)]) == 13.0
    assert covered_seconds([(4.0, 5.0), (1.0, 2.0)]) == 2.0 and covered_seconds([]) == 0.0


@pytest.mark.skipif("jax" not in installed_backends(), reason="JAX is not installed")
def test_jax_compiles_once_per_shape_not_per_iteration(tmp_path, monkeypatch):
    # each stage compiles its trial, direction and gradient-scaling programs once, each growth its
    # measure of the coarse levels' drift, the Gram targets and the colour targets' pyramid one
    # program each per source shape: nothing per iteration or
    # per eager operation; a repeated run of the same shapes reads the big programs from the
    # persistent cache
    counts = {}
    for name, iterations in (("short", 4), ("long", 12), ("again", 12)):
        monkeypatch.setenv("TEXTURE_JAX_CACHE", str(tmp_path / ("cache-short" if name == "short" else "cache")))
        done = cli("jax", *SMALL, "-m", str(iterations), "--output-dir", str(tmp_path / name))
        assert done.returncode == 0, done.stderr
        counts[name] = record(tmp_path / name)["compilations"]
    stages, sources = 2, 1
    programs = {name: (c["count"], c["cache_hits"]) for name, c in counts.items()}  # all but their seconds
    assert programs["short"] == programs["long"], counts
    assert counts["long"]["count"] == 3 * stages + (stages - 1) + 2 * sources, counts
    # the time they took (tracing included): less when the big programs are read back
    assert 0 < counts["again"]["seconds"] < counts["long"]["seconds"], counts
    # a fresh process times its backend's start (imports, the device) within its preparation
    timings = record(tmp_path / "long")["timings"]
    assert 0 < timings["backend"] < timings["prepare"], timings
    # the trials (network forward and backward) and the targets at least: JAX writes a program to the
    # persistent cache only if it took 0.2 s or more to compile (autodiff), and the smaller ones (a
    # stage's direction program: vector arithmetic) can compile faster on a quiet machine (a fresh-clone
    # CI run of 7582134 read back 4 of its 8 programs)
    assert counts["again"]["cache_hits"] >= stages + sources, counts



def test_a_backend_that_cannot_be_used_is_one_line(tmp_path, monkeypatch, capsys):
    from synthesize import main

    argv = [*SMALL, "-m", "1", "--output-dir", str(tmp_path / "o")]
    monkeypatch.setenv("KERAS_BACKEND", "numpy")  # a Keras backend without gradients
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "backend numpy (--backend or KERAS_BACKEND)" in err[0]
    monkeypatch.delenv("KERAS_BACKEND")
    import autodiff

    assert autodiff.init_backend() == "tensorflow"  # as every in-process test runs it
    assert main([*argv, "--backend", "jax"]) == 1  # a process starts one backend
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already runs Keras on tensorflow" in err[0]
    assert not (tmp_path / "o").exists()
