"""Where one request's time goes at concurrency 1: py-spy on the web tier and the worker.

    python -m bench.profile [--duration-s 20] [--rate-hz 100] [--serve-arg --workers=1]

Starts ``queuenet serve`` (as ``bench.run`` does) and drives it with one closed-loop client
(``bench.load --concurrency 1``): after the warm-up, for ``--duration-s`` without py-spy (what
the sampling itself costs shows against this), then as long again while ``py-spy record
--idle --nonblocking`` samples every gunicorn process and the model worker: wall time, waits
included. Only two threads count: the gunicorn thread that handles a request (its samples
carry gunicorn's ``handle`` frame) and the worker's main loop (``Worker.run``). Each sample
is charged to the deepest stage of ``WEB_STAGES`` / ``WORKER_STAGES`` on its stack.

Prints milliseconds per request for each stage, marked by role: ``bare`` (the bare pipeline,
decode + resize + model in one process, pays it too), ``service`` (only the service does, on
the request's path) or ``off-path`` (the worker between requests). Then the client's mean
time per request, split into the bare stages, the web tier's own work, the worker's work
around the model, and the rest, which neither thread spends working: Redis waking the blocked
worker and web thread, HTTP through the kernel, gunicorn's poller, the client. These are
means, from samples; ``bench.paired_latency`` gives the median difference. Where the two
processes overlap (the worker starts on a message while the web thread still reads RPUSH's
reply), the rest absorbs the overlap, so the split is approximate.
"""

from __future__ import annotations

import argparse
import collections
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.load import LoadResult
from bench.load import run as run_load
from bench.procs import command_line, descendants, parent_pid
from bench.run import free_port, service_env, start_service


@dataclass(frozen=True)
class Stage:
    name: str
    function: str
    """A frame's function name (py-spy prints ``Class.method`` for methods, Python 3.11+)."""
    file: str
    """The end of that frame's file path."""
    role: str = "service"
    """``bare``: the bare in-process pipeline pays it too; ``service``: only the service does,
    on the request's path; ``wait``: the web tier waiting for the worker (the worker's stages
    overlap it); ``off-path``: the worker's time between requests."""


WEB_STAGES = (
    Stage(
        "gunicorn: parse the request, write the answer",
        "ThreadWorker.handle",
        "gunicorn/workers/gthread.py",
    ),
    Stage("Flask / werkzeug around the view", "Flask.wsgi_app", "flask/app.py"),
    Stage("the view's own code (ids, checks, g)", "_predict", "app/views.py"),
    Stage("the view's own code (ids, checks, g)", "PredictionService.predict", "app/queueing.py"),
    Stage("read the multipart upload", "read_uploads", "app/uploads.py"),
    Stage("routes + model card (cached)", "ModelRouter.resolve", "app/routing.py"),
    Stage("decode the image (Pillow)", "decode_image", "app/preprocess.py", "bare"),
    Stage("crop + resize", "prepare", "app/preprocess.py", "bare"),
    Stage(
        "build the queue message (base64, JSON)",
        "PredictRequest.from_array",
        "protocol/messages.py",
    ),
    Stage("build the queue message (base64, JSON)", "encode_request", "protocol/messages.py"),
    Stage("push to Redis (RPUSH)", "Queue.push", "protocol/queue.py"),
    Stage("wait for the answer (BLPOP)", "Queue.wait_result", "protocol/queue.py", "wait"),
    Stage("read the answer, JSON response", "_outcome", "app/queueing.py"),
    Stage("read the answer, JSON response", "jsonify", "flask/json/__init__.py"),
    Stage("access log + metrics", "_log_request", "app/__init__.py"),
)
WEB_CLOCK = Stage("gunicorn's main loop", "ThreadWorker.run", "gunicorn/workers/gthread.py")
"""A thread every gunicorn worker process always has: its samples give py-spy's real rate."""

WORKER_STAGES = (
    Stage("between batches (heartbeat, loop)", "Worker.run", "worker/loop.py", "off-path"),
    Stage(
        "idle: wait for and claim work (BLMOVE)",
        "Worker.dequeue_batch",
        "worker/loop.py",
        "off-path",
    ),
    Stage("batch bookkeeping (ids, metrics)", "Worker.process", "worker/loop.py"),
    Stage("batch bookkeeping (ids, metrics)", "Worker.predict_batch", "worker/loop.py"),
    Stage("decode + check the message", "plan_batch", "worker/plan.py"),
    Stage("stack the batch", "stack", "worker/batching.py"),
    Stage("model call", "KerasPredictor.predict", "worker/model.py", "bare"),
    Stage("model call", "LiteRTPredictor.predict", "worker/litert.py", "bare"),
    Stage("model call", "_Interpreter.run", "worker/litert.py", "bare"),  # a lane's thread
    Stage("rank + encode the answer", "after_prediction", "worker/plan.py"),
    Stage("rank + encode the answer", "encode_result", "protocol/messages.py"),
    Stage("write the answer + ack (Redis)", "Worker.write_results", "worker/loop.py"),
    Stage(
        "the batch's log line (after the answer)", "Logger.info", "logging/__init__.py", "off-path"
    ),
)
WORKER_CLOCK = Stage("the worker's main loop", "Worker.run", "worker/loop.py")

FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _matches(frame: str, stage: Stage) -> bool:
    match = FRAME.match(frame)
    if match is None or not match["file"].endswith(stage.file):
        return False
    # Before Python 3.11 (no co_qualname) py-spy prints a method's bare name.
    return match["function"] in (stage.function, stage.function.rsplit(".", 1)[-1])


def charge(stack: Sequence[str], stages: Sequence[Stage]) -> str | None:
    """The deepest stage on ``stack`` (frames root first, py-spy's ``function (file:line)``);
    None if the stack has none, i.e. it is not a thread this profile counts."""
    found = None
    for frame in stack:
        for stage in stages:
            if _matches(frame, stage):
                found = stage.name
    return found


@dataclass
class Samples:
    by_stage: collections.Counter[str]
    clock: int
    """Samples of the ``clock`` thread, which lives through the whole recording."""


def collapse(raw: str, stages: Sequence[Stage], clock: Stage) -> Samples:
    """Samples per stage from py-spy's ``--format raw`` output (``frame;frame;... count``)."""
    samples = Samples(collections.Counter(), 0)
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        stage = charge(frames, stages)
        if stage is not None:
            samples.by_stage[stage] += int(count)
        if any(_matches(frame, clock) for frame in frames):
            samples.clock += int(count)
    return samples


def ms_per_request(
    samples: Sequence[Samples], duration_s: float, requests: float
) -> dict[str, float]:
    """Each process's samples turned into wall time at its real sampling rate (py-spy falls
    behind the asked-for rate when the machine is busy), summed over the processes."""
    figures: dict[str, float] = collections.defaultdict(float)
    for process in samples:
        if process.clock == 0:
            continue  # never sampled: no rate to turn its samples into time
        sample_ms = duration_s * 1000 / process.clock
        for stage, count in process.by_stage.items():
            figures[stage] += count * sample_ms / requests
    return dict(figures)


def record(pids: Sequence[int], duration_s: int, rate_hz: int, out_dir: Path) -> list[Path]:
    """py-spy on every pid at once for ``duration_s``; the raw outputs' paths (collapsed
    stacks, which flamegraph.pl and speedscope read)."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    outputs, recorders = [], []
    for pid in pids:
        output = out_dir / f"{pid}.txt"
        args = [
            "record", "--pid", str(pid), "--duration", str(duration_s), "--rate", str(rate_hz),
            "--idle", "--nonblocking", "--format", "raw", "--output", str(output),
        ]  # fmt: skip
        recorders.append(
            subprocess.Popen([py_spy, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        )
        outputs.append(output)
    try:
        for recorder in recorders:
            _, err = recorder.communicate(timeout=duration_s + 120)
            if recorder.returncode != 0:
                raise RuntimeError(f"py-spy failed ({recorder.returncode}): {err.decode()[-2000:]}")
    finally:
        for recorder in recorders:
            if recorder.poll() is None:
                recorder.kill()
                recorder.wait()
    return outputs


@dataclass
class Profile:
    requests: int
    client_mean_ms: float
    web_ms: dict[str, float]
    worker_ms: dict[str, float]
    unprofiled_mean_ms: float = 0.0
    """The client's mean over the same length of time just before, without py-spy."""
    py_spy_cores: float = 0.0
    """CPU that py-spy itself used while it sampled, in cores."""


def measure(
    duration_s: int, warmup_s: float, rate_hz: int, serve_args: list[str], keep_dir: str
) -> Profile:
    port = free_port()
    service = start_service(service_env(), port, serve_args)
    try:
        ours = descendants(service.pid)
        gunicorns = {pid for pid in ours if "gunicorn" in command_line(pid)}
        # gunicorn's worker processes; its arbiter handles no request.
        web_pids = sorted(pid for pid in gunicorns if parent_pid(pid) in gunicorns)
        worker_pids = [pid for pid in ours if "-m worker" in command_line(pid)]
        if not web_pids or len(worker_pids) != 1:
            raise RuntimeError(f"expected gunicorn and one worker, found {web_pids} {worker_pids}")
        url = f"http://127.0.0.1:{port}"
        unprofiled = run_load(url, 1, duration_s, warmup_s, [])  # what sampling itself costs
        load: dict[str, LoadResult] = {}
        client = threading.Thread(
            # Runs a second longer than py-spy, which starts half a second in.
            target=lambda: load.update(result=run_load(url, 1, duration_s + 1, 0, [])),
            daemon=True,  # a failed recording must not wait for the load to run out
        )
        client.start()
        with tempfile.TemporaryDirectory() as tmp:
            out_dir = Path(keep_dir or tmp)
            out_dir.mkdir(parents=True, exist_ok=True)
            time.sleep(0.5)  # the client's connection is up before py-spy starts
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            outputs = record([*web_pids, *worker_pids], duration_s, rate_hz, out_dir)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            client.join()
            web = [collapse(o.read_text(), WEB_STAGES, WEB_CLOCK) for o in outputs[:-1]]
            worker = collapse(outputs[-1].read_text(), WORKER_STAGES, WORKER_CLOCK)
    finally:
        service.send_signal(signal.SIGINT)
        try:
            service.wait(timeout=120)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()
    if worker.clock == 0 or not any(process.clock for process in web):
        raise RuntimeError(
            "py-spy's stacks hold none of the expected main-loop frames "
            f"({WEB_CLOCK.function}, {WORKER_CLOCK.function}); see the raw stacks (--keep-dir)"
        )
    if "result" not in load:
        raise RuntimeError("the load generator failed (its traceback is above)")
    result = load["result"]
    if result.requests == 0 or result.errors or unprofiled.errors:
        raise RuntimeError(f"the load failed: {result}, before py-spy: {unprofiled}")
    client_mean_ms = result.duration_s * 1000 / result.requests
    recorded = duration_s * 1000 / client_mean_ms  # requests within py-spy's window
    return Profile(
        requests=round(recorded),
        client_mean_ms=client_mean_ms,
        web_ms=ms_per_request(web, duration_s, recorded),
        worker_ms=ms_per_request([worker], duration_s, recorded),
        unprofiled_mean_ms=unprofiled.duration_s * 1000 / max(unprofiled.requests, 1),
        py_spy_cores=(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        / duration_s,
    )


def stage_table(title: str, figures: dict[str, float], stages: Sequence[Stage]) -> list[str]:
    total = sum(figures.values()) or 1.0
    lines = [f"| {title} | ms per request | share | role |", "| --- | --- | --- | --- |"]
    for name, role in dict.fromkeys((s.name, s.role) for s in stages):
        ms = figures.get(name, 0.0)
        lines.append(f"| {name} | {ms:.2f} | {ms / total:.0%} | {role} |")
    lines.append(f"| total | {sum(figures.values()):.2f} | | |")
    return lines


def path_split(profile: Profile) -> dict[str, float]:
    """The mean request's wall time by who spends it. The web tier's wait overlaps the
    worker's work, so the path is: the web tier's own stages, the worker's stages on the
    request's path, and the rest (Redis waking the blocked worker and web thread, HTTP
    through the kernel, the client, gunicorn's poller)."""

    def by_role(figures: dict[str, float], stages: Sequence[Stage], role: str) -> float:
        names = {s.name for s in stages if s.role == role}
        return sum(ms for name, ms in figures.items() if name in names)

    web, worker = profile.web_ms, profile.worker_ms
    split = {
        "bare pipeline stages (decode, resize, model)": by_role(web, WEB_STAGES, "bare")
        + by_role(worker, WORKER_STAGES, "bare"),
        "web tier's own work": by_role(web, WEB_STAGES, "service"),
        "worker's work around the model": by_role(worker, WORKER_STAGES, "service"),
    }
    split["hand-offs, HTTP, client (the rest)"] = profile.client_mean_ms - sum(split.values())
    return split


def summary(profile: Profile) -> list[str]:
    split = path_split(profile)
    bare, *added = split.items()
    return [
        f"{profile.requests} requests at concurrency 1: client mean {profile.client_mean_ms:.1f} "
        f"ms = {bare[0]} {bare[1]:.1f} + added by the service "
        f"{sum(ms for _, ms in added):.1f} ms ("
        + ", ".join(f"{n} {ms:.1f}" for n, ms in added)
        + ")",
        f"without py-spy, just before: client mean {profile.unprofiled_mean_ms:.1f} ms "
        f"(sampling's own cost: {profile.client_mean_ms - profile.unprofiled_mean_ms:+.1f} ms; "
        f"py-spy used {profile.py_spy_cores:.2f} cores)",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=int, default=20, help="whole seconds (py-spy)")
    parser.add_argument("--warmup-s", type=float, default=3)
    parser.add_argument(
        "--rate-hz", type=int, default=100, help="samples per second (each costs CPU)"
    )
    parser.add_argument("--serve-arg", action="append", default=[], help="passed to serve")
    parser.add_argument(
        "--keep-dir", default="", help="keep py-spy's raw stacks here (<pid>.txt; worker last)"
    )
    args = parser.parse_args(argv)
    profile = measure(args.duration_s, args.warmup_s, args.rate_hz, args.serve_arg, args.keep_dir)
    lines = [
        *stage_table("web: request thread", profile.web_ms, WEB_STAGES),
        "",
        *stage_table("worker: main loop", profile.worker_ms, WORKER_STAGES),
        "",
        *summary(profile),
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
