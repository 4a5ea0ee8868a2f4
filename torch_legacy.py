"""Read a PyTorch state dict saved in the legacy (pre-zip) format, without torch.

The legacy format written by ``torch.save(..., _use_new_zipfile_serialization=False)``
is a stream of five pickles followed by raw tensor storages:

1. the magic number ``0x1950a86a20f9469cfc6c``;
2. the protocol version (1001);
3. a dict of system information (byte order, type sizes);
4. the state dict itself, whose tensors refer to storages by persistent id;
5. the list of storage keys, in the order their data follows;

then, for every key, an 8-byte little-endian element count and the raw elements.

A pickle is a program: unpickling can call any importable function. The reader
therefore allows only the handful of globals such a state dict needs and maps
them to harmless stand-ins; anything else is refused before it runs.
"""

from __future__ import annotations

import collections
import pickle
import struct
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # first pickle of every legacy torch file
PROTOCOL_VERSION = 1001  # the only legacy protocol version torch ever wrote

# torch storage class name -> numpy element type of its raw data
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
}


class LegacyFormatError(ValueError):
    """The file is not a legacy torch state dict this reader accepts."""


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: np.dtype


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` and friends: only carries a dtype."""

    def __init__(self, name: str):
        self.dtype = _STORAGE_DTYPES[name]


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: records where data is."""
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a legacy state dict uses."""

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise LegacyFormatError(f"refusing to load global '{module}.{name}' from the pickle")

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel[, view_metadata])
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise LegacyFormatError(f"unexpected persistent id {pid!r}")
        storage_type = pid[1]
        if not isinstance(storage_type, _StorageType):
            raise LegacyFormatError(f"unexpected storage type {storage_type!r}")
        return _StorageRef(str(pid[2]), storage_type.dtype)


def _load_pickle(f: BinaryIO):
    try:
        return _RestrictedUnpickler(f).load()
    except LegacyFormatError:
        raise
    except Exception as err:  # any malformed pickle
        raise LegacyFormatError(f"malformed pickle: {err}") from err


def read_state_dict(f: BinaryIO) -> dict[str, np.ndarray]:
    """Read a legacy torch state dict from an open binary file.

    Returns an ordered dict mapping parameter names to numpy arrays with the
    tensors' shapes and dtypes. Raises ``LegacyFormatError`` for anything else,
    including pickles that ask for globals outside the allowed few.
    """
    if _load_pickle(f) != MAGIC_NUMBER:
        raise LegacyFormatError("not a legacy torch file (bad magic number)")
    if _load_pickle(f) != PROTOCOL_VERSION:
        raise LegacyFormatError("unsupported legacy torch protocol version")
    sys_info = _load_pickle(f)
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
        raise LegacyFormatError("only little-endian legacy torch files are supported")
    state = _load_pickle(f)
    keys = _load_pickle(f)
    if not isinstance(state, dict) or not isinstance(keys, list):
        raise LegacyFormatError("the file does not hold a state dict")

    dtypes = {ref.storage.key: ref.storage.dtype for ref in state.values() if isinstance(ref, _TensorRef)}
    storages: dict[str, np.ndarray] = {}
    for key in keys:
        header = f.read(8)
        if len(header) != 8:
            raise LegacyFormatError("file ends before all tensor data")
        (count,) = struct.unpack("<q", header)
        dtype = dtypes.get(str(key), np.dtype("<f4"))
        data = f.read(count * dtype.itemsize)
        if len(data) != count * dtype.itemsize:
            raise LegacyFormatError("file ends before all tensor data")
        storages[str(key)] = np.frombuffer(data, dtype=dtype)

    result: dict[str, np.ndarray] = collections.OrderedDict()
    for name, ref in state.items():
        if not isinstance(ref, _TensorRef):
            raise LegacyFormatError(f"entry {name!r} is not a tensor")
        storage = storages.get(ref.storage.key)
        if storage is None:
            raise LegacyFormatError(f"tensor {name!r} refers to missing storage {ref.storage.key!r}")
        itemsize = storage.dtype.itemsize
        needed = ref.offset + sum((s - 1) * st for s, st in zip(ref.size, ref.stride, strict=True)) + 1
        if ref.size and min(ref.size) > 0 and needed > storage.size:
            raise LegacyFormatError(f"tensor {name!r} reaches past the end of its storage")
        view = np.lib.stride_tricks.as_strided(
            storage[ref.offset :],
            shape=ref.size,
            strides=tuple(st * itemsize for st in ref.stride),
            writeable=False,
        )
        result[name] = np.array(view)  # contiguous copy, independent of the buffer
    return result


def load_state_dict(path) -> dict[str, np.ndarray]:
    """Read the legacy torch state dict at ``path`` (see ``read_state_dict``)."""
    with open(path, "rb") as f:
        return read_state_dict(f)


# ----------------------------------------------------------------------------
# Writing (so that a file holding only some layers can be made without torch)


def _op_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _op_str(text: str) -> bytes:
    data = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(data)) + data


def _op_int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def _op_tuple(items: list[bytes]) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _state_pickle(names: list[str], arrays: list[np.ndarray]) -> bytes:
    """The state dict's pickle, opcode by opcode (protocol 2): an OrderedDict of tensors rebuilt by
    ``torch._utils._rebuild_tensor_v2`` from float storages keyed "0", "1", ... (torch need not be
    importable here, which ``pickle.dump`` of stand-ins would require)."""
    out = [b"\x80\x02", _op_global("collections", "OrderedDict"), b")R("]
    for key, (name, array) in enumerate(zip(names, arrays, strict=True)):
        storage = _op_tuple([_op_str("storage"), _op_global("torch", "FloatStorage"), _op_str(str(key)),
                             _op_str("cpu"), _op_int(array.size), b"N"]) + b"Q"  # N: no view
        strides, step = [], 1
        for side in reversed(array.shape):
            strides.insert(0, step)
            step *= side
        args = _op_tuple([storage, _op_int(0), _op_tuple([_op_int(s) for s in array.shape]),
                          _op_tuple([_op_int(s) for s in strides]), b"\x89",
                          _op_global("collections", "OrderedDict") + b")R"])
        out += [_op_str(name), _op_global("torch._utils", "_rebuild_tensor_v2"), args, b"R"]
    out.append(b"u.")
    return b"".join(out)


def write_state_dict(f: BinaryIO, state: dict[str, np.ndarray]) -> None:
    """Write float32 arrays as a legacy torch state dict that ``read_state_dict`` (and torch) read."""
    names = list(state)
    arrays = [np.ascontiguousarray(state[name], dtype="<f4") for name in names]
    for header in (MAGIC_NUMBER, PROTOCOL_VERSION,
                   {"protocol_version": PROTOCOL_VERSION, "little_endian": True,
                    "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(header, f, protocol=2)
    f.write(_state_pickle(names, arrays))
    pickle.dump([str(key) for key in range(len(arrays))], f, protocol=2)
    for array in arrays:
        f.write(struct.pack("<q", array.size))
        f.write(array.tobytes())
