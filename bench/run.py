"""The whole benchmark in one command: bare model, then the service under load, side by side.

    python -m bench.run [--concurrency 1,4,16,32] [--duration-s 20] [--repeats 3]
                        [--pairs 150] [--chart docs/bench.png] [--serve-arg --workers=1]

1. ``queuenet serve`` (private Redis, gunicorn, worker) with the settings in the environment.
2. In each of ``--repeats`` rounds: ``bench.raw_model`` in its own process (the bare model
   under every runtime at batch 1 and at ``QUEUENET_BATCH_SIZE``, and the bare in-process
   pipeline: decode + resize + the model under the runtime the service serves with), then
   ``bench.load`` for every concurrency. Medians over the rounds; bare and service are
   measured in the same rounds, so both see the noise.
   The worker's mean batch size comes from its Prometheus metrics, read by ``bench.load`` at
   the edges of the measured window (no warm-up ramp, no drain); RSS and CPU from /proc.
3. ``bench.paired_latency``: one image at a time, the bare pipeline and the service back to
   back, so that the few milliseconds the service adds are not lost in the machine's drift.
Prints one table with the ratios to the bare model, and draws the chart.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_json(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", *args, "--json"], env=env, cwd=ROOT, capture_output=True,
        text=True, check=True, timeout=1800,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def matching_procs(pattern: str) -> list[Path]:
    """/proc entries of the processes whose command line contains ``pattern`` (not ours)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if pattern in cmdline and "bench." not in cmdline:
            found.append(proc)
    return found


def rss_mb(pattern: str) -> list[float]:
    """Resident memory of the processes whose command line contains ``pattern``."""
    sizes = []
    for proc in matching_procs(pattern):
        try:
            match = re.search(r"^VmRSS:\s+(\d+) kB", (proc / "status").read_text(), flags=re.M)
        except OSError:
            continue
        if match:
            sizes.append(int(match.group(1)) / 1024)
    return sizes


def cpu_seconds(pattern: str) -> float:
    """CPU time (user + system) used so far by the processes whose command line has ``pattern``."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for proc in matching_procs(pattern):
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


COMPONENTS = {"worker": "-m worker", "web": "gunicorn", "redis": "redis-server"}


def service_env() -> dict[str, str]:
    """The environment the benchmarked service starts with: this one, quiet logs, and the
    user's model cache unless one is set."""
    env = dict(os.environ) | {"QUEUENET_LOG_LEVEL": "warning"}
    env.setdefault("QUEUENET_MODEL_CACHE_DIR", str(Path.home() / ".cache" / "queuenet"))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def start_service(env: dict[str, str], port: int, serve_args: list[str]) -> subprocess.Popen[bytes]:
    log = open(Path(tempfile.gettempdir()) / f"bench-serve-{port}.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "queuenet", "serve", "--port", str(port), *serve_args],
        env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 600
    body = b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n\r\n'
    body += (ROOT / "tests" / "data" / "chelsea.png").read_bytes() + b"\r\n--b--\r\n"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"queuenet serve exited; see {log.name}")
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/predict", data=body,
            headers={"Content-Type": "multipart/form-data; boundary=b"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                if response.status == 200:
                    return process
        except OSError:
            pass
        time.sleep(0.5)  # start-up only
    raise RuntimeError("the service did not become ready")


def measure(
    args: argparse.Namespace, env: dict[str, str], batch_size: int
) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """Bare model and service, interleaved in every repeat so that both see the same noise."""
    port, metrics_port = free_port(), free_port()
    env = env | {"QUEUENET_METRICS_PORT": str(metrics_port)}
    service = start_service(env, port, args.serve_arg)
    runs: dict[int, list[dict[str, Any]]] = {c: [] for c in args.concurrency}
    raws: list[dict[str, Any]] = []
    paired: dict[str, Any] | None = None
    try:
        for _ in range(args.repeats):
            raws.append(
                run_json(
                    [
                        "bench.raw_model",
                        "--batch-size",
                        str(batch_size),
                        "--cache-dir",
                        env["QUEUENET_MODEL_CACHE_DIR"],
                    ],
                    env,
                )  # fmt: skip
            )
            for concurrency in args.concurrency:
                cpu_before = {name: cpu_seconds(p) for name, p in COMPONENTS.items()}
                result = run_json(
                    ["bench.load", "--url", f"http://127.0.0.1:{port}",
                     "--concurrency", str(concurrency), "--duration-s", str(args.duration_s),
                     "--warmup-s", str(args.warmup_s),
                     "--metrics-url", f"http://127.0.0.1:{metrics_port}/metrics"],
                    env,
                )  # fmt: skip
                served = result["requests_per_s"] * args.duration_s + 1e-9
                for name, pattern in COMPONENTS.items():
                    spent = cpu_seconds(pattern) - cpu_before[name]
                    # Includes the warm-up's requests: a slight overestimate per request.
                    result[f"cpu_ms_per_req_{name}"] = spent * 1000 / served
                result["worker_rss_mb"] = max(rss_mb("-m worker"), default=0.0)
                result["web_rss_mb"] = max(rss_mb(f"127.0.0.1:{port}"), default=0.0)
                runs[concurrency].append(result)
                sys.stderr.write(f"c={concurrency}: {result['requests_per_s']:.1f} req/s\n")
        if args.pairs:
            paired = run_json(
                ["bench.paired_latency", "--url", f"http://127.0.0.1:{port}",
                 "--pairs", str(args.pairs), "--cache-dir", env["QUEUENET_MODEL_CACHE_DIR"]],
                env,
            )  # fmt: skip
    finally:
        service.send_signal(signal.SIGINT)
        service.wait(timeout=120)
    raw: dict[str, Any] = {k: _median_figure([r[k] for r in raws]) for k in raws[0]}
    raw["paired"] = paired
    return raw, {c: median_run(r) for c, r in runs.items()}


def _median_figure(values: list[Any]) -> Any:
    """The median of numbers; a name (``runtime``) is the same in every round."""
    return statistics.median(values) if isinstance(values[0], int | float) else values[0]


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = (
        "requests_per_s", "p50_ms", "p95_ms", "p99_ms", "mean_batch", "client_cpu_cores",
        *(f"cpu_ms_per_req_{name}" for name in COMPONENTS),
    )  # fmt: skip
    merged: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in keys}
    merged["worker_rss_mb"] = max(r["worker_rss_mb"] for r in runs)
    merged["web_rss_mb"] = max(r["web_rss_mb"] for r in runs)
    errors: dict[str, int] = {}
    for run in runs:
        for status, count in run["errors"].items():
            errors[status] = errors.get(status, 0) + count
    merged["errors"] = errors
    return merged


def table(raw: dict[str, Any], service: dict[int, dict[str, Any]], batch_size: int) -> str:
    lines = [
        f"bare model ({raw.get('runtime', 'tensorflow')}): batch 1 "
        f"{raw['batch1_images_per_s']:.1f} img/s ({raw['batch1_ms']:.1f} ms), "
        f"batch {batch_size} {raw['batchn_images_per_s']:.1f} img/s; bare pipeline "
        f"(decode+resize+model) p50 {raw['pipeline_p50_ms']:.1f} ms; "
        f"decode+resize p50 {raw['decode_resize_p50_ms']:.1f} ms",
        "",
        *(
            [f"runtimes (bench.raw_model): {runtime_summary(raw, batch_size)}", ""]
            if "litert_batch1_ratio" in raw
            else []
        ),
        "| concurrency | req/s | × bare batch-N | p50 ms | p95 ms | p99 ms | mean batch "
        "| errors | load-gen CPU |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for concurrency, r in sorted(service.items()):
        lines.append(
            f"| {concurrency} | {r['requests_per_s']:.1f} "
            f"| {r['requests_per_s'] / raw['batchn_images_per_s']:.2f} "
            f"| {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} "
            f"| {r['mean_batch']:.1f} | {sum(r['errors'].values()) or 0} "
            f"| {r['client_cpu_cores']:.2f} |"
        )
    lines.append("")
    lines.append(
        "CPU per answered request (ms, all cores; warm-up included): "
        + "; ".join(
            f"c={c}: "
            + ", ".join(f"{name} {r[f'cpu_ms_per_req_{name}']:.1f}" for name in COMPONENTS)
            for c, r in sorted(service.items())
        )
    )
    if 1 in service:
        extra = service[1]["p50_ms"] - raw["pipeline_p50_ms"]
        lines.append(
            f"concurrency 1, unpaired (medians taken minutes apart): service p50 - bare "
            f"pipeline p50 = {extra:+.1f} ms"
        )
    paired = raw.get("paired")
    if paired:
        lines.append(
            f"concurrency 1, paired ({paired['pairs']} images, bare pipeline and service back to "
            f"back): bare p50 {paired['bare_p50_ms']:.1f} ms, service p50 "
            f"{paired['service_p50_ms']:.1f} ms, median difference "
            f"{paired['difference_p50_ms']:+.1f} ms (target ≤ 3)"
        )
    top = max(service)
    ratio = service[top]["requests_per_s"] / raw["batchn_images_per_s"]
    lines.append(
        f"concurrency {top}: throughput = {ratio:.2f} × bare batch-{batch_size} (target ≥ 0.6); "
        f"mean batch {service[top]['mean_batch']:.1f} (target ≥ 16)"
    )
    worker = max(r["worker_rss_mb"] for r in service.values())
    web = max(r["web_rss_mb"] for r in service.values())
    lines.append(f"RSS: worker {worker:.0f} MB (target ≤ 1200), web process {web:.0f} MB (≤ 200)")
    return "\n".join(lines)


def runtime_summary(raw: dict[str, Any], batch_size: int) -> str:
    """Each runtime's images/s at batch 1 and N, its ratio to tensorflow and its fidelity."""
    parts = []
    for name in ("tensorflow", "litert", "litert_int8"):
        parts.append(
            f"{name} {raw[f'{name}_batch1_images_per_s']:.0f} / "
            f"{raw[f'{name}_batchn_images_per_s']:.0f} img/s at batch 1 / {batch_size} "
            f"({raw[f'{name}_batch1_ratio']:.2f}x / {raw[f'{name}_batchn_ratio']:.2f}x, "
            f"max |dp| {raw[f'{name}_max_abs_dp']:.2g}, "
            f"top-1 {raw[f'{name}_top1_agreement']:.0%})"
        )
    return "; ".join(parts)


def chart(raw: dict[str, Any], service: dict[int, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = sorted(service)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(xs, [service[c]["requests_per_s"] for c in xs], "o-", label="QueueNet service")
    left.axhline(raw["batchn_images_per_s"], color="grey", ls="--", label="bare model, batch N")
    left.axhline(raw["batch1_images_per_s"], color="grey", ls=":", label="bare model, batch 1")
    left.set(xlabel="concurrent clients", ylabel="images / s", title="Throughput", xscale="log")
    left.set_xticks(xs, [str(c) for c in xs])
    left.legend()
    right.plot(xs, [service[c]["p50_ms"] for c in xs], "o-", label="service p50")
    right.plot(xs, [service[c]["p99_ms"] for c in xs], "s--", label="service p99")
    right.axhline(raw["pipeline_p50_ms"], color="grey", ls=":", label="bare pipeline, one image")
    right.set(xlabel="concurrent clients", ylabel="ms", title="Latency", xscale="log", yscale="log")
    right.set_xticks(xs, [str(c) for c in xs])
    right.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,4,16,32")
    parser.add_argument("--duration-s", type=float, default=20)
    parser.add_argument("--warmup-s", type=float, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--pairs", type=int, default=150, help="bench.paired_latency pairs (0: skip)"
    )
    parser.add_argument("--chart", default="docs/bench.png")
    parser.add_argument("--serve-arg", action="append", default=[], help="passed to serve")
    args = parser.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    env = service_env()
    batch_size = int(env.get("QUEUENET_BATCH_SIZE", "32"))
    raw, service = measure(args, env, batch_size)
    sys.stdout.write(table(raw, service, batch_size) + "\n")
    if args.chart:
        chart(raw, service, ROOT / args.chart)
        sys.stdout.write(f"chart: {args.chart}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
