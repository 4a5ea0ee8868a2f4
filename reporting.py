"""Progress on stderr: a tqdm bar on a terminal, plain periodic lines in logs, nothing when quiet."""

from __future__ import annotations

import sys
import time
from typing import TextIO

PLAIN_EVERY_S = 30.0  # in logs, a line at least this often (and at every snapshot)


class Reporter:
    """Reports iterations of one optimisation stage.

    On a terminal: a progress bar with iteration / total, loss, iterations per
    second and the time left. Otherwise: one plain line per snapshot or every
    ``PLAIN_EVERY_S`` seconds, so batch logs stay readable. ``quiet``: nothing
    (errors and the final summary are printed elsewhere).
    """

    def __init__(self, quiet: bool = False, stream: TextIO | None = None, save_every: int = 10):
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.save_every = save_every
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar = None
        self.total = 0
        self.first = 0
        self.started = time.monotonic()
        self.last_line = self.started
        self.iteration = 0  # the last iteration reported
        self.loss = None
        self.evaluation = (0.0, self.started)  # a tiled evaluation's fraction done, and when it began
        self.said_partial = False

    def message(self, text: str) -> None:
        """One line of information (not shown when quiet)."""
        if not self.quiet:
            self.error(text)

    def error(self, text: str) -> None:
        """One line saying why the run stopped early: shown even when quiet."""
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def start(self, total: int, first: int = 0, label: str = "synthesising") -> None:
        """A stage of ``total`` iterations begins, numbered from ``first`` + 1."""
        self.close()
        self.total, self.first, self.iteration = total, first, first
        self.started = self.last_line = time.monotonic()
        if self.quiet:
            return
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=first, desc=label, unit="it", file=self.stream,
                            dynamic_ncols=True, leave=True)
        else:
            self.message(f"{label}: {total - first} iterations")

    def update(self, iteration: int, loss: float) -> None:
        """Iteration ``iteration`` (counted from the run's start) finished with ``loss``."""
        self.iteration, self.loss = iteration, loss
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.4g}", refresh=False)
            self.bar.update(iteration - self.bar.n)
            return
        now = time.monotonic()
        if iteration % self.save_every and now - self.last_line < PLAIN_EVERY_S and iteration < self.total:
            return
        self.last_line = now
        done = iteration - self.first
        per_it = (now - self.started) / max(done, 1)
        left = per_it * (self.total - iteration)
        self.message(f"iteration {iteration}/{self.total}  loss {loss:.6g}  {per_it:.2f} s/it  "
                     f"{_duration(left)} left")

    def partial(self, fraction: float) -> None:
        """A loss evaluation computed in tiles is ``fraction`` (0..1] done: long evaluations (minutes
        at 4096 px on a CPU) show progress and the time left between iterations. Assumes one
        evaluation per iteration (the usual case after the first few)."""
        now = time.monotonic()
        done, began = self.evaluation
        if fraction <= done:  # a new evaluation
            began = now
        self.evaluation = (fraction, began)
        if self.quiet or fraction <= 0:
            return
        this_one = (now - began) / fraction  # the evaluation's estimated length
        finished = self.iteration - self.first
        per_it = (began - self.started) / finished if finished else this_one
        left = this_one * (1 - fraction) + per_it * max(self.total - self.iteration - 1, 0)
        what = f"evaluation {fraction:.0%} done" if self.total else f"starting loss {fraction:.0%} done"
        if self.bar is not None:  # the bar redrawn at most twice a second (tiles can be many and quick)
            if now - self.last_line >= 0.5:
                self.last_line = now
                loss = "" if self.loss is None else f"loss {self.loss:.4g}, "
                self.bar.set_postfix_str(f"{loss}{what}, {_duration(left)} left")
            return
        if self.said_partial and now - self.last_line < PLAIN_EVERY_S:
            return
        self.said_partial, self.last_line = True, now
        place = f"iteration {self.iteration + 1}/{self.total}: " if self.total else ""
        self.message(f"{place}{what}  {_duration(left)} left")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _duration(seconds: float) -> str:
    """'42 s', '3 min 5 s' or '1 h 2 min'."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
