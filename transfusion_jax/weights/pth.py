"""Reads PyTorch ``.pth`` state dicts with NumPy only (no torch import).

Both on-disk formats that ``torch.save`` writes are handled:

- the zip format (torch >= 1.6): a zip archive holding ``<root>/data.pkl`` and one raw file
  per storage, ``<root>/data/<key>``;
- the legacy format (before 1.6): a sequence of pickles (magic number, protocol version,
  system info, the object, the list of storage keys) followed by each storage's raw bytes,
  each preceded by its element count as a little-endian int64.

A restricted `pickle.Unpickler` maps torch's tensor-rebuild functions and storage classes to
NumPy: ``persistent_load`` returns a storage placeholder and ``_rebuild_tensor*`` builds a
strided view once the bytes are known. Only names needed for state dicts are allowed, so
loading never imports or runs arbitrary code.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from transfusion_jax.paths import to_path

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

# torch storage class / dtype name -> numpy dtype
_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype(np.float64), "float64": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32), "float32": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16), "float16": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16), "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64), "int64": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32), "int32": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16), "int16": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8), "int8": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8), "uint8": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_), "bool": np.dtype(np.bool_),
}


class _StorageType:
    """Stands in for a torch storage class (``torch.FloatStorage``) or dtype."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _DTYPES[name]


class _Storage:
    """A storage whose bytes may arrive after unpickling (legacy format)."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype = dtype
        self.numel = numel
        self.data: np.ndarray | None = None


class _LazyTensor:
    """A tensor view on a `_Storage`, materialised by `_materialise`."""

    def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...],
                 stride: tuple[int, ...]):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def to_numpy(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise ValueError("a tensor's storage was never read from the file")
        itemsize = data.dtype.itemsize
        if not self.size:
            return np.array(data[self.offset])
        view = np.lib.stride_tricks.as_strided(
            data[self.offset:], shape=self.size, strides=[s * itemsize for s in self.stride])
        return np.ascontiguousarray(view)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused) -> _LazyTensor:
    return _LazyTensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *unused):
    return data


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, hooks, dtype,
                       *unused) -> _LazyTensor:
    return _rebuild_tensor(storage, storage_offset, size, stride)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.nn.parameter", "Parameter"): _rebuild_parameter,
    ("builtins", "set"): set,
    ("builtins", "slice"): slice,
    ("__builtin__", "set"): set,  # protocol-2 pickles call the builtins module __builtin__
    ("__builtin__", "slice"): slice,
}


class RefusedObjectError(pickle.UnpicklingError, ValueError):
    """The file pickles an object other than tensors and dicts of them (e.g. a whole model)."""


class _Unpickler(pickle.Unpickler):
    """Maps torch names to NumPy stand-ins; storages come from ``load_storage``."""

    def __init__(self, file, load_storage: Callable[[tuple], _Storage]):
        super().__init__(file, encoding="latin1")
        self._load_storage = load_storage

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module in ("torch", "torch.storage") and name in _DTYPES:
            return _StorageType(name)
        if module == "torch" and name == "UntypedStorage":
            return _StorageType("uint8")
        raise RefusedObjectError(
            f"refusing to load {module}.{name}: only tensors and dicts of tensors are "
            "supported in .pth files read without torch (nothing in a weight file is run); "
            "if this is a whole pickled model, save its weights with "
            "torch.save(model.state_dict(), PATH) and use that file")

    def persistent_load(self, pid: Any) -> Any:
        pid = tuple(x.decode("ascii") if isinstance(x, bytes) else x for x in pid)
        if pid[0] != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id {pid[0]!r} in .pth file")
        return self._load_storage(pid[1:])


def _tree_to_numpy(obj: Any) -> Any:
    if isinstance(obj, _LazyTensor):
        return obj.to_numpy()
    if isinstance(obj, Mapping):
        return {k: _tree_to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_tree_to_numpy(v) for v in obj)
    return obj


def _load_zip(path: Path) -> Any:
    with path.open("rb") as raw, zipfile.ZipFile(raw) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("data.pkl")]
        if not pkl:
            raise ValueError(f"{path}: zip file without data.pkl, not a torch checkpoint")
        root = pkl[0][: -len("data.pkl")]
        cache: dict[str, _Storage] = {}

        def load_storage(data: tuple) -> _Storage:
            storage_type, key, _location, numel = data[:4]
            key = str(key)
            if key not in cache:
                dtype = storage_type.dtype
                raw = zf.read(f"{root}data/{key}")
                storage = _Storage(dtype, int(numel))
                storage.data = np.frombuffer(raw, dtype=dtype).copy()
                cache[key] = storage
            return cache[key]

        with zf.open(pkl[0]) as f:
            obj = _Unpickler(io.BytesIO(f.read()), load_storage).load()
        return _tree_to_numpy(obj)


def _load_legacy(path: Path) -> Any:
    with path.open("rb") as f:
        magic = pickle.load(f)
        if magic != _LEGACY_MAGIC:
            raise ValueError(f"{path}: not a torch checkpoint (bad magic number)")
        pickle.load(f)  # protocol version
        sys_info = pickle.load(f)
        if not sys_info.get("little_endian", True):
            raise ValueError(f"{path}: big-endian torch checkpoints are not supported")
        storages: dict[str, _Storage] = {}

        def load_storage(data: tuple) -> _Storage:
            storage_type, key, _location, numel, view_metadata = data[:5]
            if view_metadata is not None:
                raise ValueError(f"{path}: storage views (pre-0.4 files) are not supported")
            key = str(key)
            if key not in storages:
                storages[key] = _Storage(storage_type.dtype, int(numel))
            return storages[key]

        obj = _Unpickler(f, load_storage).load()
        keys = pickle.load(f)
        for key in keys:
            storage = storages[str(key)]
            (numel,) = struct.unpack("<q", f.read(8))
            nbytes = numel * storage.dtype.itemsize
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise ValueError(f"{path}: truncated file while reading storage {key}")
            storage.data = np.frombuffer(raw, dtype=storage.dtype).copy()
    return _tree_to_numpy(obj)


def read_pth(path: str | Path) -> dict[str, np.ndarray]:
    """Reads a PyTorch checkpoint into a flat dict of NumPy arrays, without torch.

    A checkpoint that wraps its state dict (``{"state_dict": {...}}`` or ``{"model": ...}``)
    is unwrapped, and a ``module.`` prefix (from ``DataParallel``) is removed.

    Args:
      path: a ``.pth`` / ``.pt`` / ``.bin`` file written by ``torch.save``.

    Returns:
      ``{"layer1.0.conv1.weight": array, ...}`` with torch's shapes (conv ``OIHW``).
    """
    path = to_path(path)  # local or gs://
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    with path.open("rb") as f:
        zip_magic = f.read(4) == b"PK\x03\x04"
        f.seek(0)
        is_zip = zipfile.is_zipfile(f)
    try:
        if is_zip:
            obj = _load_zip(path)
        elif zip_magic:
            raise ValueError("a zip archive without its directory (truncated?)")
        else:
            obj = _load_legacy(path)
    except RefusedObjectError as e:
        raise RefusedObjectError(f"{path}: {e}") from e
    except (ValueError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, struct.error,
            KeyError, IndexError, TypeError) as e:
        if str(e).startswith(str(path)):
            raise
        raise ValueError(f"{path} is truncated, damaged or not a torch checkpoint "
                         f"({type(e).__name__}: {' '.join(str(e).split())[:120]}); "
                         "re-download or re-save it") from e
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict, found {type(obj).__name__}")
    state = {}
    for k, v in obj.items():
        if isinstance(v, np.ndarray):
            state[k.removeprefix("module.")] = v
    return state
