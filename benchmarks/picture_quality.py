#!/usr/bin/env python3
"""Run synthesize.py on several sources, each with one or more option sets, and print how the
pictures score: colours the source lacks, frames at the border, and the Gram loss.

    python3 benchmarks/picture_quality.py examples/*.png --size 256 \\
        --common "-p reflect -m 200 --random-seed 5" --variant "--colour-weight 0" --variant ""

Per source and variant (each run in a fresh process, into --output-dir): the share of pixels more
than 20 RGB units from every colour of the source's left half (``quality.colour_outlier_share``)
and that share for a crop of the source's right half of the same size (a real photo's score), and
against every colour of the whole source (colours made up, not copied from the right half); the
luminance and contrast ratios of the 4 px and 12 px border bands over the centre
(``quality.frame_ratios``: 1 = no frame); what the coarse-to-fine growths did to the coarse octaves'
losses at worst, right after a growth and in a stage's first 10 iterations, as multiples of what
the previous stage left them at (``quality.worst_growth``, see ``benchmarks/growth.py``; "-" for a
plain run), and how far the picture's coarse levels then lay from the previous stage's result
(drift: RMS in pixel values); the run's final Gram loss and its seconds; and, once every run is
done, the picture's own Gram loss (``picture_alone``). Prints Markdown tables and writes them as JSON beside the runs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from images import load_rgb  # noqa: E402
from quality import (colour_outlier_share, colour_outliers_against_source, frame_ratios, growth_damage,  # noqa: E402
                     worst_growth)

BANDS = (4, 12)


def measure(source: Path, image: Path) -> dict:
    """The picture's scores against its source (see the module's docstring)."""
    rgb = load_rgb(image)
    whole = load_rgb(source)
    outliers, crop = colour_outliers_against_source(rgb, whole)
    scores = {"outliers": outliers, "source_crop": crop, "outliers_whole_source": colour_outlier_share(rgb, whole)}
    for band in BANDS:
        scores[f"luminance_{band}"], scores[f"contrast_{band}"] = frame_ratios(rgb, band)
    return scores


ALONE_OPTIONS = ["--padding-mode", "reflect", "--margin", "0", "--canvas", "open", "--colour-weight", "0",
                 "--min-positions", "1", "--pixel-range", "full", "--schedule", "plain", "--random-seed", "0"]


def picture_alone(record: dict, image: Path) -> float:
    """The Gram loss of the saved picture by itself: the run's sources at its sizes, its network,
    layers and octaves, but every term of every octave at weight 1, reflect padding, no margin and
    no wrap-around (``ALONE_OPTIONS``). A run's own Gram loss is its canvas's, margin included, which
    the optimiser balances against the picture; this one compares pictures of different canvases and
    margins with each other and with crops of the source. Not with a run made with these very options
    (``-p reflect --margin 0 --canvas open``): that one scores its own final loss here, optimised on
    exactly this, 35-100x below the others' and a crop's (gravel, 256 px)."""
    import synthesize

    options = record["args"]
    argv = ["-s", *(str(REPO / path) for path in options["source"])]  # a relative path was the repository's
    for flag, key in (("-ss", "source_scale"), ("-sw", "source_width")):
        if options[key] is not None:
            argv += [flag, str(options[key])]
    argv += ["-ow", str(options["output_width"]), "-oh", str(options["output_height"]), "--network", record["network"],
             "-l", *map(str, options["layers"]), "-o", str(options["octaves"]), "-j", options["join_mode"],
             "--mul", str(options["mul"]), "-d", str(REPO / options["data_dir"]), "--init-image", str(image),
             *ALONE_OPTIONS]
    problem = synthesize.prepare(synthesize.parse_args(argv), lambda message: None, optimised=False)
    return float(problem.stage(0).evaluate(problem.x0)[0])


def run(source: Path, size: int, options: list[str], out: Path) -> dict:
    """One synthesize.py run in a fresh process; its run.json with the picture's scores added."""
    argv = [sys.executable, str(REPO / "synthesize.py"), "-s", str(source), "-ow", str(size), *options,
            "--output-dir", str(out), "-q"]
    if subprocess.run(argv, cwd=REPO, stdout=subprocess.DEVNULL).returncode != 0:  # its own error is above
        raise SystemExit(f"picture_quality.py: error: synthesize.py failed on {source} with {' '.join(options)}")
    record_path = next(out.glob("*/run.json"))
    record = json.loads(record_path.read_text())
    image = Path(record["output_dir"]) / "final_F0000.png"
    rows = growth_damage(record)
    growth, first_iterations = worst_growth(rows)
    drift, drift_first = worst_growth(rows, ("drift_after", "drift_first"))
    return {"gram_loss": record.get("final_gram_loss", record["final_loss"]), "seconds": record["seconds"],
            **measure(source, image), "growth": growth, "growth_first_iterations": first_iterations,
            "drift": drift, "drift_first_iterations": drift_first,
            "image": str(image), "record": str(record_path)}


def multiple(value: float | None) -> str:
    """A growth multiple for the table: 4245x, 1.5x; "-" for none."""
    if value is None:
        return "-"
    return f"{value:.0f}x" if value >= 100 else f"{value:.3g}x"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", type=Path)
    parser.add_argument("--size", type=int, default=256, help="output width and height")
    parser.add_argument("--common", default="", help="options every run gets")
    parser.add_argument("--variant", action="append", default=None,
                        help="options of one variant (repeat for several; default: one with none)")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/picture_quality"))
    args = parser.parse_args(argv)
    variants = args.variant or [""]
    rows = []
    print("| source | variant | outliers | source crop | whole source | lum 4 | contrast 4 | lum 12 | contrast 12 | "
          "growth | first 10 | drift | drift first 10 | Gram loss | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for source in args.sources:
        for number, variant in enumerate(variants):
            out = args.output_dir / f"{source.stem}.{args.size}.v{number}"
            if out.exists():
                raise SystemExit(f"picture_quality.py: error: {out} exists; choose another --output-dir")
            row = {"source": str(source), "variant": variant,
                   **run(source, args.size, shlex.split(args.common) + shlex.split(variant), out)}
            rows.append(row)
            print(f"| {source.name} | `{variant or '(none)'}` | {row['outliers']:.3%} | {row['source_crop']:.3%} | "
                  f"{row['outliers_whole_source']:.3%} | "
                  + " | ".join(f"{row[f'{k}_{b}']:.2f}" for b in BANDS for k in ("luminance", "contrast"))
                  + f" | {multiple(row['growth'])} | {multiple(row['growth_first_iterations'])}"
                  + "".join(" | -" if row[k] is None else f" | {row[k]:.2f}"
                            for k in ("drift", "drift_first_iterations"))
                  + f" | {row['gram_loss']:.3g} | {row['seconds']:.0f} |", flush=True)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    table = args.output_dir / f"picture_quality.{args.size}.json"
    table.write_text(json.dumps(rows, indent=1))  # the runs' scores are kept whatever happens next
    # each picture alone, once every run is done: Keras starts in this process only now, so that no run
    # shares a device (and its memory) with it
    from errors import SynthesisError

    print("\n| source | variant | picture alone |\n|---|---|---|")
    for row in rows:
        try:
            row["picture_alone"] = picture_alone(json.loads(Path(row["record"]).read_text()), Path(row["image"]))
        except SynthesisError as err:
            raise SystemExit(f"picture_quality.py: error: scoring {row['image']} alone: {err}") from None
        print(f"| {Path(row['source']).name} | `{row['variant'] or '(none)'}` | {row['picture_alone']:.3g} |",
              flush=True)
    table.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
