"""The BentoML peer (``../shared/peers/bentoml``): started and stopped with its own script.

Same model, weights, exact preprocessing and request shape as QueueNet's default
(``POST /predict``, multipart field ``image``), served by BentoML with adaptive batching. Its
answers carry clean class names and no index; ``bench.load --expect`` checks them by name.
``QUEUENET_PEER_DIR`` points elsewhere than ``../shared/peers/bentoml`` beside the checkout.
"""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import descendants, session_members

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PEER_DIR = ROOT.parent / "shared" / "peers" / "bentoml"
START_TIMEOUT_S = 900
"""The script sets up the peer's venv (pip install) on its first start, then waits up to 2
minutes for readiness."""

log = logging.getLogger(__name__)


class PeerUnavailable(RuntimeError):
    """The peer is not beside this checkout, or its script failed to start it."""


def peer_dir() -> Path:
    return Path(os.environ.get("QUEUENET_PEER_DIR", DEFAULT_PEER_DIR))


@dataclass
class Peer:
    """A running peer: its URL and the process its script started (in a session of its own)."""

    url: str
    session_id: int
    directory: Path
    env: dict[str, str] = field(repr=False)

    @classmethod
    def start(cls, port: int, env: dict[str, str]) -> Peer:
        directory = peer_dir()
        script = directory / "run.sh"
        if not script.is_file():
            raise PeerUnavailable(f"no peer at {directory} (QUEUENET_PEER_DIR)")
        env = env | {"PEER_PORT": str(port)}
        done = subprocess.run(
            ["bash", str(script), "start"], env=env, capture_output=True, text=True,
            timeout=START_TIMEOUT_S,
        )  # fmt: skip
        if done.returncode != 0:
            raise PeerUnavailable(f"{script} start failed: {(done.stdout + done.stderr)[-2000:]}")
        pid = subprocess.run(
            ["bash", str(script), "pids"], env=env, capture_output=True, text=True, timeout=30
        ).stdout.strip()
        log.info("BentoML peer up on port %d (session %s)", port, pid)
        return cls(f"http://127.0.0.1:{port}", int(pid), directory, env)

    def pids(self) -> set[int]:
        """Every process of the peer: BentoML's arbiter (the session leader) and its service
        workers, which call setsid themselves (so they are found as its children, not as
        members of its session), and anything else left in the session."""
        leader = {self.session_id}
        return leader | descendants(self.session_id) | session_members(self.session_id)

    def stop(self) -> None:
        subprocess.run(
            ["bash", str(self.directory / "run.sh"), "stop"], env=self.env, capture_output=True,
            timeout=60, check=False,
        )  # fmt: skip
