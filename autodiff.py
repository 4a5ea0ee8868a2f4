"""Everything that depends on the Keras backend: starting it, differentiating, compiling, devices.

The network, pyramid, Gram matrices, loss and the optimiser's vector algebra are
written with keras.ops and run on any Keras 3 backend. What keras.ops does not
cover lives here, once per backend:

- ``value_and_grad(loss_fn)``: the gradient of a keras.ops function, usable
  inside a compiled function (``jax.value_and_grad``, ``tf.GradientTape``,
  ``torch.autograd``);
- ``compile(fn)``: one compiled program per input shape (``jax.jit``,
  ``tf.function``; torch runs eagerly, under ``no_grad`` outside the gradient);
- moving arrays between numpy and the device, naming the device, its memory,
  turning its out-of-memory errors into one clear message, and counting JAX's
  compilations (``compilations``).

TensorFlow is the default: on a CPU it is the fastest of the three here (JAX's
CPU convolutions take about 2.5x as long). On a GPU, JAX compiles a whole
L-BFGS trial step, loss and gradient included, into one program.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from errors import SynthesisError

BACKENDS = ("tensorflow", "jax", "torch")  # the --backend choices, each also its package's name
JAX_CACHE_ENV = "TEXTURE_JAX_CACHE"  # overrides the folder of JAX's persistent compilation cache

_compilations = {"count": 0, "cache_hits": 0}
# JAX's monitoring events whose time spans make up the time spent compiling: tracing, lowering, and
# XLA's compilation (its GPU autotuning included) or reading the program from the persistent cache
_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")
_compile_spans: list[tuple[float, float]] = []  # (start, end) of each; counted as their union
_backend_seconds: float | None = None  # init_backend's, once it has started Keras and the device


class DeviceOutOfMemory(SynthesisError):
    """The device (GPU, or the CPU's allocator) could not allocate what an evaluation needs."""


@contextlib.contextmanager
def _native_stderr_captured():
    """Send what native code writes to file descriptor 2 into a temporary file.

    The captured text is replayed on stderr if the body raises, so nothing
    useful is lost; otherwise it is dropped.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            capture.seek(0)
            sys.stderr.write(capture.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def init_backend(backend: str | None = None, verbose: bool = False, deterministic: bool = False) -> str:
    """Start Keras on ``backend`` (--backend), else ``KERAS_BACKEND``, else tensorflow; returns its name.

    Hides TensorFlow's start-up log unless ``verbose`` (it logs device probing
    from native code before any log level applies). ``deterministic`` asks the
    GPU compilers for reproducible kernels; it must be known before the backend
    starts. Raises SynthesisError when the backend is unknown, not installed, or
    a different one is already running in this process.
    """
    global _backend_seconds
    _backend_seconds = None  # unless this call starts the backend
    name = backend or os.environ.get("KERAS_BACKEND") or BACKENDS[0]
    if name not in BACKENDS:
        raise SynthesisError(f"backend {name} (--backend or KERAS_BACKEND): not one this tool can "
                             f"differentiate with (choose from {', '.join(BACKENDS)})")
    if "keras" in sys.modules:
        import keras

        running = keras.backend.backend()
        if running != name:
            raise SynthesisError(f"--backend {name}: this process already runs Keras on {running}; "
                                 f"start a new process (or set KERAS_BACKEND={name})")
        _configure(name)
        return name
    import importlib.util

    if importlib.util.find_spec(name) is None:
        raise SynthesisError(f"--backend {name}: the {name} package is not installed "
                             f"(pip install {name}, or choose another --backend)")
    os.environ["KERAS_BACKEND"] = name
    started = time.perf_counter()
    if deterministic and name == "jax":
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_gpu_deterministic_ops=true").strip()
    context = contextlib.nullcontext() if verbose else _native_stderr_captured()
    with context:
        import keras  # noqa: F401

        if name == "tensorflow":
            import tensorflow as tf

            tf.config.list_physical_devices()
        _configure(name)
    device_name()  # starts JAX's client, torch's CUDA context: their warnings (no GPU found) stay visible
    _backend_seconds = time.perf_counter() - started
    return name


def backend_seconds() -> float | None:
    """Seconds the last ``init_backend`` spent importing Keras and its backend and starting the
    device, or None when it did not start them (Keras was running already: a second run in one
    process)."""
    return None if _backend_seconds is None else round(_backend_seconds, 3)


def _configure(name: str) -> None:
    """Once per process: JAX's persistent compilation cache (a repeated run of the same shapes
    reads its programs instead of compiling them) and a compilation counter."""
    if name != "jax" or _compilations.get("configured"):
        return
    _compilations["configured"] = True
    import jax

    folder = Path(os.environ.get(JAX_CACHE_ENV) or _cache_home() / "texture-synthesis" / "jax")
    with contextlib.suppress(OSError):
        folder.mkdir(parents=True, exist_ok=True)
    if os.access(folder, os.W_OK):
        jax.config.update("jax_compilation_cache_dir", str(folder))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

    def on_duration(event: str, duration: float, **_kwargs) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            _compilations["count"] += 1

    def on_span(event: str, start: float, end: float, **_kwargs) -> None:
        if event in _COMPILE_EVENTS:
            _compile_spans.append((start, end))

    def on_event(event: str, **_kwargs) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            _compilations["cache_hits"] += 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)
    listen_to_spans = getattr(jax.monitoring, "register_event_time_span_listener", None)  # older JAX lacks it
    if listen_to_spans is not None:
        listen_to_spans(on_span)
        _compilations["timed"] = True


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def compilations() -> dict | None:
    """JAX only: {"count": XLA compilations so far, "cache_hits": programs read from the
    persistent cache, "seconds": spent tracing, compiling and reading programs from the cache (None
    where this JAX does not report time spans)}; None on the other backends (they do not compile
    per op)."""
    if backend_name() != "jax":
        return None
    seconds = round(covered_seconds(_compile_spans), 3) if _compilations.get("timed") else None
    return {"count": _compilations["count"], "cache_hits": _compilations["cache_hits"], "seconds": seconds}


def covered_seconds(spans: list[tuple[float, float]]) -> float:
    """Seconds covered by the union of (start, end) spans: time two of them share counts once (a
    compilation's own spans do not nest in JAX 0.10, but a program compiled while another is traced
    would)."""
    total, reach = 0.0, -math.inf
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def backend_name() -> str:
    """The Keras backend in use (``KERAS_BACKEND``, tensorflow by default)."""
    import keras

    return keras.backend.backend()


def device_name() -> str:
    """Where the computation runs, e.g. ``gpu: NVIDIA H200`` or ``cpu``."""
    backend = backend_name()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return "cpu" if device.platform == "cpu" else f"{device.platform}: {device.device_kind}"
    if backend == "torch":
        import torch

        return f"gpu: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "cpu"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"gpu: {details.get('device_name', gpus[0].name)}"
    return "cpu"


def available_memory() -> tuple[float | None, str]:
    """(bytes free for the run's tensors, what they are): the GPU's memory when the run uses one
    (JAX, torch), else the machine's (Linux MemAvailable); None when unknown."""
    gpu = accelerator_memory()
    if gpu is not None:
        return gpu, "GPU memory"
    return machine_memory(), "memory"


def machine_memory() -> float | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def accelerator_memory() -> float | None:
    """Bytes of memory free on the GPU the run uses, or None on the CPU and where the backend does not
    say (TensorFlow reports what it uses, not what the card has)."""
    backend = backend_name()
    with contextlib.suppress(Exception):
        if backend == "jax":
            import jax

            device = jax.devices()[0]
            if device.platform != "cpu":
                stats = device.memory_stats() or {}
                if "bytes_limit" in stats:
                    return float(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
        elif backend == "torch":
            import torch

            if torch.cuda.is_available():
                return float(torch.cuda.mem_get_info()[0])
    return None


def peak_accelerator_memory() -> float | None:
    """Bytes the GPU's allocator has held at most so far (JAX, torch), or None on the CPU and
    where the backend does not say."""
    backend = backend_name()
    with contextlib.suppress(Exception):
        if backend == "jax":
            import jax

            device = jax.devices()[0]
            if device.platform != "cpu":
                return float((device.memory_stats() or {})["peak_bytes_in_use"])
        elif backend == "torch":
            import torch

            if torch.cuda.is_available():
                return float(torch.cuda.max_memory_allocated())
    return None


def value_and_grad(loss_fn: Callable) -> Callable:
    """The gradient of ``loss_fn``, traceable inside ``compile``.

    ``loss_fn`` maps a float32 tensor to ``(loss, aux)``: a scalar and a small
    tensor of values to report. Returns ``f(x) -> (loss, grad, aux)``, grad the
    shape of x.
    """
    backend = backend_name()
    if backend == "jax":
        import jax

        def jax_value_and_grad(x):
            (loss, aux), grad = jax.value_and_grad(loss_fn, has_aux=True)(x)
            return loss, grad, aux

        return jax_value_and_grad
    if backend == "torch":
        import torch

        def torch_value_and_grad(x):
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)
                loss, aux = loss_fn(x)
                (grad,) = torch.autograd.grad(loss, x)
            return loss.detach(), grad, aux.detach()

        return torch_value_and_grad
    import tensorflow as tf

    def tf_value_and_grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss, aux = loss_fn(x)
        return loss, tape.gradient(loss, x), aux

    return tf_value_and_grad


def compile(fn: Callable) -> Callable:  # noqa: A001 - the backend's word for it
    """``fn`` (keras.ops on backend tensors; arguments tensors, tuples of them, or numbers)
    compiled once per input shape: ``jax.jit``; ``tf.function`` (numbers become tensors, so
    a new value is not a new trace); torch runs it eagerly without recording gradients."""
    backend = backend_name()
    if backend == "jax":
        import jax

        return jax.jit(fn)
    if backend == "torch":
        import torch

        def eager(*args):
            with torch.no_grad():
                return fn(*(_as_tensors(a) for a in args))

        return eager
    import tensorflow as tf

    traced = tf.function(fn, jit_compile=False)

    def call(*args):
        return traced(*(_as_tensors(a) for a in args))

    return call


def _as_tensors(value):
    """Numbers and numpy arrays as backend tensors, tuples element by element: integer numpy
    arrays as int32 (indices), everything else as float32."""
    if isinstance(value, (tuple, list)):
        return type(value)(_as_tensors(v) for v in value)
    if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.integer):
        return to_device(value, "int32")
    if isinstance(value, (int, float, np.ndarray, np.generic)):
        return to_device(value)
    return value


def to_device(x, dtype: str = "float32") -> object:
    """A backend tensor of ``dtype`` on the run's device (numpy arrays and numbers). Under JAX a
    plain copy (``device_put``): ``jnp.asarray`` compiles a small program for every new shape."""
    x = np.asarray(x, dtype)
    if backend_name() == "jax":
        import jax

        return jax.device_put(x)
    from keras import ops

    return ops.convert_to_tensor(x, dtype=dtype)


def to_numpy(x) -> np.ndarray:
    """A backend tensor (on any device) as a numpy array; waits for it to be computed."""
    from keras import ops

    return np.asarray(ops.convert_to_numpy(x))


def is_out_of_memory(err: BaseException) -> bool:
    """True for a backend's way of saying that an allocation failed on the device."""
    if isinstance(err, MemoryError):
        return True
    text = f"{type(err).__name__}: {err}"
    return any(word in text for word in ("RESOURCE_EXHAUSTED", "ResourceExhausted", "OutOfMemory",
                                         "out of memory", "Out of memory", "OOM when allocating"))


@contextlib.contextmanager
def out_of_memory_as_error(what: str):
    """Turn the backend's out-of-memory errors in the body into DeviceOutOfMemory naming ``what``."""
    try:
        yield
    except DeviceOutOfMemory:
        raise
    except Exception as err:
        if not is_out_of_memory(err):
            raise
        raise DeviceOutOfMemory(f"the {device_name()} ran out of memory {what}") from err


def make_deterministic(seed: int) -> None:
    """Seed the backend and ask it for deterministic kernels, so a run repeats bit for bit (on
    TensorFlow's CPU not at 512 px and above on the wrap-around canvas: its gradient differs in the
    last bits from one evaluation to the next; see the README's "Repeat a result").

    TensorFlow: op determinism; torch: deterministic algorithms (and cuBLAS's
    fixed workspace); JAX: deterministic GPU ops (set in ``init_backend``); the
    CPU builds of all three are deterministic for these ops at small sizes.
    """
    backend = backend_name()  # (not keras.utils.set_random_seed: it imports TensorFlow on every backend)
    np.random.seed(seed)
    if backend == "tensorflow":
        import tensorflow as tf

        tf.random.set_seed(seed)
        tf.config.experimental.enable_op_determinism()
    elif backend == "torch":
        import torch

        torch.manual_seed(seed)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
