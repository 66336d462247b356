"""Runtimes: every backend answers like the Keras float model, the converted model is cached
and checked, and the worker picks the backend its settings ask for."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import requests
from PIL import Image

from protocol.errors import SettingsError
from tests.conftest import TINY_SIZE, build_tiny_keras_model
from tests.helpers import ROOT, python_env
from tests.live import LiveService
from tests.reference import photo_paths, reference_input
from worker.litert import LiteRTPredictor, convert
from worker.model import KerasPredictor, warm_up, warmup_sizes
from worker.registry import LoadedModel, load_model
from worker.runtimes import (
    FIDELITY_MAX_ABS_DP,
    RuntimeOptions,
    RuntimeRefusedError,
    cache_path,
    check_fidelity,
    gpu_visible,
    litert_predictor,
    measure_fidelity,
    serve_with,
)
from worker.settings import WorkerSettings

BATCH_SIZES = (1, 2, 3, 7, 8, 17, 31, 32)


def colour_images(size: int = TINY_SIZE) -> np.ndarray:
    """Red, green, blue and grey squares: the tiny model's four classes, in order."""
    colours = [(230, 20, 20), (20, 230, 20), (20, 20, 230), (128, 128, 128)]
    return np.stack([np.full((size, size, 3), c, dtype=np.uint8) for c in colours])


def other_tiny_predictor() -> KerasPredictor:
    """The tiny model with its classes shuffled: same shapes, different answers."""
    model = build_tiny_keras_model()
    dense = model.layers[-1]  # type: ignore[attr-defined]
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel[:, ::-1].copy(), bias])
    return KerasPredictor(model, input_size=TINY_SIZE)


def unconvertible_predictor() -> KerasPredictor:
    """A real model the LiteRT converter refuses (BesselI1e has no LiteRT builtin op)."""
    import tensorflow as tf

    inputs = keras.Input(shape=(TINY_SIZE, TINY_SIZE, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    odd = keras.layers.Lambda(lambda t: tf.math.special.bessel_i1e(t / 255.0))(pooled)
    outputs = keras.layers.Dense(4, activation="softmax")(odd)
    return KerasPredictor(keras.Model(inputs, outputs), input_size=TINY_SIZE)


# --- the tiny model under every backend -------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        RuntimeOptions("tensorflow"),
        RuntimeOptions("litert"),
        RuntimeOptions("auto"),
        RuntimeOptions("litert", quantize="int8"),
    ],
    ids=["tensorflow", "litert", "auto", "litert-int8"],
)
def test_tiny_model_works_under_each_backend(
    tiny_model: LoadedModel, options: RuntimeOptions, tmp_path: Path
) -> None:
    keras_predictor = tiny_model.predictor
    assert isinstance(keras_predictor, KerasPredictor)
    served = serve_with(keras_predictor, options, cache_dir=tmp_path, model_id="tiny-1")
    images = colour_images()
    probabilities = served.predictor.predict(images)
    assert probabilities.dtype == np.float32 and probabilities.shape == (4, 4)
    assert list(probabilities.argmax(axis=1)) == [0, 1, 2, 3]
    expected = keras_predictor.predict(images)
    tolerance = 0.05 if options.quantize == "int8" else FIDELITY_MAX_ABS_DP
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=tolerance)
    assert served.predictor.input_size == TINY_SIZE
    warm_up(served.predictor, warmup_sizes(8))


def test_auto_picks_litert_on_this_cpu_machine_and_never_int8(
    tiny_model: LoadedModel, tmp_path: Path
) -> None:
    assert not gpu_visible()
    assert isinstance(tiny_model.predictor, KerasPredictor)
    served = serve_with(tiny_model.predictor, RuntimeOptions(), cache_dir=tmp_path, model_id="t")
    assert served.runtime == "litert" and served.quantize == "none"
    assert isinstance(served.predictor, LiteRTPredictor)
    assert served.fidelity is not None and served.fidelity.max_abs_dp <= FIDELITY_MAX_ABS_DP
    assert [p.name for p in tmp_path.iterdir()] == [served.cache_path.name]  # type: ignore[union-attr]
    assert ".litert-none-" in served.cache_path.name  # type: ignore[union-attr]


# --- the fidelity check -----------------------------------------------------------------------


def test_fidelity_check_passes_the_same_model_and_refuses_a_different_one(
    tiny_model: LoadedModel,
) -> None:
    reference = tiny_model.predictor
    assert isinstance(reference, KerasPredictor)
    same = LiteRTPredictor(convert(reference.model, input_size=TINY_SIZE), num_threads=1)
    assert check_fidelity(reference, same).max_abs_dp <= FIDELITY_MAX_ABS_DP
    other = other_tiny_predictor()
    different = LiteRTPredictor(convert(other.model, input_size=TINY_SIZE), num_threads=1)
    with pytest.raises(RuntimeRefusedError, match=r"max \|dp\| = .* > 1e-04"):
        check_fidelity(reference, different)


def test_fidelity_counts_nan_as_a_failure() -> None:
    expected = np.full((2, 4), 0.25, dtype=np.float32)
    actual = expected.copy()
    actual[1, 2] = np.nan
    assert measure_fidelity(expected, actual).max_abs_dp == float("inf")
    assert measure_fidelity(expected, expected).max_abs_dp == 0.0


def test_a_model_litert_cannot_convert_stops_litert_and_auto_falls_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    predictor = unconvertible_predictor()
    with pytest.raises(RuntimeRefusedError, match="converter"):
        serve_with(predictor, RuntimeOptions("litert"), cache_dir=tmp_path, model_id="odd")
    with caplog.at_level(logging.WARNING, logger="worker.runtimes"):
        served = serve_with(predictor, RuntimeOptions("auto"), cache_dir=tmp_path, model_id="odd")
    assert served.runtime == "tensorflow" and served.predictor is predictor
    assert "litert refused" in caplog.text and "serving with tensorflow" in caplog.text
    assert not list(tmp_path.iterdir())


def test_a_model_that_answers_nan_is_not_converted_for_auto(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """exp() of a large logit overflows on bright check images: no figure to compare."""
    inputs = keras.Input(shape=(TINY_SIZE, TINY_SIZE, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    logits = keras.layers.Dense(2, kernel_initializer="ones", bias_initializer="zeros")(pooled)
    outputs = keras.layers.Softmax()(keras.layers.Activation("exponential")(logits))
    predictor = KerasPredictor(keras.Model(inputs, outputs), input_size=TINY_SIZE)
    with caplog.at_level(logging.WARNING, logger="worker.runtimes"):
        served = serve_with(predictor, RuntimeOptions(), cache_dir=tmp_path, model_id="nan")
    assert served.runtime == "tensorflow" and "answers NaN" in caplog.text
    assert not list(tmp_path.iterdir())


# --- the cache --------------------------------------------------------------------------------


def test_cache_is_written_then_reused(tiny_model: LoadedModel, tmp_path: Path) -> None:
    keras_predictor = tiny_model.predictor
    assert isinstance(keras_predictor, KerasPredictor)
    first = litert_predictor(keras_predictor, cache_dir=tmp_path, model_id="tiny")
    assert not first.from_cache and first.cache_path is not None
    written = first.cache_path.stat().st_mtime_ns
    second = litert_predictor(keras_predictor, cache_dir=tmp_path, model_id="tiny")
    assert second.from_cache and second.cache_path == first.cache_path
    assert first.cache_path.stat().st_mtime_ns == written
    assert [p.name for p in tmp_path.iterdir()] == [first.cache_path.name]  # no temp files


@pytest.mark.parametrize("damage", ["garbage", "truncated", "another_model"])
def test_a_corrupt_or_stale_cache_file_is_rebuilt_not_served(
    tiny_model: LoadedModel, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    keras_predictor = tiny_model.predictor
    assert isinstance(keras_predictor, KerasPredictor)
    good = litert_predictor(keras_predictor, cache_dir=tmp_path, model_id="tiny")
    assert good.cache_path is not None
    good_bytes = good.cache_path.read_bytes()
    bad = {
        "garbage": os.urandom(4096),
        "truncated": good_bytes[: len(good_bytes) // 2],
        "another_model": convert(other_tiny_predictor().model, input_size=TINY_SIZE),
    }[damage]
    good.cache_path.write_bytes(bad)
    with caplog.at_level(logging.WARNING, logger="worker.runtimes"):
        again = litert_predictor(keras_predictor, cache_dir=tmp_path, model_id="tiny")
    assert not again.from_cache and "converting again" in caplog.text
    assert again.cache_path == good.cache_path
    assert good.cache_path.read_bytes() != bad
    images = colour_images()
    np.testing.assert_allclose(
        again.predictor.predict(images), keras_predictor.predict(images), rtol=0, atol=1e-4
    )


def test_cache_key_follows_the_model_the_converter_and_the_options(tmp_path: Path) -> None:
    saved = tmp_path / "tiny.keras"
    build_tiny_keras_model().save(saved)  # type: ignore[attr-defined]
    # Each start of a worker loads the same file: the same key.
    base, same = (
        KerasPredictor(keras.models.load_model(saved, compile=False), input_size=TINY_SIZE)
        for _ in range(2)
    )

    def path(predictor: KerasPredictor, **kwargs: str) -> Path:
        return cache_path(
            predictor, cache_dir=tmp_path, model_id="tiny", **{"quantize": "none", **kwargs}
        )

    assert path(base) == path(same)
    assert path(base).parent == tmp_path and path(base).name.startswith("tiny.litert-none-")
    assert path(base) != path(other_tiny_predictor())  # weights changed
    assert path(base) != path(base, converter="tf9.99-recipe1")  # converter changed
    assert path(base) != path(base, quantize="int8")
    preprocessed = KerasPredictor(base.model, input_size=TINY_SIZE, preprocess=np.negative)
    assert path(base) != path(preprocessed)


@pytest.mark.parametrize(("threads", "lanes"), [(1, 1), (2, 1), (1, 3), (2, 2)])
def test_a_batch_over_parallel_lanes_keeps_every_row_in_its_place(
    tiny_model: LoadedModel, threads: int, lanes: int
) -> None:
    """Lanes (single-threaded interpreters) share a batch's images: each answer must land in
    its own row, whatever the lanes and the batch size."""
    assert isinstance(tiny_model.predictor, KerasPredictor)
    flatbuffer = convert(tiny_model.predictor.model, input_size=TINY_SIZE)
    predictor = LiteRTPredictor(flatbuffer, num_threads=threads, batch_threads=lanes)
    assert predictor.batch_threads == lanes
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (11, TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8)
    images[::3] = colour_images()[0]  # every third one red: rows must not be shuffled
    alone = np.concatenate([predictor.predict(images[i : i + 1]) for i in range(len(images))])
    for n in (2, 3, 5, 11):
        np.testing.assert_allclose(predictor.predict(images[:n]), alone[:n], rtol=0, atol=1e-6)
    predictor.close()


# --- settings ---------------------------------------------------------------------------------


def test_runtime_settings() -> None:
    default = WorkerSettings.from_env({})
    assert default.runtime_options() == RuntimeOptions("auto", "none", 0, 0)
    env = {"QUEUENET_RUNTIME": "LiteRT", "QUEUENET_QUANTIZE": "int8"}
    threads = {"QUEUENET_RUNTIME_THREADS": "1", "QUEUENET_RUNTIME_BATCH_THREADS": "3"}
    chosen = WorkerSettings.from_env(env | threads)
    assert chosen.runtime_options() == RuntimeOptions("litert", "int8", 1, 3)
    with pytest.raises(SettingsError, match="QUEUENET_RUNTIME"):
        WorkerSettings.from_env({"QUEUENET_RUNTIME": "onnx"})
    with pytest.raises(SettingsError, match="QUEUENET_QUANTIZE=int8 needs"):
        WorkerSettings.from_env({"QUEUENET_RUNTIME": "tensorflow", "QUEUENET_QUANTIZE": "int8"})
    with pytest.raises(SettingsError, match="QUEUENET_RUNTIME_THREADS"):
        WorkerSettings.from_env({"QUEUENET_RUNTIME_THREADS": "-1"})


# --- the default model on every test photo ----------------------------------------------------


@pytest.fixture(scope="module")
def lite0_keras(lite0: LoadedModel) -> KerasPredictor:
    assert isinstance(lite0.predictor, KerasPredictor)
    return lite0.predictor


@pytest.fixture(scope="module")
def photos(lite0: LoadedModel, data_dir: Path) -> np.ndarray:
    size = lite0.card.input_size
    return np.stack([reference_input(p.read_bytes(), size) for p in photo_paths(data_dir)])


@pytest.fixture(scope="module")
def lite0_litert(
    lite0: LoadedModel, lite0_keras: KerasPredictor, model_cache: Path
) -> LiteRTPredictor:
    # Named as the worker names it, so the worker's loads below find it in the cache.
    model_id = lite0.card.fingerprint
    served = litert_predictor(lite0_keras, cache_dir=model_cache, model_id=model_id)
    assert isinstance(served.predictor, LiteRTPredictor)
    return served.predictor


@pytest.mark.e2e
def test_litert_matches_keras_on_every_photo(
    lite0_keras: KerasPredictor, lite0_litert: LiteRTPredictor, photos: np.ndarray
) -> None:
    expected = lite0_keras.predict(photos)
    actual = lite0_litert.predict(photos)
    assert len(photos) >= 12
    np.testing.assert_allclose(actual, expected, rtol=0, atol=FIDELITY_MAX_ABS_DP)
    assert (actual.argmax(axis=1) == expected.argmax(axis=1)).all()


@pytest.mark.e2e
@pytest.mark.parametrize("backend", ["tensorflow", "litert"])
def test_every_batch_size_gives_the_rows_of_batch_1(
    backend: str,
    lite0_keras: KerasPredictor,
    lite0_litert: LiteRTPredictor,
    photos: np.ndarray,
) -> None:
    predictor = lite0_keras if backend == "tensorflow" else lite0_litert
    pool = np.concatenate([photos, photos[::-1], photos])  # 36 rows, >= the largest batch
    one_by_one = np.concatenate([predictor.predict(pool[i : i + 1]) for i in range(32)])
    for n in BATCH_SIZES:
        batch = predictor.predict(pool[:n])
        assert batch.shape == (n, 1000)
        # tf.function's kernels may block a batch differently by size; LiteRT runs each
        # image alone, so its rows are the batch-1 rows bit for bit.
        atol = 1e-6 if backend == "tensorflow" else 0.0
        np.testing.assert_allclose(batch, one_by_one[:n], rtol=0, atol=atol)


@pytest.mark.e2e
def test_int8_is_opt_in_and_reports_its_agreement(
    lite0: LoadedModel,
    lite0_keras: KerasPredictor,
    model_cache: Path,
    photos: np.ndarray,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="worker.runtimes"):
        served = serve_with(
            lite0_keras,
            RuntimeOptions("auto", quantize="int8"),
            cache_dir=model_cache,
            model_id=lite0.card.fingerprint,
        )
    assert served.runtime == "litert" and served.quantize == "int8"
    assert served.fidelity is not None
    assert "quantize=int8" in caplog.text and "top1_agreement=" in caplog.text
    photos_fidelity = measure_fidelity(
        lite0_keras.predict(photos), served.predictor.predict(photos)
    )
    logging.getLogger(__name__).warning(
        "int8 on %d photos: top-1 agreement %.3f, max |dp| %.3f",
        photos_fidelity.images,
        photos_fidelity.top1_agreement,
        photos_fidelity.max_abs_dp,
    )
    # Measured: 11 or 12 of 12 top-1 agree, max |dp| ~0.2; a broken conversion is far off.
    assert photos_fidelity.top1_agreement >= 0.75
    assert photos_fidelity.max_abs_dp < 0.5


@pytest.mark.e2e
def test_worker_load_logs_the_runtime_and_its_fidelity_and_reuses_the_cache(
    lite0_litert: LiteRTPredictor, model_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The fixture converted and cached the model; the worker's loads find it."""
    with caplog.at_level(logging.INFO, logger="worker.runtimes"):
        first = load_model("efficientnet-lite0", cache_dir=model_cache, runtime=RuntimeOptions())
        second = load_model("efficientnet-lite0", cache_dir=model_cache, runtime=RuntimeOptions())
    assert isinstance(first.predictor, LiteRTPredictor)
    assert isinstance(second.predictor, LiteRTPredictor)
    lines = [r.getMessage() for r in caplog.records if "serving with" in r.getMessage()]
    assert len(lines) == 2 and all("runtime=litert" in line for line in lines)
    assert all("max_abs_dp=" in line and "cache=hit" in line for line in lines)
    assert "converting" not in caplog.text
    tflites = list(model_cache.glob(f"{first.card.fingerprint}.litert-none-*.tflite"))
    assert len(tflites) == 1


def test_an_unwritable_cache_still_serves(tiny_model: LoadedModel, tmp_path: Path) -> None:
    keras_predictor = tiny_model.predictor
    assert isinstance(keras_predictor, KerasPredictor)
    not_a_directory = tmp_path / "cache"
    not_a_directory.write_text("a file where the cache directory should be")
    served = litert_predictor(keras_predictor, cache_dir=not_a_directory, model_id="tiny")
    assert served.cache_path is None and not served.from_cache
    assert list(served.predictor.predict(colour_images()).argmax(axis=1)) == [0, 1, 2, 3]


# --- the worker process -----------------------------------------------------------------------


@pytest.mark.parametrize("runtime", ["litert", "tensorflow"])
def test_worker_process_serves_with_the_runtime_its_settings_name(
    live: LiveService, runtime: str, tmp_path: Path
) -> None:
    cache = tmp_path / "model-cache"
    live.start_worker(QUEUENET_RUNTIME=runtime, QUEUENET_MODEL_CACHE_DIR=str(cache))
    url = live.start_web()
    red = np.full((TINY_SIZE, TINY_SIZE, 3), (230, 20, 20), dtype=np.uint8)
    body = io.BytesIO()
    Image.fromarray(red).save(body, format="PNG")
    response = requests.post(
        f"{url}/predict", files={"image": ("red.png", body.getvalue())}, timeout=30
    )
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"] == "red"
    logs = live.logs(tail_chars=None)
    assert f"serving with runtime={runtime}" in logs
    if runtime == "litert":
        assert "max_abs_dp=" in logs and len(list(cache.glob("*.litert-none-*.tflite"))) == 1


@pytest.mark.e2e
def test_raw_model_bench_reports_every_runtime(model_cache: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.raw_model", "--rounds", "2", "--batch-size", "3"]
        + ["--cache-dir", str(model_cache), "--json"],
        env=python_env({}),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    for name in ("tensorflow", "litert", "litert_int8"):
        for figure in ("batch1_images_per_s", "batchn_images_per_s", "batch1_ratio"):
            assert figures[f"{name}_{figure}"] > 0
    assert figures["tensorflow_max_abs_dp"] == 0.0
    assert figures["litert_max_abs_dp"] <= FIDELITY_MAX_ABS_DP
    assert figures["litert_top1_agreement"] == 1.0 and figures["fidelity_photos"] >= 12
    assert 0.5 <= figures["litert_int8_top1_agreement"] <= 1.0
    assert figures["runtime"] == "litert"  # auto, on this CPU machine
    for legacy in ("batch1_ms", "batchn_images_per_s", "pipeline_p50_ms", "decode_resize_p50_ms"):
        assert figures[legacy] > 0
    # The bare limit: the cores over exact decode + resize and the fastest exact runtime.
    fastest = figures["fastest_runtime"]
    assert fastest in ("tensorflow", "litert") and figures["cores"] >= 1
    per_image = figures["decode_resize_cpu_ms"] + figures[f"{fastest}_batchn_cpu_ms_per_image"]
    assert figures["bare_limit_images_per_s"] == pytest.approx(figures["cores"] * 1000 / per_image)
    assert figures[f"{fastest}_batchn_cpu_ms_per_image"] == min(
        figures["tensorflow_batchn_cpu_ms_per_image"], figures["litert_batchn_cpu_ms_per_image"]
    )
    quickest = figures["bare_pipeline_runtime"]
    assert figures["bare_pipeline_p50_ms"] == figures[f"{quickest}_pipeline_p50_ms"] > 0
    for scheme in ("lanes", "one_interpreter"):
        assert figures[f"litert_{scheme}_cpu_ms_per_image"] > 0
