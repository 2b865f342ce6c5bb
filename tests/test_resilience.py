"""Faults injected for real: kill -9 of run.py at random moments, a worker killed mid-task, Redis killed mid-run,
a QC time limit, bad input. Real redis-server, real Parsl workers, real QM9 lookups or GFN2-xTB.

Each test starts its runs through the ``run_py`` fixture (:mod:`tests.runs`), which watches the whole process tree
of a run while it lives (as the watchdog does), so the test can say afterwards that no process the run started is
still there, whatever renamed itself or lost its parent; and whatever way the test ends, the fixture ends the runs.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from configs.services.lifeline import marked_processes
from store.names import ATTEMPT_RECORDS, PROCESSES, SIMULATION_RECORDS, SUMMARY
from store.rundir import read_jsonl
from tests.conftest import free_port, needs_redis
from tests.runs import ROOT, finished_records, single_run_dir, wait_for_records, wait_for_run_dir

pytestmark = [needs_redis, pytest.mark.e2e, pytest.mark.timeout(900)]


LOOKUP = ["--qc-code", "qm9", "--initial-count", "8", "--search-size", "112", "--qc-workers", "2",
          "--parallel-guesses", "4", "--retrain-after", "8", "--generate-size", "16", "--pool-size", "20000",
          "--seed", "5"]


def run_all(commands: list[list[str]], timeout: float = 120) -> list[subprocess.CompletedProcess]:
    """Run the commands (in the repository) at the same time; their results, in order."""
    started = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for command in commands]
    try:
        outputs = [process.communicate(timeout=timeout) for process in started]
        return [subprocess.CompletedProcess(process.args, process.returncode, out, err)
                for process, (out, err) in zip(started, outputs, strict=True)]
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait()


def refuse_while_running(run_dir: Path) -> None:
    """While a run is alive, a resume of it is refused, and so are changed options (exit 2, one line)."""
    wait_for_records(run_dir / ATTEMPT_RECORDS, 1, 60)
    cases = (([], "in use by a running molsteer process"),
             (["--seed", "9"], "--seed: cannot be changed when resuming"),
             (["--search-size", "3"], "--search-size: cannot be lowered when resuming"))
    results = run_all([[sys.executable, "run.py", "--resume", str(run_dir), *extra] for extra, _ in cases])
    for (_, message), result in zip(cases, results, strict=True):
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_kill_minus_9_at_random_moments_then_resume_loses_and_repeats_nothing(tmp_path, run_py):
    """Two SIGKILLs of run.py, a resume after each: every result kept, none twice.

    The first comes while results arrive, after a random number of them; the second at a random moment of the
    resumed run: while Python imports, during start-up, or as its first results come.
    """
    rng = random.Random(20261123)
    port = str(free_port())
    log = tmp_path / "console.txt"
    runs = tmp_path / "runs"
    target = 8 + 112
    kept: dict[str, float | None] = {}
    kills = 0

    def kill(run) -> Path:
        """SIGKILL the run while it is alive; nothing of it survives and no recorded result is lost or doubled."""
        nonlocal kills
        assert run.poll() is None, "the run ended before the kill"
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
        return run_dir

    run = run_py(*LOOKUP, "--runs-dir", str(runs), "--redis-port", port, log=log)
    run_dir = wait_for_run_dir(runs)
    refuse_while_running(run_dir)
    wait_for_records(run_dir / SIMULATION_RECORDS, rng.randint(1, 15), 120)  # while results arrive
    kill(run)

    run = run_py("--resume", str(run_dir), "--redis-port", port, log=log)
    moment = time.monotonic() + rng.uniform(0.0, 8.0)  # a resume imports for ~1 s, starts for ~6 s, then results
    while time.monotonic() < moment and len(finished_records(run_dir)) == len(kept):
        time.sleep(0.02)
    kill(run)

    run = run_py("--resume", str(run_dir), "--redis-port", port, log=log)
    assert run.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert not run.survivors(within=60)
    assert kills >= 2, "too few kills landed while the run was alive"

    records = finished_records(run_dir)
    smiles = [r["smiles"] for r in records]
    assert len(records) == target and len(set(smiles)) == target  # target reached, nothing twice
    assert all(kept_smiles in set(smiles) for kept_smiles in kept)  # nothing recorded was lost
    by_smiles = {r["smiles"]: r["value"] for r in records}
    assert all(by_smiles[s] == v for s, v in kept.items())
    # A kill while Python was still importing comes before the run could record its attempt.
    resumes = [a["resume"] for a in read_jsonl(run_dir / ATTEMPT_RECORDS)]
    assert resumes == list(range(len(resumes))) and 1 < len(resumes) <= kills + 1
    assert {r["resume"] for r in records} <= set(resumes)
    summary = json.loads((run_dir / SUMMARY).read_text())
    assert summary["evaluations"] == target and summary["attempts"] == len(resumes) and summary["exit_status"] == 0


def test_redis_restarted_mid_run_stops_clearly_and_resumes(tmp_path, run_py):
    port = str(free_port())
    runs = tmp_path / "runs"
    log = tmp_path / "console.txt"
    run = run_py(*LOOKUP, "--search-size", "192", "--runs-dir", str(runs), "--redis-port", port, log=log)
    run_dir = wait_for_run_dir(runs)
    wait_for_records(run_dir / SIMULATION_RECORDS, 10, 120)
    # Redis restarted under the run: killed, and at once started again with the same configuration (port and
    # password), so clients reconnect without noticing, but every queued task is gone.
    redis_pid = json.loads((run_dir / PROCESSES).read_text())["redis"]["pid"]
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
    resumed = run_py("--resume", str(run_dir), "--redis-port", port, log=log)
    wait_for_records(run_dir / SIMULATION_RECORDS, len(before) + 10, 120)
    resumed.send_signal(signal.SIGTERM)
    stopping = time.monotonic()
    assert resumed.wait(timeout=60) == 130
    assert time.monotonic() - stopping < 30
    assert not resumed.survivors(within=60)
    assert json.loads((run_dir / SUMMARY).read_text())["exit_status"] == 130

    resumed = run_py("--resume", str(run_dir), "--redis-port", port, log=log)
    assert resumed.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert not resumed.survivors(within=60)
    records = finished_records(run_dir)
    smiles = [r["smiles"] for r in records]
    assert len(records) == 200 and len(set(smiles)) == 200
    assert [a["resume"] for a in read_jsonl(run_dir / ATTEMPT_RECORDS)] == [0, 1, 2]
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


def test_worker_killed_mid_task_is_retried_and_the_campaign_goes_on(tmp_path, run_py):
    port = str(free_port())
    runs = tmp_path / "runs"
    log = tmp_path / "console.txt"
    run = run_py("--initial-count", "2", "--search-size", "1", "--qc-workers", "1", "--parallel-guesses", "2",
                 "--max-retries", "2", "--runs-dir", str(runs), "--redis-port", port, log=log)
    run_dir = wait_for_run_dir(runs)
    wait_for_records(run_dir / SIMULATION_RECORDS, 1, 180)  # the worker is up and has a task
    worker = qc_worker(run.pid)
    assert worker is not None
    worker.kill()  # with two tasks in flight for one worker, it is always busy: this kills it mid-task
    assert run.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert not run.survivors(within=60)
    records = finished_records(run_dir)
    assert len(records) == 3
    retried = [r for r in records if r["retries"] >= 1]
    assert retried and all(r["success"] for r in retried), records
    assert "Worker 0 has died" in "".join(p.read_text() for p in run_dir.rglob("manager.log"))


def test_qc_time_limit_is_recorded_as_a_failure(tmp_path, run_py):
    port = str(free_port())
    runs = tmp_path / "runs"
    log = tmp_path / "console.txt"
    run = run_py("--initial-count", "3", "--search-size", "1", "--qc-workers", "1", "--qc-timeout", "0.05",
                 "--runs-dir", str(runs), "--redis-port", port, log=log)
    assert run.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert not run.survivors(within=60)
    records = finished_records(single_run_dir(runs))
    assert len(records) == 4 and not any(r["success"] for r in records)
    assert all("--qc-timeout" in r["failure_reason"] for r in records), [r["failure_reason"] for r in records]
    summary = json.loads((single_run_dir(runs) / SUMMARY).read_text())
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
        (["forcefield", "--molecules", "CO", "xyz", "--qc-budget", "10", "--initial-displacements", "1"],
         "--molecules"),  # any SMILES is a starting molecule, but not what is none (nor a QM9 index or a file)
    ]
    before = {p.pid for p in psutil.process_iter()}
    results = run_all([[sys.executable, "run.py", *args, "--runs-dir", str(runs)] for args, _ in cases])
    for (args, option), result in zip(cases, results, strict=True):
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and option in lines[0] and "Traceback" not in result.stderr, (args, result.stderr)
    assert not runs.exists() or not any(runs.iterdir())  # no half-made run directory
    started = [p for p in psutil.process_iter(["name"]) if p.pid not in before and p.info["name"] == "redis-server"]
    assert not started


def test_a_search_space_file_replaces_qm9_and_its_bad_lines_are_reported(tmp_path, qm9, run_py):
    """--search-space end to end (lookup mode): only the file's molecules are evaluated; bad lines are named."""
    chosen = [str(s) for s in qm9.smiles[1000:1040]]
    library = tmp_path / "library.smi"
    library.write_text("\n".join([f"{s} mol{i}" for i, s in enumerate(chosen)] + ["C[Si](C)C silane", "xyz"]) + "\n")
    runs = tmp_path / "runs"
    log = tmp_path / "log.txt"
    run = run_py("--qc-code", "qm9", "--search-space", str(library), "--initial-count", "4", "--search-size", "10",
                 "--qc-workers", "1", "--runs-dir", str(runs), "--redis-port", str(free_port()), log=log)
    assert run.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert not run.survivors(within=60)
    run_dir = single_run_dir(runs)
    records = finished_records(run_dir)
    assert len(records) == 14 and {r["smiles"] for r in records} <= set(chosen)
    assert all(r["success"] for r in records)  # QM9 molecules: every lookup succeeds
    runtime = (run_dir / "runtime.log").read_text()
    assert "2 of 42 lines skipped" in runtime and "line 41: element Si" in runtime and "line 42" in runtime
