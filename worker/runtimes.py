"""Runtimes: turn a loaded Keras model into the ``Predictor`` the worker serves with.

- ``tensorflow``: the Keras model behind one ``tf.function`` (:class:`worker.model.KerasPredictor`).
- ``litert``: the model converted by TensorFlow's converter and run by its interpreter with
  XNNPACK, one image per call (:mod:`worker.litert` says why, with figures). About 3x the
  images/s of ``tensorflow`` at batch 1 on the 2-core machine and 1.1-1.2x at batch 32.
- ``auto`` (default): ``tensorflow`` when TensorFlow sees a GPU (LiteRT's XNNPACK is CPU
  only), else ``litert`` when its converted model passes the fidelity check, else
  ``tensorflow``. LiteRT was at least as fast as ``tensorflow`` at every batch size from 1
  to 32 measured (``python -m bench.raw_model`` measures both), so no timing at start: it
  would be noisy on a shared machine and add seconds to every start.

The converted model is cached beside the ``.keras`` in the model cache directory, named by a
digest of the source model (architecture and every weight), the input size, the
quantisation, the preprocessing function, TensorFlow's version and the conversion recipe, so
a model or converter that changed never finds a stale file. The file is written atomically
(temporary file + rename).

Every converted model, cached or new, is checked against the Keras float model before it
serves: on :func:`worker.probe_images.check_images` the largest difference of any
probability must be at most ``FIDELITY_MAX_ABS_DP``. A cached file that cannot be read or
fails the check is converted again (and replaced); a fresh conversion that fails is refused:
an explicit ``litert`` stops the worker, ``auto`` falls back to ``tensorflow``.

``quantize="int8"`` (opt-in, never chosen by ``auto`` alone) serves LiteRT's full-integer
quantisation: faster, but its answers differ from the float model's (``bench.raw_model`` prints
by how much on the test photos); the worker logs its agreement on the check images and refuses
it only when it is broken (top-1 agreement below ``INT8_MIN_TOP1_AGREEMENT``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worker.litert import (
    QUANTIZATIONS,
    QUANTIZE_INT8,
    QUANTIZE_NONE,
    ConversionError,
    LiteRTPredictor,
    convert,
    converter_version,
)
from worker.model import KerasPredictor, Predictor
from worker.probe_images import check_images

logger = logging.getLogger(__name__)

RUNTIME_AUTO = "auto"
RUNTIME_TENSORFLOW = "tensorflow"
RUNTIME_LITERT = "litert"
RUNTIMES = (RUNTIME_AUTO, RUNTIME_TENSORFLOW, RUNTIME_LITERT)

FIDELITY_MAX_ABS_DP = 1e-4
"""Largest |p_converted - p_keras| of any class on any check image for a float conversion."""
INT8_MIN_TOP1_AGREEMENT = 0.5
"""An int8 model whose top-1 agrees with the float model on fewer check images is broken."""


class RuntimeRefusedError(RuntimeError):
    """A runtime cannot serve this model: conversion failed or its answers differ."""


@dataclass(frozen=True)
class RuntimeOptions:
    runtime: str = RUNTIME_AUTO
    """``auto``, ``tensorflow`` or ``litert``."""
    quantize: str = QUANTIZE_NONE
    """``none`` or ``int8`` (LiteRT only)."""
    threads: int = 0
    """LiteRT: threads of the interpreter for a lone image; 0 = the CPUs this process may run
    on."""
    batch_threads: int = 0
    """LiteRT: single-threaded interpreters that run a batch's images at once; 0 = as
    ``threads``."""


@dataclass(frozen=True)
class Fidelity:
    """How a converted model's probabilities compare with the Keras model's."""

    max_abs_dp: float
    top1_agreement: float
    images: int


@dataclass(frozen=True)
class Served:
    """The predictor a worker serves with, and how it got there."""

    predictor: Predictor
    runtime: str
    quantize: str = QUANTIZE_NONE
    fidelity: Fidelity | None = None
    cache_path: Path | None = None
    from_cache: bool = False


def serve_with(
    keras_predictor: KerasPredictor, options: RuntimeOptions, *, cache_dir: Path, model_id: str
) -> Served:
    """The predictor ``options`` ask for; logs which runtime serves and its fidelity.

    Raises :class:`RuntimeRefusedError` when an explicitly asked runtime cannot serve.
    """
    runtime = _resolve(options)
    if runtime == RUNTIME_TENSORFLOW:
        logger.info("serving with runtime=tensorflow (%s)", _why_tensorflow(options))
        return Served(keras_predictor, RUNTIME_TENSORFLOW)
    try:
        served = litert_predictor(
            keras_predictor,
            quantize=options.quantize,
            threads=options.threads,
            batch_threads=options.batch_threads,
            cache_dir=cache_dir,
            model_id=model_id,
        )
    except RuntimeRefusedError as exc:
        if options.runtime != RUNTIME_AUTO:
            raise
        logger.warning("runtime=auto: litert refused (%s); serving with tensorflow", exc)
        return Served(keras_predictor, RUNTIME_TENSORFLOW)
    assert served.fidelity is not None
    logger.info(
        "serving with runtime=litert quantize=%s threads=%d batch_threads=%d max_abs_dp=%.2e "
        "top1_agreement=%.3f on %d check images (float limit %.0e) cache=%s path=%s",
        served.quantize,
        _threads(options.threads),
        _threads(options.batch_threads or options.threads),
        served.fidelity.max_abs_dp,
        served.fidelity.top1_agreement,
        served.fidelity.images,
        FIDELITY_MAX_ABS_DP,
        "hit" if served.from_cache else ("written" if served.cache_path else "not written"),
        served.cache_path,
    )
    return served


def litert_predictor(
    keras_predictor: KerasPredictor,
    *,
    quantize: str = QUANTIZE_NONE,
    threads: int = 0,
    batch_threads: int = 0,
    cache_dir: Path,
    model_id: str,
) -> Served:
    """A checked LiteRT predictor: from the cache when it passes the check, else converted,
    checked and cached. Raises :class:`RuntimeRefusedError` when a fresh conversion fails."""
    size = keras_predictor.input_size
    path = cache_path(keras_predictor, quantize=quantize, cache_dir=cache_dir, model_id=model_id)
    inputs = check_images(size)
    expected = keras_predictor.predict(inputs)
    if path.is_file():
        try:
            predictor = _litert(path.read_bytes(), threads, batch_threads)
            fidelity = _accept(measure_fidelity(expected, predictor.predict(inputs)), quantize)
            return Served(predictor, RUNTIME_LITERT, quantize, fidelity, path, from_cache=True)
        except (ValueError, RuntimeRefusedError) as exc:
            logger.warning("cached %s cannot serve (%s); converting again", path, exc)
    logger.info("converting the model for LiteRT quantize=%s (first start only)", quantize)
    try:
        flatbuffer = convert(
            keras_predictor.model,
            input_size=size,
            preprocess=keras_predictor.preprocess,
            quantize=quantize,
        )
        predictor = _litert(flatbuffer, threads, batch_threads)
    except (ConversionError, ValueError) as exc:
        raise RuntimeRefusedError(str(exc)) from exc
    fidelity = _accept(measure_fidelity(expected, predictor.predict(inputs)), quantize)
    try:
        _write_atomically(path, flatbuffer)
    except OSError as exc:  # a read-only cache (an image's): serve, convert again next start
        logger.warning("cannot cache the converted model at %s (%s)", path, exc)
        return Served(predictor, RUNTIME_LITERT, quantize, fidelity, None, from_cache=False)
    return Served(predictor, RUNTIME_LITERT, quantize, fidelity, path, from_cache=False)


def check_fidelity(
    reference: Predictor, candidate: Predictor, *, quantize: str = QUANTIZE_NONE
) -> Fidelity:
    """Compare ``candidate`` with ``reference`` on the check images; raise
    :class:`RuntimeRefusedError` when it does not pass."""
    inputs = check_images(reference.input_size)
    measured = measure_fidelity(reference.predict(inputs), candidate.predict(inputs))
    return _accept(measured, quantize)


def measure_fidelity(expected: np.ndarray, actual: np.ndarray) -> Fidelity:
    """Largest |dp| over all classes and images (inf when anything is NaN) and top-1 agreement."""
    if expected.shape != actual.shape:
        return Fidelity(float("inf"), 0.0, len(expected))
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    max_abs_dp = float(diff.max()) if np.isfinite(diff).all() else float("inf")
    agreement = float(np.mean(actual.argmax(axis=1) == expected.argmax(axis=1)))
    return Fidelity(max_abs_dp, agreement, len(expected))


def _accept(fidelity: Fidelity, quantize: str) -> Fidelity:
    if quantize == QUANTIZE_INT8:
        if fidelity.max_abs_dp == float("inf") or (
            fidelity.top1_agreement < INT8_MIN_TOP1_AGREEMENT
        ):
            raise RuntimeRefusedError(
                f"int8 model agrees with the Keras model on top-1 for "
                f"{fidelity.top1_agreement:.0%} of {fidelity.images} check images "
                f"(needs {INT8_MIN_TOP1_AGREEMENT:.0%}); max |dp| = {fidelity.max_abs_dp:.3g}"
            )
        return fidelity
    if fidelity.max_abs_dp == float("inf"):
        raise RuntimeRefusedError(
            f"the converted or the Keras model answers NaN (or another shape) on some of the "
            f"{fidelity.images} check images"
        )
    if not fidelity.max_abs_dp <= FIDELITY_MAX_ABS_DP:
        raise RuntimeRefusedError(
            f"converted model differs from the Keras model: max |dp| = "
            f"{fidelity.max_abs_dp:.3g} > {FIDELITY_MAX_ABS_DP:.0e} on {fidelity.images} "
            f"check images (top-1 agreement {fidelity.top1_agreement:.0%})"
        )
    return fidelity


# --- the cache -------------------------------------------------------------------------------


def cache_path(
    keras_predictor: KerasPredictor,
    *,
    quantize: str,
    cache_dir: Path,
    model_id: str,
    converter: str | None = None,
) -> Path:
    """``{model_id}.litert-{quantize}-{key}.tflite`` in ``cache_dir``; ``key`` digests
    everything the converted file depends on (see the module docstring)."""
    digest = hashlib.sha256()
    model = keras_predictor.model
    parts = {
        "architecture": model.to_json(),
        "input_size": keras_predictor.input_size,
        "preprocess": _qualified_name(keras_predictor.preprocess),
        "quantize": quantize,
        "converter": converter or converter_version(),
    }
    digest.update(json.dumps(parts, sort_keys=True).encode())
    for weights in model.get_weights():
        digest.update(str(weights.shape).encode())
        digest.update(np.ascontiguousarray(weights).tobytes())
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", model_id)
    return cache_dir / f"{stem}.litert-{quantize}-{digest.hexdigest()[:16]}.tflite"


def _qualified_name(function: Any) -> str:
    if function is None:
        return ""
    return f"{getattr(function, '__module__', '')}.{getattr(function, '__qualname__', '')}"


def _write_atomically(path: Path, data: bytes) -> None:
    """Temporary file + rename, so workers starting together never read half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tflite.tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
        logger.info("saved converted model path=%s bytes=%d", path, len(data))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# --- choosing --------------------------------------------------------------------------------


def _resolve(options: RuntimeOptions) -> str:
    if options.runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {options.runtime!r}")
    if options.quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {QUANTIZATIONS}, got {options.quantize!r}")
    if options.quantize != QUANTIZE_NONE:
        if options.runtime == RUNTIME_TENSORFLOW:
            raise ValueError(f"quantize={options.quantize} needs the litert runtime")
        return RUNTIME_LITERT
    if options.runtime == RUNTIME_AUTO:
        return RUNTIME_TENSORFLOW if gpu_visible() else RUNTIME_LITERT
    return options.runtime


def _why_tensorflow(options: RuntimeOptions) -> str:
    return "asked" if options.runtime == RUNTIME_TENSORFLOW else "auto: TensorFlow sees a GPU"


def gpu_visible() -> bool:
    """Whether TensorFlow can run on a GPU in this process."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def _threads(configured: int) -> int:
    return configured or len(os.sched_getaffinity(0))


def _litert(flatbuffer: bytes, threads: int, batch_threads: int) -> LiteRTPredictor:
    return LiteRTPredictor(
        flatbuffer,
        num_threads=_threads(threads),
        batch_threads=_threads(batch_threads or threads),
    )
