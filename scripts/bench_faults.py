#!/usr/bin/env python
"""Kill a real campaign with SIGKILL again and again, resume it each time, and count what was lost.

A design campaign in QM9 lookup mode (real redis-server, real Parsl workers) is started, killed with
``kill -9`` at a random moment, checked, resumed, killed again, ... and finally resumed to the end. Reported:

* kills that landed while the run was alive;
* for each kill, how long until every process of the run was gone (the watchdog's work), and how many
  processes there were;
* recorded results lost across kills (a result recorded before a kill and missing or changed after);
* molecules evaluated twice; whether the target count was reached;
* leftover processes after the end;
* the cost of a durable (fsynced) record line, and the time from ``--resume`` to the first new result.

Usage: ``python scripts/bench_faults.py [--kills 8] [--search-size 992] [--seed 1]``; ends with one JSON line.
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

from thinkers.records import JsonlWriter, read_jsonl  # noqa: E402


def tree(pid: int) -> dict[tuple[int, float], psutil.Process]:
    try:
        return {(c.pid, c.create_time()): c for c in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return {}


def finished(run_dir: Path) -> list[dict]:
    return [r for r in read_jsonl(run_dir / "simulation_records.jsonl") if not r.get("abandoned")]


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
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--search-size", type=int, default=992)
    parser.add_argument("--seed", type=int, default=1)
    options = parser.parse_args()
    rng = random.Random(options.seed)
    target = 8 + options.search_size

    with tempfile.TemporaryDirectory() as directory:
        runs = Path(directory) / "runs"
        log = open(Path(directory) / "console.txt", "a")  # noqa: SIM115
        args = ["--qc-code", "qm9", "--initial-count", "8", "--search-size", str(options.search_size),
                "--qc-workers", "2", "--parallel-guesses", "4", "--retrain-after", "8", "--generate-size", "16",
                "--pool-size", "20000", "--seed", str(options.seed), "--runs-dir", str(runs)]
        process = subprocess.Popen([sys.executable, "run.py", *args], cwd=ROOT, stdout=log, stderr=log)
        kept: dict[str, float | None] = {}
        kills, lost, changed, duplicates = [], 0, 0, 0
        run_dir = None
        for number in range(options.kills):
            seen: dict = {}
            # Every third kill at a random moment of the start-up (Redis, Parsl, the QM9 cache); the others
            # while results arrive: after a random number of new records, at a random moment.
            during_startup = number % 3 == 0
            deadline = time.monotonic() + (rng.uniform(1.0, 8.0) if during_startup else 300)
            wanted = len(kept) + rng.randint(1, 40)
            while time.monotonic() < deadline and process.poll() is None:
                seen.update(tree(process.pid))
                if not during_startup and run_dir is None and runs.exists():
                    run_dir = next((p for p in runs.iterdir() if p.is_dir()), None)
                if not during_startup and run_dir is not None and len(finished(run_dir)) >= wanted:
                    time.sleep(rng.uniform(0.0, 0.5))
                    break
                time.sleep(0.05)
            if process.poll() is not None:
                break
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
                process = subprocess.Popen([sys.executable, "run.py", *args], cwd=ROOT, stdout=log, stderr=log)
                continue
            records = finished(run_dir)
            smiles = [r["smiles"] for r in records]
            duplicates += len(smiles) - len(set(smiles))
            now = {r["smiles"]: r["value"] for r in records}
            lost += sum(s not in now for s in kept)
            changed += sum(s in now and now[s] != v for s, v in kept.items())
            kept.update(now)
            kills.append({"phase": "start-up" if during_startup else "computing", "recorded": len(records),
                          "processes": len(seen),
                          "cleanup_s": round(time.monotonic() - killed_at, 2), "left": len(alive(seen))})
            process = subprocess.Popen([sys.executable, "run.py", "--resume", str(run_dir)], cwd=ROOT, stdout=log,
                                       stderr=log)
        seen = {}
        while process.poll() is None:
            seen.update(tree(process.pid))
            time.sleep(0.2)
        status = process.returncode
        time.sleep(2)
        left_at_end = len(alive(seen))
        run_dir = run_dir or next(p for p in runs.iterdir() if p.is_dir())
        records = finished(run_dir)
        smiles = [r["smiles"] for r in records]
        now = {r["smiles"]: r["value"] for r in records}
        lost += sum(s not in now for s in kept)
        changed += sum(s in now and now[s] != v for s, v in kept.items())
        duplicates = max(duplicates, len(smiles) - len(set(smiles)))
        attempts = read_jsonl(run_dir / "attempt_records.jsonl")
        log.close()

    result = {
        "kills": len(kills), "final_exit_status": status, "target": target, "recorded": len(records),
        "target_reached": len(set(smiles)) == target, "results_lost": lost, "results_changed": changed,
        "duplicates": duplicates, "attempts": len(attempts),
        "max_cleanup_s": max((k["cleanup_s"] for k in kills), default=None),
        "processes_left_after_kills": sum(k["left"] for k in kills), "processes_left_at_end": left_at_end,
        "median_record_write_ms": round(fsync_cost() * 1000, 3), "per_kill": kills,
    }
    for kill in kills:
        print(f"kill ({kill['phase']}): {kill['recorded']} recorded, {kill['processes']} processes, gone after "
              f"{kill['cleanup_s']:.1f} s ({kill['left']} left)")
    print(f"{len(kills)} kills; target {target}: {len(records)} recorded, lost {lost}, changed {changed}, "
          f"duplicates {duplicates}, processes left {left_at_end}; durable record write "
          f"{result['median_record_write_ms']} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
