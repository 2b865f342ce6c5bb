#!/usr/bin/env python
"""Active learning against random selection at equal QC budget: two real forcefield campaigns, same everything else.

Both campaigns sample the same way (MD with the current model, audits) and differ only in how structures are
picked from the pool: by ensemble disagreement, or at random. Prints both learning curves (test-set force MAE
against QC calls) and the ratio of force MAEs (random / active) at given QC call counts, ending with one JSON line.
The error at N calls is the error of the newest ensemble trained on at most N QC results.

    python scripts/bench_forcefield.py                      # default campaign settings, 400 QC calls each
    python scripts/bench_forcefield.py --qc-budget 120 -- --molecules CO --test-steps 100
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from store.names import SUMMARY  # noqa: E402
from store.rundir import read_json  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_campaign(selector: str, runs_dir: Path, budget: int, seed: int, extra: list[str]) -> subprocess.Popen:
    """Start one ``run.py forcefield`` campaign with its own Redis port, so two can run side by side."""
    command = [sys.executable, "run.py", "forcefield", "--selector", selector, "--qc-budget", str(budget),
               "--seed", str(seed), "--runs-dir", str(runs_dir), "--redis-port", str(free_port()), *extra]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish_campaign(selector: str, process: subprocess.Popen, runs_dir: Path, started: float) -> dict:
    """Wait for a campaign; returns its summary (exits if the campaign failed)."""
    output, _ = process.communicate()
    if process.returncode != 0:
        sys.exit(f"{selector} campaign failed ({process.returncode}):\n{output[-4000:]}")
    run_dir = max(runs_dir.iterdir(), key=lambda p: p.stat().st_mtime)
    summary = read_json(run_dir / SUMMARY)
    summary["run_dir"] = str(run_dir)
    summary["bench_wall_time"] = time.monotonic() - started
    return summary


def error_at(curve: list[dict], calls: int) -> float | None:
    """Force MAE of the newest ensemble trained with at most ``calls`` QC calls made."""
    points = [p for p in curve if p["qc_calls"] <= calls and p.get("force_mae") is not None]
    return points[-1]["force_mae"] if points else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--qc-budget", type=int, default=400, help="QC calls of each campaign")
    parser.add_argument("--seed", type=int, default=0, help="seed of both campaigns")
    parser.add_argument("--at", type=int, nargs="+", default=[100, 200, 400], help="QC call counts to compare at")
    parser.add_argument("--runs-dir", type=Path, default=None, help="keep the run directories here")
    parser.add_argument("--parallel", action="store_true",
                        help="run both campaigns at once (errors are unchanged; times and utilization are not "
                             "comparable with a sequential run)")
    parser.add_argument("extra", nargs="*", help="further run.py forcefield options, after --")
    args = parser.parse_args()

    runs_dir = args.runs_dir or Path(tempfile.mkdtemp(prefix="bench-forcefield-"))
    runs_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    running = {}
    for selector in ("disagreement", "random"):
        folder = runs_dir / selector
        folder.mkdir(exist_ok=True)
        started = time.monotonic()
        running[selector] = (start_campaign(selector, folder, args.qc_budget, args.seed, args.extra), folder, started)
        if not args.parallel:
            results[selector] = finish_campaign(selector, *running.pop(selector))
    for selector, (process, folder, started) in running.items():
        results[selector] = finish_campaign(selector, process, folder, started)

    print(f"{'QC calls':>9} | {'active MAE':>10} | {'random MAE':>10}   (test-set force MAE, eV/Å)")
    calls = sorted({p["qc_calls"] for s in results.values() for p in s["learning_curve"]})
    for n in calls:
        active, random = (error_at(results[s]["learning_curve"], n) for s in ("disagreement", "random"))
        print(f"{n:>9} | {active if active is not None else float('nan'):>10.4f} | "
              f"{random if random is not None else float('nan'):>10.4f}")
    ratios = {}
    for n in args.at:
        active, random = (error_at(results[s]["learning_curve"], n) for s in ("disagreement", "random"))
        ratios[str(n)] = random / active if active and random else None
        print(f"at {n} QC calls: random/active force MAE ratio = "
              f"{ratios[str(n)]:.3f}" if ratios[str(n)] else f"at {n} QC calls: no ensemble yet")
    for selector, summary in results.items():
        stability = summary["stability"]
        print(f"{selector}: {summary['qc_calls']} QC calls, final force MAE "
              f"{(summary['final'] or {}).get('force_mae')}, stable MD {stability['stable_fraction']}, "
              f"wall {summary['wall_time']:.0f} s, QC util {summary['qc_utilization']}, "
              f"ML util {summary['ml_utilization']}")
    print(json.dumps({
        "qc_budget": args.qc_budget, "seed": args.seed, "extra": args.extra, "ratio_random_over_active": ratios,
        **{selector: {"learning_curve": s["learning_curve"], "final": s["final"], "stability": s["stability"],
                      "wall_time": s["wall_time"], "qc_utilization": s["qc_utilization"],
                      "ml_utilization": s["ml_utilization"], "qc_calls_by_source": s["qc_calls_by_source"],
                      "run_dir": s["run_dir"]}
           for selector, s in results.items()},
    }))


if __name__ == "__main__":
    main()
