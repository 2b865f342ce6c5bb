"""``run.py`` started by a test: in its own process group, watched while it lives, always ended by the fixture.

A test starts runs through the ``run_py`` fixture (``tests/conftest.py``), which returns :meth:`Runs.start`. Each
:class:`Run` remembers every process below ``run.py`` while it lives (as the run's watchdog does), so a test can
say afterwards that none of them is still there (:meth:`Run.survivors`), whatever renamed itself or lost its
parent. Whatever way the test ends (an assertion, a wait that timed out, pytest-timeout), the fixture's teardown
ends every run still alive: SIGTERM to its process group, then, after a grace period, SIGKILL to the group and to
every remembered descendant still there. That is a safety net only: tests check their own runs' clean-up.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from configs.services.lifeline import describe, is_alive
from store.names import SIMULATION_RECORDS
from store.rundir import read_jsonl

ROOT = Path(__file__).resolve().parents[1]

TEARDOWN_GRACE = 10.0
"""Seconds a run has, after the SIGTERM of the fixture's teardown, before everything of it left is SIGKILLed."""


class Run:
    """``python run.py *args`` in the background, in a new session (its own process group), its tree remembered.

    Args:
        args: The arguments of ``run.py``.
        log: File that receives the output (appended: a resume writes to the same console log).
        stderr: File for the error output apart from ``log`` (default: both go to ``log``).
        env: Variables added to the environment of the run.
    """

    def __init__(self, args: list[str], log: Path, stderr: Path | None = None,
                 env: dict[str, str] | None = None):
        self.args = [str(a) for a in args]
        self.log = Path(log)
        self.stderr = Path(stderr) if stderr is not None else None
        self.seen: dict[tuple[int, float], psutil.Process] = {}
        with contextlib.ExitStack() as files:
            out = files.enter_context(open(self.log, "a"))
            err = files.enter_context(open(self.stderr, "a")) if self.stderr else subprocess.STDOUT
            self.process = subprocess.Popen([sys.executable, "run.py", *self.args], cwd=ROOT, stdout=out, stderr=err,
                                            env={**os.environ, **(env or {})}, start_new_session=True)
        self.pgid = self.process.pid  # a session leader leads its own process group
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"watch run.py {self.process.pid}", daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int:
        """Process id of ``run.py``."""
        return self.process.pid

    def _remember(self, root: psutil.Process) -> None:
        with contextlib.suppress(psutil.Error):
            for child in root.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    self.seen.setdefault((child.pid, child.create_time()), child)

    def _watch(self) -> None:
        try:
            root = psutil.Process(self.process.pid)
        except psutil.Error:
            return
        while not self._stop.is_set() and is_alive(root):
            self._remember(root)
            self._stop.wait(0.1)

    def _ended(self) -> None:
        """run.py has ended: stop watching (what it left is remembered)."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def poll(self) -> int | None:
        """run.py's exit status, or None while it runs."""
        return self.process.poll()

    def wait(self, timeout: float) -> int:
        """run.py's exit status once it ends; raises ``subprocess.TimeoutExpired`` after ``timeout`` seconds.

        A run still going when the wait times out is left running (and watched): the fixture's teardown ends it.
        """
        status = self.process.wait(timeout=timeout)
        self._ended()
        return status

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to run.py itself (not its group): what a user's Ctrl+C or a batch system does to it."""
        self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL run.py itself, and only it: what it started is the watchdog's to stop."""
        self.process.send_signal(signal.SIGKILL)
        self.wait(30)

    def output(self) -> str:
        """What the run wrote to its log so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def error_output(self) -> str:
        """What the run wrote to its separate error log so far (empty when it shares ``log``)."""
        return self.stderr.read_text(errors="replace") if self.stderr and self.stderr.exists() else ""

    def alive(self) -> list[psutil.Process]:
        """The remembered processes of the run (run.py not included) that still run."""
        return [p for p in list(self.seen.values()) if is_alive(p)]

    def survivors(self, within: float = 60.0) -> list[str]:
        """Processes of this run still alive after ``within`` seconds (polling; empty is the only good answer)."""
        deadline = time.monotonic() + within
        while True:
            alive = []
            for process in self.alive():
                with contextlib.suppress(psutil.Error):
                    alive.append(f"{process.pid} {' '.join(process.cmdline())[:80]}")
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.2)

    def _group_exists(self) -> bool:
        """The run's process group still has a member (run.py unreaped, or a descendant that stayed in it)."""
        if self.process.returncode is None:
            return True
        for process in self.alive():
            with contextlib.suppress(psutil.Error, OSError):
                if os.getpgid(process.pid) == self.pgid:
                    return True
        return False

    def _signal_group(self, signum: int) -> None:
        if self._group_exists():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, signum)

    def end(self, grace: float = TEARDOWN_GRACE) -> list[str]:
        """End the run if anything of it is still there; returns what was still there (empty: nothing to do).

        SIGTERM to the process group (run.py shuts down cleanly on it), then, ``grace`` seconds later, SIGKILL
        to the group and to every remembered descendant still alive (those that left the group, such as the
        watchdog in its own session and Parsl's worker pools, included).
        """
        if self.process.poll() is None:  # what it started since the watcher's last look
            with contextlib.suppress(psutil.Error):
                self._remember(psutil.Process(self.process.pid))
        left = [describe(p) for p in self.alive()]
        if self.process.poll() is None:
            left.insert(0, f"run.py ({self.process.pid})")
        if not left:
            self._ended()
            return []
        self._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and (self.process.poll() is None or self.alive()):
            time.sleep(0.1)
        self._signal_group(signal.SIGKILL)
        for process in self.alive():
            with contextlib.suppress(psutil.Error):
                process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        self._ended()
        psutil.wait_procs(self.alive(), timeout=5)
        return left


class Runs:
    """Every run one test started; :meth:`end_all` (the fixture's teardown) ends those still alive."""

    def __init__(self, log_dir: Path):
        self.log_dir = Path(log_dir)
        self.started: list[Run] = []

    def start(self, *args: str, log: Path | None = None, split_stderr: bool = False,
              env: dict[str, str] | None = None) -> Run:
        """Start ``python run.py *args`` and return its :class:`Run`.

        Args:
            args: The arguments of ``run.py``.
            log: File for its output, appended to (default: a new file in the fixture's own directory).
            split_stderr: Error output to ``<log>.err`` (:meth:`Run.error_output`), not into ``log``.
            env: Variables added to the run's environment.
        """
        if log is None:
            log = self.log_dir / f"run-{len(self.started)}.log"
        log = Path(log)
        run = Run(list(args), log, stderr=log.with_name(log.name + ".err") if split_stderr else None, env=env)
        self.started.append(run)
        return run

    def end_all(self) -> list[str]:
        """End every run still alive (the safety net); returns what had to be ended."""
        ended = []
        for run in self.started:
            try:
                ended += run.end()
            except Exception as exc:  # noqa: BLE001 - the next run must be ended all the same
                ended.append(f"run.py ({run.pid}) could not be ended: {exc!r}")
        return ended


def single_run_dir(root: Path) -> Path:
    """The one run directory under ``root`` (a check fails when there is none, or more than one)."""
    dirs = [p for p in root.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def wait_for_run_dir(runs: Path, timeout: float = 60) -> Path:
    """The run directory under ``runs``, once run.py has made it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (runs.exists() and any(runs.iterdir())):
        time.sleep(0.05)
    return single_run_dir(runs)


def wait_for_records(path: Path, count: int, timeout: float) -> None:
    """Return once the JSON-lines file ``path`` has ``count`` complete records; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(read_jsonl(path)) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path.name} did not reach {count} records within {timeout} s")


def finished_records(run_dir: Path) -> list[dict]:
    """Every recorded result (none yet when a kill came before the first): what a resume must keep."""
    return [r for r in read_jsonl(run_dir / SIMULATION_RECORDS) if not r.get("abandoned")]
