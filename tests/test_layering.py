"""The web tier never imports TensorFlow; the worker never imports Flask."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ROOT, python_env


def modules_after(imports: str) -> set[str]:
    code = f"import sys\n{imports}\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=python_env({"QUEUENET_REDIS_URL": "redis://127.0.0.1:1/0"}),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return {line.split(".")[0] for line in out.splitlines()}


def test_web_tier_does_not_import_tensorflow() -> None:
    loaded = modules_after("import app.wsgi, app.preprocess, queuenet.cli, client.simple_request")
    assert "flask" in loaded
    assert not loaded & {"tensorflow", "keras"}


def test_worker_does_not_import_flask() -> None:
    loaded = modules_after(
        "import worker.__main__, worker.loop, worker.registry, worker.model\n"
        "import worker.efficientnet_lite, worker.torch_weights"
    )
    assert not loaded & {"flask", "werkzeug", "app"}
