"""The README stays true: every setting documented, CI runs its test command."""

from __future__ import annotations

import re

from tests.helpers import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_settings_table_is_the_declarations() -> None:
    """The README's table is ``queuenet settings``' output: every setting, as declared (its
    default, meaning and reader), so the two cannot drift apart."""
    import app.settings  # noqa: F401
    import worker.settings  # noqa: F401
    from protocol.settings import declared, markdown_table

    settings = declared()
    assert len(settings) > 30
    assert markdown_table(settings) in README


def test_every_setting_read_is_declared() -> None:
    """No module reads a QUEUENET_* variable behind the declarations' back."""
    offenders = []
    for package in ("app", "worker", "protocol", "queuenet"):  # the client has its own two
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            if re.search(r"environ(?:\.get)?\(?\[?\s*[\"']QUEUENET_", text):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == [], offenders


def test_readme_opens_with_the_two_commands_and_ci_runs_the_second() -> None:
    blocks = re.findall(r"```bash\n(.*?)\n```", README, flags=re.S)
    serve, test = blocks[0].strip(), blocks[1].strip()
    assert serve.endswith("queuenet serve") and "pip install" in serve
    assert test.endswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert f'TEST_COMMAND="{test}"' in ci
