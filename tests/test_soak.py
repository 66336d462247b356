"""A short run of the soak script: load while a worker is killed and Redis restarts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT, python_env


def test_short_soak_loses_and_duplicates_nothing(tiny_model_files: tuple[Path, Path]) -> None:
    model_path, labels_path = tiny_model_files
    out = subprocess.run(
        [
            sys.executable, "-m", "bench.soak",
            "--minutes", "0.35", "--concurrency", "8", "--workers", "2",
            "--kill-every-s", "7", "--redis-restart-every-s", "12",
            "--tiny-model", str(model_path), "--labels", str(labels_path),
        ],
        env=python_env({}), cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    report = out.stdout
    assert out.returncode == 0, report + out.stderr[-3000:]
    assert "lost (no answer)             0" in report
    assert "duplicated                   0" in report
    assert "SOAK PASSED" in report
    assert report.count("killed worker") == 0  # chaos is logged on stderr, results on stdout
    assert out.stderr.count("killed worker") >= 2 and "restarted redis" in out.stderr
