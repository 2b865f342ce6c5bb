#!/usr/bin/env python
"""Start-up of a local campaign: how long from ``python run.py`` until the first QC task computes, and where it goes.

Runs the default design campaign (real xTB, QM9, the default workers) with a small budget, several times, and
reads the milestones from what the run leaves (``runtime.log`` timestamps, ``startup.json``, the records):

* ``run_directory``: Python started, molsteer imported, options parsed and checked, run directory made;
* ``redis``: this run's redis-server answers;
* ``task_server``: the Parsl task server process runs (its interchange and workers start from here);
* ``workers_warm``: every QC worker has imported the QC stack and run its warm-up calculation;
* ``campaign``: the data is loaded, the thinker starts;
* ``first_qc``: the first QC task starts computing on a worker (``timestamp_compute_started``).

The clock starts just before ``run.py`` is launched. The machine should be quiet: a second campaign running
beside it roughly doubles every number. Also measured on its own: ``import_run``, the time to import
``run.py``'s modules in a fresh interpreter.

Usage: ``python scripts/bench_startup.py [--repeats 3] [-- extra run.py options]``; prints a table and ends with
one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from store.names import SIMULATION_RECORDS  # noqa: E402
from store.rundir import read_jsonl  # noqa: E402

CAMPAIGN = ["--search-size", "16", "--initial-count", "8", "--retrain-after", "8", "--seed", "3"]
MILESTONES = {
    "run_directory": "Run directory:",
    "redis": "Started redis-server",
    "task_server": "Started task server",
    "workers_warm": "QC workers",
    "campaign": "Campaign:",
}
"""Milestone → the first ``runtime.log`` message that marks it."""


def log_time(line: str) -> float:
    """Epoch seconds of a ``runtime.log`` line (its timestamp is local time with milliseconds)."""
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def measure(extra: list[str], work: Path) -> dict[str, float | None]:
    """One launch of ``run.py``: seconds from launch to each milestone."""
    runs = work / "runs"
    launched = time.time()
    done = subprocess.run([sys.executable, "run.py", *CAMPAIGN, *extra, "--runs-dir", str(runs)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        sys.exit(f"run.py exited {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}")
    run_dir = next(d for d in runs.iterdir() if d.is_dir())
    lines = (run_dir / "runtime.log").read_text().splitlines()
    found: dict[str, float | None] = {}
    for name, text in MILESTONES.items():
        hit = next((line for line in lines if text in line), None)
        found[name] = round(log_time(hit) - launched, 2) if hit else None
    starts = [r["timestamp_compute_started"] for r in read_jsonl(run_dir / SIMULATION_RECORDS)
              if r.get("timestamp_compute_started")]
    found["first_qc"] = round(min(starts) - launched, 2) if starts else None
    found["whole_run"] = round(time.time() - launched, 1)
    return found


def import_time() -> float:
    """Seconds for a fresh interpreter to import ``run.py`` and what it imports at the top."""
    started = time.time()
    subprocess.run([sys.executable, "-c", "import run"], cwd=ROOT, check=True)
    return round(time.time() - started, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="launches to take the median of")
    parser.add_argument("extra", nargs="*", help="further run.py options, after --")
    args = parser.parse_args()

    samples = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="bench-startup-") as work:
            sample = measure(args.extra, Path(work))
        sample["import_run"] = import_time()
        samples.append(sample)
        print(f"launch {repeat + 1}: " + ", ".join(f"{k} {v}" for k, v in sample.items()), flush=True)
    median = {key: statistics.median(s[key] for s in samples) if all(s[key] is not None for s in samples) else None
              for key in samples[0]}
    print(f"{'milestone':16} {'seconds after launch (median of ' + str(len(samples)) + ')':>40}")
    for key, value in median.items():
        print(f"{key:16} {value!s:>40}")
    print(json.dumps({"benchmark": "startup", "campaign": " ".join(CAMPAIGN + args.extra), "median": median,
                      "samples": samples}))


if __name__ == "__main__":
    main()
