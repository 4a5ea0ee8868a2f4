"""--schedule: the stage budgets, the coarse-to-fine driver on a problem with a known answer,
then small real runs through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import EXAMPLE
from optimize import DRIFT_WINDOW, Minimiser, Progress, coarse_drift, optimise, stage_budgets
from vgg16 import pixel_bounds
from pyramid import expand, resize_images
from synthesize import main

# ---------------------------------------------------------------- budgets


@pytest.mark.parametrize("max_iter, stages, budgets", [
    (500, 4, [84, 83, 83, 250]),  # the full-size stage gets half, the coarse ones share the rest
    (500, 1, [500]),
    (11, 3, [3, 2, 6]),
    (3, 4, [1, 0, 0, 2]),
    (0, 2, [0, 0]),
])
def test_stage_budgets(max_iter, stages, budgets):
    assert stage_budgets(max_iter, stages) == budgets
    assert sum(budgets) == max_iter


# ---------------------------------------------------------------- the driver, without a network


class QuadraticProblem:
    """Stand-in for synthesize.Problem: each stage's loss is sum(c (x - t)^2) with the target t and
    curvatures c (1 to 100: too ill-conditioned to finish in a few iterations) resized to the stage's
    size, and the per-octave aux reports NaN for the octaves the stage lacks, as the real one does."""

    def __init__(self, side: int, octaves: int):
        rng = np.random.default_rng(0)
        self.level_sizes = [(side >> k, side >> k) for k in range(octaves)]
        self.target = rng.uniform(-100, 130, (1, side, side, 3)).astype(np.float32)  # within the pixel bounds
        self.curvature = rng.uniform(1, 100, (1, side, side, 3)).astype(np.float32)
        self.x0 = np.full_like(self.target, 100.0)
        self.octaves = octaves
        self.padding = "reflect"
        self.x0_is_image = False
        self.first_start = None
        self.stages_built = []
        self.first_x = {}  # level -> the first image its stage evaluated

    def grow(self, x, level: int):
        return expand(x, self.level_sizes[level], self.padding), None

    def stage(self, first: int) -> Minimiser:
        from keras import ops

        self.stages_built.append(first)
        target = resize_images(self.target, self.level_sizes[first])
        curvature = resize_images(self.curvature, self.level_sizes[first])
        aux = np.concatenate([np.full(first, np.nan), np.ones(self.octaves - first)]).astype(np.float32)
        first_x = self.first_x

        def loss_fn(x):
            diff = ops.subtract(x, target)
            return ops.sum(ops.multiply(curvature, diff * diff)), ops.convert_to_tensor(aux)

        class Recording(Minimiser):
            def run(self, x0, **kwargs):
                first_x.setdefault(first, np.clip(x0, self.low, self.high))
                return super().run(x0, **kwargs)

        return Recording(loss_fn, (1, *self.level_sizes[first], 3), pixel_bounds())


def test_coarse_to_fine_runs_every_level_coarsest_first():
    problem = QuadraticProblem(32, 3)
    progress, stages_seen, shapes = Progress(), [], []
    optimise(problem, "coarse-to-fine", 3, 30, 0.0, lambda p: shapes.append(p.best_x.shape), progress,
             on_stage=lambda total, first, label: stages_seen.append((total, first, label)))
    assert [s["level"] for s in progress.stages] == [2, 1, 0]
    assert [s["size"] for s in progress.stages] == [[8, 8], [16, 16], [32, 32]]
    assert [s["iterations"] for s in progress.stages] == stage_budgets(30, 3) == [8, 7, 15]
    assert progress.iterations == len(progress.loss_history) == len(shapes) == 30
    assert shapes[0] == (1, 8, 8, 3) and shapes[-1] == (1, 32, 32, 3)
    assert [(total, first) for total, first, _ in stages_seen] == [(8, 0), (15, 8), (30, 15)]
    assert stages_seen[0][2] == "stage 1/3: 8x8, 1 octave(s)"
    # the run's starting loss is the full-size loss of the starting image, not the coarse stage's
    start = float(np.sum(problem.curvature * (problem.x0 - problem.target) ** 2))
    assert progress.initial_loss == pytest.approx(start, rel=1e-6)
    assert progress.best_x.shape == problem.x0.shape
    assert progress.final_loss < 1e-2 * start
    assert progress.evaluations >= 30 + 3


def test_coarse_to_fine_starts_at_the_coarsest_level_with_a_gram_term():
    # (a level whose every term is left out, or weighted 0, has nothing of the texture to match)
    problem = QuadraticProblem(32, 3)
    progress = optimise(problem, "coarse-to-fine", 3, 30, 0.0, lambda p: None, Progress(), coarsest=1)
    assert [s["level"] for s in progress.stages] == [1, 0]
    assert [s["iterations"] for s in progress.stages] == stage_budgets(30, 2) == [15, 15]


def test_plain_is_one_full_size_stage():
    problem = QuadraticProblem(16, 3)
    progress = optimise(problem, "plain", 3, 5, 0.0, lambda p: None, Progress())
    assert problem.stages_built == [0]
    (stage,) = progress.stages
    assert {k: stage[k] for k in ("level", "size", "iterations", "initial_loss", "final_loss")} == {
        "level": 0, "size": [16, 16], "iterations": 5, "initial_loss": progress.initial_loss,
        "final_loss": progress.final_loss}
    assert 0 < 4 * stage["iteration_seconds"] <= stage["seconds"]  # the median of the 4 after the first


@pytest.mark.parametrize("start, level, stages", [
    (0, None, [(2, 8), (1, 7), (0, 15)]),  # a fresh run: the plan for 30
    (3, None, [(2, 7), (1, 6), (0, 14)]),  # level unknown (an old run.json): all stages share what is left
    (8, 1, [(1, 11), (0, 11)]),  # resumed in the 16 px stage: carries on there
    (20, 0, [(0, 10)]),
    (29, 2, [(0, 1)]),  # one iteration left: the coarse stages get none and are skipped
])
def test_a_resumed_run_carries_on_in_the_stage_it_reached(start, level, stages):
    problem = QuadraticProblem(16, 3)
    progress = optimise(problem, "coarse-to-fine", 3, 30, 0.0, lambda p: None, Progress(start_iteration=start),
                        start_level=level)
    assert [(s["level"], s["iterations"]) for s in progress.stages] == stages
    assert progress.iterations == 30 and progress.best_x.shape == problem.x0.shape


def test_a_resumed_run_never_goes_back_to_a_coarser_stage():
    # interrupted at iteration 300 in the full-size stage, resumed with a larger --max-iter
    problem = QuadraticProblem(16, 3)
    progress = optimise(problem, "coarse-to-fine", 3, 1000, 0.0, lambda p: None, Progress(start_iteration=300),
                        start_level=0)
    assert [s["level"] for s in progress.stages] == [0] and problem.stages_built == [0]


def test_a_resumed_image_is_brought_down_through_the_pyramid():
    from pyramid import gaussian_pyramid

    problem = QuadraticProblem(16, 3)
    problem.x0_is_image = True
    optimise(problem, "coarse-to-fine", 3, 30, 0.0, lambda p: None, Progress(start_iteration=5), start_level=1)
    expected = np.asarray(gaussian_pyramid(problem.x0, 2, "reflect")[1])
    np.testing.assert_allclose(problem.first_x[1], np.clip(expected, -103.939, 151.061), rtol=1e-5)


def test_the_first_stage_starts_from_the_canvas_made_for_it():
    # --seed random with coarse-to-fine: the sources in pieces at the coarsest level, not x0 resampled
    problem = QuadraticProblem(16, 3)
    problem.first_start = np.random.default_rng(1).uniform(-50, 50, (1, 4, 4, 3)).astype(np.float32)
    optimise(problem, "coarse-to-fine", 3, 30, 0.0, lambda p: None, Progress())
    np.testing.assert_array_equal(problem.first_x[2], problem.first_start)
    resumed = QuadraticProblem(16, 3)  # a resumed run (its x0 an image) carries on from that image
    resumed.first_start, resumed.x0_is_image = problem.first_start, True
    optimise(resumed, "coarse-to-fine", 3, 30, 0.0, lambda p: None, Progress(start_iteration=5), start_level=2)
    assert not np.array_equal(resumed.first_x[2], problem.first_start)


def test_stages_without_iterations_are_skipped_and_growth_goes_one_level_at_a_time():
    # -m 3 with 4 octaves: budgets [1, 0, 0, 2]; the 4 px result grows to 8, 16, then 32 px
    problem = QuadraticProblem(32, 4)
    shapes = []
    progress = optimise(problem, "coarse-to-fine", 4, 3, 0.0, lambda p: shapes.append(p.best_x.shape), Progress())
    assert [(s["level"], s["iterations"]) for s in progress.stages] == [(3, 1), (0, 2)]
    assert shapes == [(1, 4, 4, 3), (1, 32, 32, 3), (1, 32, 32, 3)]
    assert problem.stages_built == [0, 3, 0]  # (the first: the run's full-size starting loss)


def test_growth_damage_compares_each_stage_with_the_last_iteration_before_it():
    from quality import growth_damage

    nan = None
    record = {"stages": [{"level": 2, "iterations": 2, "initial_octave_losses": [nan, nan, 8.0]},
                         {"level": 1, "iterations": 0, "initial_octave_losses": None},  # skipped
                         {"level": 0, "iterations": 3, "initial_octave_losses": [9.0, 1.0, 4.0]}],
              "octave_loss_history": [[nan, nan, 4.0], [nan, nan, 2.0],
                                      [5.0, 0.5, 6.0], [3.0, 3.0, 2.0], [1.0, 9.0, 8.0]]}
    # octave 1 had no stage of its own before (level 1 was skipped): only octave 2 is compared
    (row,) = growth_damage(record, window=2)
    assert row == {"level": 0, "after_growth": [2.0], "first_iterations": [3.0], "reduced_back": None,
                   "drift_after": None, "drift_first": None}  # a run from before the pictures' drift was recorded
    assert growth_damage(record, window=3)[0]["first_iterations"] == [4.0]
    assert growth_damage({"octave_loss_history": []}) == []  # a run still going: no stages yet


def test_growth_damage_reads_the_pictures_drift_after_the_growth_and_at_worst_in_the_window():
    from quality import growth_damage

    record = {"stages": [{"level": 1, "iterations": 1, "initial_octave_losses": [None, 1.0]},
                         {"level": 0, "iterations": 3, "initial_octave_losses": [5.0, 1.0],
                          "coarse_drift": [[0.5], [2.0], [4.0], [1.0]]}],  # grown, then per iteration
              "octave_loss_history": [[None, 1.0], [4.0, 2.0], [3.0, 3.0], [2.0, 1.5]]}
    (row,) = growth_damage(record, window=2)
    assert row["drift_after"] == [0.5] and row["drift_first"] == [4.0]
    assert growth_damage(record, window=1)[0]["drift_first"] == [2.0]


def test_worst_growth_is_the_largest_multiple_over_growths_and_octaves():
    from quality import worst_growth

    rows = [{"level": 1, "after_growth": [3.0], "first_iterations": [40.0]},
            {"level": 0, "after_growth": [None, 7.0], "first_iterations": [2.0, 5.0]}]
    assert worst_growth(rows) == (7.0, 40.0)
    assert worst_growth([]) == (None, None)  # a plain run: no growths
    assert worst_growth([{"level": 0, "after_growth": [None], "first_iterations": [2.0]}]) == (None, 2.0)
    drifts = [{"drift_after": [0.0], "drift_first": [1.5]}, {"drift_after": [0.1, 0.0], "drift_first": [0.7, 2.5]}]
    assert worst_growth(drifts, ("drift_after", "drift_first")) == (0.1, 2.5)
    assert worst_growth([{"drift_after": None, "drift_first": None}], ("drift_after", "drift_first")) == (None, None)


def test_coarse_drift_is_the_rms_difference_at_every_coarser_level():
    # circular padding and a kernel summing to 1: adding c to the canvas adds c to every level
    from pyramid import gaussian_pyramid

    canvas = np.random.default_rng(3).uniform(-50, 50, (1, 32, 32, 3)).astype(np.float32)
    previous = np.asarray(gaussian_pyramid(canvas, 2, "circular")[1])  # the last stage's result, 16 px
    drift = coarse_drift(previous, "circular", depth=4, skip=1)  # levels 1-3 of a 32 px canvas
    np.testing.assert_allclose(drift(canvas), [0, 0, 0], atol=1e-4)
    np.testing.assert_allclose(drift(canvas + 5.0), [5, 5, 5], rtol=1e-5)
    # detail finer than the coarser levels hold moves none of them: the generating kernel's
    # response is 0 at the highest frequency, so a checkerboard added to the canvas reduces to 0
    checkerboard = 8.0 * (-1.0) ** np.add.outer(np.arange(32), np.arange(32))[None, :, :, None]
    np.testing.assert_allclose(drift(canvas + checkerboard.astype(np.float32)), [0, 0, 0], atol=1e-4)
    # a change of one level's frequency moves that level and, reduced further, less below it
    stripes = 8.0 * np.cos(np.pi / 2 * np.arange(32))[None, None, :, None]  # period 4: Nyquist of level 1
    moved = drift(canvas + stripes.astype(np.float32))
    assert moved[0] > 1 and moved[1] == pytest.approx(0, abs=1e-4)


def test_each_grown_stage_records_how_far_its_coarse_levels_are_from_the_last_result():
    # the quadratic stand-in grows by enlarging alone: right after the growth, the drift is what
    # reducing the enlargement loses of the previous stage's result; then one entry per iteration
    from pyramid import gaussian_pyramid

    problem = QuadraticProblem(32, 3)
    iterates = {}  # canvas side -> its stage's iterates
    progress = optimise(problem, "coarse-to-fine", 3, 60, 0.0,
                        lambda p: iterates.setdefault(p.best_x.shape[1], []).append(p.best_x.copy()), Progress())
    first, second, third = progress.stages
    assert first["coarse_drift"] is None  # nothing before it
    assert len(second["coarse_drift"]) == len(third["coarse_drift"]) == DRIFT_WINDOW + 1
    assert [len(d) for d in third["coarse_drift"]] == [2] * (DRIFT_WINDOW + 1)  # levels 1 and 2
    previous = iterates[16][-1]  # the 16 px stage's result, and its level below (8 px)
    below = np.asarray(gaussian_pyramid(previous, 2, "reflect")[1])

    def rms(a, b):
        return np.sqrt(np.mean((np.asarray(a) - b) ** 2))

    def drift(canvas):
        levels = gaussian_pyramid(canvas, 3, "reflect")
        return [rms(levels[1], previous), rms(levels[2], below)]

    grown = np.clip(expand(previous, (32, 32), "reflect"), *pixel_bounds())
    np.testing.assert_allclose(third["coarse_drift"][0], drift(grown), rtol=1e-4)
    for k in (1, DRIFT_WINDOW):  # after the first and the last iteration of the window
        np.testing.assert_allclose(third["coarse_drift"][k], drift(iterates[32][k - 1]), rtol=1e-4)
    assert third["coarse_drift"][1] != third["coarse_drift"][DRIFT_WINDOW]


# ---------------------------------------------------------------- real runs


@pytest.mark.parametrize("padding", ["reflect", "valid"])
def test_real_coarse_to_fine_run(tmp_path: Path, padding: str):
    # valid padding needs 67 px for 2 octaves; the hidden margin makes the canvas 136 px (reflect: 128)
    argv = ["-s", str(EXAMPLE), "-ow", "96", "-o", "2", "-m", "20", "-n", "5", "--network", "vgg19",
            "--random-seed", "1", "--schedule", "coarse-to-fine", "-p", padding, "--output-dir", str(tmp_path), "-q"]
    assert main(argv) == 0
    run_dir = next(tmp_path.iterdir())
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "finished" and record["iterations"] == 20
    assert [s["iterations"] for s in record["stages"]] == [10, 10]
    assert [s["level"] for s in record["stages"]] == [1, 0]
    # coarse-stage octave losses exist only for the coarse octave
    assert record["octave_loss_history"][0][0] is None and record["octave_loss_history"][-1][0] is not None
    assert record["final_loss"] < 0.05 * record["initial_loss"]
    from images import load_rgb

    for name in ("I0005_F0000.png", "I0015_F0000.png", "final_F0000.png"):  # a coarse and a fine snapshot
        assert load_rgb(run_dir / name).shape == (96, 96, 3)
    # each stage records its starting per-octave losses (benchmarks/growth.py compares them)
    coarse, fine = record["stages"]
    assert coarse["initial_octave_losses"][0] is None and coarse["initial_octave_losses"][1] > 0
    assert all(v > 0 for v in fine["initial_octave_losses"])
    # where the time went: the first iteration (with its compilation) apart, the growth before each stage
    # apart from the stage's own seconds, the run's phases in order of their share
    for stage in record["stages"]:
        assert stage["first_iteration_seconds"] >= stage["iteration_seconds"] > 0
        assert stage["seconds"] >= stage["first_iteration_seconds"] + 5 * stage["iteration_seconds"]
        assert stage["grow_seconds"] >= 0
    timings = record["timings"]
    # None when an earlier test of this process had started Keras already
    assert timings["backend"] is None or 0 < timings["backend"] < timings["prepare"]
    assert timings["starting_loss"] > 0 and timings["prepare"] > 0 and timings["finish"] > 0
    assert timings["optimise"] >= sum(s["seconds"] + s["grow_seconds"] for s in record["stages"])
    assert timings["optimise"] >= timings["starting_loss"]
    assert record["seconds"] >= timings["prepare"] + timings["optimise"] + timings["finish"]


def test_startup_parts_add_up_to_the_start_up():
    import importlib.util

    path = Path(__file__).parent.parent / "benchmarks" / "bench.py"
    spec = importlib.util.spec_from_file_location("bench_cli", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    record = {"timings": {"backend": 2.0, "prepare": 5.0, "starting_loss": 1.5, "optimise": 30.0, "finish": 0.5},
              "stages": [{"iterations": 10, "iteration_seconds": 0.5, "first_iteration_seconds": 3.0,
                          "grow_seconds": 0},
                         {"iterations": 0, "iteration_seconds": 0.0, "first_iteration_seconds": None,
                          "grow_seconds": 0.25, "seconds": 1.25},  # stopped before its first iteration ended
                         {"iterations": 20, "iteration_seconds": 1.0, "first_iteration_seconds": 4.0,
                          "grow_seconds": 0.75}],
              "compilations": {"count": 7, "cache_hits": 0, "seconds": 6.0}}
    iterating = 10 * 0.5 + 20 * 1.0
    parts = bench.startup_parts(record, wall=40.0, iterating=iterating)
    assert parts == {"backend": 2.0, "prepare": 3.0, "starting_loss": 1.5, "growths": 1.0,
                     "first_iterations": 2.5 + 3.0 + 1.25, "finish": 0.5, "rest": 40.0 - 25.0 - 14.75,
                     "compile": 6.0}
    no_jax = {**record, "compilations": None, "timings": {**record["timings"], "backend": None}}
    assert bench.startup_parts(no_jax, 40.0, iterating)["compile"] is None
    # a run killed outright: its last snapshot's record has neither timings nor stages
    assert bench.startup_parts({"iterations": 30}, 40.0, 0.0) == {
        "backend": 0.0, "prepare": 0.0, "starting_loss": 0.0, "growths": 0.0, "first_iterations": 0.0,
        "finish": 0.0, "rest": 40.0, "compile": None}


def test_resume_keeps_the_recorded_schedule_and_level(tmp_path):
    from synthesize import expand_resume

    run = tmp_path / "run"
    run.mkdir()
    (run / "final_F0000.png").write_bytes(b"")

    def resume(record: dict, *extra: str):
        (run / "run.json").write_text(json.dumps({"command": ["synthesize.py", "-s", "a.png", "-m", "50"],
                                                  "iterations": 20, **record}))
        return expand_resume(["--resume", str(run), *extra])

    argv, start, level = resume({"args": {"schedule": "coarse-to-fine"}, "level": 1})
    assert (start, level) == (20, 1)
    assert argv == ["-s", "a.png", "-m", "50", "--schedule", "coarse-to-fine", "--growth", "smooth",
                    "--colour-weight", "0.0", "--pixel-range", "full", "--min-positions", "1",
                    # a run from before these: enlarged only, 0..255, every term
                    "--resume", str(run), "--init-image", str(run / "final_F0000.png")]  # before the colour term: none
    argv, _, _ = resume({"args": {"pixel_range": "source", "min_positions": 64}})
    assert argv[argv.index("--pixel-range") + 1] == "source" and argv[argv.index("--min-positions") + 1] == "64"
    argv, _, _ = resume({"args": {"schedule": "plain", "colour_weight": 1.0}})
    assert argv[argv.index("--colour-weight") + 1] == "1.0"  # the run's own loss, whatever today's default
    argv, _, _ = resume({"args": {"growth": "detail"}})
    assert argv[argv.index("--growth") + 1] == "detail"
    argv, _, _ = resume({"args": {"schedule": "coarse-to-fine"}, "level": 1}, "--schedule", "plain")
    assert argv[argv.index("--schedule", argv.index("--schedule") + 1) + 1] == "plain"  # the later one wins
    argv, _, _ = resume({"args": {"schedule": "plain", "margin": 8}})
    assert argv[argv.index("--margin") + 1] == "8"  # the run's canvas, whatever today's default margin
    assert argv[argv.index("--canvas") + 1] == "open"  # a run from before --canvas: an open one
    argv, _, _ = resume({"args": {"margin": 16, "canvas": "wrap"}})
    assert argv[argv.index("--margin") + 1] == "16" and argv[argv.index("--canvas") + 1] == "wrap"
    assert "--canvas" not in resume({"args": {"margin": 16, "canvas": "wrap"}}, "--tile")[0]
    assert "--margin" not in resume({"args": {"margin": 0, "tile": True}})[0]  # --tile takes none
    assert "--margin" not in resume({"args": {"margin": 16}}, "--tile")[0]
    assert resume({"args": {"schedule": "plain"}})[2] == 0  # a plain run is at full size
    assert resume({"args": {"schedule": "coarse-to-fine"}})[2] is None  # unknown: all stages again
