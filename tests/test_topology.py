"""The multi-process topology of docker-compose.yml on loopback: nginx (the system package)
round-robin over two gunicorn web servers, two model workers, one Redis.

nginx runs with the repository's ``deploy/nginx.conf``; the test's copy differs only in its
``listen`` line (a free loopback port instead of 8080), and ``upstreams.conf`` beside it lists
the two gunicorn ports, as the config's header describes. Skipped only without an ``nginx``
binary (CI installs Debian's).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.helpers import ROOT, free_port, wait_until
from tests.live import LiveService

NGINX_CONF = ROOT / "deploy" / "nginx.conf"
LISTEN_LINE = re.compile(rb"^(?P<indent>[ \t]*)listen 8080;$", re.MULTILINE)
COLOURS = {"red": (250, 5, 5), "green": (5, 250, 5), "blue": (5, 5, 250)}
WEB_REQUEST = re.compile(r"request POST /predict status=(\d+) .* worker=(\S+)")
ACCESS_LINE = re.compile(r'"POST /predict HTTP/[\d.]+" (\d+) .* upstream=(.*?) ustatus=')


def nginx_binary() -> str | None:
    """``nginx`` on PATH, or Debian's /usr/sbin/nginx (not on a normal user's PATH)."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")


def png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def config_copy(port: int) -> bytes:
    """deploy/nginx.conf with only its ``listen 8080;`` line moved to 127.0.0.1:``port``."""
    original = NGINX_CONF.read_bytes()
    assert len(LISTEN_LINE.findall(original)) == 1, "expected exactly one `listen 8080;` line"
    return LISTEN_LINE.sub(rb"\g<indent>listen 127.0.0.1:%d;" % port, original)


@dataclass
class Nginx:
    """nginx in the foreground with a copy of deploy/nginx.conf in ``directory``."""

    binary: str
    directory: Path
    upstreams: list[str]
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> Path:
        return self.directory / "access.log"

    @property
    def error_log(self) -> Path:
        return self.directory / "error.log"

    def command(self, *extra: str) -> list[str]:
        directives = "daemon off;"
        if os.geteuid() == 0:
            # The config sets no `user`: a root master would run its workers as the compiled-in
            # user (nobody), which cannot enter pytest's 0700 temporary directories. Keep root.
            directives += " user root;"
        prefix = f"{self.directory}/"
        conf = str(self.directory / "nginx.conf")
        return [self.binary, "-p", prefix, "-e", "stderr", "-c", conf, "-g", directives, *extra]

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        copy = config_copy(self.port)
        (self.directory / "nginx.conf").write_bytes(copy)
        # As deploy/upstreams.conf: a server is skipped for 5 s after 3 failures.
        hosts = [url.removeprefix("http://") for url in self.upstreams]
        servers = "".join(f"server {h} max_fails=3 fail_timeout=5s;\n" for h in hosts)
        (self.directory / "upstreams.conf").write_text(servers, encoding="utf-8")
        check = subprocess.run(self.command("-t"), capture_output=True, timeout=30)
        assert check.returncode == 0, check.stderr.decode(errors="replace")
        with self.access_log.open("wb") as out, self.error_log.open("wb") as err:
            self.process = subprocess.Popen(self.command(), stdout=out, stderr=err)

        def up() -> bool:
            assert self.process is not None and self.process.poll() is None, self.errors()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                return False

        wait_until(up, 15, "nginx")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful shutdown
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def errors(self) -> str:
        return self.error_log.read_text(errors="replace")[-3000:]

    def predict_lines(self) -> list[tuple[int, list[str]]]:
        """(status, upstream addresses tried) of each POST /predict in the access log."""
        found = []
        for line in self.access_log.read_text(errors="replace").splitlines():
            match = ACCESS_LINE.search(line)
            if match:
                found.append((int(match[1]), match[2].split(", ")))
        return found


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    binary = nginx_binary()
    if binary is None:
        pytest.skip("no nginx binary (CI: apt-get install -y nginx)")
    server = Nginx(binary, tmp_path / "nginx", [])
    yield server
    server.stop()


def start_topology(live: LiveService, nginx: Nginx, **victim_env: str) -> None:
    """Two workers (the first gets ``victim_env``), two web servers, nginx in front."""
    first = live.start_worker(wait=False, **victim_env)
    second = live.start_worker(wait=False)
    registry = live.registry()

    def ready(worker: subprocess.Popen[bytes]) -> bool:
        assert worker.poll() is None, live.logs()
        return worker.name in registry.live_workers()  # type: ignore[attr-defined]

    wait_until(lambda: ready(first) and ready(second), 120, "both workers")
    nginx.upstreams = [live.start_web(), live.start_web()]
    nginx.start()


def post(url: str, colour: str) -> requests.Response:
    return requests.post(
        f"{url}/predict", files={"image": (f"{colour}.png", png(COLOURS[colour]))}, timeout=30
    )


def check_answers(responses: list[requests.Response], colours: list[str]) -> None:
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: len(responses)}, [r.text for r in responses if r.status_code != 200]
    for response, colour in zip(responses, colours, strict=True):
        assert response.json()["predictions"][0]["label"] == colour
    assert len({r.headers["X-Request-ID"] for r in responses}) == len(responses)


def web_counts(live: LiveService) -> dict[str, Counter[str]]:
    """Per web server (by URL): answered /predict requests by the worker that predicted them."""
    logs = sorted(live.workdir.glob("*-web.log"))  # numbered in start order, like live.webs
    assert len(logs) == len(live.webs)
    counts = {}
    for (_, url), log in zip(live.webs, logs, strict=True):
        lines = WEB_REQUEST.findall(log.read_text(errors="replace"))
        assert all(status == "200" for status, _ in lines), lines
        counts[url] = Counter(worker for _, worker in lines)
    return counts


def leftovers(live: LiveService) -> dict[str, int]:
    """Items still queued or held, and results nobody read (an answer given twice)."""
    footprint = live.inspector().footprint()
    return {
        "queued": footprint.queued,
        "processing": footprint.held,
        "unread_results": footprint.results,
    }


def summary(
    title: str,
    live: LiveService,
    nginx: Nginx,
    responses: list[requests.Response],
    extra: str = "",
) -> str:
    per_web = web_counts(live)
    per_worker: Counter[str] = sum(per_web.values(), Counter())
    lines = nginx.predict_lines()
    retried = sum(1 for _, tried in lines if len(tried) > 1)
    errors = nginx.error_log.read_text(errors="replace")
    text = (
        f"[topology] {title}: {len(responses)} requests through nginx, statuses "
        f"{dict(Counter(r.status_code for r in responses))}; per web server "
        f"{ {url: sum(c.values()) for url, c in per_web.items()} }; per worker "
        f"{dict(per_worker)}; nginx access log: {len(lines)} POSTs, {retried} passed on to "
        f"the next server (error log: {errors.count('Connection refused')} refused, "
        f"{errors.count('Connection reset by peer')} reset after sending); "
        f"leftovers {leftovers(live)}{extra}"
    )
    print(text)
    return text


def test_nginx_config_is_the_one_compose_mounts() -> None:
    # Read as text (no YAML parser among the declared dependencies): the `nginx:` service is
    # the lines from `  nginx:` up to the next line indented by two spaces or less.
    compose = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    match = re.search(r"^  nginx:\n((?:(?:    .*)?\n)*)", compose, re.MULTILINE)
    assert match, "docker-compose.yml has no nginx service"
    service = [line.strip() for line in match[1].splitlines()]
    assert "- ./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in service
    assert "- ./deploy/upstreams.compose.conf:/etc/nginx/upstreams.conf:ro" in service
    assert '- "8080:8080"' in service  # the port the file listens on
    copy = config_copy(12345)
    assert copy != NGINX_CONF.read_bytes()
    assert copy.replace(b"listen 127.0.0.1:12345;", b"listen 8080;") == NGINX_CONF.read_bytes()


def test_round_robin_over_two_web_servers_and_two_workers(live: LiveService, nginx: Nginx) -> None:
    start_topology(live, nginx)
    colours = [list(COLOURS)[i % len(COLOURS)] for i in range(60)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda c: post(nginx.url, c), colours))
    summary("round robin", live, nginx, responses)
    check_answers(responses, colours)
    per_web = web_counts(live)
    assert all(sum(c.values()) > 0 for c in per_web.values()), per_web
    assert sum(sum(c.values()) for c in per_web.values()) == 60
    per_worker: Counter[str] = sum(per_web.values(), Counter())
    assert set(per_worker) == {w.name for w in live.workers}, per_worker  # type: ignore[attr-defined]
    # nginx's own view agrees: each web server answered what its log says.
    lines = nginx.predict_lines()
    assert len(lines) == 60 and all(status == 200 for status, _ in lines)
    by_upstream = Counter(f"http://{tried[-1]}" for _, tried in lines)
    assert by_upstream == {url: sum(c.values()) for url, c in per_web.items()}
    assert leftovers(live) == {"queued": 0, "processing": 0, "unread_results": 0}


def test_stopping_a_web_server_and_killing_a_worker_under_load_loses_nothing(
    live: LiveService, nginx: Nginx
) -> None:
    # The victim waits up to 200 ms for each batch to fill, so it holds items most of the
    # time and is killed with some in hand; the other worker must take them over.
    start_topology(live, nginx, QUEUENET_BATCH_WAIT_MS="200")
    victim = live.workers[0]
    survivor = live.workers[1]
    leaving_web, leaving_url = live.webs[0]
    registry = live.registry()
    victim_name = victim.name  # type: ignore[attr-defined]
    total = 150
    colours = [list(COLOURS)[i % len(COLOURS)] for i in range(total)]
    done = Counter[str]()
    lock = threading.Lock()

    def send(colour: str) -> requests.Response:
        response = post(nginx.url, colour)
        with lock:
            done["n"] += 1
        return response

    with ThreadPoolExecutor(max_workers=1) as outer, ThreadPoolExecutor(max_workers=8) as pool:
        future = outer.submit(lambda: list(pool.map(send, colours)))
        wait_until(lambda: done["n"] >= 40, 30, "40 answers")
        leaving_web.send_signal(signal.SIGTERM)  # graceful: in-flight requests finish
        wait_until(lambda: done["n"] >= 80, 30, "80 answers")
        wait_until(lambda: registry.held(victim_name) > 0, 10, "the victim to hold a batch")
        live.kill(victim)
        held = registry.held(victim_name)
        responses = future.result(timeout=60)
    text = summary(
        "web SIGTERM + worker SIGKILL", live, nginx, responses, f"; victim held {held} when killed"
    )
    check_answers(responses, colours)
    assert leaving_web.wait(timeout=30) == 0, live.logs()
    assert held > 0, "the victim held nothing when it was killed"
    # The whole file: live.logs() keeps only the tail of each log, too short here.
    (survivor_log,) = live.workdir.glob(f"*-{survivor.name}.log")  # type: ignore[attr-defined]
    requeued = re.findall(
        rf"requeued (\d+) item\(s\) of dead worker {victim.name}$",  # type: ignore[attr-defined]
        survivor_log.read_text(errors="replace"),
        re.MULTILINE,
    )
    assert [int(n) for n in requeued] == [held], (requeued, held)
    assert survivor.poll() is None
    per_web = web_counts(live)
    assert sum(per_web[leaving_url].values()) > 0 and len(per_web) == 2, text
    assert sum(sum(c.values()) for c in per_web.values()) == total
    # nginx met the stopped server (refused, or reset after sending) and passed those on.
    assert any(len(tried) > 1 for _, tried in nginx.predict_lines()), text
    assert leftovers(live) == {"queued": 0, "processing": 0, "unread_results": 0}
    assert nginx.process is not None and nginx.process.poll() is None, nginx.errors()


def test_standard_protocols_through_nginx_with_their_own_clients(
    live: LiveService, nginx: Nginx, tmp_path: Path
) -> None:
    """tritonclient and the kserve SDK (tests/clients_venv.py) through nginx to both web
    servers: every protocol answers as /predict does; nginx's own 413 takes each API's shape."""
    from tests.clients_venv import DEMO, clients_python

    python = clients_python()
    start_topology(live, nginx)
    images = []
    for colour in ("red", "green", "blue"):
        path = tmp_path / f"{colour}.png"
        path.write_bytes(png(COLOURS[colour]))
        images.append(str(path))
    out = subprocess.run(
        [str(python), str(DEMO), "--url", nginx.url, "--model", "tiny", "--json", *images],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr[-3000:] + nginx.errors()
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["predict_top1"] == [0, 1, 2]  # red, green, blue
    assert report["tritonclient"]["top1"] == report["kserve"]["v1_top1"] == [0, 1, 2]
    access = nginx.access_log.read_text(errors="replace")
    for request in ("POST /v2/models/tiny/infer", "POST /v1/models/tiny:predict",
                    "POST /v1/models/tiny:classify", "GET /v2/health/ready"):  # fmt: skip
        assert re.search(rf'"{re.escape(request)} HTTP/[\d.]+" 200 ', access), request
    # The load balancer spread the protocols' requests over both web servers.
    logs = sorted(live.workdir.glob("*-web.log"))
    per_web = [len(re.findall(r"protocol=kserve-v2", p.read_text(errors="replace"))) for p in logs]
    assert len(per_web) == 2 and all(n > 0 for n in per_web), per_web
    too_big = b"\0" * (17 * 1024 * 1024)
    v2 = requests.post(f"{nginx.url}/v2/models/tiny/infer", data=too_big, timeout=30)
    assert v2.status_code == 413 and set(v2.json()) == {"error"}, v2.text
    v1 = requests.post(f"{nginx.url}/v1/models/tiny:predict", data=too_big, timeout=30)
    assert v1.status_code == 413 and set(v1.json()) == {"error"}, v1.text
    own = requests.post(f"{nginx.url}/predict", data=too_big, timeout=30)
    assert own.status_code == 413 and own.json()["success"] is False
