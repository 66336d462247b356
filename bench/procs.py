"""The processes of a service under test, from /proc: who belongs to it, their memory and CPU.

A service is the process tree below one pid (``queuenet serve``) or one session (the BentoML
peer's ``setsid``); each process has a role from its command line, so figures can be given
per component (the model worker, each web process, Redis).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name (state is [0], ppid [1], session [3])."""
    return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()


def _pids() -> list[int]:
    return [int(p.name) for p in PROC.iterdir() if p.name.isdigit()]


def parent_pid(pid: int) -> int:
    return int(_stat_fields(pid)[1])


def command_line(pid: int) -> str:
    return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def descendants(root_pid: int) -> set[int]:
    """The processes below ``root_pid`` (from /proc's parent pids)."""
    parents = {}
    for pid in _pids():
        try:
            parents[pid] = parent_pid(pid)
        except OSError:
            continue
    found: set[int] = set()
    frontier = {root_pid}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def session_members(session_id: int) -> set[int]:
    """The processes of one session (``setsid`` makes its leader's pid the session id)."""
    members = set()
    for pid in _pids():
        try:
            if int(_stat_fields(pid)[3]) == session_id:
                members.add(pid)
        except OSError:
            continue
    return members


def with_role(pids: Iterable[int], roles: Mapping[str, str]) -> dict[int, str]:
    """Each pid whose command line contains one of ``roles``' patterns, with that role (the
    first pattern that matches)."""
    found = {}
    for pid in pids:
        try:
            cmdline = command_line(pid)
        except OSError:
            continue
        for role, pattern in roles.items():
            if pattern in cmdline:
                found[pid] = role
                break
    return found


def rss_mb(pid: int) -> float:
    """Resident memory of one process (0 if it is gone)."""
    try:
        status = (PROC / str(pid) / "status").read_text()
    except OSError:
        return 0.0
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, flags=re.M)
    return int(match.group(1)) / 1024 if match else 0.0


def cpu_s(pid: int) -> float:
    """CPU time (user + system, every thread) a process has used so far (0 if it is gone)."""
    try:
        fields = _stat_fields(pid)
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
