#!/usr/bin/env python3
"""Print how much of a frame an image has: luminance and contrast of its border bands vs its interior.

    python3 benchmarks/frame_ratios.py outputs/out.L2,7.o4.512x512/final_F0000.png [--bands 4 12]

A natural photo scores about 0.95-1.05 on both; a dark, blurred frame scores well below 1.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from images import load_rgb  # noqa: E402
from quality import frame_ratios  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--bands", type=int, nargs="+", default=[4, 12], help="band widths in pixels")
    args = parser.parse_args(argv)
    print("image\t" + "\t".join(f"lum{b}\tcontrast{b}" for b in args.bands))
    for path in args.images:
        rgb = load_rgb(path)
        ratios = [frame_ratios(rgb, band) for band in args.bands]
        print(f"{path}\t" + "\t".join(f"{lum:.3f}\t{con:.3f}" for lum, con in ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
