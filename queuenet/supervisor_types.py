"""What ``queuenet serve`` is asked to run (parsed by the CLI, run by the supervisor)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServedModel:
    """One model ``queuenet serve`` runs workers for: ``--model [NAME=]SPEC``."""

    name: str
    spec: str
    version: str
