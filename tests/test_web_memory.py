"""A web process stays within its memory budget (≤ 200 MB) while 32 clients post photos.

Real gunicorn, real worker (the tiny model, so the web tier's decoding is the load), the 12
test photos; the figure is the resident memory of each gunicorn worker process afterwards.
Measured: 108 MB; with ``QUEUENET_WEB_MALLOC_ARENAS=0`` (glibc's default arenas) 246 MB,
and the test fails.
"""

from __future__ import annotations

import json

from bench import procs
from tests.live import LiveService
from tests.test_bench import run_module

WEB_PROCESS_BUDGET_MB = 200


def gunicorn_workers(live: LiveService) -> list[int]:
    """The pids of the request-handling gunicorn processes of every web tier ``live`` runs."""
    found = []
    for process, _ in live.webs:
        tree = procs.descendants(process.pid) | {process.pid}
        gunicorns = {pid for pid in tree if "gunicorn" in procs.command_line(pid)}
        found += [pid for pid in gunicorns if procs.parent_pid(pid) in gunicorns]
    return found


def test_a_web_process_stays_within_its_memory_budget_under_32_clients(
    live: LiveService,
) -> None:
    live.start_worker()
    url = live.start_web(QUEUENET_WEB_PROCESSES="1", QUEUENET_WEB_THREADS="32")
    out = run_module(
        "bench.load", "--url", url, "--concurrency", "32", "--duration-s", "8",
        "--warmup-s", "1", "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == {} and result["requests"] >= 100, result
    (worker,) = gunicorn_workers(live)
    assert procs.rss_mb(worker) <= WEB_PROCESS_BUDGET_MB, (procs.rss_mb(worker), result)
