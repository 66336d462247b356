"""The standard protocols' own clients (tritonclient[http], the kserve SDK) in a virtual
environment of their own, ``.venv-clients``, made from ``examples/clients-requirements.txt``.

They cannot share QueueNet's environment: kserve pins protobuf < 7 and psutil < 6,
tritonclient ml-dtypes <= 0.5.4, and pip would downgrade TensorFlow's protobuf and ml-dtypes
to fit them. Their users install them on their own machines anyway; the tests drive them
as those users do, as a separate program (``examples/protocol_clients.py``).

``python -m tests.clients_venv`` makes it (``.ci/run`` does, before the tests); the tests make
it where it is missing or was made from other requirements.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT

logger = logging.getLogger(__name__)

VENV = ROOT / ".venv-clients"
REQUIREMENTS = ROOT / "examples" / "clients-requirements.txt"
DEMO = ROOT / "examples" / "protocol_clients.py"
_STAMP = VENV / "made-from-requirements.txt"


def clients_python() -> Path:
    """The clients' interpreter, after making or updating their environment if needed."""
    python = VENV / "bin" / "python"
    wanted = REQUIREMENTS.read_text(encoding="utf-8")
    if python.exists() and _STAMP.exists() and _STAMP.read_text(encoding="utf-8") == wanted:
        return python
    logger.warning("making %s from %s (pip, a minute or two)", VENV, REQUIREMENTS)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True, timeout=300)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)],
        check=True,
        timeout=1200,
    )
    _STAMP.write_text(wanted, encoding="utf-8")
    return python


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.stdout.write(f"{clients_python()}\n")
