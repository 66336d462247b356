"""The web tier's process: gunicorn's command line and its shared metrics directory."""

from __future__ import annotations

import socket
import sys
import tempfile
from pathlib import Path

from app.settings import AppSettings

LISTEN_BACKLOG = 2048
"""Connections the kernel holds for the web tier while no gunicorn process accepts them (during a
restart of gunicorn under ``queuenet serve``)."""


def gunicorn_command(settings: AppSettings, *, bind: str = "") -> list[str]:
    """gunicorn's command line for the web tier with ``settings``; ``bind`` overrides the
    address (``fd://N`` for a socket that the caller keeps open across restarts)."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        bind or f"{settings.host}:{settings.port}",
        "--workers",
        str(settings.web_processes),
        "--worker-class",
        "gthread",
        "--threads",
        str(settings.web_threads),
        # Longer than any request may wait, so gunicorn never kills a request that is on time.
        "--timeout",
        str(int(settings.predict_timeout_s) + 30),
        "--graceful-timeout",
        str(int(settings.predict_timeout_s) + 5),
        # The control socket (gunicorn >= 25) is one fixed path per user; several servers on
        # one machine would fight over it, and nothing here uses it.
        "--no-control-socket",
        "app.wsgi:app",
    ]


def listen(settings: AppSettings) -> socket.socket:
    """The web tier's listening socket, made once by ``queuenet serve`` and handed to each
    gunicorn it starts (``fd://``): a restarted gunicorn finds its port ready, clients that
    connect meanwhile wait in the backlog instead of being refused, and a port that is taken
    fails here, at start, with a clear error."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((settings.host, settings.port))
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def prepare_metrics_dir(env: dict[str, str], settings: AppSettings) -> None:
    """Give gunicorn's processes an empty shared metrics directory (one per port, reused)."""
    directory = Path(
        env.get("PROMETHEUS_MULTIPROC_DIR")
        or Path(tempfile.gettempdir()) / f"queuenet-metrics-{settings.port}"
    )
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):  # samples of a previous run must not be added in
        stale.unlink()
    env["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
