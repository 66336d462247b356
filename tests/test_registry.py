"""Loading models by name: a .keras file with labels, keras.applications, and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY_LABELS, TINY_SIZE
from worker.registry import ModelLoadError, derive_model_name, imagenet_labels, load_model


@pytest.fixture(scope="module")
def tiny_file(tiny_model_files: tuple[Path, Path]) -> tuple[Path, Path]:
    """The tiny model as a .keras file with its labels file (built once, in conftest)."""
    return tiny_model_files


def test_keras_file_with_labels(tiny_file: tuple[Path, Path], tmp_path: Path) -> None:
    model_path, labels_path = tiny_file
    loaded = load_model(str(model_path), labels_path=str(labels_path), cache_dir=tmp_path)
    assert loaded.labels == TINY_LABELS
    assert loaded.card.input_size == TINY_SIZE and loaded.card.num_labels == 4
    assert loaded.card.fingerprint.startswith("tiny-sha256-")  # the file's content digest
    assert loaded.card.version == "" and loaded.named("tiny", "3").card.version == "3"
    batch = np.zeros((2, TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8)
    batch[0, ..., 1] = 250
    probabilities = loaded.predictor.predict(batch)
    assert probabilities.shape == (2, 4) and int(probabilities[0].argmax()) == 1


def test_keras_file_needs_labels(tiny_file: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="QUEUENET_LABELS"):
        load_model(str(tiny_file[0]), cache_dir=tmp_path)


def test_label_count_must_match(tiny_file: tuple[Path, Path], tmp_path: Path) -> None:
    labels = tmp_path / "three.txt"
    labels.write_text("a\nb\nc\n", encoding="utf-8")
    with pytest.raises(ModelLoadError, match="4 outputs but .* 3 labels"):
        load_model(str(tiny_file[0]), labels_path=str(labels), cache_dir=tmp_path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such file"):
        load_model(str(tmp_path / "absent.keras"), labels_path="x", cache_dir=tmp_path)


def test_not_a_keras_archive(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.keras"
    bogus.write_bytes(b"this is not a zip archive")
    labels = tmp_path / "l.txt"
    labels.write_text("a\n", encoding="utf-8")
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_model(str(bogus), labels_path=str(labels), cache_dir=tmp_path)


@pytest.mark.parametrize("name", ["NoSuchNet", "resnet50", "_private", "efficientnet-lite9"])
def test_unknown_name(name: str, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="keras.applications"):
        load_model(name, cache_dir=tmp_path)


def test_imagenet_labels() -> None:
    labels = imagenet_labels()
    assert len(labels) == 1000
    assert labels[281] == "tabby" and labels[967] == "espresso" and labels[0] == "tench"


def test_keras_application_without_cached_weights(tmp_path: Path) -> None:
    """Offline (as here and in CI) the error says where to put the weights; with network
    access the model loads. Either way no raw traceback escapes."""
    import subprocess
    import sys

    from tests.helpers import ROOT, python_env

    code = (
        "from pathlib import Path\n"
        "from worker.registry import ModelLoadError, load_model\n"
        "try:\n"
        "    m = load_model('MobileNetV3Small', cache_dir=Path('.'))\n"
        "    print('LOADED', m.card.input_size, m.card.num_labels)\n"
        "except ModelLoadError as exc:\n"
        "    print('ERROR', exc)\n"
    )
    env = python_env({"KERAS_HOME": str(tmp_path)})
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    line = out.stdout.strip().splitlines()[-1]
    assert line == "LOADED 224 1000" or (
        line.startswith(
            "ERROR could not get the ImageNet weights of keras.applications.MobileNetV3Small"
        )
        and "Keras cache" in line
    ), line


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ("efficientnet-lite0", "efficientnet-lite0"),
        ("efficientnet_lite2", "efficientnet-lite2"),
        ("/models/my model (v2).keras", "my-model--v2-"),
        ("ResNet50", "ResNet50"),
    ],
)
def test_model_names_are_derived_from_the_spec(spec: str, name: str) -> None:
    assert derive_model_name(spec) == name


@pytest.mark.e2e
def test_a_cache_that_cannot_be_written_still_serves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A read-only image (or a full disk): the model is built, serves, and says why it is not
    cached, instead of the worker dying with a traceback."""
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("in the way")
    loaded = load_model("efficientnet-lite1", cache_dir=not_a_directory / "cache")
    assert loaded.card.input_size == 240
    assert loaded.predictor.predict(np.zeros((1, 240, 240, 3), np.uint8)).shape == (1, 1000)
    assert "cannot cache the built model" in caplog.text
