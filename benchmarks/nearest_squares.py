#!/usr/bin/env python3
"""Print how much of each image is a copy of its source: for every 16x16 square of the image
(every 4 px), the RMS distance (RGB units 0-255) to the nearest 16x16 square anywhere in the source.

    python3 benchmarks/nearest_squares.py SOURCE IMAGE [IMAGE ...] [--side 16]

Per image: the median distance, and the shares of squares nearer than 8 and 12 (near-copies of the
source). A copy of the source scores 0; a new texture of it keeps a distance of its own (gravel
and grass made from noise: medians 26 and 31, no square under 12).
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from errors import SynthesisError  # noqa: E402
from images import load_rgb  # noqa: E402
from quality import nearest_square_distances  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--side", type=int, default=16, help="the squares' side in pixels")
    args = parser.parse_args(argv)
    print("image\tmedian\tunder 8\tunder 12")
    try:
        source = load_rgb(args.source, "SOURCE")
        for path in args.images:
            image = load_rgb(path, "IMAGE")
            if min(*image.shape[:2], *source.shape[:2]) < args.side:
                raise SynthesisError(f"{path} or {args.source}: smaller than --side {args.side}")
            distances = nearest_square_distances(image, source, args.side)
            print(f"{path}\t{np.median(distances):.1f}\t{np.mean(distances < 8):.1%}\t{np.mean(distances < 12):.1%}",
                  flush=True)
    except SynthesisError as err:
        raise SystemExit(f"nearest_squares.py: error: {err}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
