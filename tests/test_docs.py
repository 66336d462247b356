"""The README stays true: every setting documented, CI runs its test command."""

from __future__ import annotations

import re

from tests.helpers import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def settings_in_code() -> set[str]:
    names: set[str] = set()
    for package in ("app", "worker", "protocol", "queuenet"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            names |= set(
                re.findall(r'env_(?:str|int|float|bool|choice)\(\s*env,\s*"([A-Z_]+)"', text)
            )
    return {f"QUEUENET_{name}" for name in names}


def test_every_setting_is_in_the_readme() -> None:
    names = settings_in_code()
    assert len(names) > 20
    missing = sorted(name for name in names if f"`{name}`" not in README)
    assert not missing, f"settings missing from README.md: {missing}"


def test_readme_opens_with_the_two_commands_and_ci_runs_the_second() -> None:
    blocks = re.findall(r"```bash\n(.*?)\n```", README, flags=re.S)
    serve, test = blocks[0].strip(), blocks[1].strip()
    assert serve.endswith("queuenet serve") and "pip install" in serve
    assert test.endswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert f'TEST_COMMAND="{test}"' in ci
