"""The run directory: its name, creating it without reusing one, and atomic file writes."""

from __future__ import annotations

import json
import math
import os
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Callable, Sequence

from errors import SynthesisError


def run_dir_name(
    prefix: str, layers: Sequence[int], octaves: int, width: int, height: int, *,
    source_scale: float | None = None, source_width: int | None = None, count: int = 1,
    if_shift: float = 5.0, mul: float = 1.0, join_mode: str = "average", tile: bool = False,
) -> str:
    """The original's run directory name, e.g. ``out.L2,7.o4.512x512``; ``.tile`` before the size
    with ``--tile`` (our addition)."""
    name = f"{prefix}.L{','.join(str(layer) for layer in layers)}.o{octaves}"
    if source_scale is not None:
        name += f".w{source_scale:.2}"
    if source_width is not None:
        name += f".w{source_width}"
    if count > 1:
        name += f".c{count}.ifs{if_shift}"
    if mul != 1:
        name += f".m{mul}"
    if join_mode != "average":
        name += f".j{join_mode}"
    if tile:
        name += ".tile"
    return name + f".{width}x{height}"


def create_run_dir(output_dir: Path, name: str) -> Path:
    """Create ``output_dir/name``, or ``name.0``, ``name.1``, ... : the first that is free.

    An existing directory is never reused; creation is atomic (mkdir), so two
    runs started at once get different directories.
    """
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise SynthesisError(f"--output-dir {output_dir}: exists and is not a directory") from None
    except OSError as err:
        raise SynthesisError(f"--output-dir {output_dir}: cannot create it ({err.strerror})") from None
    candidates = [name] + [f"{name}.{i}" for i in range(10_000)]
    for candidate in candidates:
        path = output_dir / candidate
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
        except OSError as err:
            raise SynthesisError(f"--output-dir {output_dir}: cannot create {path.name} ({err.strerror})") from None
    raise SynthesisError(f"--output-dir {output_dir}: no free name for {name} (10000 runs exist)")


def frame_file(stem: str, frame: int) -> str:
    """``{stem}_F{frame:04d}.png``, e.g. ``final_F0000.png`` or ``Aseed_F0000.png``."""
    return f"{stem}_F{frame:04d}.png"


def snapshot_file(iteration: int, frame: int) -> str:
    """``I{iteration:04d}_F{frame:04d}.png``: frame ``frame`` after ``iteration`` L-BFGS iterations."""
    return frame_file(f"I{iteration:04d}", frame)


def tiled_preview_file(frame: int, count: int) -> str:
    """The 2x2 preview of ``--tile``: ``tiled_preview.png``, or ``tiled_preview_F0000.png``, ...
    one per frame, when ``count`` > 1."""
    return "tiled_preview.png" if count == 1 else frame_file("tiled_preview", frame)


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through ``write(file)`` into a temporary file, then rename it into place.

    No half-written file is ever left under ``path``; failures (disk full,
    permissions) raise SynthesisError naming the file.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes owner-only files; outputs are ordinary files
        os.replace(tmp, path)
    except OSError as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise SynthesisError(f"could not write {path}: {err.strerror or err}") from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: umask() changes it for a moment, process-wide


def _umask() -> int:
    return _UMASK


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path: Path, data: dict) -> None:
    """Write strict JSON (any parser reads it): NaN and infinities become null."""
    write_text(path, json.dumps(_finite(data), indent=2, allow_nan=False) + "\n")


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


class BackgroundWriter:
    """Writes files on one worker thread, in the order they are given, while the optimisation goes
    on (on a GPU, encoding a 1024 px snapshot takes longer than 20 iterations).

    ``submit`` raises the error of any write that has failed since, and waits while ``MAX_PENDING``
    writes are queued (so that queued images do not pile up in memory); ``wait`` blocks until all
    are written and raises the first failure.
    """

    MAX_PENDING = 2

    def __init__(self):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer")
        self._pending: list[Future] = []

    def submit(self, write: Callable[..., object], *args) -> None:
        self._settle(block=len(self._pending) >= self.MAX_PENDING)
        self._pending.append(self._pool.submit(write, *args))

    def wait(self) -> None:
        """Block until every write is done; raise the first failure."""
        pending, self._pending = self._pending, []
        errors = [future.exception() for future in pending]  # waits for every one of them
        first = next((error for error in errors if error is not None), None)
        if first is not None:
            raise first

    def _settle(self, block: bool) -> None:
        if block and self._pending:
            self._pending[0].result()
        while self._pending and self._pending[0].done():
            self._pending.pop(0).result()  # raises the write's error, if any
