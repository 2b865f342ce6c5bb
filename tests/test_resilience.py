"""Faults injected for real: kill -9 of run.py at random moments, a worker killed mid-task, Redis killed mid-run,
a QC time limit, bad input. Real redis-server, real Parsl workers, real QM9 lookups or GFN2-xTB.

Each test watches the whole process tree of the run while it lives (as the watchdog does), so it can say
afterwards that no process the run started is still there, whatever renamed itself or lost its parent.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from configs.services.lifeline import marked_processes
from store.rundir import read_jsonl as records_of
from tests.conftest import free_port, needs_redis
from tests.test_e2e import ROOT, read_jsonl

pytestmark = [needs_redis, pytest.mark.e2e, pytest.mark.timeout(900)]


class Run:
    """``run.py`` started in the background, with every process below it remembered while it lives."""

    def __init__(self, args: list[str], log: Path):
        self.log = open(log, "a")  # noqa: SIM115 - closed in wait()
        self.process = subprocess.Popen([sys.executable, "run.py", *args], cwd=ROOT, stdout=self.log,
                                        stderr=subprocess.STDOUT)
        self.seen: dict[tuple[int, float], psutil.Process] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        try:
            root = psutil.Process(self.process.pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            try:
                for child in root.children(recursive=True):
                    try:
                        self.seen.setdefault((child.pid, child.create_time()), child)
                    except psutil.Error:
                        pass
            except psutil.Error:
                return
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL run.py itself, and only it."""
        self.process.send_signal(signal.SIGKILL)
        self.wait(30)

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self._stop.set()
            self._thread.join(timeout=5)
            self.log.close()

    def survivors(self, within: float = 60.0) -> list[str]:
        """Processes of this run still alive after ``within`` seconds (polling; empty is the only good answer)."""
        deadline = time.monotonic() + within
        while True:
            alive = []
            for process in self.seen.values():
                try:
                    if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                        alive.append(f"{process.pid} {' '.join(process.cmdline())[:80]}")
                except psutil.Error:
                    continue
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.5)


def finished_records(run_dir: Path) -> list[dict]:
    """Every recorded result (none yet when the kill came before the first): what a resume must keep."""
    return [r for r in records_of(run_dir / "simulation_records.jsonl") if not r.get("abandoned")]


def single_run_dir(root: Path) -> Path:
    dirs = [p for p in root.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def wait_for_run_dir(runs: Path, timeout: float = 60) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (runs.exists() and any(runs.iterdir())):
        time.sleep(0.2)
    return single_run_dir(runs)


def wait_for_records(path: Path, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"{path.name} did not reach {count} lines within {timeout} s")


LOOKUP = ["--qc-code", "qm9", "--initial-count", "8", "--search-size", "112", "--qc-workers", "2",
          "--parallel-guesses", "4", "--retrain-after", "8", "--generate-size", "16", "--pool-size", "20000",
          "--seed", "5"]


def refuse_while_running(run_dir: Path) -> None:
    """While a run is alive, a resume of it is refused, and so are changed options (exit 2, one line)."""
    wait_for_records(run_dir / "attempt_records.jsonl", 1, 60)
    for extra, message in (([], "in use by a running molsteer process"),
                           (["--seed", "9"], "--seed: cannot be changed when resuming"),
                           (["--search-size", "3"], "--search-size: cannot be lowered when resuming")):
        result = subprocess.run([sys.executable, "run.py", "--resume", str(run_dir), *extra], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_kill_minus_9_at_random_moments_then_resume_loses_and_repeats_nothing(tmp_path):
    """Up to three SIGKILLs of run.py at random moments, a resume after each: every result kept, none twice."""
    rng = random.Random(20261123)
    port = str(free_port())
    log = tmp_path / "console.txt"
    runs = tmp_path / "runs"
    target = 8 + 112
    kept: dict[str, float | None] = {}
    kills = 0
    run = Run([*LOOKUP, "--runs-dir", str(runs), "--redis-port", port], log)
    refuse_while_running(wait_for_run_dir(runs))
    for number in range(3):
        if number % 2 == 0:  # a random moment, often still in start-up
            time.sleep(rng.uniform(2.0, 9.0))
        else:  # while results arrive: after a random number of new records
            wanted = len(kept) + rng.randint(1, 15)
            deadline = time.monotonic() + 120
            while (time.monotonic() < deadline and run.process.poll() is None
                   and len(finished_records(single_run_dir(runs))) < wanted):
                time.sleep(0.05)
        if run.process.poll() is not None:
            break
        run.kill()
        kills += 1
        assert not run.survivors(within=60), f"kill {kills}: processes outlived run.py"
        run_dir = single_run_dir(runs)
        assert not marked_processes(run_dir)
        records = finished_records(run_dir)
        smiles = [r["smiles"] for r in records]
        assert len(smiles) == len(set(smiles)), "a molecule was evaluated twice"
        for record in records:  # nothing recorded before is lost or changed
            kept.setdefault(record["smiles"], record["value"])
            assert kept[record["smiles"]] == record["value"]
        run = Run(["--resume", str(run_dir), "--redis-port", port], log)
    assert run.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert not run.survivors(within=60)
    assert kills >= 2, "too few kills landed while the run was alive"

    run_dir = single_run_dir(runs)
    records = finished_records(run_dir)
    smiles = [r["smiles"] for r in records]
    assert len(records) == target and len(set(smiles)) == target  # target reached, nothing twice
    assert all(kept_smiles in set(smiles) for kept_smiles in kept)  # nothing recorded was lost
    by_smiles = {r["smiles"]: r["value"] for r in records}
    assert all(by_smiles[s] == v for s, v in kept.items())
    # A kill while Python was still importing comes before the run could record its attempt.
    resumes = [a["resume"] for a in read_jsonl(run_dir / "attempt_records.jsonl")]
    assert resumes == list(range(len(resumes))) and 1 < len(resumes) <= kills + 1
    assert {r["resume"] for r in records} <= set(resumes)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["evaluations"] == target and summary["attempts"] == len(resumes) and summary["exit_status"] == 0


def test_redis_restarted_mid_run_stops_clearly_and_resumes(tmp_path):
    port = str(free_port())
    runs = tmp_path / "runs"
    log = tmp_path / "console.txt"
    run = Run([*LOOKUP, "--search-size", "192", "--runs-dir", str(runs), "--redis-port", port], log)
    run_dir = wait_for_run_dir(runs)
    wait_for_records(run_dir / "simulation_records.jsonl", 10, 120)
    # Redis restarted under the run: killed, and at once started again with the same configuration (port and
    # password), so clients reconnect without noticing, but every queued task is gone.
    redis_pid = json.loads((run_dir / "processes.json").read_text())["redis"]["pid"]
    os.kill(redis_pid, signal.SIGKILL)
    started = time.monotonic()
    restarted = subprocess.Popen(["redis-server", str(run_dir / "redis" / "redis.conf")], stdout=subprocess.DEVNULL)
    try:
        status = run.wait(timeout=120)
    finally:
        restarted.terminate()
        restarted.wait(timeout=30)
    output = log.read_text()
    assert status == 1, output[-3000:]
    assert time.monotonic() - started < 60
    assert f"Redis at 127.0.0.1:{port}" in output and f"--resume {run_dir}" in output, output[-3000:]
    assert "Traceback" not in output
    assert not run.survivors(within=60)
    before = {r["smiles"]: r["value"] for r in finished_records(run_dir)}

    # SIGTERM of a resumed run (a batch system's wall-time limit): a clean stop within 30 s, then resume again.
    resumed = Run(["--resume", str(run_dir), "--redis-port", port], log)
    wait_for_records(run_dir / "simulation_records.jsonl", len(before) + 10, 120)
    resumed.process.send_signal(signal.SIGTERM)
    stopping = time.monotonic()
    assert resumed.wait(timeout=60) == 130
    assert time.monotonic() - stopping < 30
    assert not resumed.survivors(within=60)
    assert json.loads((run_dir / "summary.json").read_text())["exit_status"] == 130

    resumed = Run(["--resume", str(run_dir), "--redis-port", port], log)
    assert resumed.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert not resumed.survivors(within=60)
    records = finished_records(run_dir)
    smiles = [r["smiles"] for r in records]
    assert len(records) == 200 and len(set(smiles)) == 200
    assert [a["resume"] for a in read_jsonl(run_dir / "attempt_records.jsonl")] == [0, 1, 2]
    assert all({r["smiles"]: r["value"] for r in records}[s] == v for s, v in before.items())


def qc_worker(run_pid: int) -> psutil.Process | None:
    """The QC partition's worker process: the newest spawned child of the qc worker pool.

    Parsl's pool first starts a multiprocessing manager (another spawned child), then its workers; the
    newest child is a worker. Killing the manager would break Parsl itself, which is not the fault tested.
    """
    for process in psutil.Process(run_pid).children(recursive=True):
        try:
            command = " ".join(process.cmdline())
            if "process_worker_pool" in command and "/qc/" in command:
                spawned = [c for c in process.children() if "spawn_main" in " ".join(c.cmdline())]
                return max(spawned, key=lambda c: c.create_time()) if len(spawned) >= 2 else None
        except psutil.Error:
            continue
    return None


def test_worker_killed_mid_task_is_retried_and_the_campaign_goes_on(tmp_path):
    port = str(free_port())
    runs = tmp_path / "runs"
    log = tmp_path / "console.txt"
    run = Run(["--initial-count", "4", "--search-size", "4", "--qc-workers", "1", "--parallel-guesses", "2",
               "--max-retries", "2", "--runs-dir", str(runs), "--redis-port", port], log)
    run_dir = wait_for_run_dir(runs)
    wait_for_records(run_dir / "simulation_records.jsonl", 1, 180)  # the worker is up and has a task
    worker = qc_worker(run.process.pid)
    assert worker is not None
    worker.kill()  # with two tasks in flight for one worker, it is always busy: this kills it mid-task
    assert run.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert not run.survivors(within=60)
    records = finished_records(run_dir)
    assert len(records) == 8
    retried = [r for r in records if r["retries"] >= 1]
    assert retried and all(r["success"] for r in retried), records
    assert "Worker 0 has died" in "".join(p.read_text() for p in run_dir.rglob("manager.log"))


def test_qc_time_limit_is_recorded_as_a_failure(tmp_path):
    port = str(free_port())
    runs = tmp_path / "runs"
    log = tmp_path / "console.txt"
    run = Run(["--initial-count", "3", "--search-size", "1", "--qc-workers", "1", "--qc-timeout", "0.05",
               "--runs-dir", str(runs), "--redis-port", port], log)
    assert run.wait(timeout=300) == 0, log.read_text()[-3000:]
    records = finished_records(single_run_dir(runs))
    assert len(records) == 4 and not any(r["success"] for r in records)
    assert all("--qc-timeout" in r["failure_reason"] for r in records), [r["failure_reason"] for r in records]
    summary = json.loads((single_run_dir(runs) / "summary.json").read_text())
    assert summary["failures"] == 4 and summary["evaluations"] == 4


def test_bad_input_exits_2_before_anything_starts(tmp_path):
    runs = tmp_path / "runs"
    bad = tmp_path / "bad.smi"
    bad.write_bytes(b"\x00\xff\xfe junk\n")
    cases = [
        (["--search-space", str(bad)], "--search-space"),
        (["--search-space", str(tmp_path / "missing.smi")], "--search-space"),
        (["--qc-timeout", "-1"], "--qc-timeout"),
        (["--max-retries", "many"], "--max-retries"),
        (["--resume", str(tmp_path)], "--resume"),
        (["forcefield", "--molecules", "CCCCCCCCCCCC", "--qc-budget", "10", "--initial-displacements", "1"],
         "--molecules"),
    ]
    before = {p.pid for p in psutil.process_iter()}
    for args, option in cases:
        result = subprocess.run([sys.executable, "run.py", *args, "--runs-dir", str(runs)], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and option in lines[0] and "Traceback" not in result.stderr, (args, result.stderr)
    assert not runs.exists() or not any(runs.iterdir())  # no half-made run directory
    started = [p for p in psutil.process_iter(["name"]) if p.pid not in before and p.info["name"] == "redis-server"]
    assert not started


def test_a_search_space_file_replaces_qm9_and_its_bad_lines_are_reported(tmp_path, qm9):
    """--search-space end to end (lookup mode): only the file's molecules are evaluated; bad lines are named."""
    chosen = [str(s) for s in qm9.smiles[1000:1040]]
    library = tmp_path / "library.smi"
    library.write_text("\n".join([f"{s} mol{i}" for i, s in enumerate(chosen)] + ["C[Si](C)C silane", "xyz"]) + "\n")
    runs = tmp_path / "runs"
    run = Run(["--qc-code", "qm9", "--search-space", str(library), "--initial-count", "4", "--search-size", "10",
               "--qc-workers", "1", "--runs-dir", str(runs), "--redis-port", str(free_port())], tmp_path / "log.txt")
    assert run.wait(timeout=300) == 0, (tmp_path / "log.txt").read_text()[-3000:]
    run_dir = single_run_dir(runs)
    records = finished_records(run_dir)
    assert len(records) == 14 and {r["smiles"] for r in records} <= set(chosen)
    assert all(r["success"] for r in records)  # QM9 molecules: every lookup succeeds
    log = (run_dir / "runtime.log").read_text()
    assert "2 of 42 lines skipped" in log and "line 41: element Si" in log and "line 42" in log
