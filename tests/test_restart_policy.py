"""When queuenet serve restarts a process and when it gives up: a table of exit histories."""

from __future__ import annotations

import pytest

from queuenet.restart_policy import GiveUp, Restart, RestartPolicy

POLICY = RestartPolicy(max_exits=5, window_s=60.0, initial_backoff_s=0.5, max_backoff_s=30.0)


@pytest.mark.parametrize(
    ("exits_at_s", "now_s", "fatal", "expected"),
    [
        ([100.0], 100.0, "", Restart(0.5)),
        ([99.0, 100.0], 100.0, "", Restart(1.0)),
        ([97.0, 98.0, 99.0, 100.0], 100.0, "", Restart(4.0)),
        # The fifth exit within the window is a crash loop.
        (
            [96.0, 97.0, 98.0, 99.0, 100.0],
            100.0,
            "",
            GiveUp("it exited 5 times within 60 s (a crash loop)"),
        ),
        # Old exits leave the window: the backoff starts again.
        ([0.0, 1.0, 2.0, 3.0, 100.0], 100.0, "", Restart(0.5)),
        ([39.0, 40.0, 41.0, 42.0, 100.0], 100.0, "", Restart(2.0)),
        # A status that says restarting cannot help gives up at the first exit.
        ([100.0], 100.0, "the model cannot load", GiveUp("the model cannot load")),
    ],
)
def test_decide(
    exits_at_s: list[float], now_s: float, fatal: str, expected: Restart | GiveUp
) -> None:
    assert POLICY.decide(exits_at_s, now_s, fatal) == expected


def test_backoff_is_capped() -> None:
    policy = RestartPolicy(max_exits=100, window_s=1e9, initial_backoff_s=0.5, max_backoff_s=30)
    assert policy.decide([float(t) for t in range(50)], 50.0) == Restart(30.0)
