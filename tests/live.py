"""Real processes for the fault tests: model workers (``python -m worker`` with a tiny
``.keras`` model), gunicorn (``python -m queuenet web``) and Redis servers on fixed ports."""

from __future__ import annotations

import functools
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import requests

from protocol.backend import Backend, connect_backend
from protocol.inspection import Inspector
from protocol.keys import Keys
from protocol.queue import Queue
from protocol.settings import RedisSettings
from protocol.shards import ShardedRegistry, ShardHealth
from queuenet.embedded_redis import EmbeddedRedis
from tests.helpers import free_port, python_env, spawn, stop, wait_until
from worker.settings import WorkerSettings


@dataclass
class LiveService:
    """Workers and web servers sharing one Redis namespace; every process is stopped at close."""

    redis_url: str
    workdir: Path
    model_path: Path
    labels_path: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    namespace: str = field(default_factory=lambda: f"live-{uuid.uuid4().hex[:8]}")
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    webs: list[tuple[subprocess.Popen[bytes], str]] = field(default_factory=list)
    _count: int = 0

    def env(self, **extra: str) -> dict[str, str]:
        base = {
            "QUEUENET_REDIS_URL": self.redis_url,
            "QUEUENET_NAMESPACE": self.namespace,
            "QUEUENET_MODEL": str(self.model_path),
            "QUEUENET_LABELS": str(self.labels_path),
            "QUEUENET_HEARTBEAT_TTL_S": "2",
            "QUEUENET_BLOCK_TIMEOUT_S": "0.2",
            "QUEUENET_PREDICT_TIMEOUT_S": "10",
            "QUEUENET_WEB_PROCESSES": "1",
            "QUEUENET_LOG_LEVEL": "info",
        }
        return python_env(base | self.extra_env | extra)

    def log(self, name: str) -> Path:
        self._count += 1
        return self.workdir / f"{self._count:02d}-{name}.log"

    @functools.cached_property
    def backend(self) -> Backend:
        """Clients for the service's Redis servers, as its processes make them."""
        return connect_backend(RedisSettings(url=self.redis_url, namespace=self.namespace))

    @property
    def keys(self) -> Keys:
        return self.backend.keys(self.namespace)

    def keys_for_cluster(self) -> Keys:
        return self.keys

    def registry(self, model: str = "tiny", version: str = "1") -> ShardedRegistry:
        """The worker registry of a model version (the tiny model's by default), every shard."""
        health = ShardHealth(self.backend.shards)
        return ShardedRegistry(self.backend, self.keys, model, version, health)

    def queue(self, model: str = "tiny", version: str = "1") -> Queue:
        """Shard 0 of a model version's queue (the only one, unless the test shards)."""
        return Queue(self.backend.for_shard(0), self.keys.version(model, version))

    def inspector(self) -> Inspector:
        return Inspector(self.backend.servers, self.keys)

    def start_worker(
        self,
        *,
        wait: bool = True,
        model: str | None = None,
        version: str | None = None,
        **extra: str,
    ) -> subprocess.Popen[bytes]:
        """A worker process, waited for (``wait``) in the registry of the model version it
        serves (by default the one its environment names)."""
        name = f"worker-{uuid.uuid4().hex[:6]}"
        env = self.env(QUEUENET_WORKER_NAME=name, **extra)
        settings = WorkerSettings.from_env(env)
        process = spawn(["-m", "worker"], env, self.log(name))
        process.name = name  # type: ignore[attr-defined]
        served = (model or settings.model_name, version or settings.model_version)
        process.served = served  # type: ignore[attr-defined]
        self.workers.append(process)
        if wait:
            registry = self.registry(*served)
            wait_until(
                lambda: name in registry.live_workers() or process.poll() is not None, 120, name
            )
            assert process.poll() is None, self.logs()
        return process

    def start_web(self, **extra: str) -> str:
        port = free_port()
        process = spawn(
            ["-m", "queuenet", "web"], self.env(QUEUENET_PORT=str(port), **extra), self.log("web")
        )
        url = f"http://127.0.0.1:{port}"
        self.webs.append((process, url))

        def up() -> bool:
            assert process.poll() is None, self.logs()
            try:
                return requests.get(f"{url}/healthz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(up, 60, "gunicorn")
        return url

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def logs(self, tail_chars: int | None = 3000) -> str:
        """Every process's log; the last ``tail_chars`` of each (``None``: all of it, for
        checks that look for one line in a long log)."""
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-(tail_chars or 0) :]}"
            for p in sorted(self.workdir.glob("*.log"))
        )

    def registry_of(self, worker: subprocess.Popen[bytes]) -> ShardedRegistry:
        """The registry of the model version ``worker`` serves."""
        return self.registry(*worker.served)  # type: ignore[attr-defined]

    def queue_of(self, worker: subprocess.Popen[bytes]) -> Queue:
        return self.queue(*worker.served)  # type: ignore[attr-defined]

    def wait_until_holding(self, worker: subprocess.Popen[bytes], timeout_s: float = 60) -> int:
        """Wait until ``worker`` holds a claimed batch; returns how many items it holds."""
        name = worker.name  # type: ignore[attr-defined]
        registry = self.registry_of(worker)
        wait_until(lambda: registry.held(name) > 0, timeout_s, f"{name} to hold a batch")
        return registry.held(name)

    def close(self) -> None:
        for process, _ in self.webs:
            stop(process)
        for process in self.workers:
            stop(process)
        if "backend" in self.__dict__:
            self.backend.close()


class RestartableRedis:
    """A private redis-server on a fixed port that a test can stop and start again."""

    def __init__(self, directory: Path, password: str = "") -> None:
        self.server = EmbeddedRedis(directory, port=free_port(), password=password)

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop(timeout_s=5)


def wait_s(predicate: object, timeout_s: float) -> float:
    """Seconds until ``predicate()`` is true (raises after ``timeout_s``)."""
    started = time.monotonic()
    wait_until(predicate, timeout_s, "condition")  # type: ignore[arg-type]
    return time.monotonic() - started
