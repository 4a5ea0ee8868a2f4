"""Pictures of a run, made at its end from data already held: the loss curve and a contact sheet."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np

SHEET_THUMB = 128  # contact-sheet thumbnail side, pixels
SHEET_MAX = 20  # at most this many snapshots on the sheet (evenly chosen, always the last)
SHEET_COLUMNS = 5
LABEL_HEIGHT = 16  # pixels under each thumbnail for its iteration number


def loss_plot_png(history: Sequence[float], per_level: Sequence[Sequence[float]] = (), start: int = 0) -> bytes:
    """PNG bytes of the loss per iteration on a log scale: the total and, if given, each octave.

    ``history``: total loss after iterations start+1, start+2, ...; ``per_level``:
    for each of those iterations, the loss of each pyramid level.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=100)
    axes = figure.add_subplot()
    iterations = np.arange(start + 1, start + 1 + len(history))
    axes.plot(iterations, np.maximum(history, 1e-30), color="black", linewidth=2, label="total")
    levels = np.asarray(per_level, dtype=np.float64)
    if levels.ndim == 2 and len(levels) == len(history):
        for level in range(levels.shape[1]):
            axes.plot(iterations, np.maximum(levels[:, level], 1e-30), linewidth=1, label=f"octave {level}")
    axes.set_yscale("log")
    axes.set_xlabel("L-BFGS iteration")
    axes.set_ylabel("loss")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()


def pick_snapshots(items: Sequence, limit: int = SHEET_MAX) -> list:
    """At most ``limit`` items, evenly spread, keeping the first and the last."""
    if len(items) <= limit:
        return list(items)
    picks = np.unique(np.round(np.linspace(0, len(items) - 1, limit)).astype(int))
    return [items[i] for i in picks]


def contact_sheet(images: Sequence[tuple[Path, str]]):
    """A grid of thumbnails with their labels under them; ``images``: (path, label). A Pillow image."""
    from PIL import Image, ImageDraw

    rows = -(-len(images) // SHEET_COLUMNS)
    columns = min(len(images), SHEET_COLUMNS)
    cell_h = SHEET_THUMB + LABEL_HEIGHT
    sheet = Image.new("RGB", (columns * SHEET_THUMB, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for index, (path, label) in enumerate(images):
        with Image.open(path) as image:
            thumb = image.convert("RGB")
            thumb.thumbnail((SHEET_THUMB, SHEET_THUMB))
        x, y = index % SHEET_COLUMNS * SHEET_THUMB, index // SHEET_COLUMNS * cell_h
        sheet.paste(thumb, (x + (SHEET_THUMB - thumb.width) // 2, y + (SHEET_THUMB - thumb.height) // 2))
        draw.text((x + 4, y + SHEET_THUMB + 2), label, fill="black")
    return sheet
