#!/usr/bin/env python3
"""Benchmark: seconds per L-BFGS iteration, overhead over the bare network, GFLOP/s, memory, time to quality.

    python3 benchmarks/bench.py            # 256 and 512 px, every network whose weights are here
    python3 benchmarks/bench.py --quick    # 256 px, VGG-19 only: under 2 minutes
    python3 benchmarks/bench.py --large    # adds 1024 px

Each configuration runs in a fresh process (so its peak memory is its own) on the
example texture with the default layers, 4 octaves, ``-p reflect`` and the default hidden
margin (16 px per side: a 256 px run optimises 288x288; ``--extra`` changes these, e.g.
``--extra "-p reflect --margin 0"`` for the bare size). Prints a table and writes
the same numbers as JSON (``--json``, default benchmarks/results.json).

- s/iter: median wall time of one L-BFGS iteration after warm-up (the loss,
  its gradient, the optimiser's step, all of it); evals/iter: loss evaluations
  per iteration; eval s: median time of one loss-and-gradient evaluation alone
  (the JSON's optimiser_s: median time of the iterations that evaluated once,
  less eval s: the optimiser's own step).
- bare s: median time of the network alone on the same pyramid (forward and
  gradient to the input of a plain sum of the features: no Gram matrices, loss or
  optimiser); overhead = s/iter / bare s. The three are timed interleaved, one
  of each per iteration, so a drift in the machine's speed affects them alike.
- GFLOP: conv work of one loss-and-gradient evaluation, counted as 2 FLOP per
  multiply-add, forward plus input gradient (the same again), every level;
  GFLOP/s: that over bare s; conv ref: the GFLOP/s of a single 3x3 64 -> 64
  conv at the image's size, forward and input gradient (what the backend
  reaches on VGG's convolutions at their best).
- outside: the share of an iteration (of one evaluation) spent outside the evaluation.
  Any backend and device: set ``KERAS_BACKEND``.
- whole runs (``--whole SIZE ...``): a default run as a user starts it, twice (cold, then
  warm compilation cache): wall seconds and start-up (wall less each stage's iterations).
- time to quality (``--ttq SECONDS``): 512 px, ``-m 500``, each --schedule, on
  each of ``--textures``: wall seconds until the full-size loss first falls below
  1e-4, 1e-5 and 3e-6 of the starting loss, and the loss when the run ends (its
  500 iterations or the time budget, whichever comes first). Coarse stages report
  partial losses, so only the full-size stage can cross the thresholds.
  ``--images DIR`` keeps each run's final image, to look at.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
EXAMPLE = REPO / "examples" / "gravel.png"
WHOLE_GRACE_S = 60  # --whole-limit: seconds a stopped run has to save what it has before it is killed
TTQ_FRACTIONS = (1e-4, 1e-5, 3e-6)  # time-to-quality thresholds, as fractions of the starting loss
TTQ_MAX_ITER = 500  # --max-iter of the time-to-quality runs (the default; it sets the stage budgets)


def conv_flops(network: str, layers: list[str], sizes: list[tuple[int, int]], padding: str, count: int) -> float:
    """FLOP of one loss-and-gradient evaluation: 2 x MACs forward, the same for the input gradient."""
    from vgg16 import layer_channels, layer_names, layer_sizes

    names = layer_names(network)
    deepest = max(layers, key=names.index)
    channels = layer_channels(network)
    macs = 0
    for h, w in sizes:
        channels_in = 3
        for name, (oh, ow), c in zip(names, layer_sizes(network, deepest, h, w, padding), channels):
            if "_conv" in name:
                macs += oh * ow * 9 * channels_in * c
            channels_in = c
    return 2 * 2 * macs * count


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def reference_gflops(size: int, repeats: int) -> float | None:
    """Best GFLOP/s of a single 3x3 conv with ReLU, forward and input gradient, at VGG's shapes
    for a size x size image (64 -> 64 channels at full size, 128 at half, 256 at a quarter):
    about the best this backend does on these convolutions. TensorFlow directly, with the
    tensors kept in the backend, so no copy between numpy and the backend is timed. None on
    the other backends."""
    import autodiff

    if autodiff.backend_name() != "tensorflow":
        return None
    import tensorflow as tf

    best = 0.0
    for channels, side in ((64, size), (128, size // 2), (256, size // 4)):
        x = tf.random.normal((1, side, side, channels), seed=1)
        kernel = tf.random.normal((3, 3, channels, channels), stddev=0.05, seed=2)

        @tf.function
        def step(x, kernel=kernel):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "SAME")))
            return tape.gradient(loss, x)

        step(x)
        seconds = min(_timed(lambda: step(x).numpy()) for _ in range(repeats))
        best = max(best, 2 * 2 * side * side * 9 * channels * channels / 1e9 / seconds)
    return best


def _timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def one(network: str, size: int, iterations: int, warmup: int, extra: list[str]) -> dict:
    """Measure one configuration in this process; returns its numbers.

    After every L-BFGS iteration (outside its timing) the bare network and the
    loss-and-gradient alone are timed once at the current image, so all three
    medians come from the same minutes of a machine whose speed drifts.
    """
    from keras import ops

    import autodiff
    import synthesize
    from optimize import Progress

    args = synthesize.parse_args(["-s", str(EXAMPLE), "-ow", str(size), "--network", network,
                                  "--random-seed", "0", "-q", *extra])
    problem = synthesize.prepare(args, lambda message: None)
    shape = problem.x0.shape
    minimiser = problem.stage(0)

    def on_device(loss_fn):
        """loss_fn's loss and gradient compiled alone; timed until the loss reaches the host (the
        gradient is computed by then, in the same program), the gradient staying on the device."""
        compiled = autodiff.compile(autodiff.value_and_grad(loss_fn))
        return lambda x: autodiff.to_numpy(compiled(x)[0])

    # the bare network: forward and input gradient of a plain sum of the same features
    bare = on_device(lambda x: (sum(ops.sum(f) for f in problem.features(x)), ops.zeros((1,))))
    evaluation = on_device(minimiser.loss_fn)
    x0 = minimiser.to_device(problem.x0)
    bare(x0), evaluation(x0)  # compile outside the timing
    iteration_times, bare_times, eval_times, evals = [], [], [], []
    mark = {}

    def on_iteration(p: Progress) -> None:
        iteration_times.append(time.perf_counter() - mark["start"])
        evals.append(p.evaluations)
        bare_times.append(_timed(bare, p.current))
        eval_times.append(_timed(evaluation, p.current))
        mark["start"] = time.perf_counter()

    progress = Progress()
    mark["start"] = time.perf_counter()
    minimiser.run(problem.x0, max_iter=warmup + iterations, tol=0, on_iteration=on_iteration, progress=progress)
    eval_counts = [b - a for a, b in zip([1, *evals[:-1]], evals)][warmup:]
    per_iter = statistics.median(iteration_times[warmup:])
    bare_s = statistics.median(bare_times[warmup:])
    eval_s = statistics.median(eval_times[warmup:])
    evals_per_iter = sum(eval_counts) / len(eval_counts)
    flops = conv_flops(problem.network, problem.layers, problem.level_sizes, problem.padding, args.count)
    reference = reference_gflops(shape[1], 5)
    return {
        "network": problem.network, "size": size, "canvas": list(shape[1:3]), "octaves": args.octaves,
        "padding": problem.padding, "extra": extra, "backend": autodiff.backend_name(),
        "device": autodiff.device_name(),
        "s_per_iter": per_iter, "evals_per_iter": evals_per_iter, "eval_s": eval_s,
        # the share of an iteration spent outside its loss evaluation (iterations of one evaluation):
        # the optimiser's own work, dispatch and the few scalars that cross to the host
        "outside_share": 1 - eval_s / statistics.median(
            [t for t, n in zip(iteration_times[warmup:], eval_counts) if n == 1] or [math.nan]),
        # an iteration with a single evaluation, less that evaluation: the optimiser's own step
        "optimiser_s": statistics.median(
            [t for t, n in zip(iteration_times[warmup:], eval_counts) if n == 1] or [math.nan]) - eval_s,
        "bare_s": bare_s, "overhead": per_iter / bare_s,
        "gflop_per_eval": flops / 1e9, "gflops_bare": flops / 1e9 / bare_s,
        "gflops_iter": flops / 1e9 * evals_per_iter / per_iter,
        "gflops_reference": reference,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "iterations_measured": len(iteration_times) - warmup,
        "compilations": autodiff.compilations(),
    }


def whole_run(size: int, network: str, extra: list[str], limit: float | None = None, seed: str = "0") -> dict:
    """Wall time of a whole default run of ``size`` px as a user starts it (a fresh process:
    imports, weights, targets, compilation, 500 iterations, files), and its start-up: the wall
    time less each stage's iterations at their median time (run.json's ``stages``): imports,
    weights, targets, compilation, files. ``limit``: seconds after which the run is sent SIGTERM,
    as a user stopping it would (it saves what it has, and its run.json says where the time went).
    ``seed``: its --random-seed, or "none" for none (a seed also asks the GPU for deterministic
    kernels, which changes what XLA compiles)."""
    import signal
    import tempfile

    with tempfile.TemporaryDirectory() as out, tempfile.TemporaryFile("w+", errors="replace") as log:
        command = [sys.executable, str(REPO / "synthesize.py"), "-s", str(EXAMPLE), "-ow", str(size),
                   "--network", network, *([] if seed == "none" else ["--random-seed", seed]), "-q",
                   "--output-dir", out, *extra]
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, text=True)
        stopped = killed = False
        try:
            while True:  # os.wait4: this child's own peak memory
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                elapsed = time.perf_counter() - start
                if limit is not None and not stopped and elapsed > limit:
                    proc.send_signal(signal.SIGTERM)
                    stopped = True
                if stopped and not killed and elapsed > limit + WHOLE_GRACE_S:  # deaf to it (compiling)
                    proc.kill()
                    killed = True
                time.sleep(0.05)
        except BaseException:  # the benchmark itself stopped: not its run either
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        runs = list(Path(out).glob("*/run.json"))
        if (proc.returncode != 0 and not stopped) or not runs:
            log.seek(0)
            what = ("failed" if not stopped else f"killed {WHOLE_GRACE_S} s after SIGTERM at {limit:g} s" if killed
                    else f"stopped after {limit:g} s before its optimisation began")
            raise SystemExit(f"whole run {what}:\n{log.read()[-3000:]}")
        record = json.loads(runs[0].read_text())
    stages = record.get("stages") or []  # a run killed outright: its last snapshot's record has none
    iterating = sum(stage["iterations"] * stage["iteration_seconds"] for stage in stages)
    full_size = stages[-1] if stages else {"iteration_seconds": math.nan}
    return {"size": size, "extra": extra, "wall_s": wall, "iterations": record["iterations"],
            "stopped_after_s": limit if record["status"] != "finished" and stopped else None,
            "iteration_s": full_size["iteration_seconds"], "startup_s": wall - iterating,
            "startup": startup_parts(record, wall, iterating), "stages": stages,
            "compilations": record.get("compilations"),
            "backend": record["backend"], "device": record["device"], "final_loss": record["final_loss"],
            "peak_rss_gib": usage.ru_maxrss / 2**20, "memory": record.get("memory")}


def startup_parts(record: dict, wall: float, iterating: float) -> dict:
    """Where a whole run's start-up (``wall`` less ``iterating``, seconds) went, from its run.json:
    backend (imports, the device), prepare (sources, weights, targets; less the backend), the
    coarse-to-fine run's full-size starting loss (its program's compilation), growths between
    stages, first iterations beyond a stage's median (the starting evaluation and, under JAX, the
    stage's compilations; all of a stage stopped before its first iteration ended), finish (final
    images, pictures), the rest (the interpreter, snapshots waited for, iterations slower than their
    median) and compile (JAX: tracing, compiling and cache reads, counted across the parts above)."""
    timings, stages = record.get("timings") or {}, record.get("stages") or []
    backend = timings.get("backend") or 0.0
    parts = {
        "backend": backend, "prepare": timings.get("prepare", 0.0) - backend,
        "starting_loss": timings.get("starting_loss") or 0.0,
        "growths": sum(stage.get("grow_seconds") or 0.0 for stage in stages),
        "first_iterations": sum(stage["first_iteration_seconds"] - stage["iteration_seconds"] if stage["iterations"]
                                else stage["seconds"] for stage in stages),
        "finish": timings.get("finish", 0.0)}
    parts["rest"] = wall - iterating - sum(parts.values())
    parts["compile"] = (record.get("compilations") or {}).get("seconds")
    return {name: None if value is None else round(value, 2) for name, value in parts.items()}


def evaluation(size: int, max_memory: str | None, repeats: int, extra: list[str]) -> dict:
    """Seconds and peak memory of one loss-and-gradient evaluation at ``size`` px, as the starting
    loss of a run computes it: the whole image (``max_memory`` None, ``--force``d past the estimate)
    or tiled to fit ``max_memory``. The optimiser's arrays are not part of it."""
    import autodiff
    import synthesize

    flags = ["--force"] if max_memory is None else ["--max-memory", max_memory]
    args = synthesize.parse_args(["-s", str(EXAMPLE), "-ow", str(size), "--network", "vgg19", "--random-seed", "0",
                                  "-q", *flags, *extra])
    problem = synthesize.prepare(args, lambda message: None, optimised=False)
    plan = problem.plan(0)
    minimiser = problem.stage(0)
    seconds = []
    for _ in range(repeats + 1):  # the first compiles
        start = time.perf_counter()
        loss = minimiser.evaluate(problem.x0)[0]
        seconds.append(time.perf_counter() - start)
    return {"size": size, "canvas": list(problem.x0.shape[1:3]), "max_memory": max_memory, "extra": extra,
            "tiles": None if plan.tiles is None else list(plan.tiles), "estimated_gib": plan.need / 2**30,
            "seconds": statistics.median(seconds[1:]) if repeats else seconds[0], "first_s": seconds[0],
            "loss": loss, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "backend": autodiff.backend_name(), "device": autodiff.device_name()}


def time_to_quality(network: str, size: int, budget_s: float, extra: list[str], texture: Path,
                    image: Path | None) -> dict:
    """Run synthesize.py for ``budget_s`` seconds of optimisation; when did the loss cross the thresholds?

    Writes the final image (the last full-size iterate) to ``image`` if given, to look at.
    """
    import synthesize
    from images import save_png
    from optimize import Progress, optimise
    from vgg16 import deprocess

    reference = {}
    crossings = {f: None for f in TTQ_FRACTIONS}
    trace = []

    class Stop(Exception):
        pass

    def on_iteration(p: Progress) -> None:
        now = time.perf_counter() - reference["start"]
        full_size = tuple(p.current.shape) == reference["shape"]  # coarse stages have partial losses
        trace.append((now, p.final_loss, full_size))
        for fraction in TTQ_FRACTIONS:
            if full_size and crossings[fraction] is None and p.final_loss < fraction * reference["loss"]:
                crossings[fraction] = now
        if now > budget_s:
            raise Stop

    args = synthesize.parse_args(["-s", str(texture), "-ow", str(size), "--network", network,
                                  "--random-seed", "0", "-q", "-m", str(TTQ_MAX_ITER), "--tol", "0", *extra])
    problem = synthesize.prepare(args, lambda message: None)
    reference["loss"] = problem.stage(0).evaluate(problem.x0)[0]  # the plain, full-size starting loss
    reference["shape"] = problem.x0.shape
    reference["start"] = time.perf_counter()
    progress = Progress()
    try:
        optimise(problem, args.schedule, args.octaves, args.max_iter, args.tol, on_iteration, progress,
                 coarsest=problem.coarsest)
    except Stop:
        pass
    if image is not None and progress.best_x.shape == problem.x0.shape:
        m = problem.margin
        save_png(image, deprocess(progress.best_x[:, m:m + args.output_height, m:m + args.output_width])[0])
    return {"network": network, "size": size, "texture": texture.name, "extra": extra, "budget_s": budget_s,
            "initial_loss": reference["loss"],
            **{f"s_to_{f:g}": crossings[f] for f in TTQ_FRACTIONS},
            # the last full-size loss (a run whose budget ran out in a coarse stage has none)
            "final_loss": next((loss for _, loss, full in reversed(trace) if full), None),
            "seconds": trace[-1][0] if trace else None,
            "iterations": len(trace), "trace": trace}


def child(argv: list[str]) -> dict:
    """Run one measurement in a fresh process; returns its JSON result."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"benchmark child {argv} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def available_networks() -> list[str]:
    from vgg16 import find_vgg16_weights

    return ["vgg19"] + (["vgg16"] if find_vgg16_weights(REPO / "model_data") else [])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Speed benchmark of synthesize.py")
    parser.add_argument("--quick", action="store_true", help="256 px, VGG-19 only, fewer iterations")
    parser.add_argument("--large", action="store_true", help="also 1024x1024")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="output sizes (overrides the above)")
    parser.add_argument("--networks", nargs="+", default=None, help="default: every network whose weights are here")
    parser.add_argument("--iterations", type=int, default=10, help="measured iterations per configuration")
    parser.add_argument("--ttq", type=float, default=0, metavar="SECONDS",
                        help="also measure time to quality with this budget per schedule (512 px)")
    parser.add_argument("--extra", default="-p reflect",
                        help="extra synthesize.py flags for every configuration (default: -p reflect, which the "
                        "README's figures were measured with: valid padding could not run 4 octaves at "
                        "256 px before the 16 px margin)")
    parser.add_argument("--textures", type=Path, nargs="+", default=[EXAMPLE], metavar="IMAGE",
                        help="time to quality: source textures (default: the example)")
    parser.add_argument("--schedules", nargs="+", default=["plain", "coarse-to-fine"],
                        choices=["plain", "coarse-to-fine"], help="time to quality: the schedules to run")
    parser.add_argument("--images", type=Path, default=None, metavar="DIR",
                        help="time to quality: write each run's final image here, TEXTURE-SCHEDULE.png")
    parser.add_argument("--no-table", action="store_true", help="skip the per-iteration table (with --ttq)")
    parser.add_argument("--whole", type=int, nargs="*", default=None, metavar="SIZE",
                        help="also time whole default runs of these sizes, as a user starts them, twice "
                        "(the second shows what a warm compilation cache saves)")
    parser.add_argument("--runs", type=int, default=2, help="--whole: runs of each size (cold, then warm cache)")
    parser.add_argument("--whole-seed", default="0", metavar="SEED",
                        help="--whole: the runs' --random-seed, or none (default 0; a seed also asks the GPU for "
                             "deterministic kernels)")
    parser.add_argument("--whole-limit", type=float, default=None, metavar="SECONDS",
                        help="--whole: stop a run after this long (SIGTERM: it saves what it has, and the "
                             "start-up is still broken down)")
    parser.add_argument("--evaluate", type=int, nargs="*", default=None, metavar="SIZE",
                        help="time one loss-and-gradient evaluation at these sizes, tiled to fit --max-memory, "
                        "and (--untiled-too) the whole image, each in a fresh process: seconds, peak memory")
    parser.add_argument("--max-memory", default="4G", help="--evaluate: the memory the tiled evaluation may use")
    parser.add_argument("--untiled-too", action="store_true", help="--evaluate: also the whole image at once")
    parser.add_argument("--repeats", type=int, default=3, help="--evaluate: timed evaluations after the first")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results.json")
    parser.add_argument("--one", nargs=4, metavar=("NETWORK", "SIZE", "ITERATIONS", "WARMUP"), help=argparse.SUPPRESS)
    parser.add_argument("--eval-one", nargs=3, metavar=("SIZE", "MAX_MEMORY", "REPEATS"), help=argparse.SUPPRESS)
    parser.add_argument("--ttq-one", nargs=5, metavar=("NETWORK", "SIZE", "BUDGET", "TEXTURE", "IMAGE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    extra = args.extra.split()

    if args.one:
        network, size, iterations, warmup = args.one
        print(json.dumps(one(network, int(size), int(iterations), int(warmup), extra)))
        return 0
    if args.eval_one:
        size, max_memory, repeats = args.eval_one
        print(json.dumps(evaluation(int(size), None if max_memory == "none" else max_memory, int(repeats), extra)))
        return 0
    if args.ttq_one:
        network, size, budget, texture, image = args.ttq_one
        print(json.dumps(time_to_quality(network, int(size), float(budget), extra, Path(texture),
                                         Path(image) if image else None)))
        return 0

    networks = args.networks or (["vgg19"] if args.quick else available_networks())
    sizes = args.sizes or ([256] if args.quick else [256, 512] + ([1024] if args.large else []))
    iterations, warmup = (5, 2) if args.quick else (args.iterations, 3)
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
               "backend": os.environ.get("KERAS_BACKEND", "tensorflow")}
    print(f"machine: {machine['cpu']}, {machine['cores']} cores; backend {machine['backend']} (KERAS_BACKEND); "
          f"extra flags: {args.extra or '(none)'}")
    print(f"{'network':8} {'size':>5} {'s/iter':>7} {'evals/it':>8} {'eval s':>7} {'outside':>7} {'bare s':>7} "
          f"{'overhead':>8} {'GFLOP':>6} {'GFLOP/s':>7} {'conv ref':>8} {'peak MiB':>8}  device")
    rows = []
    for network in [] if args.no_table else networks:
        for size in sizes:
            extra_args = ["--extra", args.extra] if args.extra else []
            r = child(["--one", network, str(size), str(iterations), str(warmup), *extra_args])
            rows.append(r)
            reference = f"{r['gflops_reference']:>8.1f}" if r["gflops_reference"] else f"{'-':>8}"
            print(f"{r['network']:8} {r['size']:>5} {r['s_per_iter']:>7.4f} {r['evals_per_iter']:>8.2f} "
                  f"{r['eval_s']:>7.4f} {r['outside_share']:>7.1%} {r['bare_s']:>7.4f} {r['overhead']:>8.2f} "
                  f"{r['gflop_per_eval']:>6.1f} {r['gflops_bare']:>7.1f} {reference} {r['peak_rss_mib']:>8.0f}  "
                  f"{r['device']}", flush=True)
    evaluations = []
    for size in args.evaluate or []:
        for max_memory in (["none"] if args.untiled_too else []) + [args.max_memory]:
            extra_args = ["--extra", args.extra] if args.extra else []
            r = child(["--eval-one", str(size), max_memory, str(args.repeats), *extra_args])
            evaluations.append(r)
            how = "whole image" if r["tiles"] is None else f"tiles {r['tiles']} (--max-memory {max_memory})"
            print(f"evaluation {size} px, {how}: {r['seconds']:.2f} s (median of {args.repeats}; first "
                  f"{r['first_s']:.1f} s), peak memory {r['peak_rss_gib']:.2f} GiB (estimated "
                  f"{r['estimated_gib']:.2f}), loss {r['loss']:.6g}; {r['device']}", flush=True)
    whole = []
    for size in args.whole or []:
        for attempt in ("first", "repeated", "third", "fourth")[:args.runs]:
            r = whole_run(size, networks[0], extra, args.whole_limit, args.whole_seed)
            r["attempt"] = attempt
            whole.append(r)
            stopped = f", stopped after {args.whole_limit:g} s" if r["stopped_after_s"] else ""
            print(f"whole default run {size} px ({attempt}{stopped}): {r['wall_s']:.1f} s wall, "
                  f"{r['iterations']} iterations ({r['iteration_s']:.4f} s each at the last stage's size), "
                  f"start-up {r['startup_s']:.1f} s, peak memory {r['peak_rss_gib']:.2f} GiB; {r['device']}",
                  flush=True)
            print("  start-up: " + ", ".join(f"{name} {value:.1f} s" for name, value in r["startup"].items()
                                             if value is not None), flush=True)
    ttq = []
    if args.ttq:
        header = " ".join(f"{'s to ' + format(f, 'g'):>9}" for f in TTQ_FRACTIONS)
        print(f"\ntime to quality, {networks[0]} 512 px, budget {args.ttq:g} s per run; "
              f"thresholds are fractions of the starting loss")
        print(f"{'texture':12} {'schedule':15} {header} {'loss at end':>11} {'iters':>5} {'s':>6}")
        if args.images:
            args.images.mkdir(parents=True, exist_ok=True)
        for texture in args.textures:
            for schedule in args.schedules:
                extra_args = ["--extra", f"{args.extra} --schedule {schedule}".strip()]
                image = args.images / f"{texture.stem}-{schedule}.png" if args.images else ""
                r = child(["--ttq-one", networks[0], "512", str(args.ttq), str(texture.resolve()), str(image),
                           *extra_args])
                r["schedule"] = schedule
                ttq.append(r)
                fmt = lambda v: f"{v:>9.1f}" if v is not None else f"{'never':>9}"  # noqa: E731
                crossed = " ".join(fmt(r[f"s_to_{f:g}"]) for f in TTQ_FRACTIONS)
                end = f"{r['final_loss']:>11.4g}" if r["final_loss"] is not None else f"{'none':>11}"
                print(f"{texture.stem:12} {schedule:15} {crossed} {end} {r['iterations']:>5} "
                      f"{r['seconds']:>6.1f}", flush=True)
    args.json.write_text(json.dumps({"machine": machine, "extra": args.extra, "results": rows,
                                     "evaluations": evaluations, "whole_runs": whole, "time_to_quality": ttq},
                                    indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
