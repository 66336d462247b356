"""``queuenet serve``: Redis (when none is configured), gunicorn and the model workers as one
service that heals itself.

Every process is a child of this one. One that exits unexpectedly is logged, counted
(``queuenet_serve_restarts_total`` on the web tier's ``/metrics``) and restarted after a
backoff (see :mod:`queuenet.restart_policy`):

- a worker: its claimed items go back to the queue at once (it is dead for sure, no need to
  wait for its heartbeat to expire), then a new process takes its name;
- gunicorn: the listening socket belongs to this process and is handed to each gunicorn
  (``fd://``), so clients that connect during the restart wait in the backlog; the dead
  master's orphaned worker processes are asked to finish their requests and leave;
- the private Redis: started again on the same socket; workers reconnect and publish their
  model card again, requests in flight at that moment get 503.

The service stops on SIGINT/SIGTERM (web first, then workers, then Redis), or when one
process crash-loops or exits with a status that says restarting cannot help.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

import redis

from app.settings import AppSettings
from protocol.backend import Backend, connect_backend
from protocol.settings import from_env
from protocol.shards import ShardedRegistry, ShardHealth, directory_for
from queuenet.embedded_redis import EmbeddedRedis, EmbeddedRedisError
from queuenet.processes import child_preexec
from queuenet.restart_policy import GiveUp, RestartPolicy
from queuenet.supervisor_types import ServedModel
from queuenet.web import gunicorn_command, listen
from worker.settings import (
    METRICS_PORT,
    MODEL,
    MODEL_NAME,
    MODEL_VERSION,
    WORKER_NAME,
    WorkerSettings,
)

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 600.0
"""Longest wait for the first model card (the first start builds the model)."""
POLL_S = 0.2
WORKER_CONFIG_ERROR = 2
"""A worker's exit status for a bad setting, refused credentials or a model that cannot load."""
GUNICORN_BOOT_ERRORS = {3: "a web process failed to boot", 4: "the web app failed to load"}
"""gunicorn's exit statuses for errors that a restart repeats."""


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


@dataclass
class Child:
    """One supervised process: how to start it, and what to do once it has died."""

    name: str
    start: Callable[[], subprocess.Popen[bytes]]
    fatal_exits: dict[int, str] = field(default_factory=dict)
    """Exit statuses that mean a restart cannot help, with what they mean."""
    after_exit: Callable[[], None] = lambda: None
    """Clean up after an unexpected exit, before the restart."""
    detail: str = ""
    """What this process serves, for the log."""
    process: subprocess.Popen[bytes] | None = None
    exits_at_s: list[float] = field(default_factory=list)
    restart_at_s: float | None = None
    restarts: int = 0

    def spawn(self) -> None:
        self.process = self.start()
        self.restart_at_s = None
        detail = f" {self.detail}" if self.detail else ""
        logger.info("started %s pid=%d%s", self.name, self.process.pid, detail)

    def exited(self) -> int | None:
        """The exit status once the running process has exited, else None."""
        if self.process is None or self.restart_at_s is not None:
            return None
        return self.process.poll()


class Supervisor:
    def __init__(
        self,
        settings: AppSettings,
        env: dict[str, str],
        *,
        models: Sequence[ServedModel],
        num_workers: int,
        policy: RestartPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.env = env
        self.models = list(models)
        self.num_workers = num_workers
        self.policy = policy or RestartPolicy()
        self.children: list[Child] = []
        self.redis: EmbeddedRedis | None = None
        self.listener: socket.socket | None = None
        self._stop = threading.Event()
        self._backend: Backend | None = None
        self._restarts: Any = None

    # --- the whole run ---------------------------------------------------------------------

    def run(self) -> int:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        self._restarts = _restart_counter(self.env)
        with tempfile.TemporaryDirectory(prefix="queuenet-") as tmp:
            try:
                self._start_redis(Path(tmp))
                self.listener = listen(self.settings)
            except EmbeddedRedisError as exc:
                logger.error("%s", exc)
                return 1
            except OSError as exc:
                logger.error(
                    "cannot listen on %s:%d: %s", self.settings.host, self.settings.port, exc
                )
                return 1
            try:
                self._start_children()
                return self._supervise()
            finally:
                self._stop_children()
                self.listener.close()

    def _start_redis(self, directory: Path) -> None:
        if self.env.get("QUEUENET_REDIS_URL"):
            logger.info("using redis at %s", self.settings.redis.redacted_url())
            return
        server = EmbeddedRedis(directory)
        self.redis = server

        def start() -> subprocess.Popen[bytes]:
            server.start()
            assert server.process is not None
            return server.process

        child = Child("redis", start)
        child.spawn()
        self.children.append(child)
        self.env["QUEUENET_REDIS_URL"] = server.url
        self.settings = replace(self.settings, redis=replace(self.settings.redis, url=server.url))

    def _registry(self, model: str, version: str) -> ShardedRegistry:
        assert self._backend is not None
        keys = self._backend.keys(self.settings.redis.namespace)
        return ShardedRegistry(
            self._backend, keys, model, version, ShardHealth(self._backend.shards)
        )

    def _start_children(self) -> None:
        self._backend = connect_backend(self.settings.redis)
        keys = self._backend.keys(self.settings.redis.namespace)
        try:  # the first model serves POST /predict
            directory_for(self._backend, keys).set_default(self.models[0].name, known=False)
        except redis.RedisError as exc:
            logger.warning("could not set the default model yet: %s", exc)
        metrics_port = from_env(WorkerSettings, self.env).metrics_port
        index = 0
        for model in self.models:
            for _ in range(self.num_workers):
                index += 1
                env = dict(self.env)
                env[WORKER_NAME.variable] = f"{socket.gethostname()}-{self.settings.port}-w{index}"
                env[MODEL.variable] = model.spec
                env[MODEL_NAME.variable] = model.name
                env[MODEL_VERSION.variable] = model.version
                if metrics_port:  # one port per worker on this machine
                    env[METRICS_PORT.variable] = str(metrics_port + index - 1)
                self._add(
                    Child(
                        f"worker-{index}",
                        self._popen([sys.executable, "-m", "worker"], env),
                        detail=f"model={model.name} version={model.version}",
                        fatal_exits={
                            WORKER_CONFIG_ERROR: "a setting, the Redis credentials or the model "
                            "is wrong (see its log above)"
                        },
                        after_exit=self._requeue_of(model, env[WORKER_NAME.variable]),
                    )
                )
        assert self.listener is not None
        bind = f"fd://{self.listener.fileno()}"
        web = Child(
            "web",
            self._popen(gunicorn_command(self.settings, bind=bind), self.env, listen=True),
            fatal_exits=dict(GUNICORN_BOOT_ERRORS),
        )
        web.after_exit = lambda: _end_process_group(web)
        self._add(web)

    def _add(self, child: Child) -> None:
        child.spawn()
        self.children.append(child)

    def _popen(
        self, command: list[str], env: dict[str, str], *, listen: bool = False
    ) -> Callable[[], subprocess.Popen[bytes]]:
        pass_fds = (self.listener.fileno(),) if listen and self.listener is not None else ()

        def start() -> subprocess.Popen[bytes]:
            # Own session: a terminal's Ctrl-C reaches only us, and we stop the children in
            # order; the session's process group also holds a gunicorn master's workers.
            return subprocess.Popen(
                command,
                env=env,
                start_new_session=True,
                preexec_fn=child_preexec,
                pass_fds=pass_fds,
            )

        return start

    def _requeue_of(self, model: ServedModel, worker_name: str) -> Callable[[], None]:
        def requeue() -> None:
            if self._backend is None:
                return
            try:
                registry = self._registry(model.name, model.version)
                moved = registry.requeue(worker_name, force=True)
            except redis.RedisError as exc:  # its restart takes them back instead
                logger.warning("could not requeue the items of %s now: %s", worker_name, exc)
                return
            if moved > 0:
                logger.warning("requeued %d item(s) of dead worker %s", moved, worker_name)

        return requeue

    # --- watching --------------------------------------------------------------------------

    def _supervise(self) -> int:
        """Heal until stopped; 1 if a process could not be kept running or never got ready."""
        ready = False
        ready_deadline = time.monotonic() + READY_TIMEOUT_S
        logger.info("waiting for the model worker to load the model and for the web server")
        while not self._stop.wait(POLL_S):
            for child in self.children:
                given_up = self._heal(child)
                if given_up:
                    return 1
            if not ready:
                if self._is_ready():
                    ready = True
                    url = f"http://{self.settings.host}:{self.settings.port}"
                    logger.info(
                        "QueueNet is ready at %s (POST %s/predict); Ctrl-C stops it", url, url
                    )
                elif time.monotonic() > ready_deadline:
                    logger.error("the service was not ready within %.0fs", READY_TIMEOUT_S)
                    return 1
        return 0

    def _heal(self, child: Child) -> bool:
        """Notice an exit, or restart when its backoff is over; True when giving up."""
        now_s = time.monotonic()
        if child.restart_at_s is not None:
            if now_s >= child.restart_at_s:
                child.restarts += 1
                self._restarts.labels(child.name).inc()
                try:
                    child.spawn()
                except (OSError, EmbeddedRedisError) as exc:
                    logger.error("could not restart %s: %s; stopping the service", child.name, exc)
                    return True
                logger.warning("restarted %s (restart %d)", child.name, child.restarts)
            return False
        returncode = child.exited()
        if returncode is None:
            return False
        assert child.process is not None
        what = f"{child.name} (pid {child.process.pid}) {describe_exit(returncode)}"
        child.exits_at_s.append(now_s)
        decision = self.policy.decide(
            child.exits_at_s, now_s, fatal=child.fatal_exits.get(returncode, "")
        )
        if isinstance(decision, GiveUp):
            logger.error("%s: %s; stopping the service", what, decision.reason)
            return True
        child.after_exit()
        child.restart_at_s = now_s + decision.delay_s
        logger.error("%s unexpectedly; restarting it in %.1fs", what, decision.delay_s)
        return False

    def _is_ready(self) -> bool:
        """A model card in Redis for every model served, and a 200 from /healthz."""
        if self._backend is None:
            return False
        try:
            cards = [self._registry(m.name, m.version).card() for m in self.models]
        except redis.RedisError:
            return False
        if any(card is None for card in cards):
            return False
        return _answers(f"http://{self.settings.host}:{self.settings.port}/healthz")

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        logger.info("%s received: stopping", signal.Signals(signum).name)
        self._stop.set()

    # --- stopping --------------------------------------------------------------------------

    def _stop_children(self) -> None:
        """Web first (stops taking requests, lets in-flight ones finish), then workers, then
        Redis."""
        grace_s = self.settings.predict_timeout_s + 10
        order = (
            [c for c in self.children if c.name == "web"],
            [c for c in self.children if c.name.startswith("worker-")],
            [c for c in self.children if c.name == "redis"],
        )
        for group in order:
            running = [c.process for c in group if c.process and c.process.poll() is None]
            for process in running:
                process.send_signal(signal.SIGTERM)
            for process in running:
                try:
                    process.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    logger.warning("pid %d did not stop in %.0fs; killing it", process.pid, grace_s)
                    process.kill()
                    process.wait()
            for child in group:
                _end_process_group(child)
        logger.info("all processes stopped")


def _end_process_group(child: Child) -> None:
    """Ask what is left of a child's process group (a dead gunicorn master's workers) to
    finish their requests and exit."""
    if child.process is None:
        return
    try:
        os.killpg(child.process.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    logger.info("asked the processes left of %s to finish and exit", child.name)


def _restart_counter(env: dict[str, str]) -> Any:
    """``queuenet_serve_restarts_total{process}``, written to the web tier's shared metrics
    directory so that the web tier's ``GET /metrics`` shows it."""
    from prometheus_client import Counter, values

    if env.get("PROMETHEUS_MULTIPROC_DIR"):
        # prometheus_client chose its storage when first imported (by app.metrics, before the
        # directory was known); choose again now that it is set.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = env["PROMETHEUS_MULTIPROC_DIR"]
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return Counter(
        "queuenet_serve_restarts_total",
        "Processes that queuenet serve restarted after they exited unexpectedly",
        ["process"],
        registry=None,
    )


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:  # noqa: S310 (loopback URL)
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False
