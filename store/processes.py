"""``processes.json``: the processes an attempt started, kept in the run directory for the next attempt.

The wiring registers redis-server, the task server and the watchdog as it starts them; a resume, and the
watchdog of :mod:`configs.services.lifeline`, stop whatever a killed attempt left by these records (pid *and*
start time must match, so a reused pid is never mistaken for a leftover).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psutil

from methods.data import atomic_save
from store.names import PROCESSES

PROCESSES_FILE = PROCESSES
"""The processes the latest attempt registered, in its run directory."""


def read_processes(run_path: Path) -> dict[str, Any]:
    """``processes.json``: ``{"_attempt": n, role: {"pid", "create_time"}}`` (empty when missing or unreadable)."""
    try:
        data = json.loads((Path(run_path) / PROCESSES_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def register_process(run_path: Path, attempt: int, role: str, pid: int) -> None:
    """Remember a process an attempt started (pid and start time), so a later resume can stop it if it lingers.

    The file holds one attempt's processes: the first registration of a new attempt replaces the old list.
    """
    try:
        created = psutil.Process(pid).create_time()
    except psutil.Error:
        return
    processes = read_processes(run_path)
    if processes.get("_attempt") != attempt:
        processes = {"_attempt": attempt}
    processes[role] = {"pid": pid, "create_time": created}
    text = json.dumps(processes, indent=2)
    atomic_save(Path(run_path) / PROCESSES_FILE, lambda temporary: temporary.write_text(text))
