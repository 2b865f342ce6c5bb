#!/usr/bin/env python
"""Search efficiency: how much of QM9's true top-k a campaign finds within a budget of evaluations.

Each campaign is a real ``run.py`` run (Redis, Parsl, thinker, surrogate) in QM9 lookup mode
(``--qc-code qm9``), so the whole steering stack is measured at full speed. Random search over the same
pool and budget is the baseline. Prints one line per campaign, then one JSON line.

Recall counts the evaluated molecules whose value is at least as good as the k-th best of the pool
(so ties at the threshold cannot be missed by luck), divided by k and capped at 1.

    python scripts/bench_search.py                                   # IE, top-100, 1% of QM9, 3 seeds
    python scripts/bench_search.py --objective atomization-energy --model knn
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from methods.data import load_qm9, sample_pool  # noqa: E402
from methods.objectives import parse_objective  # noqa: E402
from methods.simulate import qm9_objective_values  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def recall(found_values: np.ndarray, threshold: float, k: int, maximize: bool) -> float:
    good = found_values >= threshold if maximize else found_values <= threshold
    return min(1.0, float(good.sum()) / k)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objective", default="ionization-energy")
    parser.add_argument("--maximize", action="store_true", help="for qm9:<column> objectives")
    parser.add_argument("--minimize", action="store_true", help="for qm9:<column> objectives")
    parser.add_argument("--model", default="gc", choices=["gc", "knn"])
    parser.add_argument("--budget", type=int, default=None, help="evaluations per campaign (default: 1%% of the pool)")
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--initial-count", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pool-size", type=int, default=None, help="search a random QM9 subset (default: all)")
    parser.add_argument("--extra", default="", help="more run.py options, e.g. '--generate-size 64'")
    args = parser.parse_args()

    objective = parse_objective(args.objective)
    maximize = True if args.maximize else False if args.minimize else objective.maximize
    if maximize is None:
        parser.error(f"--objective {args.objective}: say --maximize or --minimize")
    qm9 = load_qm9()
    direction = ["--maximize"] if maximize else ["--minimize"]

    results = []
    for seed in args.seeds:
        rows = sample_pool(len(qm9), args.pool_size, seed)
        values = qm9_objective_values(args.objective)[rows]
        budget = args.budget or max(args.initial_count + 1, len(rows) // 100)
        ordered = np.sort(values)[::-1] if maximize else np.sort(values)
        threshold = ordered[args.top_k - 1]
        random_pick = np.random.default_rng(1000 + seed).choice(len(rows), budget, replace=False)
        with tempfile.TemporaryDirectory() as runs_dir:
            command = [sys.executable, str(ROOT / "run.py"), "--qc-code", "qm9", "--objective", args.objective,
                       *direction, "--model", args.model, "--initial-count", str(args.initial_count),
                       "--search-size", str(budget - args.initial_count), "--seed", str(seed),
                       "--runs-dir", runs_dir, "--redis-port", str(free_port()), *args.extra.split()]
            if args.pool_size:
                command += ["--pool-size", str(args.pool_size)]
            start = time.perf_counter()
            run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
            wall = time.perf_counter() - start
            if run.returncode != 0:
                sys.exit(f"campaign failed (seed {seed}):\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
            run_dir = next(p for p in Path(runs_dir).iterdir() if p.is_dir())
            records = [json.loads(line) for line in (run_dir / "simulation_records.jsonl").read_text().splitlines()]
            summary = json.loads((run_dir / "summary.json").read_text())
        records.sort(key=lambda r: r["n_done"])
        found = np.array([r["value"] if r["success"] else np.nan for r in records])
        curve = {}
        for fraction in (0.25, 0.5, 0.75, 1.0):
            n = int(round(fraction * len(found)))
            curve[f"{fraction:g}"] = recall(found[:n][~np.isnan(found[:n])], threshold, args.top_k, maximize)
        result = {
            "seed": seed, "budget": budget, "pool": len(rows), "recall": curve["1"], "recall_curve": curve,
            "recall_random": recall(values[random_pick], threshold, args.top_k, maximize),
            "failures": summary["failures"], "wall_time": wall,
        }
        results.append(result)
        print(f"seed {seed}: recall {result['recall']:.2f} of top-{args.top_k} after {budget} evaluations "
              f"(random {result['recall_random']:.2f}); curve {curve}; {wall:.0f} s", flush=True)

    recalls = [r["recall"] for r in results]
    print(json.dumps({
        "benchmark": "search_efficiency", "objective": args.objective, "maximize": maximize, "model": args.model,
        "budget": results[0]["budget"], "pool": results[0]["pool"], "top_k": args.top_k,
        "budget_fraction": results[0]["budget"] / results[0]["pool"], "seeds": args.seeds,
        "recall_mean": float(np.mean(recalls)), "recall_min": float(np.min(recalls)),
        "recall_random": float(np.mean([r["recall_random"] for r in results])),
        "recall_curve_mean": {
            f: float(np.mean([r["recall_curve"][f] for r in results])) for f in results[0]["recall_curve"]
        },
        "wall_time_mean": float(np.mean([r["wall_time"] for r in results])),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}", "runs": results,
    }))


if __name__ == "__main__":
    main()
