"""Runs Redis (when none is configured), gunicorn and the model workers as one service."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from types import FrameType

import redis

from app.settings import AppSettings
from protocol.connection import connect
from protocol.keys import Keys
from protocol.settings import env_int
from queuenet.embedded_redis import EmbeddedRedis, EmbeddedRedisError
from queuenet.processes import child_preexec

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 600.0
"""Longest wait for the first model card (the first start builds the model)."""
POLL_S = 0.2


class Supervisor:
    def __init__(self, settings: AppSettings, env: dict[str, str], *, num_workers: int) -> None:
        self.settings = settings
        self.env = env
        self.num_workers = num_workers
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.redis: EmbeddedRedis | None = None
        self._stop = threading.Event()

    def run(self) -> int:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        with tempfile.TemporaryDirectory(prefix="queuenet-") as tmp:
            try:
                self._start_redis(Path(tmp))
            except EmbeddedRedisError as exc:
                logger.error("%s", exc)
                return 1
            try:
                return self._run_children()
            finally:
                self._stop_children()
                if self.redis is not None:
                    self.redis.stop()

    def _start_redis(self, directory: Path) -> None:
        if self.env.get("QUEUENET_REDIS_URL"):
            logger.info("using redis at %s", self.settings.redis.redacted_url())
            return
        self.redis = EmbeddedRedis(directory)
        url = self.redis.start()
        self.env["QUEUENET_REDIS_URL"] = url
        self.settings = replace(self.settings, redis=replace(self.settings.redis, url=url))

    def _run_children(self) -> int:
        from queuenet.cli import gunicorn_command

        metrics_port = env_int(self.env, "METRICS_PORT", 0, minimum=0, maximum=65535)
        for index in range(self.num_workers):
            env = dict(self.env)
            if metrics_port:  # one port per worker on this machine
                env["QUEUENET_METRICS_PORT"] = str(metrics_port + index)
            self._spawn(f"worker-{index + 1}", [sys.executable, "-m", "worker"], env)
        self._spawn("web", gunicorn_command(self.settings), self.env)
        if not self._wait_ready():
            return 0 if self._stop.is_set() else 1
        url = f"http://{self.settings.host}:{self.settings.port}"
        logger.info("QueueNet is ready at %s (POST %s/predict); Ctrl-C stops it", url, url)
        while not self._stop.wait(POLL_S):
            failed = self._exited_child()
            if failed:
                logger.error("%s exited unexpectedly; stopping the service", failed)
                return 1
        return 0

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> None:
        # Own session: a terminal's Ctrl-C reaches only us, and we stop the children in order.
        process = subprocess.Popen(
            command, env=env, start_new_session=True, preexec_fn=child_preexec
        )
        logger.info("started %s pid=%d", name, process.pid)
        self.children.append((name, process))

    def _exited_child(self) -> str | None:
        for name, process in self.children:
            if process.poll() is not None:
                return f"{name} (pid {process.pid}, exit code {process.returncode})"
        return None

    def _wait_ready(self) -> bool:
        """Wait for a model card in Redis and a 200 from /healthz."""
        client = connect(self.settings.redis)
        card_key = Keys(self.settings.redis.namespace).model_card()
        health = f"http://{self.settings.host}:{self.settings.port}/healthz"
        deadline = time.monotonic() + READY_TIMEOUT_S
        logger.info("waiting for the model worker to load the model and for the web server")
        while not self._stop.wait(POLL_S):
            failed = self._exited_child()
            if failed:
                logger.error("%s exited during start-up; see its log above", failed)
                return False
            if time.monotonic() > deadline:
                logger.error("the service was not ready within %.0fs", READY_TIMEOUT_S)
                return False
            if _has_key(client, card_key) and _answers(health):
                return True
        return False

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        logger.info("%s received: stopping", signal.Signals(signum).name)
        self._stop.set()

    def _stop_children(self) -> None:
        """Web first (stops taking requests, lets in-flight ones finish), then workers."""
        grace_s = self.settings.predict_timeout_s + 10
        for group in (["web"], [n for n, _ in self.children if n != "web"]):
            procs = [p for n, p in self.children if n in group and p.poll() is None]
            for process in procs:
                process.send_signal(signal.SIGTERM)
            for process in procs:
                try:
                    process.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    logger.warning("pid %d did not stop in %.0fs; killing it", process.pid, grace_s)
                    process.kill()
                    process.wait()
        logger.info("all processes stopped")


def _has_key(client: redis.Redis, key: str) -> bool:
    try:
        return bool(client.exists(key))
    except redis.RedisError:
        return False


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:  # noqa: S310 (loopback URL)
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False
