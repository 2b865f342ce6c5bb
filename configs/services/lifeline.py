"""Nothing a run starts outlives it, even when ``run.py`` itself is killed with ``kill -9``.

``run.py`` stops its children itself on every exit it sees (normal end, error, Ctrl+C, SIGTERM). ``kill -9``,
the out-of-memory killer or a crash of the interpreter give it no chance to, so three mechanisms cover them:

* **A marker in the environment.** ``run.py`` sets ``MOLSTEER_RUN=<run directory>#<attempt>`` before it starts
  anything; every process it starts after that (redis-server, the Parsl interchange, the workers, xTB or
  NWChem) inherits it, however deep, and ``/proc/<pid>/environ`` shows it.
* **A watchdog.** A small process in its own session (so Ctrl+C in the terminal and a kill of the process
  group spare it) polls its parent twice a second and remembers every process below it (pid and start time).
  When ``run.py`` is gone, it stops all of them, every process with this attempt's marker, and those
  ``run.py`` registered in ``processes.json``, with their descendants, then exits. Remembering matters:
  Parsl's interchange and workers rename themselves (``setproctitle``), which wipes the environment ``/proc``
  shows, and the forked task server never had an exec'd environment of its own. It acts within about a
  second; the tests allow 60.
* **A resume cleans up first.** ``--resume`` stops whatever an earlier attempt of the same run left (from
  ``processes.json`` and the marker), in case the watchdog itself was killed.

A process is only ever stopped when its pid *and* its start time match a record, or when its environment
carries the run's marker: a reused pid is never mistaken for a leftover.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from store.processes import read_processes

logger = logging.getLogger(__name__)

MARKER = "MOLSTEER_RUN"
"""Environment variable that tags every process of a run: ``<absolute run directory>#<attempt>``."""


def marker_value(run_path: Path, attempt: int) -> str:
    """The marker of one attempt of one run."""
    return f"{Path(run_path).resolve()}#{attempt}"


def mark_environment(run_path: Path, attempt: int) -> str:
    """Tag this process's environment, so every process started from now on carries the run's marker."""
    value = marker_value(run_path, attempt)
    os.environ[MARKER] = value
    return value


def marked_processes(run_path: Path, attempt: int | None = None) -> list[psutil.Process]:
    """Processes whose environment carries the run's marker (any attempt, or only ``attempt``); never this one."""
    prefix = f"{Path(run_path).resolve()}#"
    wanted = None if attempt is None else marker_value(run_path, attempt)
    found = []
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        try:
            value = process.environ().get(MARKER)
        except (psutil.Error, OSError):
            continue
        if value and (value == wanted if wanted else value.startswith(prefix)):
            found.append(process)
    return found


def registered_processes(run_path: Path, attempt: int | None = None) -> list[psutil.Process]:
    """Processes in ``processes.json`` that still run (pid and start time both match); never this one.

    With ``attempt``, only when the file is still that attempt's: a resume started meanwhile has its own list.
    """
    data = read_processes(run_path)
    if attempt is not None and data.get("_attempt") != attempt:
        return []
    found = []
    for role, entry in data.items():
        if role.startswith("_") or not isinstance(entry, dict):
            continue
        try:
            process = psutil.Process(int(entry["pid"]))
            if process.pid != os.getpid() and abs(process.create_time() - float(entry["create_time"])) < 0.01:
                found.append(process)
        except (psutil.Error, KeyError, TypeError, ValueError):
            continue
    return found


def describe(process: psutil.Process) -> str:
    """``name (pid)`` for log lines."""
    try:
        return f"{process.name()} ({process.pid})"
    except psutil.Error:
        return f"pid {process.pid}"


def stop_processes(processes: list[psutil.Process], grace: float = 5.0) -> list[str]:
    """SIGTERM, then SIGKILL whatever is still there after ``grace`` seconds; returns what was stopped."""
    stopped = [describe(p) for p in processes]
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=grace)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=grace)
    return stopped


def become_subreaper() -> None:
    """Adopt orphaned descendants (e.g. Parsl workers whose parent died) so shutdown can still find them."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def is_alive(process: psutil.Process) -> bool:
    """Alive and not a zombie (an exited process whose parent has not collected it is gone for our purposes)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _reap_children() -> None:
    """Collect exited children (as the subreaper, this process adopts orphaned workers)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def stop_descendants(keep: set[int] = frozenset(), grace: float = 10.0, settle: float = 0.0) -> list[str]:
    """Stop every process below this one that is still running, except ``keep``; returns what had to be stopped.

    Args:
        keep: Pids to leave alone (the watchdog, a Redis server still needed).
        grace: Seconds between SIGTERM and SIGKILL.
        settle: Seconds to first let processes already told to stop end by themselves (the task server's
            shutdown has just cancelled its worker blocks; they are on their way out, not left over).
    """
    processes = [c for c in psutil.Process().children(recursive=True) if c.pid not in keep]
    deadline = time.monotonic() + settle
    while processes and time.monotonic() < deadline:
        _reap_children()
        processes = [p for p in processes if is_alive(p)]
        if processes:
            time.sleep(0.05)
    stopped = stop_processes([p for p in processes if is_alive(p)], grace)
    _reap_children()
    return stopped


def with_descendants(processes: list[psutil.Process]) -> dict[int, psutil.Process]:
    """The processes and all their descendants, by pid.

    Needed because a process may hide its marker: Parsl's interchange and workers rename themselves
    (``setproctitle``), which overwrites the environment ``/proc`` shows; they are still children of a
    process that is found.
    """
    found = {p.pid: p for p in processes}
    for process in processes:
        with contextlib.suppress(psutil.Error):
            found.update({c.pid: c for c in process.children(recursive=True)})
    found.pop(os.getpid(), None)
    return found


def stop_leftovers(run_path: Path, attempt: int | None = None, rounds: int = 3) -> list[str]:
    """Stop every process an attempt of this run left behind (all earlier attempts when ``attempt`` is None).

    Found by marker and in ``processes.json``, with their descendants. Several rounds, because stopping a parent
    can briefly leave a child that was being started.
    """
    stopped: list[str] = []
    for _ in range(rounds):
        found = with_descendants(marked_processes(run_path, attempt) + registered_processes(run_path, attempt))
        if not found:
            break
        stopped += stop_processes(list(found.values()))
    return stopped


def start_watchdog(run_path: Path, attempt: int) -> subprocess.Popen:
    """Start the watchdog that cleans up after this process if it dies without doing so itself."""
    log = open(Path(run_path) / "watchdog.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "configs.services.lifeline", "--parent", str(os.getpid()), "--run", str(run_path),
             "--attempt", str(attempt)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            cwd=Path(__file__).resolve().parents[2],  # the repository: -m finds the package
            env={k: v for k, v in os.environ.items() if k != MARKER},  # it stops marked processes, not itself
        )
    finally:
        log.close()


def remember_descendants(root: psutil.Process, seen: dict[tuple[int, float], psutil.Process]) -> None:
    """Add every process below ``root`` to ``seen``, keyed by pid and start time (so a reused pid is not confused).

    Called again and again while ``root`` lives: after its death, what it started is still known, even a
    process whose marker is hidden and whose own parent is gone.
    """
    with contextlib.suppress(psutil.Error):
        for child in root.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if child.pid != os.getpid():
                    seen.setdefault((child.pid, child.create_time()), child)


def still_running(seen: dict[tuple[int, float], psutil.Process]) -> list[psutil.Process]:
    """The remembered processes that still run (``is_running`` checks the start time too); zombies excluded."""
    return [process for process in seen.values() if is_alive(process)]


def _watch(parent: int, run_path: Path, attempt: int, period: float = 0.5) -> int:
    """Wait for ``parent`` to die; then stop everything this attempt started. Exits quietly on SIGTERM."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the run ended cleanly and is stopping us
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    seen: dict[tuple[int, float], psutil.Process] = {}
    try:
        root = psutil.Process(parent)
    except psutil.Error:
        root = None
    while os.getppid() == parent:
        if root is not None:
            remember_descendants(root, seen)
        time.sleep(period)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    stopped = stop_processes(list(with_descendants(still_running(seen)).values()))
    stopped += stop_leftovers(run_path, attempt)
    print(f"{stamp} run.py (pid {parent}) ended without cleaning up; stopped: {', '.join(stopped) or 'nothing'}",
          flush=True)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Stop a molsteer run's processes once its run.py has died")
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--attempt", type=int, required=True)
    options = parser.parse_args()
    sys.exit(_watch(options.parent, options.run, options.attempt))
