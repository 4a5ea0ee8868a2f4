#!/usr/bin/env python3
"""Print how many colours an image has that its source does not: the share of its pixels further
than 20 RGB units from every colour in the left half of the source, and the same share for a crop of
the source's right half of the same size (what a real photo of the texture scores); then the share
further than that from every colour of the whole source (colours made up, not taken from the
half the first share leaves out: on a source whose halves differ, such as a sky with a few
galaxies, the first share also counts faithful copies of what only the right half has).

    python3 benchmarks/colour_outliers.py SOURCE IMAGE [IMAGE ...] [--threshold 20]

An image that invents colours (purple blotches in a grey-green photo) scores several times its
source's crop; 1x or less means no colours from nowhere.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from errors import SynthesisError  # noqa: E402
from images import load_rgb  # noqa: E402
from quality import colour_outlier_share, colour_outliers_against_source  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--threshold", type=float, default=20.0, help="distance in RGB units (0-255)")
    args = parser.parse_args(argv)
    try:
        source = load_rgb(args.source, "SOURCE")
        rows = []
        for path in args.images:
            image = load_rgb(path, "IMAGE")
            share, baseline = colour_outliers_against_source(image, source, args.threshold)
            rows.append((path, share, baseline, colour_outlier_share(image, source, args.threshold)))
    except SynthesisError as err:
        raise SystemExit(f"colour_outliers.py: error: {err}") from None
    print("image\toutliers\tsource crop\tratio\twhole source")
    for path, share, baseline, whole in rows:
        ratio = share / baseline if baseline > 0 else float("inf") if share > 0 else 1.0
        print(f"{path}\t{share:.4%}\t{baseline:.4%}\t{ratio:.1f}x\t{whole:.4%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
