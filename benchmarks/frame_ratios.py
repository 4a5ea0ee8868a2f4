#!/usr/bin/env python3
"""Print how much of a frame an image has: luminance and contrast of its border bands vs its interior.

    python3 benchmarks/frame_ratios.py outputs/out.L2,7.o4.512x512/final_F0000.png [--bands 4 12]
    python3 benchmarks/frame_ratios.py IMAGE --profile          # every 4 px ring, up to 64 px deep
    python3 benchmarks/frame_ratios.py --crops examples/brick.png --size 256   # the photo's own crops

1 = no frame; a dark, blurred frame scores well below 1. What one picture scores also depends on
where its content falls: ``--crops`` prints what random crops of a photo, which have no frame,
score (mean and 10th-90th percentiles of each ratio; the share of crops with every ratio within
``quality.FRAME_RANGES``), and ``--profile`` the ratios ring by ring (``quality.band_profile``).
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from errors import SynthesisError  # noqa: E402
from images import load_rgb  # noqa: E402
from quality import band_profile, crop_frame_ratios, frame_ratios, within_frame_ranges  # noqa: E402

RING = 4  # --profile: ring width in pixels
DEEPEST = 64  # --profile: how deep the rings go, at most (a quarter of the smaller side if less)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="*", type=Path)
    parser.add_argument("--bands", type=int, nargs="+", default=[4, 12], help="band widths in pixels")
    parser.add_argument("--profile", action="store_true", help=f"also the ratios of every {RING} px ring, "
                        f"up to {DEEPEST} px deep")
    parser.add_argument("--crops", type=Path, action="append", default=[], metavar="PHOTO",
                        help="the ratios of random --size px crops of this photo (repeat for more photos)")
    parser.add_argument("--size", type=int, default=256, help="--crops: the crops' side in pixels")
    parser.add_argument("--count", type=int, default=300, help="--crops: how many crops")
    args = parser.parse_args(argv)
    if not args.images and not args.crops:
        parser.error("give an IMAGE, or --crops PHOTO")
    if min(args.bands) < 1:
        parser.error(f"--bands {' '.join(map(str, args.bands))}: band widths must be at least 1 px")
    if args.profile and not args.images:
        parser.error("--profile: give an IMAGE to profile")
    if args.crops and args.count < 1:
        parser.error(f"--count {args.count}: must be at least 1")
    if args.crops and args.size < 4 * max(args.bands):
        parser.error(f"--size {args.size}: must be at least {4 * max(args.bands)} px (4x the widest of --bands)")
    try:
        if args.images:
            print("image\t" + "\t".join(f"lum{b}\tcontrast{b}" for b in args.bands))
        for path in args.images:
            rgb = load_rgb(path, "IMAGE")
            if 4 * max(args.bands) > min(rgb.shape[:2]):
                parser.error(f"{path}: {rgb.shape[1]}x{rgb.shape[0]} is too small for --bands up to "
                             f"{max(args.bands)} px (needs a side of {4 * max(args.bands)})")
            ratios = [frame_ratios(rgb, band) for band in args.bands]
            print(f"{path}\t" + "\t".join(f"{lum:.3f}\t{con:.3f}" for lum, con in ratios))
            if args.profile:
                depth = min(DEEPEST, min(rgb.shape[:2]) // 4 // RING * RING)
                if depth < RING:
                    parser.error(f"--profile: {path} ({rgb.shape[1]}x{rgb.shape[0]}) is too small for "
                                 f"{RING} px rings (needs a side of {4 * RING})")
                for start, (lum, con) in zip(range(0, depth, RING), band_profile(rgb, RING, depth)):
                    print(f"  {start:2d}-{start + RING - 1:2d} px\tlum {lum:.3f}\tcontrast {con:.3f}")
        for path in args.crops:
            rgb = load_rgb(path, "--crops")
            if args.size > min(rgb.shape[:2]):
                parser.error(f"--size {args.size}: larger than --crops {path} ({rgb.shape[1]}x{rgb.shape[0]})")
            crops = crop_frame_ratios(rgb, args.size, args.count, tuple(args.bands))
            names = [f"{kind}{b}" for b in args.bands for kind in ("lum", "contrast")]
            cells = [f"{name} {np.mean(col):.2f} ({np.percentile(col, 10):.2f}-{np.percentile(col, 90):.2f})"
                     for name, col in zip(names, crops.T)]
            print(f"{path}, {args.count} crops of {args.size} px: " + ", ".join(cells)
                  + f"; every ratio in range: {within_frame_ranges(crops).mean():.0%}")
    except SynthesisError as err:
        raise SystemExit(f"frame_ratios.py: error: {err}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
