#!/usr/bin/env python
"""Kill a real campaign with SIGKILL again and again, resume it each time, and count what was lost.

A campaign (real redis-server, real Parsl workers) is started, killed with ``kill -9`` at a random moment,
checked, resumed, killed again, ... and finally resumed to the end:

* ``--campaign design``: QM9 lookup mode; a result is a molecule's value, keyed by SMILES.
* ``--campaign forcefield``: real GFN2-xTB on two small molecules; a result is one structure's energy, keyed by
  QC id, and a duplicate is a structure that ``train.db`` holds twice.

Reported:

* kills that landed while the run was alive, and attempts that stalled (no new result for ``--stall`` seconds
  while computing: a resumed run that hangs instead of continuing);
* for each kill, how long until every process of the run was gone (the watchdog's work), and how many
  processes there were;
* recorded results lost across kills (a result recorded before a kill and missing or changed after);
* results computed twice; whether the target count was reached;
* forcefield: whether every trained ensemble got its point on the learning curve;
* leftover processes after the end;
* the cost of a durable (fsynced) record line.

Usage: ``python scripts/bench_faults.py [--campaign design] [--kills 8] [--size N] [--seed 1]``; ends with one
JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from store.names import ATTEMPT_RECORDS, SIMULATION_RECORDS, TRAIN_DB, TRAINING_RECORDS  # noqa: E402
from store.rundir import JsonlWriter, read_jsonl  # noqa: E402


def tree(pid: int) -> dict[tuple[int, float], psutil.Process]:
    try:
        return {(c.pid, c.create_time()): c for c in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return {}


def finished(run_dir: Path) -> list[dict]:
    return [r for r in read_jsonl(run_dir / SIMULATION_RECORDS) if not r.get("abandoned")]


class Campaign:
    """What differs between the two campaigns: their command line and what identifies one result."""

    def __init__(self, name: str, size: int, seed: int):
        self.name = name
        if name == "design":
            self.args = ["--qc-code", "qm9", "--initial-count", "8", "--search-size", str(size), "--qc-workers", "2",
                         "--parallel-guesses", "4", "--retrain-after", "8", "--generate-size", "16",
                         "--pool-size", "20000", "--seed", str(seed)]
            self.target, self.key, self.value, self.step = 8 + size, "smiles", "value", 40
        else:
            self.args = ["forcefield", "--molecules", "CO", "NC=O", "--qc-budget", str(size),
                         "--initial-displacements", "9", "--ensemble-size", "2", "--retrain-after", "16",
                         "--first-epochs", "60", "--train-epochs", "25", "--test-steps", "48", "--test-every", "6",
                         "--min-run-length", "10", "--max-run-length", "60", "--sample-every", "5",
                         "--inference-batch", "12", "--n-to-select", "6", "--stability-runs", "1",
                         "--stability-steps", "60", "--qc-workers", "1", "--ml-workers", "2", "--seed", str(seed)]
            self.target, self.key, self.value, self.step = size, "qc_id", "energy", 30

    def results(self, run_dir: Path) -> dict:
        return {r[self.key]: r.get(self.value) for r in finished(run_dir)}

    def duplicates(self, run_dir: Path) -> int:
        """Results computed twice: a molecule evaluated twice, or a structure in ``train.db`` twice."""
        records = finished(run_dir)
        if self.name == "design":
            return len(records) - len({r["smiles"] for r in records})
        import numpy as np

        from store.traindb import open_train_db

        if not (run_dir / TRAIN_DB).exists():
            return 0
        rows = list(open_train_db(run_dir / TRAIN_DB).select())
        twice = len(rows) - len({tuple(np.round(row.positions, 6).ravel()) for row in rows})
        return max(twice, len(records) - len({r["qc_id"] for r in records}))

    def curve_complete(self, run_dir: Path) -> bool | None:
        """Forcefield: every trained ensemble has its point on the learning curve."""
        if self.name == "design":
            return None
        training = read_jsonl(run_dir / TRAINING_RECORDS)
        ensembles = {r["round"] for r in training if r.get("event") == "ensemble"}
        measured = {r["round"] for r in training if r.get("event") == "evaluation" and r.get("success")}
        return ensembles == measured


def alive(processes: dict) -> list[psutil.Process]:
    out = []
    for process in processes.values():
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                out.append(process)
        except psutil.Error:
            continue
    return out


def fsync_cost(n: int = 500) -> float:
    """Median seconds per durable record line on this disk."""
    with tempfile.TemporaryDirectory() as directory:
        writer = JsonlWriter(Path(directory) / "x.jsonl")
        times = []
        for i in range(n):
            start = time.perf_counter()
            writer.write({"i": i, "smiles": "CCO", "value": 1.0})
            times.append(time.perf_counter() - start)
        writer.close()
    return sorted(times)[n // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--campaign", choices=("design", "forcefield"), default="design")
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--size", "--search-size", type=int, default=None,
                        help="design: --search-size (992); forcefield: --qc-budget (120)")
    parser.add_argument("--stall", type=float, default=300.0,
                        help="seconds without a new result, while computing, that count as a stalled attempt")
    parser.add_argument("--seed", type=int, default=1)
    options = parser.parse_args()
    rng = random.Random(options.seed)
    size = options.size or (992 if options.campaign == "design" else 120)
    campaign = Campaign(options.campaign, size, options.seed)

    def start(args: list[str]) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "run.py", *args], cwd=ROOT, stdout=log, stderr=log)

    with tempfile.TemporaryDirectory() as directory:
        runs = Path(directory) / "runs"
        log = open(Path(directory) / "console.txt", "a")  # noqa: SIM115
        process = start([*campaign.args, "--runs-dir", str(runs)])
        kept: dict = {}
        kills, lost, changed, duplicates, stalled = [], 0, 0, 0, 0
        run_dir = None
        for number in range(options.kills):
            seen: dict = {}
            # Every third kill at a random moment of the start-up (Redis, Parsl, the data); the others while
            # results arrive: after a random number of new records, at a random moment.
            during_startup = number % 3 == 0
            deadline = time.monotonic() + (rng.uniform(1.0, 8.0) if during_startup else options.stall)
            wanted = len(kept) + rng.randint(1, campaign.step)
            reached = False
            while time.monotonic() < deadline and process.poll() is None:
                seen.update(tree(process.pid))
                if not during_startup and run_dir is None and runs.exists():
                    run_dir = next((p for p in runs.iterdir() if p.is_dir()), None)
                if not during_startup and run_dir is not None and len(finished(run_dir)) >= wanted:
                    reached = True
                    time.sleep(rng.uniform(0.0, 0.5))
                    break
                time.sleep(0.05)
            if process.poll() is not None:
                break
            stalled += not during_startup and not reached
            seen.update(tree(process.pid))
            process.send_signal(signal.SIGKILL)
            process.wait()
            killed_at = time.monotonic()
            while alive(seen) and time.monotonic() - killed_at < 120:
                time.sleep(0.1)
            run_dir = run_dir or next((p for p in runs.iterdir() if p.is_dir()), None) if runs.exists() else run_dir
            if run_dir is None:  # killed before it made its run directory: nothing to resume, start again
                kills.append({"phase": "before the run directory", "recorded": 0, "processes": len(seen),
                              "cleanup_s": round(time.monotonic() - killed_at, 2), "left": len(alive(seen))})
                process = start([*campaign.args, "--runs-dir", str(runs)])
                continue
            now = campaign.results(run_dir)
            duplicates = max(duplicates, campaign.duplicates(run_dir))
            lost += sum(k not in now for k in kept)
            changed += sum(k in now and now[k] != v for k, v in kept.items())
            kept.update(now)
            kills.append({"phase": "start-up" if during_startup else "computing", "recorded": len(now),
                          "stalled": not during_startup and not reached, "processes": len(seen),
                          "cleanup_s": round(time.monotonic() - killed_at, 2), "left": len(alive(seen))})
            process = start(["--resume", str(run_dir)])
        seen = {}
        last_change, last_count = time.monotonic(), -1
        while process.poll() is None:  # the last attempt runs to the end, unless it stalls
            seen.update(tree(process.pid))
            count = len(finished(run_dir)) if run_dir is not None and run_dir.exists() else 0
            if count != last_count:
                last_change, last_count = time.monotonic(), count
            elif count < campaign.target and time.monotonic() - last_change > options.stall:
                stalled += 1
                process.send_signal(signal.SIGINT)
                process.wait(timeout=120)
                break
            time.sleep(0.2)
        status = process.returncode
        time.sleep(2)
        left_at_end = len(alive(seen))
        run_dir = run_dir or next(p for p in runs.iterdir() if p.is_dir())
        now = campaign.results(run_dir)
        lost += sum(k not in now for k in kept)
        changed += sum(k in now and now[k] != v for k, v in kept.items())
        duplicates = max(duplicates, campaign.duplicates(run_dir))
        curve_complete = campaign.curve_complete(run_dir)
        attempts = read_jsonl(run_dir / ATTEMPT_RECORDS)
        log.close()

    result = {
        "campaign": campaign.name, "kills": len(kills), "stalled": stalled, "final_exit_status": status,
        "target": campaign.target, "recorded": len(now), "target_reached": len(now) == campaign.target,
        "results_lost": lost, "results_changed": changed, "duplicates": duplicates, "attempts": len(attempts),
        "max_cleanup_s": max((k["cleanup_s"] for k in kills), default=None),
        "processes_left_after_kills": sum(k["left"] for k in kills), "processes_left_at_end": left_at_end,
        "median_record_write_ms": round(fsync_cost() * 1000, 3), "per_kill": kills,
    }
    if curve_complete is not None:
        result["learning_curve_complete"] = curve_complete
    for kill in kills:
        print(f"kill ({kill['phase']}): {kill['recorded']} recorded, {kill['processes']} processes, gone after "
              f"{kill['cleanup_s']:.1f} s ({kill['left']} left){', stalled before it' if kill.get('stalled') else ''}")
    print(f"{campaign.name}: {len(kills)} kills, {stalled} stalled attempts; target {campaign.target}: {len(now)} "
          f"recorded, lost {lost}, changed {changed}, duplicates {duplicates}, processes left {left_at_end}"
          + ("" if curve_complete is None else f", learning curve complete {curve_complete}")
          + f"; durable record write {result['median_record_write_ms']} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
