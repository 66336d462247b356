"""The benchmark tools run and report what they claim: the load generator against a live
service (gunicorn + a worker with metrics), the codec comparison and the Redis-ops one."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import redis

from tests.helpers import ROOT, free_port, python_env
from tests.live import LiveService
from worker.registry import LoadedModel


def run_module(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], env=python_env({}), cwd=ROOT, capture_output=True,
        text=True, timeout=timeout_s,
    )  # fmt: skip


def test_load_generator_reports_throughput_latency_and_the_workers_batches(
    live: LiveService,
) -> None:
    metrics_port = free_port()
    live.start_worker(QUEUENET_METRICS_PORT=str(metrics_port), QUEUENET_BATCH_WAIT_MS="20")
    url = live.start_web()
    out = run_module(
        "bench.load", "--url", url, "--concurrency", "4", "--duration-s", "3",
        "--warmup-s", "1", "--metrics-url", f"http://127.0.0.1:{metrics_port}/metrics",
        "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == {}
    assert result["requests"] > 0 and result["requests_per_s"] > 0
    assert 0 < result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"]
    # Four clients in a closed loop: each batch holds 1 to 4 of their requests.
    assert 1.0 <= result["mean_batch"] <= 4.0
    assert result["client_cpu_cores"] >= 0


def test_load_generator_checks_every_answers_top1_against_the_exact_one(
    live: LiveService, tiny_model: LoadedModel, tmp_path: Path
) -> None:
    """The exact top-1 of the served (tiny) model for every photo, one of them deliberately
    wrong: the generator must count that photo's answers as wrong and only those."""
    from app.preprocess import image_to_input
    from bench.photos import PHOTOS

    inputs = [image_to_input(p.read_bytes(), tiny_model.card, max_pixels=10**9) for p in PHOTOS]
    top1 = tiny_model.predictor.predict(np.stack(inputs)).argmax(axis=1)
    indices = [int(i) for i in top1]
    indices[0] = (indices[0] + 1) % len(tiny_model.labels)  # the first photo's is wrong
    expected = {
        photo.name: {"index": i, "labels": [tiny_model.labels[i]]}
        for photo, i in zip(PHOTOS, indices, strict=True)
    }
    (tmp_path / "expected.json").write_text(json.dumps(expected))
    live.start_worker()
    url = live.start_web()
    out = run_module(
        "bench.load", "--url", url, "--concurrency", "1", "--duration-s", "2",
        "--warmup-s", "0", "--expect", str(tmp_path / "expected.json"), "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == {} and result["top1_checked"] == result["requests"] >= 24
    # One client sends the photos in turn: every twelfth answer (the first photo's) is wrong.
    wrong_answers = result["top1_checked"] - result["top1_correct"]
    assert wrong_answers == -(-result["requests"] // len(PHOTOS))
    assert result["correct_share"] == result["top1_correct"] / result["top1_checked"]


def test_load_generator_judges_an_answer_by_index_or_by_label() -> None:
    from bench.load import is_correct

    expected = {"index": 281, "labels": ["tabby", "tabby cat"]}
    assert is_correct(b'{"predictions": [{"index": 281, "label": "x"}]}', expected)
    assert not is_correct(b'{"predictions": [{"index": 282, "label": "tabby"}]}', expected)
    # The BentoML peer answers clean names and no index.
    assert is_correct(b'{"predictions": [{"label": "tabby cat", "probability": 0.9}]}', expected)
    assert not is_correct(b'{"predictions": [{"label": "tiger cat"}]}', expected)


def test_load_generator_counts_refusals_by_status(live: LiveService) -> None:
    url = live.start_web()  # no worker: no model card, so every request is refused with 503
    out = run_module(
        "bench.load", "--url", url, "--concurrency", "2", "--duration-s", "1", "--warmup-s",
        "0", "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(result["errors"]) == {"503"} and result["errors"]["503"] > 0
    assert result["requests_per_s"] == 0 and result["mean_batch"] == 0


def test_codec_bench_checks_wire_compatibility_and_prints_ratios() -> None:
    out = run_module("bench.codec", "--rounds", "20")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| encode")]
    rows += [line for line in out.stdout.splitlines() if line.startswith("| decode")]
    assert len(rows) == 2
    for row in rows:
        speed_up = row.rstrip(" |").rsplit("|", 1)[1].strip()
        assert speed_up.endswith("x") and float(speed_up[:-1]) > 0


@pytest.mark.e2e
def test_fidelity_bench_measures_draft_decoding_against_the_exact_path(
    lite0: LoadedModel, model_cache: Path
) -> None:
    out = run_module("bench.fidelity", "--json", "--rounds", "1", "--cache-dir", str(model_cache))
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    photos, large = figures["photos"], figures["large_jpegs_2000px"]
    assert photos["images"] == large["images"] == 12
    # Draft decoding touches only JPEGs with room to shrink: 3 of the photos (retina,
    # hubble_deep_field and grace_hopper, whose short sides are >= 2 x 256), every large JPEG.
    assert photos["draft_changed_inputs"] == 3 and large["draft_changed_inputs"] == 12
    for f in (photos, large):
        assert 0.5 <= f["top1_agreement"] <= 1.0 and 0 < f["max_abs_dp"] < 1
        assert f["exact_ms"] > 0 and f["draft_ms"] > 0
    # A 2000-pixel JPEG decodes at 1/4 scale: several times faster, even on a busy machine.
    assert large["draft_ms"] < 0.75 * large["exact_ms"]


def test_redis_ops_bench_runs_both_shapes_and_cleans_up(redis_url: str) -> None:
    out = run_module(
        "bench.redis_ops", "--requests", "40", "--rounds", "2", "--redis-url", redis_url
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {
        line.split("|")[1].strip(): line.split("|")[2:5]
        for line in out.stdout.splitlines()
        if line.startswith("| Redis CPU") or line.startswith("| round trips")
    }
    assert set(rows) == {"Redis CPU, us", "round trips, ms"}
    for baseline, ours, ratio in rows.values():
        assert float(baseline) > 0 and float(ours) > 0 and ratio.strip().endswith("x")
    assert not redis.Redis.from_url(redis_url).keys("bench-*")  # its namespace is gone


def test_profile_charges_each_sample_to_its_deepest_stage_at_the_real_rate() -> None:
    from bench.profile import WEB_CLOCK, WEB_STAGES, Profile, collapse, ms_per_request, summary

    handle = "ThreadWorker.handle (gunicorn/workers/gthread.py:282)"
    view = f"{handle};Flask.wsgi_app (flask/app.py:1511);predict (app/views.py:49)"
    raw = "\n".join(
        [
            # py-spy fell behind: 100 samples of the always-present main loop in 1 s.
            "run (gunicorn/app/wsgiapp.py:66);"
            "ThreadWorker.run (gunicorn/workers/gthread.py:425) 100",
            f"{view};_prepare (app/views.py:65);decode_image (app/preprocess.py:70);open 30",
            f"{view};PredictionService.predict (app/queueing.py:120);"
            "Queue.wait_result (protocol/queue.py:146);BLPOP 50",
            f"{handle};Request.parse (gunicorn/http/message.py:40) 5",
            "_bootstrap (threading.py:1002);_worker (concurrent/futures/thread.py:81) 400",  # idle
            "garbage line",
        ]
    )
    samples = collapse(raw, WEB_STAGES, WEB_CLOCK)
    assert samples.clock == 100
    assert samples.by_stage == {
        "decode the image (Pillow)": 30,
        "wait for the answer (BLPOP)": 50,
        "gunicorn: parse the request, write the answer": 5,
    }
    # 1 s recorded, 100 samples: 10 ms each; 5 requests.
    web_ms = ms_per_request([samples], 1, 5)
    assert web_ms["decode the image (Pillow)"] == 60.0
    assert web_ms["wait for the answer (BLPOP)"] == 100.0
    worker_ms = {"model call": 90.0, "write the answer + ack (Redis)": 4.0}
    line = summary(Profile(5, 200.0, web_ms, worker_ms))[0]
    # 200 = bare (60 decode + 90 model) + web's own 10 + worker's own 4 + the rest 36.
    assert "bare pipeline stages (decode, resize, model) 150.0" in line
    assert "added by the service 50.0 ms" in line
    assert "web tier's own work 10.0, worker's work around the model 4.0" in line


def test_profile_stages_name_functions_that_exist_where_they_say() -> None:
    """A renamed function would silently drop out of the profile (its row reads 0)."""
    import importlib
    import inspect

    from bench.profile import WEB_CLOCK, WEB_STAGES, WORKER_CLOCK, WORKER_STAGES

    for stage in (*WEB_STAGES, *WORKER_STAGES, WEB_CLOCK, WORKER_CLOCK):
        module_name = stage.file.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        target: object = importlib.import_module(module_name)
        for part in stage.function.split("."):
            target = getattr(target, part)
        source = inspect.getsourcefile(inspect.unwrap(target))  # type: ignore[arg-type]
        assert source is not None and source.endswith(stage.file), (stage, source)


def test_profile_bench_shows_where_a_request_spends_its_time(
    lite0: object, model_cache: Path
) -> None:
    """The whole service under py-spy (the ``lite0`` fixture has built the model cache): the
    stages every request passes through show up, the request-handling thread is busy for most
    of each request, and the bare pipeline's stages are most of a request at concurrency 1."""
    env = python_env({"QUEUENET_MODEL_CACHE_DIR": str(model_cache)})
    out = subprocess.run(
        [sys.executable, "-m", "bench.profile", "--duration-s", "4", "--warmup-s", "2",
         "--rate-hz", "100"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {
        line.split("|")[1].strip(): float(line.split("|")[2])
        for line in out.stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| ---") and "|" in line[2:]
        and line.split("|")[2].strip().replace(".", "", 1).isdigit()
    }  # fmt: skip
    for stage in ("decode the image (Pillow)", "wait for the answer (BLPOP)",
                  "push to Redis (RPUSH)", "model call",
                  "write the answer + ack (Redis)"):  # fmt: skip
        assert rows[stage] > 0, (stage, out.stdout)
    summary = next(line for line in out.stdout.splitlines() if "requests at concurrency 1" in line)
    assert "without py-spy, just before: client mean" in out.stdout
    client_ms = float(summary.split("client mean ")[1].split(" ms")[0])
    bare_ms = float(summary.split("(decode, resize, model) ")[1].split(" ")[0])
    web_total = [
        float(line.split("|")[2]) for line in out.stdout.splitlines() if line.startswith("| total")
    ][0]
    assert 0.5 * client_ms < web_total <= 1.1 * client_ms, out.stdout
    assert 0.5 * client_ms < bare_ms < client_ms, out.stdout


def test_redis_capacity_bench_measures_one_and_three_shards() -> None:
    out = run_module(
        "bench.redis_capacity", "--duration-s", "2", "--rounds", "1", "--clients", "8",
        timeout_s=180,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {
        int(cells[1]): [float(c) for c in cells[2:6]]
        for line in out.stdout.splitlines()
        if line.startswith("| 1 |") or line.startswith("| 3 |")
        for cells in [line.split("|")]
    }
    assert set(rows) == {1, 3}, out.stdout
    for achieved, total_us, busiest_us, sustainable in rows.values():
        assert achieved > 0 and total_us >= busiest_us > 0 and sustainable > 0
    # Three servers share the work: each carries well under what a single one carries.
    assert rows[3][2] < 0.8 * rows[1][2], out.stdout
    assert "Redis server v=7" in out.stdout  # Debian's redis-server 7 (.ci/run installs it)


def test_protocols_bench_compares_each_protocol_with_predict_in_one_run(
    live: LiveService,
) -> None:
    """Every protocol's request against /predict's, interleaved: all answered 200 with
    /predict's top-1 (the bench checks each answer), figures for each, /predict the base."""
    live.start_worker()
    url = live.start_web()
    out = run_module("bench.protocols", "--url", url, "--model", "tiny", "--rounds", "4", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    kinds = [f["kind"] for f in figures]
    assert kinds[0].startswith("queuenet /predict") and len(kinds) == 6
    assert any(k.startswith("kserve-v2 binary") for k in kinds)
    assert any(k.startswith("tfserving :classify") for k in kinds)
    assert figures[0]["ratio"] == 1.0 and figures[0]["over_predict_ms"] == 0.0
    for f in figures:
        assert f["p50_ms"] > 0 and f["ratio"] > 0 and f["request_bytes"] > 0, f
        assert f["response_bytes"] > 0, f
    text = run_module("bench.protocols", "--url", url, "--model", "tiny", "--rounds", "2")
    assert text.returncode == 0 and "| x /predict |" in text.stdout, text.stderr[-3000:]


def test_decode_bench_checks_identical_bytes_and_compares_with_the_reference_order() -> None:
    out = run_module("bench.decode", "--rounds", "2", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["photos"] == 12 and figures["grey_photos"] == 4
    for subset in ("all", "grey"):
        assert set(figures[subset]) == {"reference order", "served"}
        assert all(ms > 0 for ms in figures[subset].values())


def test_decode_bench_stops_when_a_variant_changes_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.decode
    from protocol.messages import ModelCard

    def shifted(card: ModelCard) -> dict[str, Callable[[bytes], np.ndarray]]:
        calls = original(card)
        served = calls["served"]
        calls["served"] = lambda data: served(data) // 2
        return calls

    original = bench.decode.variants
    monkeypatch.setattr(bench.decode, "variants", shifted)
    with pytest.raises(AssertionError, match="changes the pixels"):
        bench.decode.measure(rounds=1)
