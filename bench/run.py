"""The whole benchmark in one command: the bare limit, QueueNet and the BentoML peer, one run.

    python -m bench.run [--concurrency 1,8,32] [--duration-s 20] [--repeats 2] [--pairs 150]
                        [--no-peer] [--chart docs/bench.png] [--json-out FILE]
                        [--serve-arg --workers=1]

1. The exact answer for every photo (``bench.photos``: the Keras float model), then
   ``queuenet serve`` (private Redis, gunicorn, worker) with the settings in the environment
   and the BentoML peer (``bench.peer``, ``../shared/peers/bentoml``): both up for the run.
2. In each of ``--repeats`` rounds: ``bench.raw_model`` in its own process (every runtime at
   batch 1 and ``QUEUENET_BATCH_SIZE``, the bare pipeline one image at a time, the bare
   limit), then for every concurrency ``bench.load`` against QueueNet and against the peer,
   back to back, the order swapped every round: both see the same minutes of the machine.
   Every answer's top-1 is checked against the exact one. CPU per request and resident
   memory per component come from /proc (the service's process tree; the peer's session).
   Medians over the rounds.
3. ``bench.paired_latency``: one image at a time, the bare pipeline and QueueNet back to
   back, so that the few milliseconds the service adds are not lost in the machine's drift.

Prints the table (bare rows, peer, QueueNet), the ratios against the targets, and draws the
chart. Without the peer beside the checkout (or with ``--no-peer``) the peer's row is absent.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import procs
from bench.peer import Peer, PeerUnavailable
from worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parent.parent
QUEUENET_ROLES = {"worker": "-m worker", "web": "gunicorn", "redis": "redis-server"}
PEER_ROLES = {"peer": ""}
"""Every process of the peer's session (BentoML's arbiter, its frontend and model processes)."""
QUEUENET, PEER = "QueueNet", "BentoML peer"

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_json(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", *args, "--json"], env=env, cwd=ROOT, capture_output=True,
        text=True, timeout=1800,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"{args[0]} failed: {out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def service_env() -> dict[str, str]:
    """The environment the benchmarked service starts with: this one, quiet logs, and the
    user's model cache unless one is set."""
    env = dict(os.environ) | {"QUEUENET_LOG_LEVEL": "warning"}
    env.setdefault("QUEUENET_MODEL_CACHE_DIR", str(Path.home() / ".cache" / "queuenet"))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def start_service(env: dict[str, str], port: int, serve_args: list[str]) -> subprocess.Popen[bytes]:
    log_file = open(Path(tempfile.gettempdir()) / f"bench-serve-{port}.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "queuenet", "serve", "--port", str(port), *serve_args],
        env=env, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 600
    body = b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n\r\n'
    body += (ROOT / "tests" / "data" / "chelsea.png").read_bytes() + b"\r\n--b--\r\n"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"queuenet serve exited; see {log_file.name}")
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


@dataclass
class System:
    """One server under load: where to post, and its processes by role."""

    name: str
    url: str
    members: Callable[[], set[int]]
    roles: dict[str, str]
    metrics_url: str = ""

    def processes(self) -> dict[int, str]:
        return procs.with_role(self.members(), self.roles)


def load(
    system: System, concurrency: int, args: argparse.Namespace, env: dict[str, str], expect: str
) -> dict[str, Any]:
    """``bench.load`` against one system, with its CPU per answered request and memory."""
    before = {pid: (role, procs.cpu_s(pid)) for pid, role in system.processes().items()}
    metrics = ["--metrics-url", system.metrics_url] if system.metrics_url else []
    result = run_json(
        ["bench.load", "--url", system.url, "--concurrency", str(concurrency),
         "--duration-s", str(args.duration_s), "--warmup-s", str(args.warmup_s),
         "--expect", expect, *metrics],
        env,
    )  # fmt: skip
    now = system.processes()
    served = result["requests_per_s"] * args.duration_s + 1e-9
    for role in system.roles:
        # Processes that lived through the window; includes the warm-up's requests.
        spent = sum(procs.cpu_s(pid) - cpu for pid, (r, cpu) in before.items() if r == role)
        result[f"cpu_ms_per_req_{role}"] = spent * 1000 / served
        sizes = [procs.rss_mb(pid) for pid, r in now.items() if r == role]
        result[f"rss_mb_{role}"] = max(sizes, default=0.0)
        result[f"rss_mb_{role}_total"] = sum(sizes)
    return result


def measure(args: argparse.Namespace, env: dict[str, str], batch_size: int) -> dict[str, Any]:
    """Bare model, QueueNet and the peer, interleaved in every round."""
    port, metrics_port = free_port(), free_port()
    cache = env["QUEUENET_MODEL_CACHE_DIR"]
    with tempfile.TemporaryDirectory() as tmp:
        expect = str(Path(tmp) / "expected.json")
        subprocess.run(
            [sys.executable, "-m", "bench.photos", "--expect", expect, "--cache-dir", cache],
            env=env, cwd=ROOT, check=True, capture_output=True, timeout=600,
        )  # fmt: skip
        service = start_service(env | {"QUEUENET_METRICS_PORT": str(metrics_port)}, port,
                                args.serve_arg)  # fmt: skip
        systems = [
            System(
                QUEUENET,
                f"http://127.0.0.1:{port}",
                lambda: procs.descendants(service.pid),
                QUEUENET_ROLES,
                f"http://127.0.0.1:{metrics_port}/metrics",
            )  # fmt: skip
        ]
        peer = None
        try:
            if not args.no_peer:
                try:
                    peer = Peer.start(free_port(), env)
                    systems.append(System(PEER, peer.url, peer.pids, PEER_ROLES))
                except PeerUnavailable as exc:
                    log.warning("measuring without the peer: %s", exc)
            return rounds(args, env, batch_size, systems, expect)
        finally:
            if peer:
                peer.stop()
            service.send_signal(signal.SIGINT)
            service.wait(timeout=120)


def rounds(
    args: argparse.Namespace,
    env: dict[str, str],
    batch_size: int,
    systems: list[System],
    expect: str,
) -> dict[str, Any]:
    cache = env["QUEUENET_MODEL_CACHE_DIR"]
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {
        s.name: {c: [] for c in args.concurrency} for s in systems
    }
    raws: list[dict[str, Any]] = []
    for round_index in range(args.repeats):
        raws.append(
            run_json(
                ["bench.raw_model", "--batch-size", str(batch_size), "--cache-dir", cache], env
            )
        )
        for concurrency in args.concurrency:
            order = systems if round_index % 2 == 0 else systems[::-1]
            for system in order:
                result = load(system, concurrency, args, env, expect)
                runs[system.name][concurrency].append(result)
                log.warning(
                    "round %d, c=%d, %s: %.1f req/s, p50 %.1f ms",
                    round_index + 1, concurrency, system.name, result["requests_per_s"],
                    result["p50_ms"],
                )  # fmt: skip
    raw: dict[str, Any] = {k: _median_figure([r[k] for r in raws]) for k in raws[0]}
    paired = None
    if args.pairs:
        paired = run_json(
            ["bench.paired_latency", "--url", systems[0].url, "--pairs", str(args.pairs),
             "--cache-dir", cache],
            env,
        )  # fmt: skip
    return {
        "batch_size": batch_size,
        "bare": raw,
        "paired": paired,
        "systems": {
            name: {str(c): median_run(r) for c, r in by_c.items()} for name, by_c in runs.items()
        },
    }


def _median_figure(values: list[Any]) -> Any:
    """The median of numbers; a name (``runtime``) is the same in every round."""
    return statistics.median(values) if isinstance(values[0], int | float) else values[0]


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the rounds' figures; memory is the largest seen; errors are summed."""
    merged: dict[str, Any] = {}
    for key, value in runs[0].items():
        if key.startswith("rss_mb_"):
            merged[key] = max(r[key] for r in runs)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            merged[key] = statistics.median(r[key] for r in runs)
    errors: dict[str, int] = {}
    for run in runs:
        for status, count in run["errors"].items():
            errors[status] = errors.get(status, 0) + count
    merged["errors"] = errors
    merged["top1_checked"] = sum(r["top1_checked"] for r in runs)
    merged["top1_correct"] = sum(r["top1_correct"] for r in runs)
    return merged


def _correct(run: dict[str, Any]) -> float:
    return run["top1_correct"] / run["top1_checked"] if run["top1_checked"] else float("nan")


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def table(figures: dict[str, Any]) -> str:
    """The issue's table (bare rows, peer, QueueNet) and the ratios against the targets."""
    bare, n = figures["bare"], figures["batch_size"]
    systems: dict[str, dict[str, dict[str, Any]]] = figures["systems"]
    cs = sorted(int(c) for c in next(iter(systems.values())))
    low, high = cs[0], cs[-1]
    columns = [f"c={low} req/s", f"c={low} p50 ms"]
    columns += [f"c={c} req/s" for c in cs[1:]] + [f"c={high} p99 ms", "correct top-1"]
    blank = [""] * (len(cs) - 2)
    fastest = bare["fastest_runtime"]
    quickest = bare["bare_pipeline_runtime"]
    lines = [
        "| system | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
        f"| bare model ({fastest}), batch 1 / batch {n} "
        f"| {bare[f'{fastest}_batch1_images_per_s']:.0f} img/s "
        f"| {1000 / bare[f'{fastest}_batch1_images_per_s']:.1f} | {' | '.join(blank)} "
        f"| {bare[f'{fastest}_batchn_images_per_s']:.0f} img/s | | |",
        f"| bare pipeline ({quickest}), one image at a time "
        f"| {1000 / bare['bare_pipeline_p50_ms']:.1f} | {bare['bare_pipeline_p50_ms']:.1f} "
        f"| {' | '.join(blank)} | | | |",
        f"| bare limit: {bare['cores']} cores / ({bare['decode_resize_cpu_ms']:.1f} + "
        f"{bare[f'{fastest}_batchn_cpu_ms_per_image']:.1f} CPU-ms) | | | {' | '.join(blank)} "
        f"| {bare['bare_limit_images_per_s']:.0f} img/s | | |",
    ]
    for name in (PEER, QUEUENET):
        if name not in systems:
            continue
        runs = {int(c): r for c, r in systems[name].items()}
        checked = sum(r["top1_checked"] for r in runs.values())
        correct = sum(r["top1_correct"] for r in runs.values())
        lines.append(
            f"| {name} | {runs[low]['requests_per_s']:.1f} | {runs[low]['p50_ms']:.1f} | "
            + " | ".join(f"{runs[c]['requests_per_s']:.1f}" for c in cs[1:])
            + f" | {runs[high]['p99_ms']:.0f} | {correct / max(checked, 1):.1%} of {checked} |"
        )
    return "\n".join([*lines, "", *verdicts(figures, low, high)])


def verdicts(figures: dict[str, Any], low: int, high: int) -> list[str]:
    bare, paired = figures["bare"], figures["paired"]
    systems = figures["systems"]
    ours = {int(c): r for c, r in systems[QUEUENET].items()}
    peer = {int(c): r for c, r in systems[PEER].items()} if PEER in systems else None
    limit = ours[high]["requests_per_s"] / bare["bare_limit_images_per_s"]
    lines = [
        f"c={high}: QueueNet = {limit:.2f} x the bare limit "
        f"(target >= 0.8, {_verdict(limit >= 0.8)})"
    ]
    if peer:
        ratio = ours[high]["requests_per_s"] / peer[high]["requests_per_s"]
        lines[0] += f"; {ratio:.2f} x the peer's req/s (target >= 1.5, {_verdict(ratio >= 1.5)})"
        p50 = ours[low]["p50_ms"] / peer[low]["p50_ms"]
        lines.append(
            f"c={low}: QueueNet p50 = {p50:.2f} x the peer's "
            f"(target <= 0.6, {_verdict(p50 <= 0.6)})"
        )
    extra = ours[low]["p50_ms"] - bare["bare_pipeline_p50_ms"]
    lines.append(
        f"c={low}: QueueNet p50 - bare pipeline p50 = {extra:+.1f} ms unpaired (target <= 3, "
        f"{_verdict(extra <= 3)})"
    )
    if paired:
        lines.append(
            f"c={low}, paired ({paired['pairs']} images back to back): "
            f"bare {paired['bare_p50_ms']:.1f} ms, QueueNet {paired['service_p50_ms']:.1f} ms, "
            "median difference "
            f"{paired['difference_p50_ms']:+.1f} ms ({_verdict(paired['difference_p50_ms'] <= 3)})"
        )
    for name, runs in systems.items():
        everything = list(runs.values())
        share = sum(r["top1_correct"] for r in everything) / max(
            sum(r["top1_checked"] for r in everything), 1
        )
        errors: dict[str, int] = {}
        for run in everything:
            for status, count in run["errors"].items():
                errors[status] = errors.get(status, 0) + count
        lines.append(
            f"{name}: correct top-1 {share:.2%} ({_verdict(share == 1.0)}), errors {errors or 0}"
        )
    worker = max(r["rss_mb_worker"] for r in ours.values())
    web = max(r["rss_mb_web"] for r in ours.values())
    lines.append(
        f"RSS: worker {worker:.0f} MB (target <= 1200, {_verdict(worker <= 1200)}), largest web "
        f"process {web:.0f} MB (<= 200, {_verdict(web <= 200)})"
    )
    if peer:
        lines[-1] += (
            f"; peer: largest process {max(r['rss_mb_peer'] for r in peer.values()):.0f} MB, "
            f"all {max(r['rss_mb_peer_total'] for r in peer.values()):.0f} MB"
        )
    lines.append(
        "CPU-ms per answered request: "
        + "; ".join(
            f"c={c}: "
            + ", ".join(f"{role} {r[f'cpu_ms_per_req_{role}']:.1f}" for role in QUEUENET_ROLES)
            + (f", peer {peer[c]['cpu_ms_per_req_peer']:.1f}" if peer else "")
            for c, r in sorted(ours.items())
        )
    )
    lines.append(
        "QueueNet mean batch: "
        + ", ".join(f"c={c} {r['mean_batch']:.1f}" for c, r in sorted(ours.items()))
        + "; load generator: "
        + ", ".join(f"c={c} {r['client_cpu_cores']:.2f} cores" for c, r in sorted(ours.items()))
    )
    lines.append(f"runtimes (bench.raw_model): {runtime_summary(bare, figures['batch_size'])}")
    return lines


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


def chart(figures: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bare = figures["bare"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for (name, runs), marker in zip(figures["systems"].items(), "os", strict=False):
        xs = sorted(int(c) for c in runs)
        left.plot(xs, [runs[str(c)]["requests_per_s"] for c in xs], f"{marker}-", label=name)
        right.plot(xs, [runs[str(c)]["p50_ms"] for c in xs], f"{marker}-", label=f"{name} p50")
        right.plot(xs, [runs[str(c)]["p99_ms"] for c in xs], f"{marker}--", label=f"{name} p99")
    left.axhline(bare["bare_limit_images_per_s"], color="grey", ls="--", label="bare limit")
    left.set(xlabel="concurrent clients", ylabel="requests / s", title="Throughput", xscale="log")
    right.axhline(
        bare["bare_pipeline_p50_ms"], color="grey", ls=":", label="bare pipeline, one image"
    )
    right.set(xlabel="concurrent clients", ylabel="ms", title="Latency", xscale="log", yscale="log")
    for axis in (left, right):
        ticks = sorted(int(c) for c in figures["systems"][QUEUENET])
        axis.set_xticks(ticks, [str(c) for c in ticks])
        axis.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--duration-s", type=float, default=20)
    parser.add_argument("--warmup-s", type=float, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--pairs", type=int, default=150, help="bench.paired_latency pairs (0: skip)"
    )
    parser.add_argument("--no-peer", action="store_true", help="QueueNet and the bare model only")
    parser.add_argument("--chart", default="docs/bench.png", help="'' for none")
    parser.add_argument("--json-out", default="", help="write every figure there as JSON")
    parser.add_argument("--serve-arg", action="append", default=[], help="passed to serve")
    args = parser.parse_args(argv)
    args.concurrency = sorted(int(c) for c in args.concurrency.split(","))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    env = service_env()
    batch_size = WorkerSettings.from_env(env).batch_size
    figures = measure(args, env, batch_size)
    sys.stdout.write(table(figures) + "\n")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=1), encoding="utf-8")
    if args.chart:
        chart(figures, ROOT / args.chart)
        sys.stdout.write(f"chart: {args.chart}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
