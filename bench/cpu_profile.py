"""Where the CPU goes under load: CPU-milliseconds per request by component and by what runs.

    python -m bench.cpu_profile [--concurrency 32] [--duration-s 15] [--rate-hz 499]
                                [--serve-arg --workers=1]

On 2 cores a loaded service is bound by CPU: requests/s <= cores / CPU-ms per request. This
starts ``queuenet serve`` (as ``bench.run`` does), drives it with N closed-loop clients
(``bench.load``) and, after the warm-up, samples every process of the service (gunicorn's,
the model worker, Redis) with ``perf record -e cpu-clock``: a sample is taken only on a CPU
that runs one of them, so samples / rate is CPU time, every thread and native library
included (py-spy cannot tell a thread that runs from one that waits for a core). Each
sample is charged by its process (web, worker, Redis) and by the code it was in: the shared
object, and for Pillow and the kernel the symbol (:data:`CATEGORIES`). Python's own frames
are not visible to perf (Python 3.11); the interpreter's share is one line ("Python
interpreter": gunicorn, Flask, redis-py and the app's code).

Prints CPU-ms per request for each (component, category) with its role (``bare``: the bare
pipeline pays it too; ``service``: only the service), the totals, and the ceiling they set.
Needs Linux ``perf`` (Debian's ``linux-perf``) and the right to use it (root, or
``kernel.perf_event_paranoid`` <= 1).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import procs
from bench.load import LoadResult
from bench.load import run as run_load
from bench.run import QUEUENET_ROLES, free_port, service_env, start_service

BARE, SERVICE = "bare", "service"


@dataclass(frozen=True)
class Category:
    name: str
    role: str
    dso: str
    """A regular expression on the shared object's file name."""
    symbol: str = ""
    """A regular expression on the symbol ('' for any)."""


CATEGORIES = (
    Category("model (LiteRT, XNNPACK)", BARE, r"tflite|tensorflow|xnnpack"),
    Category("JPEG decode (libjpeg-turbo)", BARE, r"libjpeg"),
    Category("PNG inflate (zlib)", BARE, r"libz\b|zlib"),
    Category("other image codecs", BARE, r"libpng|libwebp|libtiff|libopenjp|libavif"),
    Category("Pillow: resize", BARE, r"_imaging", r"Resample|resample"),
    Category("Pillow: decoders (PNG unfilter, glue)", BARE, r"_imaging", r"Decode|decode|unpack"),
    Category("Pillow: crop, convert, copy", BARE, r"_imaging"),
    Category("JSON, base64 (queue messages, answers)", SERVICE, r"json|base64|binascii"),
    Category("numpy", SERVICE, r"numpy|_multiarray|_umath"),
    Category("Python interpreter", SERVICE, r"libpython|python3"),
    Category(
        "kernel: switching threads (schedule, wake-ups, futex)",
        SERVICE,
        r"kernel",
        r"task_switch|schedule|spin_unlock_irq|irqentry|futex|try_to_wake|wake_up|"
        r"exit_to_user",
    ),
    Category("kernel: page faults, memory", SERVICE, r"kernel", r"page|fault|mm_|folio|memcg"),
    Category("kernel: network and other system calls", SERVICE, r"kernel"),
    Category("libc (memcpy, malloc)", SERVICE, r"libc\.so|libm\.so"),
    Category("Redis server", SERVICE, r"redis-server"),
)
OTHER = Category("other", SERVICE, r"")

SAMPLE = re.compile(
    r"^\s*(?P<pid>\d+)/(?P<tid>\d+)\s+\S+\s+(?P<symbol>.*?)\s+\((?P<dso>[^()]*)\)\s*$"
)


def categorise(dso: str, symbol: str) -> Category:
    name = Path(dso).name if dso.startswith("/") else dso
    for category in CATEGORIES:
        if re.search(category.dso, name) and re.search(category.symbol, symbol):
            return category
    return OTHER


@dataclass
class CpuProfile:
    concurrency: int
    requests: int
    requests_per_s: float
    rate_hz: int
    samples: dict[tuple[str, str], int]
    """(component, category name) -> samples."""
    client_cpu_ms: float
    cores: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))

    def ms_per_request(self) -> dict[tuple[str, str], float]:
        return {
            key: count * 1000 / self.rate_hz / self.requests for key, count in self.samples.items()
        }


def perf_binary() -> str:
    found = shutil.which("perf")
    if not found:
        raise RuntimeError(
            "no perf on PATH: install Debian's linux-perf (apt-get install linux-perf)"
        )
    return found


def count_samples(perf: str, data: Path, components: dict[int, str]) -> dict[tuple[str, str], int]:
    """Samples per (component, category) from ``perf script``."""
    out = subprocess.run(
        [perf, "script", "-i", str(data), "-F", "pid,tid,ip,sym,dso"],
        capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    for line in out.stdout.splitlines():
        match = SAMPLE.match(line)
        if match is None:
            continue
        component = components.get(int(match["pid"]), "other")
        counts[(component, categorise(match["dso"], match["symbol"]).name)] += 1
    return dict(counts)


def measure(
    concurrency: int, duration_s: int, warmup_s: float, rate_hz: int, serve_args: list[str]
) -> CpuProfile:
    perf = perf_binary()
    port = free_port()
    service = start_service(service_env(), port, serve_args)
    try:
        components = procs.with_role(procs.descendants(service.pid), QUEUENET_ROLES)
        load: dict[str, LoadResult] = {}
        client = threading.Thread(
            target=lambda: load.update(
                result=run_load(f"http://127.0.0.1:{port}", concurrency, duration_s, warmup_s)
            ),
            daemon=True,  # a failed recording must not wait for the load to run out
        )
        client.start()
        time.sleep(warmup_s)
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "perf.data"
            recorded = subprocess.run(
                [perf, "record", "-q", "-F", str(rate_hz), "-e", "cpu-clock",
                 "-p", ",".join(map(str, components)), "-o", str(data),
                 "--", "sleep", str(duration_s)],
                capture_output=True, text=True, timeout=duration_s + 120,
            )  # fmt: skip
            if recorded.returncode != 0:
                raise RuntimeError(f"perf record failed: {recorded.stderr[-2000:]}")
            samples = count_samples(perf, data, components)
        client.join()
    finally:
        service.send_signal(signal.SIGINT)
        try:
            service.wait(timeout=120)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()
    if "result" not in load:
        raise RuntimeError("the load generator failed (its traceback is above)")
    result = load["result"]
    if result.requests == 0 or result.errors:
        raise RuntimeError(f"the load failed: {result}")
    return CpuProfile(
        concurrency=concurrency,
        requests=result.requests,
        requests_per_s=result.requests_per_s,
        rate_hz=rate_hz,
        samples=samples,
        client_cpu_ms=result.client_cpu_cores * result.duration_s * 1000 / result.requests,
    )


def report(profile: CpuProfile) -> str:
    figures = profile.ms_per_request()
    roles = {c.name: c.role for c in (*CATEGORIES, OTHER)}
    total = sum(figures.values())
    by_role: dict[str, float] = collections.defaultdict(float)
    lines = [
        f"{profile.requests} requests at concurrency {profile.concurrency}, "
        f"{profile.requests_per_s:.1f} req/s while perf sampled every process of the service "
        f"at {profile.rate_hz} Hz (CPU time only)",
        "",
        "| component | what runs | CPU-ms per request | share | role |",
        "| --- | --- | --- | --- | --- |",
    ]
    for (component, name), ms in sorted(figures.items(), key=lambda kv: -kv[1]):
        by_role[roles.get(name, SERVICE)] += ms
        if ms >= 0.01:
            lines.append(
                f"| {component} | {name} | {ms:.2f} | {ms / total:.0%} | {roles.get(name, '')} |"
            )
    per_component: dict[str, float] = collections.defaultdict(float)
    for (component, _), ms in figures.items():
        per_component[component] += ms
    lines += [
        f"| all | | {total:.2f} | 100% | |",
        "",
        "per request: "
        + " + ".join(
            f"{name} {ms:.2f}" for name, ms in sorted(per_component.items(), key=lambda kv: -kv[1])
        )
        + f" = {total:.2f} CPU-ms: at most {profile.cores * 1000 / total:.0f} req/s on "
        f"{profile.cores} cores",
        f"bare work (decode, resize, model) {by_role[BARE]:.2f} CPU-ms, the service's own "
        f"{by_role[SERVICE]:.2f} ({by_role[SERVICE] / total:.0%}); the load generator beside "
        f"it {profile.client_cpu_ms:.2f}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration-s", type=int, default=15)
    parser.add_argument("--warmup-s", type=float, default=5)
    parser.add_argument("--rate-hz", type=int, default=499, help="samples per second per CPU")
    parser.add_argument("--serve-arg", action="append", default=[], help="passed to serve")
    parser.add_argument("--json", action="store_true", help="CPU-ms per request as JSON")
    args = parser.parse_args(argv)
    profile = measure(
        args.concurrency, args.duration_s, args.warmup_s, args.rate_hz, args.serve_arg
    )
    if args.json:
        figures = {f"{c}|{name}": ms for (c, name), ms in profile.ms_per_request().items()}
        sys.stdout.write(
            json.dumps({"requests": profile.requests, "cores": profile.cores, "ms": figures}) + "\n"
        )
    else:
        sys.stdout.write(report(profile) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
