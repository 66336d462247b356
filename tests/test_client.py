"""The client library and ``queuenet predict`` against a live gunicorn and worker."""

from __future__ import annotations

import io
import itertools
import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO

import pytest
from PIL import Image

from client import (
    APIError,
    ConnectError,
    Prediction,
    QueueNetClient,
    ServiceUnavailableError,
    TimeoutError,
)
from tests.helpers import ROOT, free_port, python_env
from tests.live import LiveService


def red_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), (250, 5, 5)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def served(live: LiveService) -> Iterator[str]:
    live.start_worker()
    yield live.start_web()


def test_predict_accepts_path_bytes_file_and_pil(served: str, tmp_path: Path) -> None:
    path = tmp_path / "red.png"
    path.write_bytes(red_png())
    with QueueNetClient(served) as client, path.open("rb") as handle, Image.open(path) as pil:
        inputs: list[object] = [str(path), path, red_png(), handle, pil]
        for image in inputs:
            predictions = client.predict(image, top_k=2)  # type: ignore[arg-type]
            assert predictions[0] == Prediction("red", predictions[0].probability, 0)
            assert len(predictions) == 2 and predictions[0].probability > 0.5


def test_api_error_carries_status_and_code(served: str) -> None:
    with pytest.raises(APIError) as info:
        QueueNetClient(served).predict(b"this is text")
    assert info.value.status_code == 400 and info.value.code == "invalid_image"
    assert "not an image" in info.value.message


def test_connect_error() -> None:
    with pytest.raises(ConnectError, match="cannot reach"):
        QueueNetClient(f"http://127.0.0.1:{free_port()}").predict(red_png())


def test_timeout(live: LiveService) -> None:
    worker = live.start_worker()
    worker.send_signal(signal.SIGTERM)  # card stays, nobody answers
    worker.wait(timeout=30)
    url = live.start_web(QUEUENET_PREDICT_TIMEOUT_S="5")
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        QueueNetClient(url, timeout_s=0.5).predict(red_png())
    # The client's own 0.5 s timeout, not the server's 5 s deadline (a 504): any bound below
    # 5 s shows it; 4 s leaves margin for a busy machine.
    assert time.monotonic() - started < 4.0


# --- 503 retries against a scripted HTTP server ---------------------------------------------

UNAVAILABLE = {"success": False, "error": {"code": "queue_full", "message": "retry later"}}
ANSWER = {"success": True, "predictions": [{"label": "red", "probability": 0.9, "index": 0}]}


@dataclass
class ScriptedServer:
    """A real HTTP server on a free loopback port: each POST gets the next scripted reply
    (status, headers); the monotonic time each request arrived is recorded."""

    url: str
    replies: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    arrivals_s: list[float] = field(default_factory=list)

    def gaps_s(self) -> list[float]:
        """Seconds between consecutive requests: how long the client waited to retry."""
        return [b - a for a, b in itertools.pairwise(self.arrivals_s)]


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    script = ScriptedServer(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            script.arrivals_s.append(time.monotonic())
            status, headers = script.replies.pop(0) if script.replies else (500, {})
            body = json.dumps(ANSWER if status == 200 else UNAVAILABLE).encode()
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep the test output clean

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    script.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield script
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.mark.parametrize(
    ("retry_after", "max_retry_wait_s", "expected_s"),
    [
        pytest.param("3", 5.0, 3.0, id="honoured-above-the-1s-default"),
        pytest.param("120", 0.5, 0.5, id="capped-by-max_retry_wait_s"),
        pytest.param(None, 5.0, 1.0, id="missing-falls-back-to-1s"),
        pytest.param("soon", 5.0, 1.0, id="garbage-falls-back-to-1s"),
    ],
)
def test_503_is_retried_after_retry_after(
    scripted: ScriptedServer, retry_after: str | None, max_retry_wait_s: float, expected_s: float
) -> None:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    scripted.replies = [(503, headers), (200, {})]
    with QueueNetClient(scripted.url, max_retry_wait_s=max_retry_wait_s) as client:
        predictions = client.predict(red_png())
    assert predictions == [Prediction("red", 0.9, 0)]
    [gap_s] = scripted.gaps_s()
    # Never earlier than told; the upper margin is generous for a busy machine, yet far below
    # the next candidate (3 s vs the 1 s default, 0.5 s vs 120 s, 1 s vs no wait at all).
    assert expected_s - 0.05 <= gap_s < expected_s + 2.5, gap_s


def test_503_retries_are_bounded(scripted: ScriptedServer) -> None:
    scripted.replies = [(503, {"Retry-After": "0"})] * 3 + [(200, {})]
    with QueueNetClient(scripted.url, max_retries=2) as client:
        with pytest.raises(ServiceUnavailableError) as info:
            client.predict(red_png())
    assert info.value.status_code == 503 and info.value.code == "queue_full"
    assert len(scripted.arrivals_s) == 3  # the first try and max_retries=2 retries


def test_a_worker_coming_up_while_the_client_retries(live: LiveService) -> None:
    """Against the real service: 503 model_unavailable (Retry-After: 1) until the worker has
    published its model card, then the answer."""
    url = live.start_web()  # no worker yet
    started = time.monotonic()
    with pytest.raises(ServiceUnavailableError) as info:
        QueueNetClient(url, max_retries=2).predict(red_png())
    assert info.value.code == "model_unavailable"
    # Two waits of the server's Retry-After = 1 s; the upper bound only says "not stuck".
    assert 2.0 <= time.monotonic() - started < 10.0

    starter = threading.Thread(target=live.start_worker)
    starter.start()  # the worker comes up while the client is retrying
    predictions = QueueNetClient(url, max_retries=30).predict(red_png())
    starter.join()
    assert predictions[0].label == "red"


def test_queuenet_predict_cli(served: str, tmp_path: Path, data_dir: Path) -> None:
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    shutil.copy(data_dir / "chelsea.png", folder / "chelsea.png")
    shutil.copy(data_dir / "coffee.png", folder / "nested" / "coffee.png")
    (folder / "broken.png").write_bytes(b"not really a png")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    command = [sys.executable, "-m", "queuenet", "predict", "--url", served, "--concurrency", "2"]
    out = subprocess.run(
        [*command, str(folder)], env=python_env({}), cwd=ROOT,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1  # one file failed
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["file", "top", "label"]
    assert any("chelsea.png" in line for line in lines)
    assert any("broken.png" in line and "ERROR: HTTP 400 invalid_image" in line for line in lines)
    assert "3 image(s), 1 failed" in out.stderr

    as_json = subprocess.run(
        [*command, "--json", str(folder / "*.png"), str(folder / "nested" / "coffee.png")],
        env=python_env({}), cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    rows = json.loads(as_json.stdout)
    assert [Path(r["file"]).name for r in rows] == ["broken.png", "chelsea.png", "coffee.png"]
    assert rows[2]["predictions"][0]["index"] in range(4)  # the tiny model's classes
    assert "error" in rows[0]

    missing = subprocess.run(
        [*command, str(tmp_path / "nothing-here")], env=python_env({}), cwd=ROOT,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert missing.returncode == 1 and "no image matches" in missing.stderr


# --- queuenet predict: progress bar on a terminal, exit statuses -------------------------------

PREDICT = [sys.executable, "-m", "queuenet", "predict"]
BAR_UPDATE = re.compile(r"\r\[([#.]{30})\] (\d+)/(\d+)")


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str


def run_predict(args: list[str], tmp_path: Path, *, terminal: bool) -> Run:
    """``queuenet predict ARGS`` with stderr on a pseudo-terminal (``terminal``) or a pipe,
    stdout to a file; returns the exit status, stdout and all the child wrote to stderr."""
    stdout_path = tmp_path / f"stdout-{uuid.uuid4().hex[:6]}.txt"
    with stdout_path.open("wb") as stdout:
        if terminal:
            returncode, stderr = run_on_terminal([*PREDICT, *args], stdout)
        else:
            done = subprocess.run(
                [*PREDICT, *args], env=python_env({}), cwd=ROOT,
                stdout=stdout, stderr=subprocess.PIPE, timeout=120,
            )  # fmt: skip
            returncode, stderr = done.returncode, done.stderr.decode()
    return Run(returncode, stdout_path.read_text(), stderr)


def run_on_terminal(command: list[str], stdout: IO[bytes]) -> tuple[int, str]:
    """Run ``command`` with its stderr on a new pseudo-terminal; its status and what reached
    the terminal."""
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            command, env=python_env({}), cwd=ROOT, stdout=stdout, stderr=terminal
        )
    finally:
        os.close(terminal)  # the child has its own copy: EIO on our side once it exits
    try:
        seen = read_terminal(controller, timeout_s=120)
        return process.wait(timeout=30), seen
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
            process.wait()


def read_terminal(controller: int, timeout_s: float) -> str:
    """What arrives at the controlling side of a pseudo-terminal until its other side closes."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        readable, _, _ = select.select([controller], [], [], 1.0)
        if not readable:
            continue
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: every copy of the terminal side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    else:
        raise AssertionError(f"queuenet predict still writing after {timeout_s}s")
    return b"".join(chunks).decode(errors="replace")


@pytest.fixture
def four_images(tmp_path: Path) -> Path:
    folder = tmp_path / "four"
    folder.mkdir()
    for n in range(4):
        (folder / f"red-{n}.png").write_bytes(red_png())
    return folder


def test_cli_progress_bar_reaches_a_terminal_and_exit_0(
    served: str, four_images: Path, tmp_path: Path
) -> None:
    out = run_predict(
        ["--url", served, "--concurrency", "2", str(four_images)], tmp_path, terminal=True
    )
    assert out.returncode == 0, out  # every image answered
    updates = BAR_UPDATE.findall(out.stderr)
    assert [(int(n), int(total)) for _, n, total in updates] == [(n, 4) for n in range(1, 5)], out
    assert [bar.count("#") for bar, _, _ in updates] == [7, 15, 22, 30]  # 30 * n / 4
    assert "4 image(s), 0 failed" in out.stderr
    assert [line.split()[1] for line in out.stdout.splitlines()[1:]] == ["red"] * 4


@pytest.mark.parametrize(
    ("flags", "terminal"),
    [
        pytest.param([], False, id="stderr-is-a-pipe"),
        pytest.param(["--no-progress"], True, id="no-progress"),
    ],
)
def test_cli_no_progress_bar_off_a_terminal_or_when_asked(
    served: str, four_images: Path, tmp_path: Path, flags: list[str], terminal: bool
) -> None:
    out = run_predict(["--url", served, *flags, str(four_images)], tmp_path, terminal=terminal)
    assert out.returncode == 0, out
    assert BAR_UPDATE.search(out.stderr) is None and "/4" not in out.stderr, out.stderr
    assert "4 image(s), 0 failed" in out.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--bogus", "x.png"], "unrecognized arguments: --bogus", id="unknown-option"),
        pytest.param([], "the following arguments are required: paths", id="no-paths"),
        pytest.param(["--top-k", "three", "x.png"], "invalid int value", id="bad-value"),
    ],
)
def test_cli_usage_error_exits_2(args: list[str], message: str, tmp_path: Path) -> None:
    out = run_predict(args, tmp_path, terminal=False)
    assert out.returncode == 2, out
    assert out.stderr.startswith("usage: queuenet predict") and message in out.stderr, out.stderr
    assert out.stdout == ""
