"""Reading source images and writing PNGs (atomically)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from errors import SynthesisError
from outputs import atomic_write

SOURCE_SUFFIXES = (".jpg", ".jpeg", ".png")  # what a directory given to --source contributes
ALPHA_BACKGROUND = (255, 255, 255)  # transparent source pixels are composited onto white


def expand_sources(paths: Iterable[str]) -> list[Path]:
    """Files named by ``--source``: files as given, directories by their .jpg/.jpeg/.png files.

    Directories are not searched recursively; their files are taken in name order.
    """
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SOURCE_SUFFIXES)
            if not found:
                raise SynthesisError(f"--source {raw}: directory has no .jpg or .png files")
            files += found
        elif path.is_file():
            files.append(path)
        elif path.exists():
            raise SynthesisError(f"--source {raw}: not a regular file or directory")
        else:
            raise SynthesisError(f"--source {raw}: no such file or directory")
    return files


def _to_rgb(image):
    """Any Pillow image -> 8-bit RGB: 16-bit scaled down, alpha composited onto white."""
    from PIL import Image

    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        top = 1.0 if values.max() <= 1.0 else 255.0
        image = Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def load_rgb(path: Path, flag: str = "--source") -> np.ndarray:
    """Read an image file as RGB uint8, shape (H, W, 3).

    EXIF orientation is applied; animated images give their first frame;
    grayscale, palette, CMYK and 16-bit images are converted; transparency is
    composited onto white. Unreadable files raise SynthesisError naming ``flag``.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image)
            rgb = np.asarray(_to_rgb(image), dtype=np.uint8)
    except UnidentifiedImageError:
        raise SynthesisError(f"{flag} {path}: not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise SynthesisError(f"{flag} {path}: unreadable or damaged image ({err})") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise SynthesisError(f"{flag} {path}: empty image")
    return rgb


def resized_size(height: int, width: int, source_width: int | None, source_scale: float | None) -> tuple[int, int]:
    """(height, width) after ``--source-width`` (aspect kept) or ``--source-scale``."""
    if source_width is not None:
        return max(1, source_width * height // width), source_width
    if source_scale is not None:
        return max(1, int(height * source_scale)), max(1, int(width * source_scale))
    return height, width


def resize(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Lanczos-resample RGB uint8 (H, W, 3) to (height, width, 3)."""
    from PIL import Image

    if rgb.shape[:2] == (height, width):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.LANCZOS))


PNG_COMPRESS_LEVEL = 3  # see save_png


def save_png(path: Path, rgb: np.ndarray) -> None:
    """Write RGB uint8 (H, W, 3) as a PNG, atomically: never a half-written file under ``path``.

    zlib level 3, not Pillow's 6: 3x faster and no larger on textures (1024 px gravel: 0.08 s and
    851 KiB against 0.24 s and 910 KiB)."""
    from PIL import Image

    atomic_write(path, lambda f: Image.fromarray(rgb).save(f, format="PNG", compress_level=PNG_COMPRESS_LEVEL))


def repeat_2x2(rgb: np.ndarray) -> np.ndarray:
    """An image repeated twice across and twice down: (H, W, C) -> (2H, 2W, C); shows a tile's seams."""
    return np.tile(rgb, (2, 2, 1))
