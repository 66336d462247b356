"""When ``queuenet serve`` restarts a process that exited, and when it gives up. Pure code.

A process that exits unexpectedly is restarted after a backoff that doubles with each exit in
the recent window (0.5 s, 1 s, 2 s, ...). It is given up, and the service stopped, when it exits
``max_exits`` times within ``window_s`` (a crash loop), or at once when its exit status says
that retrying cannot help (a bad setting, refused credentials, a model that does not load).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

CRASH_LOOP_EXITS = 5
CRASH_LOOP_WINDOW_S = 60.0
INITIAL_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0


@dataclass(frozen=True)
class Restart:
    delay_s: float


@dataclass(frozen=True)
class GiveUp:
    reason: str


@dataclass(frozen=True)
class RestartPolicy:
    max_exits: int = CRASH_LOOP_EXITS
    window_s: float = CRASH_LOOP_WINDOW_S
    initial_backoff_s: float = INITIAL_BACKOFF_S
    max_backoff_s: float = MAX_BACKOFF_S

    def decide(
        self, exits_at_s: Sequence[float], now_s: float, fatal: str = ""
    ) -> Restart | GiveUp:
        """What to do after the latest exit; ``exits_at_s`` are the times of every exit so far
        (the latest included), ``fatal`` why this exit cannot be helped by a restart."""
        if fatal:
            return GiveUp(fatal)
        recent = [t for t in exits_at_s if now_s - t < self.window_s]
        if len(recent) >= self.max_exits:
            return GiveUp(
                f"it exited {len(recent)} times within {self.window_s:.0f} s (a crash loop)"
            )
        delay_s = self.initial_backoff_s * 2 ** max(len(recent) - 1, 0)
        return Restart(min(delay_s, self.max_backoff_s))
