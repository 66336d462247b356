"""The model seam: a ``Predictor`` protocol and its Keras implementation.

The network is called through one ``tf.function`` whose input signature has a free batch
dimension, so it is traced once for every batch size; ``model.predict`` would add tens of
milliseconds per call and retrace. Inputs travel as ``uint8`` and are cast inside the graph.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

logger = logging.getLogger(__name__)


class Predictor(Protocol):
    """Maps a ``uint8`` ``[N, S, S, 3]`` batch to ``float32`` ``[N, classes]`` probabilities."""

    @property
    def input_size(self) -> int: ...

    def predict(self, batch: np.ndarray) -> np.ndarray: ...


class KerasPredictor:
    """A Keras model behind a fixed-signature ``tf.function``."""

    def __init__(
        self,
        model: Any,
        *,
        input_size: int,
        preprocess: Callable[[Any], Any] | None = None,
    ) -> None:
        import tensorflow as tf

        self.model = model
        """The Keras model; other runtimes convert it (see :mod:`worker.runtimes`)."""
        self.preprocess = preprocess
        """Applied to float32 RGB 0..255 inside the graph, before the model."""
        self._input_size = input_size
        spec = tf.TensorSpec([None, input_size, input_size, 3], tf.uint8)

        @tf.function(input_signature=[spec])  # type: ignore[untyped-decorator]
        def infer(images: Any) -> Any:
            x = tf.cast(images, tf.float32)
            if preprocess is not None:
                x = preprocess(x)
            return tf.cast(model(x, training=False), tf.float32)

        self._infer = infer

    @property
    def input_size(self) -> int:
        return self._input_size

    def predict(self, batch: np.ndarray) -> np.ndarray:
        if batch.dtype != np.uint8 or batch.ndim != 4:
            raise ValueError(
                f"expected a uint8 [N, H, W, 3] batch, got {batch.dtype} {batch.shape}"
            )
        output: np.ndarray = self._infer(batch).numpy()
        return output


def warm_up(predictor: Predictor, batch_sizes: Sequence[int]) -> float:
    """Run every batch size once so the first real request pays no tracing or allocation."""
    started = time.monotonic()
    size = predictor.input_size
    for n in batch_sizes:
        predictor.predict(np.zeros((n, size, size, 3), dtype=np.uint8))
    elapsed_s = time.monotonic() - started
    logger.info("warm-up done batch_sizes=%s ms=%d", list(batch_sizes), elapsed_s * 1000)
    return elapsed_s


def warmup_sizes(batch_size: int) -> list[int]:
    """1, 2, 4, ... up to and including ``batch_size``."""
    sizes = []
    n = 1
    while n < batch_size:
        sizes.append(n)
        n *= 2
    sizes.append(batch_size)
    return sizes
