"""The benchmark tools run and report what they claim: the load generator against a live
service (gunicorn + a worker with metrics), the codec comparison and the Redis-ops one."""

from __future__ import annotations

import json
import shutil
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


@pytest.mark.parametrize(
    ("dso", "symbol", "category"),
    [
        ("/x/tensorflow/lite/python/libpywrap_tflite_common.so", "xnn_f32_gemm", "model"),
        ("/usr/lib/x86_64-linux-gnu/libz.so.1.2.13", "[unknown]", "PNG inflate"),
        ("/x/PIL/_imaging.cpython-311-x86_64-linux-gnu.so", "_ImagingResampleHorizontal_8bpc",
         "Pillow: resize"),
        ("/x/PIL/_imaging.cpython-311-x86_64-linux-gnu.so", "ImagingZipDecode", "Pillow: decoders"),
        ("/x/PIL/_imaging.cpython-311-x86_64-linux-gnu.so", "ImagingCrop", "Pillow: crop"),
        ("/x/libpython3.11.so.1.0", "_PyEval_EvalFrameDefault", "Python interpreter"),
        ("[kernel.kallsyms]", "finish_task_switch.isra.0", "kernel: switching threads"),
        ("[kernel.kallsyms]", "exc_page_fault", "kernel: page faults"),
        ("[kernel.kallsyms]", "_copy_to_iter", "kernel: network"),
        ("/usr/lib/x86_64-linux-gnu/libc.so.6", "__memmove_avx_unaligned", "libc"),
        ("/x/libjpeg-6dc8d115.so.62.4.0", "decode_mcu", "JPEG decode"),
        ("/x/something-else.so", "f", "other"),
    ],
)  # fmt: skip
def test_cpu_profile_charges_a_sample_to_what_runs(dso: str, symbol: str, category: str) -> None:
    from bench.cpu_profile import SAMPLE, categorise

    assert categorise(dso, symbol).name.startswith(category)
    line = f" 19311/19353      7fe2f5567386 {symbol} ({dso})"
    match = SAMPLE.match(line)
    assert match is not None and match["pid"] == "19311" and match["dso"] == dso


def test_cpu_profile_bench_measures_the_cpu_of_every_component_under_load(
    lite0: object, model_cache: Path
) -> None:
    """perf on the whole service under 8 clients: the model, decoding and the Python
    interpreter show up in the right components, and the totals are CPU time (at most the
    machine's cores for the sampled window)."""
    if shutil.which("perf") is None:  # .ci/run installs Debian's linux-perf
        pytest.skip("no perf on PATH (Debian's linux-perf)")
    env = python_env({"QUEUENET_MODEL_CACHE_DIR": str(model_cache)})
    out = subprocess.run(
        [sys.executable, "-m", "bench.cpu_profile", "--concurrency", "8", "--duration-s", "4",
         "--warmup-s", "3", "--json"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    ms = figures["ms"]
    assert ms["worker|model (LiteRT, XNNPACK)"] > 1.0, ms
    decoding = [k for k in ms if k.startswith("web|") and ("decode" in k or "inflate" in k)]
    assert sum(ms[k] for k in decoding) > 0.5, ms
    assert ms["web|Pillow: resize"] > 0.2 and ms["web|Python interpreter"] > 0.1, ms
    assert not any(k.startswith("web|model") for k in ms), ms  # the web tier runs no model
    total_s = sum(ms.values()) * figures["requests"] / 1000
    assert total_s <= figures["cores"] * 4 * 1.1, (total_s, ms)


def synthetic_run(ours_c32: float, peer_c32: float, ours_c1_p50: float) -> dict[str, object]:
    """bench.run's figures, made up: only the arithmetic of its table and verdicts is tested."""
    bare = {
        "fastest_runtime": "litert", "bare_pipeline_runtime": "litert", "cores": 2,
        "litert_batch1_images_per_s": 250.0, "litert_batchn_images_per_s": 300.0,
        "bare_pipeline_p50_ms": 10.0, "decode_resize_cpu_ms": 6.0,
        "litert_batchn_cpu_ms_per_image": 6.5, "bare_limit_images_per_s": 160.0,
    }  # fmt: skip
    for name in ("tensorflow", "litert", "litert_int8"):
        bare |= {f"{name}_batch1_images_per_s": 100.0, f"{name}_batchn_images_per_s": 200.0,
                 f"{name}_batch1_ratio": 1.0, f"{name}_batchn_ratio": 1.0,
                 f"{name}_max_abs_dp": 0.0, f"{name}_top1_agreement": 1.0}  # fmt: skip

    def system(c1_p50: float, c32: float, role: str) -> dict[str, dict[str, object]]:
        runs: dict[str, dict[str, object]] = {}
        for c, rate in (("1", 1000 / c1_p50), ("8", c32 * 0.9), ("32", c32)):
            runs[c] = {
                "requests_per_s": rate, "p50_ms": c1_p50 if c == "1" else 100.0, "p99_ms": 500.0,
                "top1_checked": 100, "top1_correct": 100 if role != "peer" else 99,
                "errors": {}, "mean_batch": 4.0, "client_cpu_cores": 0.02,
                f"rss_mb_{role}": 150.0, f"rss_mb_{role}_total": 300.0,
                f"cpu_ms_per_req_{role}": 10.0,
            }  # fmt: skip
            if role == "worker":
                for other in ("web", "redis"):
                    runs[c] |= {f"rss_mb_{other}": 120.0, f"cpu_ms_per_req_{other}": 5.0}
        return runs

    return {
        "batch_size": 32,
        "bare": bare,
        "paired": {
            "pairs": 10,
            "bare_p50_ms": 10.0,
            "service_p50_ms": 12.5,
            "difference_p50_ms": 2.5,
        },  # fmt: skip
        "systems": {
            "QueueNet": system(ours_c1_p50, ours_c32, "worker"),
            "BentoML peer": system(30.0, peer_c32, "peer"),
        },
    }


def test_bench_run_table_says_which_targets_are_met() -> None:
    from bench.run import table

    text = table(synthetic_run(ours_c32=100.0, peer_c32=60.0, ours_c1_p50=14.0))
    assert "| QueueNet | 71.4 | 14.0 | 90.0 | 100.0 | 500 | 100.0% of 300 |" in text
    assert "| BentoML peer | 33.3 | 30.0 | 54.0 | 60.0 | 500 | 99.0% of 300 |" in text
    assert "| bare limit: 2 cores / (6.0 + 6.5 CPU-ms) | | |  | 160 img/s | | |" in text
    # 100 / 160 = 0.62 of the bare limit: missed; 100 / 60 = 1.67 x the peer: met.
    assert "QueueNet = 0.62 x the bare limit (target >= 0.8, MISSED)" in text
    assert "1.67 x the peer's req/s (target >= 1.5, met)" in text
    assert "QueueNet p50 = 0.47 x the peer's (target <= 0.6, met)" in text
    assert "bare pipeline p50 = +4.0 ms unpaired (target <= 3, MISSED)" in text
    assert "median difference +2.5 ms (met)" in text
    assert "QueueNet: correct top-1 100.00% (met)" in text
    assert "BentoML peer: correct top-1 99.00% (MISSED)" in text
    assert "RSS: worker 150 MB (target <= 1200, met), largest web process 120 MB" in text
    fast = table(synthetic_run(ours_c32=140.0, peer_c32=100.0, ours_c1_p50=20.0))
    assert "0.88 x the bare limit (target >= 0.8, met)" in fast
    assert "1.40 x the peer's req/s (target >= 1.5, MISSED)" in fast
    assert "0.67 x the peer's (target <= 0.6, MISSED)" in fast


@pytest.mark.e2e
def test_bench_run_measures_queuenet_and_the_peer_in_one_run(
    lite0: object, model_cache: Path, tmp_path: Path
) -> None:
    """The whole benchmark, short: the bare model, QueueNet and the BentoML peer (started and
    stopped with its own script), every answer's top-1 checked for both, the paired latency."""
    from bench.peer import peer_dir

    if not (peer_dir() / "run.sh").is_file():  # beside the checkout in CI (../shared)
        pytest.skip(f"no BentoML peer at {peer_dir()} (QUEUENET_PEER_DIR)")
    env = python_env({"QUEUENET_MODEL_CACHE_DIR": str(model_cache)})
    figures_path = tmp_path / "figures.json"
    out = subprocess.run(
        [sys.executable, "-m", "bench.run", "--concurrency", "1,4", "--duration-s", "3",
         "--warmup-s", "1", "--repeats", "1", "--pairs", "6", "--chart", "",
         "--json-out", str(figures_path)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads(figures_path.read_text())
    for name in ("QueueNet", "BentoML peer"):
        runs = figures["systems"][name]
        assert set(runs) == {"1", "4"}
        for run in runs.values():
            assert run["errors"] == {} and run["requests_per_s"] > 0
            assert run["top1_checked"] > 0 and run["top1_correct"] == run["top1_checked"]
    assert figures["systems"]["BentoML peer"]["4"]["rss_mb_peer"] > 100  # the model's process
    assert figures["bare"]["bare_limit_images_per_s"] > 0 and figures["paired"]["pairs"] == 6
    assert "| BentoML peer |" in out.stdout and "x the peer's req/s" in out.stdout
