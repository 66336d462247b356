"""Read a PyTorch *legacy* (pre-zip) state-dict file into numpy arrays, without torch.

Role: the worker's default model ships as a ``.pth`` file written by ``torch.save`` with the
legacy serialization format.  This module turns such a file into a plain
``dict[str, numpy.ndarray]`` so the Keras model builder can use it, and it does so safely:
the pickles are read with an unpickler whose ``find_class`` resolves only the handful of
globals the format needs, each mapped to a small local stand-in.  Any other global
(``os.system``, ``builtins.eval``, ...) makes the load fail with :class:`WeightFileError`
before anything is called.  torch is never imported.

Legacy layout (``torch.serialization._legacy_save``), read strictly in order:

1. pickle: magic number ``0x1950A86A20F9469CFC6C``;
2. pickle: protocol version ``1001``;
3. pickle: ``sys_info`` dict (only little-endian files are accepted);
4. pickle: the state dict; tensors are ``torch._utils._rebuild_tensor_v2`` calls whose storage
   argument is a persistent id ``('storage', storage_type, key, location, numel[, view])``;
5. pickle: the list of storage keys;
6. for each key in that order: an 8-byte little-endian element count, then the raw
   little-endian element data.

Every tensor is returned as a C-contiguous array with the storage's dtype, the tensor's shape,
and the values selected by its storage offset and strides.  Integer buffers such as the
BatchNorm ``num_batches_tracked`` counters (0-d int64) are kept like every other entry; callers
that do not need them ignore them.
"""

from __future__ import annotations

import collections
import io
import logging
import math
import os
import pickle
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any, NoReturn

import numpy as np

__all__ = ["WeightFileError", "read_legacy_state_dict"]

logger = logging.getLogger(__name__)

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
# Upper bound on one tensor's element count (4 GiB of float32): stride-0 (expanded) tensors are
# legal, so without it a tiny crafted file could ask for an arbitrarily large array.
MAX_TENSOR_ELEMENTS = 1 << 30

_STORAGE_DTYPES: Mapping[str, np.dtype[Any]] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class WeightFileError(Exception):
    """The weight file is not a legacy torch state dict we can read safely."""


class _FormatError(Exception):
    """A structural problem found by a helper that does not know the file name."""


@dataclass(frozen=True, slots=True)
class _StorageType:
    """Stand-in for a ``torch.*Storage`` class: only its name and element dtype matter."""

    name: str
    dtype: np.dtype[Any]


@dataclass(frozen=True, slots=True)
class _StorageRef:
    """A storage (or a view of one) named by a persistent id in the main pickle."""

    key: str
    dtype: np.dtype[Any]
    numel: int
    view_offset: int
    view_size: int


@dataclass(frozen=True, slots=True)
class _TensorRef:
    """What ``_rebuild_tensor_v2`` was asked to build; materialised once storages are read."""

    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]


def _fail(path: str, message: str) -> NoReturn:
    raise WeightFileError(f"{path}: {message}")


def _as_int_tuple(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise _FormatError(f"bad tensor {what}: {value!r}")
    return value


def _rebuild_tensor(storage: object, offset: object, size: object, stride: object) -> _TensorRef:
    if not isinstance(storage, _StorageRef):
        raise _FormatError(f"tensor storage is not a storage reference: {storage!r}")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise _FormatError(f"bad tensor storage offset: {offset!r}")
    shape = _as_int_tuple(size, "size")
    strides = _as_int_tuple(stride, "stride")
    if len(shape) != len(strides):
        raise _FormatError(f"tensor size {shape} and stride {strides} differ in length")
    if math.prod(shape) > MAX_TENSOR_ELEMENTS:
        raise _FormatError(f"tensor size {shape} exceeds {MAX_TENSOR_ELEMENTS} elements")
    return _TensorRef(storage, offset, shape, strides)


def _rebuild_tensor_v2(
    storage: object, offset: object, size: object, stride: object, *_extra: object
) -> _TensorRef:
    # Extra arguments are requires_grad, backward_hooks (an empty OrderedDict) and metadata.
    return _rebuild_tensor(storage, offset, size, stride)


_ALLOWED_GLOBALS: Mapping[tuple[str, str], object] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


def _text(value: object) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("ascii")
        except UnicodeDecodeError as exc:
            raise _FormatError(f"non-ASCII name {value!r}") from exc
    if isinstance(value, str):
        return value
    raise _FormatError(f"expected a string in storage id, got {value!r}")


def _storage_ref(saved_id: tuple[object, ...]) -> _StorageRef:
    if len(saved_id) not in (5, 6) or _text(saved_id[0]) != "storage":
        raise _FormatError(f"unsupported persistent id {saved_id!r}")
    storage_type, key, _location, numel = saved_id[1:5]
    view = saved_id[5] if len(saved_id) == 6 else None
    if not isinstance(storage_type, _StorageType):
        raise _FormatError(f"persistent id names no storage type: {storage_type!r}")
    if not isinstance(numel, int) or numel < 0:
        raise _FormatError(f"bad storage size in persistent id: {numel!r}")
    if view is None:
        return _StorageRef(_text(key), storage_type.dtype, numel, 0, numel)
    if not isinstance(view, tuple) or len(view) != 3:
        raise _FormatError(f"bad storage view metadata: {view!r}")
    _view_key, view_offset, view_size = view
    if not (isinstance(view_offset, int) and isinstance(view_size, int)):
        raise _FormatError(f"bad storage view metadata: {view!r}")
    if view_offset < 0 or view_size < 0 or view_offset + view_size > numel:
        raise _FormatError(f"storage view {view!r} exceeds its storage of {numel} elements")
    return _StorageRef(_text(key), storage_type.dtype, numel, view_offset, view_size)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the allow-listed globals and storage persistent ids."""

    def __init__(self, file: IO[bytes], path: str) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise WeightFileError(
                f"refusing to load global '{module}.{name}' from {self._path}: "
                "only torch tensor storage is allowed"
            )
        return allowed

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple):
            raise _FormatError(f"unsupported persistent id {pid!r}")
        ref = _storage_ref(pid)
        known = self.storages.setdefault(ref.key, ref)
        if (known.dtype, known.numel) != (ref.dtype, ref.numel):
            raise _FormatError(f"storage {ref.key!r} is described inconsistently")
        return ref


def _load_pickle(file: IO[bytes], path: str, what: str) -> tuple[Any, dict[str, _StorageRef]]:
    unpickler = _RestrictedUnpickler(file, path)
    try:
        return unpickler.load(), unpickler.storages
    except WeightFileError:
        raise
    except _FormatError as exc:
        raise WeightFileError(f"{path}: bad {what}: {exc}") from exc
    except EOFError as exc:
        raise WeightFileError(f"{path}: file ends inside the {what} (truncated?)") from exc
    except pickle.UnpicklingError as exc:
        if "truncated" in str(exc):
            raise WeightFileError(f"{path}: file ends inside the {what} (truncated?)") from exc
        raise WeightFileError(f"{path}: cannot read the {what}: {exc}") from exc
    except Exception as exc:  # corrupt pickles raise many exception types
        raise WeightFileError(f"{path}: cannot read the {what}: {exc!r}") from exc


def _check_header(file: IO[bytes], path: str) -> None:
    magic, _ = _load_pickle(file, path, "magic number")
    if magic != MAGIC_NUMBER:
        _fail(path, "wrong magic number: not a legacy torch file")
    version, _ = _load_pickle(file, path, "protocol version")
    if version != PROTOCOL_VERSION:
        _fail(path, f"unsupported legacy protocol version {version!r} (want {PROTOCOL_VERSION})")
    sys_info, _ = _load_pickle(file, path, "sys_info header")
    if not isinstance(sys_info, dict):
        _fail(path, "sys_info header is not a dict")
    little_endian = sys_info.get("little_endian", sys_info.get(b"little_endian"))
    if little_endian is not True:
        _fail(path, "only little-endian torch files are supported")


def _read_storage(file: IO[bytes], path: str, ref: _StorageRef) -> np.ndarray[Any, Any]:
    header = file.read(8)
    if len(header) != 8:
        _fail(path, f"file ends before the size of storage {ref.key!r} (truncated?)")
    (numel,) = struct.unpack("<q", header)
    if numel != ref.numel:
        _fail(path, f"storage {ref.key!r} holds {numel} elements, its id says {ref.numel}")
    nbytes = numel * ref.dtype.itemsize
    data = file.read(nbytes)
    if len(data) != nbytes:
        _fail(path, f"storage {ref.key!r} is short: {len(data)} of {nbytes} bytes (truncated?)")
    return np.frombuffer(data, dtype=ref.dtype)


def _read_storages(
    file: IO[bytes], path: str, storages: Mapping[str, _StorageRef]
) -> dict[str, np.ndarray[Any, Any]]:
    keys, _ = _load_pickle(file, path, "storage key list")
    if not isinstance(keys, list):
        _fail(path, "storage key list is not a list")
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    for raw_key in keys:
        key = _text(raw_key)
        ref = storages.get(key)
        if ref is None or key in arrays:
            _fail(path, f"storage key {key!r} is unknown or repeated")
        arrays[key] = _read_storage(file, path, ref)
    missing = set(storages) - set(arrays)
    if missing:
        _fail(path, f"no data for storages {sorted(missing)}")
    return arrays


def _materialise(tensor: _TensorRef, storage: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    ref = tensor.storage
    flat = storage[ref.view_offset : ref.view_offset + ref.view_size]
    if 0 in tensor.shape:
        return np.zeros(tensor.shape, dtype=flat.dtype)
    last = tensor.offset + sum(
        (n - 1) * s for n, s in zip(tensor.shape, tensor.strides, strict=True)
    )
    if last >= flat.size:
        raise _FormatError(f"tensor reaches element {last} of a storage of {flat.size}")
    itemsize = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[tensor.offset :],
        shape=tensor.shape,
        strides=tuple(s * itemsize for s in tensor.strides),
        writeable=False,
    )
    return np.array(view, dtype=flat.dtype.newbyteorder("="), order="C", copy=True)


def _to_arrays(
    path: str, state: object, storages: Mapping[str, np.ndarray[Any, Any]]
) -> dict[str, np.ndarray[Any, Any]]:
    if not isinstance(state, dict):
        _fail(path, f"top-level object is a {type(state).__name__}, not a state dict")
    result: dict[str, np.ndarray[Any, Any]] = {}
    for raw_name, tensor in state.items():
        name = _text(raw_name)
        if not isinstance(tensor, _TensorRef):
            _fail(path, f"entry {name!r} is a {type(tensor).__name__}, not a tensor")
        try:
            result[name] = _materialise(tensor, storages[tensor.storage.key])
        except _FormatError as exc:
            raise _FormatError(f"entry {name!r}: {exc}") from exc
    return result


def _read(file: IO[bytes], path: str) -> dict[str, np.ndarray[Any, Any]]:
    _check_header(file, path)
    state, storage_refs = _load_pickle(file, path, "state dict pickle")
    storages = _read_storages(file, path, storage_refs)
    trailing = len(file.read(1))
    if trailing:
        logger.warning("%s: ignoring trailing bytes after the last storage", path)
    return _to_arrays(path, state, storages)


def read_legacy_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray[Any, Any]]:
    """Read a legacy-format torch state dict from ``path`` as C-contiguous numpy arrays.

    Raises :class:`WeightFileError` if the file is not a legacy torch file, is truncated or
    corrupt, or its pickles name any global other than the tensor-rebuilding ones.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise WeightFileError(f"{name}: cannot read weight file: {exc}") from exc
    if not data:
        _fail(name, "file is empty")
    if data.startswith(b"PK\x03\x04"):
        _fail(name, "is a zip-format torch file; only the legacy (pre-zip) format is supported")
    try:
        arrays = _read(io.BytesIO(data), name)
    except _FormatError as exc:
        raise WeightFileError(f"{name}: {exc}") from exc
    logger.info("read %d tensors from %s", len(arrays), name)
    return arrays
