"""CI hides nothing: with ``CI=true`` a skipped test fails, saying why it was skipped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT, python_env

SAMPLE = """
import pytest


def test_passes():
    pass


def test_needs_a_program():
    pytest.skip("frobnicator is missing: apt-get install frobnicator")


@pytest.mark.skipif(True, reason="marked off on this machine")
def test_marked_off():
    pass


@pytest.mark.xfail(reason="a known bug", strict=True)
def test_known_bug():
    raise AssertionError
"""


def run_sample(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    """pytest on the sample file with this suite's hooks (tests/conftest.py as a plugin)."""
    sample = tmp_path / "test_sample.py"
    sample.write_text(SAMPLE, encoding="utf-8")
    env = python_env({})
    env.pop("CI", None)  # this test may itself run in CI
    if ci is not None:
        env["CI"] = ci
    command = [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider"]
    return subprocess.run(
        [*command, "-rA", "--rootdir", str(tmp_path), str(sample)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_in_ci_a_skip_fails_with_its_reason(tmp_path: Path) -> None:
    out = run_sample(tmp_path, ci="true")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "skipped in CI: frobnicator is missing: apt-get install frobnicator" in out.stdout
    assert "skipped in CI: marked off on this machine" in out.stdout  # a mark skips in setup
    summary = out.stdout.strip().splitlines()[-1]
    assert "1 failed, 1 passed" in summary and "1 xfailed" in summary and "1 error" in summary
    assert "skipped" not in summary


def test_outside_ci_a_skip_is_a_skip(tmp_path: Path) -> None:
    for ci in (None, "false"):
        out = run_sample(tmp_path, ci=ci)
        assert out.returncode == 0, out.stdout + out.stderr
        summary = out.stdout.strip().splitlines()[-1]
        assert "1 passed, 2 skipped, 1 xfailed" in summary, summary
        assert "skipped in CI" not in out.stdout
