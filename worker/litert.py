"""LiteRT: a Keras model converted by TensorFlow's own converter, run by its interpreter.

Conversion: ``tf.lite.TFLiteConverter.from_keras_model`` on a model with a FIXED input shape
``[1, S, S, 3]`` uint8 (cast and, for ``keras.applications``, ``preprocess_input`` inside),
float32 probabilities out. A free batch dimension is not used: converting a concrete function
with one has been seen to give NaN outputs.

Batching: one batch-1 interpreter (XNNPACK, the default delegate), invoked once per image.
Measured on the 2-core machine (EfficientNet-Lite0, images/s, medians of 3 interleaved
repeats in one run; at batch 1 the four LiteRT schemes are the same call, 397-433: the noise):

    batch size                      1    3    7   17   32
    tf.function                   158  244  308  330  343
    LiteRT, one image per invoke  397  433  413  415  420
    LiteRT, chunks of <= 4        424  388  403  404  413
    LiteRT, power-of-two padded   427  311  331  176  332
    LiteRT, exact-size interp.    433  423  389  345  332

Per image, LiteRT is as fast at batch 1 as at any batch (a batch-1 pass already keeps both
cores busy; larger batches only spill the caches), so chunks and padding buy nothing, and
``resize_tensor_input`` + ``allocate_tensors`` per new size doubled the time of a mixed
sequence (the delegate is prepared again: about 33 ms per resize). One interpreter also means
one copy of the packed weights, and warm-up needs batch 1 only.

``tf.lite.Interpreter`` warns that it is deprecated in favour of the ``ai_edge_litert``
package (same API); it is TensorFlow's own build and still works in TF 2.21, so this module
uses it and silences only that warning.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from worker.probe_images import calibration_images

logger = logging.getLogger(__name__)

QUANTIZE_NONE = "none"
QUANTIZE_INT8 = "int8"
QUANTIZATIONS = (QUANTIZE_NONE, QUANTIZE_INT8)
MAX_ERROR_CHARS = 400
CONVERSION_RECIPE = "1"
"""Bump when :func:`convert` changes, so cached ``.tflite`` files are converted again."""


class ConversionError(RuntimeError):
    """TensorFlow's converter could not convert the model."""


def converter_version() -> str:
    """Names the converter and this module's recipe; part of every cache key."""
    import tensorflow as tf

    return f"tf{tf.__version__}-recipe{CONVERSION_RECIPE}"


def convert(
    model: Any,
    *,
    input_size: int,
    preprocess: Callable[[Any], Any] | None = None,
    quantize: str = QUANTIZE_NONE,
) -> bytes:
    """The ``.tflite`` flatbuffer of ``model`` on ``[1, S, S, 3]`` uint8 input.

    ``quantize="int8"``: full-integer post-training quantisation (weights and activations),
    calibrated on :func:`worker.probe_images.calibration_images`; input and output stay uint8
    and float32.
    """
    import keras
    import tensorflow as tf

    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {QUANTIZATIONS}, got {quantize!r}")

    def prepare(images: Any) -> Any:
        x = keras.ops.cast(images, "float32")
        return preprocess(x) if preprocess is not None else x

    inputs = keras.Input(shape=(input_size, input_size, 3), batch_size=1, dtype="uint8")
    outputs = model(keras.layers.Lambda(prepare)(inputs), training=False)
    fixed = keras.Model(inputs, outputs)
    converter = tf.lite.TFLiteConverter.from_keras_model(fixed)
    if quantize == QUANTIZE_INT8:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        samples = calibration_images(input_size)

        def representative() -> Iterator[list[np.ndarray]]:
            for image in samples:
                yield [image[None]]

        converter.representative_dataset = representative
    # Keras' export prints the SavedModel's signature (a few hundred lines) to stdout; int8
    # warns that the uint8 input has no quantisation statistics: it is cast to float first.
    with contextlib.redirect_stdout(io.StringIO()) as printed, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        try:
            flatbuffer: bytes = converter.convert()
        except Exception as exc:  # ConverterError lives in a private module; others vary
            detail = " ".join(str(exc).split())[:MAX_ERROR_CHARS]  # MLIR errors run long
            raise ConversionError(f"TensorFlow's converter failed: {detail}") from exc
    logger.debug("converter output: %s", printed.getvalue()[:2000])
    return flatbuffer


class LiteRTPredictor:
    """A ``.tflite`` model converted at batch size 1, invoked once per image (see above).

    A lone image runs on an interpreter with ``num_threads`` threads (its latency is the
    service's at low load). A batch of several runs on ``batch_threads`` single-threaded
    interpreters at once, each on its share of the images: images are independent, so lanes
    need no synchronisation, where one interpreter's threads meet at every operator (and spin
    there while a thread waits for a core the web tier holds). Measured on 2 cores, 16 images
    (CPU ms / wall ms per image): one interpreter, 2 threads 8.1 / 4.4; two single-threaded
    lanes 7.8 / 4.1; with another process busy on one core, one single-threaded lane 6.8 /
    6.9 against 7.9 / 8.0 for 2 threads.
    """

    def __init__(
        self, flatbuffer: bytes, *, num_threads: int, batch_threads: int | None = None
    ) -> None:
        """Raise ``ValueError`` when ``flatbuffer`` is not a valid model of the expected shape.
        ``batch_threads`` defaults to ``num_threads``."""
        lanes = num_threads if batch_threads is None else batch_threads
        if num_threads < 1 or lanes < 1:
            raise ValueError(f"threads must be at least 1, got {num_threads} and {lanes}")
        self._lone = _Interpreter(flatbuffer, num_threads)
        self._input_size = self._lone.input_size
        self._classes = self._lone.classes
        if lanes == 1 and num_threads == 1:
            self._lanes = [self._lone]
        else:
            self._lanes = [_Interpreter(flatbuffer, 1) for _ in range(lanes)]
        self._pool = ThreadPoolExecutor(lanes, "litert-lane") if lanes > 1 else None
        self.num_threads = num_threads
        self.batch_threads = lanes

    @property
    def input_size(self) -> int:
        return self._input_size

    def predict(self, batch: np.ndarray) -> np.ndarray:
        size = self._input_size
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[1:] != (size, size, 3):
            raise ValueError(
                f"expected a uint8 [N, {size}, {size}, 3] batch, got {batch.dtype} {batch.shape}"
            )
        batch = np.ascontiguousarray(batch)
        output = np.empty((len(batch), self._classes), dtype=np.float32)
        if len(batch) == 1:
            self._lone.run(batch, output, range(1))
        elif self._pool is None:
            self._lanes[0].run(batch, output, range(len(batch)))
        else:
            lanes = min(len(self._lanes), len(batch))
            shares = [range(i, len(batch), lanes) for i in range(lanes)]
            done = [
                self._pool.submit(lane.run, batch, output, rows)
                for lane, rows in zip(self._lanes, shares, strict=False)
            ]
            for future in done:
                future.result()
        return output

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


class _Interpreter:
    """One ``tf.lite.Interpreter`` on ``[1, S, S, 3]`` uint8 in, float32 probabilities out."""

    def __init__(self, flatbuffer: bytes, num_threads: int) -> None:
        import tensorflow as tf

        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r"\s*Warning: tf.lite.Interpreter is deprecated"
            )
            self._interpreter = tf.lite.Interpreter(
                model_content=flatbuffer, num_threads=num_threads
            )
        self._interpreter.allocate_tensors()
        (given,) = self._interpreter.get_input_details()
        (answer,) = self._interpreter.get_output_details()
        shape = tuple(int(d) for d in given["shape"])
        if len(shape) != 4 or shape[0] != 1 or shape[1] != shape[2] or shape[3] != 3:
            raise ValueError(f"expected a [1, S, S, 3] input, the model has {list(shape)}")
        if given["dtype"] != np.uint8 or answer["dtype"] != np.float32:
            raise ValueError(
                f"expected uint8 in and float32 out, the model has {given['dtype'].__name__} "
                f"and {answer['dtype'].__name__}"
            )
        self.input_size = shape[1]
        self.classes = int(answer["shape"][-1])
        self._input_index = int(given["index"])
        self._output_index = int(answer["index"])

    def run(self, batch: np.ndarray, output: np.ndarray, rows: range) -> None:
        """Each of ``rows`` of ``batch`` through the model, into the same rows of ``output``
        (``invoke`` releases the GIL: lanes run in parallel)."""
        interpreter = self._interpreter
        for row in rows:
            interpreter.set_tensor(self._input_index, batch[row : row + 1])
            interpreter.invoke()
            output[row] = interpreter.get_tensor(self._output_index)[0]
