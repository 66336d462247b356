"""``queuenet settings``: every ``QUEUENET_*`` setting, its default, meaning and
which process reads it, from the declarations themselves (the README's table is this output)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import app.settings  # noqa: F401  (declares the web tier's settings)
import worker.settings  # noqa: F401  (declares the worker's settings)
from protocol.settings import declared, markdown_table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="queuenet settings", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    sys.stdout.write(markdown_table(declared()))
    return 0
