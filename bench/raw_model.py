"""The bare model under every runtime: the physical limit of the service on this machine.

    python -m bench.raw_model [--batch-size 32] [--rounds 30] [--json]

In one process, the default model through each runtime of :mod:`worker.runtimes`:
``tensorflow`` (the ``tf.function``), ``litert`` and ``litert_int8`` (the opt-in
quantisation). For each: images/s at batch 1 and at ``--batch-size`` and the ratio to
``tensorflow`` (the runtimes take turns, so the machine's drift hits all alike), and
its fidelity to the Keras float model on every test photo, prepared exactly as the service
prepares it: the largest |dp| of any class and top-1 agreement. Then the bare pipeline (exact
decode + resize + model, one image at a time, the same photos the load generator sends) under
each exact runtime, the quickest of them being ``bare_pipeline_p50_ms``; and the bare limit
(:func:`bare_limit`). The un-prefixed figures (``batch1_images_per_s`` ...) describe the runtime
``QUEUENET_RUNTIME`` (default ``auto``) serves with.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench.photos import PHOTOS

ROOT = Path(__file__).resolve().parent.parent
FIDELITY_PHOTOS = PHOTOS
RUNTIMES = ("tensorflow", "litert", "litert_int8")
FLOAT_RUNTIMES = ("tensorflow", "litert")
"""The exact ones: the bare limit and the bare pipeline use the fastest of these (int8 is an
opt-in that changes answers)."""


def _cpu_ms_per_call(fn: Callable[[], object], calls: int) -> float:
    """This process's CPU time (every thread: a runtime's pool included) per call."""
    fn()
    started = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - started) * 1000 / calls


def _median_ms(fn: Callable[[], object], rounds: int) -> float:
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def _alternating_ms(
    calls: dict[str, Callable[[], object]], rounds: int, blocks: int
) -> dict[str, float]:
    """Median ms of ``rounds`` calls of each, in ``blocks`` turns per call (one untimed call
    opens each turn). Turns, not single calls alternating: the runtimes' thread pools spin
    for a while after a call, and a call right after another runtime's ran up to 2x slower."""
    timings: dict[str, list[float]] = {name: [] for name in calls}
    per_block = -(-rounds // blocks)
    for _ in range(blocks):
        for name, call in calls.items():
            call()
            for _ in range(per_block):
                started = time.perf_counter()
                call()
                timings[name].append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(values) for name, values in timings.items()}


def load_runtimes(cache_dir: Path) -> tuple[Any, dict[str, Any]]:
    """The model (card and Keras predictor) and its predictor under every runtime."""
    from worker.model import KerasPredictor
    from worker.registry import load_model
    from worker.runtimes import RuntimeOptions, serve_with

    model = load_model("efficientnet-lite0", cache_dir=cache_dir)
    keras_predictor = model.predictor
    assert isinstance(keras_predictor, KerasPredictor)
    predictors: dict[str, Any] = {"tensorflow": keras_predictor}
    for name, options in (
        ("litert", RuntimeOptions("litert")),
        ("litert_int8", RuntimeOptions("litert", quantize="int8")),
    ):
        served = serve_with(
            keras_predictor, options, cache_dir=cache_dir, model_id=model.card.version
        )
        predictors[name] = served.predictor
    return model, predictors


def served_runtime(predictors: dict[str, Any]) -> str:
    """The runtime the worker's settings (``QUEUENET_RUNTIME``/``QUANTIZE``) choose here."""
    from worker.runtimes import gpu_visible
    from worker.settings import WorkerSettings

    settings = WorkerSettings.from_env(os.environ)
    if settings.quantize == "int8":
        return "litert_int8"
    if settings.runtime == "auto":
        return "tensorflow" if gpu_visible() else "litert"
    return settings.runtime


def measure(batch_size: int, rounds: int, cache_dir: Path) -> dict[str, Any]:
    from app.preprocess import image_to_input
    from worker.model import warm_up
    from worker.runtimes import measure_fidelity

    model, predictors = load_runtimes(cache_dir)
    card = model.card
    for predictor in predictors.values():
        warm_up(predictor, [1, batch_size])
    size = card.input_size
    rng = np.random.default_rng(0)
    one = rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    many = rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
    batch1 = _alternating_ms(
        {n: partial(p.predict, one) for n, p in predictors.items()}, rounds, blocks=5
    )
    batchn = _alternating_ms(
        {n: partial(p.predict, many) for n, p in predictors.items()}, max(6, rounds // 4), blocks=3
    )
    figures: dict[str, Any] = {"batch_size": batch_size}
    inputs = np.stack(
        [image_to_input(p.read_bytes(), card, max_pixels=10**8) for p in FIDELITY_PHOTOS]
    )
    expected = predictors["tensorflow"].predict(inputs)
    figures["fidelity_photos"] = len(inputs)
    for name, predictor in predictors.items():
        fidelity = measure_fidelity(expected, predictor.predict(inputs))
        figures |= {
            f"{name}_batch1_images_per_s": 1000 / batch1[name],
            f"{name}_batchn_images_per_s": batch_size * 1000 / batchn[name],
            f"{name}_batch1_ratio": batch1["tensorflow"] / batch1[name],
            f"{name}_batchn_ratio": batchn["tensorflow"] / batchn[name],
            f"{name}_max_abs_dp": fidelity.max_abs_dp,
            f"{name}_top1_agreement": fidelity.top1_agreement,
        }
    served = served_runtime(predictors)
    blobs = [path.read_bytes() for path in PHOTOS]
    index = iter(range(10**9))

    def decode_resize() -> np.ndarray:
        return image_to_input(blobs[next(index) % len(blobs)], card, max_pixels=10**8)

    decode_ms = _median_ms(decode_resize, rounds)

    def pipeline(name: str) -> np.ndarray:
        return np.asarray(predictors[name].predict(decode_resize()[None]))

    pipelines = _alternating_ms(
        {name: partial(pipeline, name) for name in FLOAT_RUNTIMES}, rounds, blocks=3
    )
    figures |= {f"{name}_pipeline_p50_ms": ms for name, ms in pipelines.items()}
    quickest = min(pipelines, key=pipelines.__getitem__)
    figures |= {"bare_pipeline_runtime": quickest, "bare_pipeline_p50_ms": pipelines[quickest]}
    figures |= bare_limit(predictors, decode_resize, many, len(blobs))
    figures |= batch_schemes(predictors["litert"], many)
    return figures | {
        "runtime": served,
        "batch1_ms": batch1[served],
        "batch1_images_per_s": 1000 / batch1[served],
        "batchn_ms": batchn[served],
        "batchn_images_per_s": batch_size * 1000 / batchn[served],
        "pipeline_p50_ms": pipelines.get(served)
        or _median_ms(lambda: predictors[served].predict(decode_resize()[None]), rounds),
        "decode_resize_p50_ms": decode_ms,
    }


def batch_schemes(litert: Any, batch: np.ndarray) -> dict[str, float]:
    """A batch through LiteRT two ways, in turns: its lanes (single-threaded interpreters
    sharing the images, what the worker does) and the lone-image interpreter (all threads)
    called once per image; wall and CPU (all threads) ms per image."""

    def one_interpreter() -> None:
        for row in range(len(batch)):
            litert.predict(batch[row : row + 1])

    schemes: dict[str, Callable[[], object]] = {
        "lanes": partial(litert.predict, batch),
        "one_interpreter": one_interpreter,
    }
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in schemes}
    for _ in range(4):
        for name, call in schemes.items():
            call()
            started_cpu, started = time.process_time(), time.perf_counter()
            call()
            figures[name].append(
                (
                    (time.perf_counter() - started) * 1000 / len(batch),
                    (time.process_time() - started_cpu) * 1000 / len(batch),
                )
            )
    result = {}
    for name, values in figures.items():
        result[f"litert_{name}_wall_ms_per_image"] = statistics.median(v[0] for v in values)
        result[f"litert_{name}_cpu_ms_per_image"] = statistics.median(v[1] for v in values)
    return result


def bare_limit(
    predictors: dict[str, Any],
    decode_resize: Callable[[], np.ndarray],
    batch: np.ndarray,
    photos: int,
) -> dict[str, Any]:
    """The physical limit of any server of this model here: the cores divided by the CPU time
    one image costs (exact decode + resize, averaged over the photos, plus the fastest exact
    runtime's share of a full batch)."""
    cores = len(os.sched_getaffinity(0))
    decode_cpu_ms = _cpu_ms_per_call(decode_resize, photos * 3)
    per_image = {
        name: _cpu_ms_per_call(partial(predictors[name].predict, batch), 6) / len(batch)
        for name in FLOAT_RUNTIMES
    }
    fastest = min(per_image, key=per_image.__getitem__)
    return {
        "cores": cores,
        "decode_resize_cpu_ms": decode_cpu_ms,
        **{f"{name}_batchn_cpu_ms_per_image": ms for name, ms in per_image.items()},
        "fastest_runtime": fastest,
        "bare_limit_images_per_s": cores * 1000 / (decode_cpu_ms + per_image[fastest]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--cache-dir", default="", help="model cache (default: a temp dir)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    figures: dict[str, Any] = {}

    def measure_in(cache: Path) -> dict[str, Any]:
        figures.update(measure(args.batch_size, args.rounds, cache))
        return figures

    measure_and_report(measure_in, cache_dir=args.cache_dir, as_json=args.json)
    if not args.json:
        sys.stdout.write("\n" + runtime_table(figures) + "\n")
    return 0


def runtime_table(figures: dict[str, Any]) -> str:
    """The runtimes side by side, as a Markdown table."""
    n = figures["batch_size"]
    lines = [
        f"| runtime | batch 1 img/s | × tensorflow | batch {n} img/s | × tensorflow "
        f"| max \\|dp\\| vs Keras | top-1 agreement ({figures['fidelity_photos']} photos) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in RUNTIMES:
        lines.append(
            f"| {name} | {figures[f'{name}_batch1_images_per_s']:.0f} "
            f"| {figures[f'{name}_batch1_ratio']:.2f} "
            f"| {figures[f'{name}_batchn_images_per_s']:.0f} "
            f"| {figures[f'{name}_batchn_ratio']:.2f} "
            f"| {figures[f'{name}_max_abs_dp']:.2g} | {figures[f'{name}_top1_agreement']:.3f} |"
        )
    lines.append(
        f"\nlitert, a batch of {n}: lanes (what the worker runs) "
        f"{figures['litert_lanes_wall_ms_per_image']:.2f} ms wall, "
        f"{figures['litert_lanes_cpu_ms_per_image']:.2f} ms CPU per image; one interpreter "
        "with every thread, image by image "
        f"{figures['litert_one_interpreter_wall_ms_per_image']:.2f} ms wall, "
        f"{figures['litert_one_interpreter_cpu_ms_per_image']:.2f} ms CPU"
    )
    return "\n".join(lines)


def measure_and_report(
    measure_in: Callable[[Path], dict[str, Any]], *, cache_dir: str, as_json: bool
) -> None:
    """Quiet TensorFlow's logs, run ``measure_in`` with a model cache (``cache_dir``, or a
    temporary one) and print its figures: the common ``main`` of the model benches."""
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory() as tmp:
        figures = measure_in(Path(cache_dir or tmp))
    report(figures, as_json=as_json)


def report(figures: dict[str, Any], *, as_json: bool) -> None:
    """One JSON line (read by ``bench.run``), or one aligned line per figure."""
    if as_json:
        sys.stdout.write(json.dumps(figures) + "\n")
        return
    width = max(map(len, figures), default=0)
    for name, value in figures.items():
        sys.stdout.write(f"{name:<{width}} {_shown(value)}\n")


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if 0 < abs(value) < 0.01 else f"{value:.2f}"
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
