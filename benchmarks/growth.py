#!/usr/bin/env python3
"""Print what each coarse-to-fine growth of a run did to its coarse octaves' losses.

    python3 benchmarks/growth.py outputs/out.L2,7.o4.512x512/run.json [--window 10]

One line per growth: the stage's level and, for each coarser octave (finest first), its loss right
after the growth and at worst in the stage's first WINDOW iterations, as multiples of what the
previous stage ended with (1: kept); then the same for the picture: how far each coarser pyramid
level of the canvas lies from the previous stage's result, RMS in pixel values of 0-255 (0: kept; a
run records its first 10 iterations; "-": a run from before that record); then, per frame, whether
--growth keep reduced the grown image back to the previous stage's result ("-": not tried).
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quality import growth_damage  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", nargs="+", type=Path, help="run.json files")
    parser.add_argument("--window", type=int, default=10,
                        help="first iterations of a stage to look at (the picture's drift: at most the 10 "
                             "a run records)")
    args = parser.parse_args(argv)
    print("run\tlevel\tafter growth\tworst in the first iterations\tpicture after growth (RMS)\t"
          "picture, worst in the first iterations\treduced back (--growth keep)")
    for path in args.records:
        try:
            rows = growth_damage(json.loads(path.read_text()), args.window)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
            print(f"growth.py: error: {path}: not a readable run.json ({err})", file=sys.stderr)
            return 1
        for row in rows:
            after = " ".join("-" if r is None else f"{r:.3g}x" for r in row["after_growth"])
            worst = " ".join(f"{r:.3g}x" for r in row["first_iterations"])
            drift = ["-" if row[key] is None else " ".join(f"{r:.2f}" for r in row[key])
                     for key in ("drift_after", "drift_first")]
            back = "-" if row["reduced_back"] is None else " ".join("yes" if b else "no" for b in row["reduced_back"])
            print(f"{path}\t{row['level']}\t{after}\t{worst}\t{drift[0]}\t{drift[1]}\t{back}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
