#!/usr/bin/env python
"""Search efficiency: how much of QM9's true top-k a campaign finds within a budget of evaluations.

Each campaign is a real ``run.py`` run (Redis, Parsl, thinker, surrogate) in QM9 lookup mode
(``--qc-code qm9``), so the whole steering stack is measured at full speed. One invocation measures every
combination of ``--models`` x ``--acquisitions`` (for each ``--objective``) over ``--seeds``, plus random
search over the same pools. Prints one line per campaign, then a Markdown table, then one JSON line with
every number.

Recall counts the evaluated molecules whose value is at least as good as the k-th best of the pool
(so ties at the threshold cannot be missed by luck), divided by k and capped at 1. "Evaluations to 50%"
is the number of evaluations (failed ones included, in the order they finished) after which half of the
top-k had been found; a seed that never gets there within the budget is "not reached", and then the
combination has no mean. Random search is a random order of the whole pool (seeded per seed), so its
"evaluations to" columns run past the budget.

With ``--out FILE`` every finished campaign is appended to FILE (JSON lines) at once; a rerun with the
same ``--out`` reads it and skips the campaigns already there (same objective, model, acquisition, seed,
budget, pool and options), so an interrupted benchmark keeps what it measured. ``--resume-from`` reads
more such files.

    python scripts/bench_search.py                                  # IE: gc, knn, mpnn x greedy, ucb, ei; 3 seeds
    python scripts/bench_search.py --objective atomization-energy --model knn     # one model, all acquisitions
    python scripts/bench_search.py --models gc knn --acquisitions greedy --out runs/bench_search.jsonl
    python scripts/bench_search.py --pool-size 3000 --seeds 0 --models gc --acquisitions greedy   # quick check
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from methods.data import load_qm9, sample_pool  # noqa: E402
from methods.objectives import parse_objective  # noqa: E402
from methods.simulate import qm9_objective_values  # noqa: E402
from store.names import SCREENING_RECORDS, SIMULATION_RECORDS, TRAINING_RECORDS  # noqa: E402
from store.rundir import read_jsonl  # noqa: E402

MODELS = ("gc", "knn", "mpnn", "auto")
DEFAULT_MODELS = ("gc", "knn", "mpnn")  # auto is chosen explicitly: it repeats the gc or knn rows it picks
ACQUISITIONS = ("greedy", "ucb", "ei")
CURVE_FRACTIONS = (0.25, 0.5, 0.75, 1.0)  # of the budget
MILESTONES = (0.5, 0.9)  # of the top-k
# What makes two campaigns the same measurement (a rerun with --out skips a campaign whose key it finds).
KEY_FIELDS = ("objective", "maximize", "model", "acquisition", "seed", "budget", "pool", "pool_size", "top_k",
              "initial_count", "extra")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def good_mask(values: np.ndarray, threshold: float, maximize: bool) -> np.ndarray:
    """Which values are at least as good as the threshold (NaN, a failed evaluation, is never good)."""
    with np.errstate(invalid="ignore"):
        return values >= threshold if maximize else values <= threshold


def recall(found_values: np.ndarray, threshold: float, k: int, maximize: bool) -> float:
    return min(1.0, float(good_mask(found_values, threshold, maximize).sum()) / k)


def search_metrics(ordered_values: np.ndarray, threshold: float, k: int, maximize: bool, budget: int) -> dict[str, Any]:
    """Recall after fractions of the budget, and evaluations needed for each milestone (None: never reached).

    ``ordered_values`` are the evaluated values in the order they finished (NaN for failures); only the
    first ``budget`` count for the recall, all of them for the milestones.
    """
    good = good_mask(ordered_values, threshold, maximize)
    found = np.cumsum(good)
    curve = {f"{fraction:g}": min(1.0, float(found[int(round(fraction * budget)) - 1]) / k)
             if int(round(fraction * budget)) >= 1 else 0.0 for fraction in CURVE_FRACTIONS}
    evals_to = {}
    for milestone in MILESTONES:
        needed = math.ceil(milestone * k)
        hits = np.flatnonzero(found >= needed)
        evals_to[f"{milestone:g}"] = int(hits[0]) + 1 if len(hits) else None
    return {"recall": curve["1"], "recall_curve": curve, "evals_to": evals_to}


def campaign_diagnostics(run_dir: Path, values: np.ndarray, threshold: float, maximize: bool,
                         records: list[dict[str, Any]]) -> dict[str, Any]:
    """What the campaign's own records say about its model: hold-out errors, and errors on what it picked.

    ``score`` of a simulation record is the model's predicted mean when the molecule was queued.
    """
    training = read_jsonl(run_dir / TRAINING_RECORDS)
    scored = [r for r in training if "holdout_mae" in r]
    picked = [r for r in records if r.get("score") is not None and r["success"]]
    predicted = np.array([r["score"] for r in picked], dtype=float)
    actual = np.array([r["value"] for r in picked], dtype=float)
    top = good_mask(actual, threshold, maximize)
    # The error of the prediction that made the model pick a molecule, split by whether it was really in the top-k.
    diagnostics: dict[str, Any] = {
        "training_rounds": len(training),
        "holdout_mae_first": scored[0]["holdout_mae"] if scored else None,
        "holdout_mae_last": scored[-1]["holdout_mae"] if scored else None,
        "holdout_baseline_mae_last": scored[-1]["holdout_baseline_mae"] if scored else None,
        "picked": len(picked),
        "picked_in_top_k": int(top.sum()),
        "picked_mae": float(np.abs(predicted - actual).mean()) if len(picked) else None,
        # signed: + means the model over-promised (for a maximized objective: predicted above the truth)
        "picked_bias": float(((predicted - actual) * (1 if maximize else -1)).mean()) if len(picked) else None,
        "picked_top_k_mae": float(np.abs(predicted[top] - actual[top]).mean()) if top.any() else None,
        "picked_other_mae": float(np.abs(predicted[~top] - actual[~top]).mean()) if (~top).any() else None,
        "picked_other_bias": float(((predicted[~top] - actual[~top]) * (1 if maximize else -1)).mean())
        if (~top).any() else None,
        "pool_std": float(np.std(values)),
    }
    screening_path = run_dir / SCREENING_RECORDS
    if screening_path.exists():
        screening = read_jsonl(screening_path)
        stds = [t["std"] for s in screening[-5:] for t in s.get("top", []) if t.get("std") is not None]
        diagnostics["screening_rounds"] = len(screening)
        diagnostics["top_predicted_std_last"] = float(np.mean(stds)) if stds else None
    return diagnostics


def run_campaign(args: argparse.Namespace, key: dict[str, Any], direction: list[str], values: np.ndarray,
                 threshold: float) -> dict[str, Any]:
    """One ``run.py`` campaign; its result line (with ``error`` instead of numbers when it failed)."""
    keep = Path(args.keep_runs).resolve() if args.keep_runs else None
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=keep, prefix=f"{key['objective']}-{key['model']}-{key['acquisition']}-"
                                     f"s{key['seed']}-") as runs_dir:
        command = [sys.executable, str(ROOT / "run.py"), "--qc-code", "qm9", "--objective", key["objective"],
                   *direction, "--model", key["model"], "--acquisition", key["acquisition"],
                   "--initial-count", str(args.initial_count),
                   "--search-size", str(key["budget"] - args.initial_count), "--seed", str(key["seed"]),
                   "--runs-dir", runs_dir, "--redis-port", str(free_port()), *args.extra.split()]
        if args.pool_size:
            command += ["--pool-size", str(args.pool_size)]
        start = time.perf_counter()
        returncode, timed_out = run_to_end(command, Path(runs_dir), key["budget"], args)
        wall = time.perf_counter() - start
        output = "".join((Path(runs_dir) / name).read_text()[-1500:] for name in ("campaign.out", "campaign.err"))
        run_dirs = [p for p in Path(runs_dir).iterdir() if p.is_dir()]
        records = read_jsonl(run_dirs[0] / SIMULATION_RECORDS) if run_dirs else []
        records = [r for r in records if not r.get("abandoned")]
        if returncode != 0 and not (timed_out and len(records) >= key["budget"]):
            return {**key, "error": f"exit {returncode}{' after the time limit' if timed_out else ''}: {output}",
                    "wall_time": wall}
        run_dir = run_dirs[0]
        records.sort(key=lambda r: r["n_done"])
        found = np.array([r["value"] if r["success"] else np.nan for r in records], dtype=float)
        result = {**key, **search_metrics(found, threshold, args.top_k, maximize=key["maximize"],
                                          budget=key["budget"]),
                  "evaluations": len(found), "failures": int(np.isnan(found).sum()), "wall_time": wall,
                  # the time from start-up to the last result, from the run's own records
                  "time_to_last_result": max(float(r.get("elapsed", 0.0)) for r in records),
                  "diagnostics": campaign_diagnostics(run_dir, values, threshold, key["maximize"], records)}
        if timed_out:  # every evaluation was recorded, but run.py did not end by itself and was stopped
            result["stopped_after_hang"] = True
        if keep:  # keep the run directory (records, report) for a closer look; the temporary name goes
            final = keep / f"{Path(runs_dir).name}-{run_dir.name}"
            run_dir.rename(final)
            result["run_dir"] = str(final)
    return result


def run_to_end(command: list[str], runs_dir: Path, budget: int, args: argparse.Namespace) -> tuple[int, bool]:
    """Run one campaign to its end; returns (exit code, whether it had to be stopped).

    It is stopped (SIGINT, then SIGKILL) when it outlives --timeout, or when all of its evaluations are
    recorded but it has not ended --hang-grace seconds later.
    """
    with (runs_dir / "campaign.out").open("w") as out, (runs_dir / "campaign.err").open("w") as err:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=err, text=True)
        start = time.monotonic()
        all_recorded_at = None
        try:
            while process.poll() is None:
                time.sleep(2)
                now = time.monotonic()
                if all_recorded_at is None:
                    records = list(runs_dir.glob(f"*/{SIMULATION_RECORDS}"))
                    if records and records[0].read_bytes().count(b"\n") >= budget:
                        all_recorded_at = now
                hung = all_recorded_at is not None and now - all_recorded_at > args.hang_grace
                if hung or (args.timeout is not None and now - start > args.timeout):
                    process.send_signal(signal.SIGINT)  # run.py records what finished and stops its processes
                    try:
                        process.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()
                    return process.returncode, True
        except BaseException:  # interrupted: do not leave the campaign running
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            raise
    return process.returncode, False


def load_done(paths: list[Path]) -> dict[tuple, dict[str, Any]]:
    """Finished campaigns from earlier JSON-lines output, by key (failed campaigns are not kept: redone)."""
    done = {}
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by an interruption
            if entry.get("kind") == "campaign" and "error" not in entry:
                done[tuple(entry.get(f) for f in KEY_FIELDS)] = entry
    return done


def append_line(path: Path, entry: dict[str, Any]) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(entry) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def summarize(runs: list[dict[str, Any]], pool: int) -> dict[str, Any]:
    """Mean and min recall, and the mean evaluations to each milestone over seeds (None if a seed missed it)."""
    recalls = [r["recall"] for r in runs]
    summary: dict[str, Any] = {
        "seeds": [r["seed"] for r in runs], "recall_mean": float(np.mean(recalls)),
        "recall_min": float(np.min(recalls)),
        "recall_curve_mean": {f: float(np.mean([r["recall_curve"][f] for r in runs])) for f in runs[0]["recall_curve"]},
    }
    for milestone in runs[0]["evals_to"]:
        reached = [r["evals_to"][milestone] for r in runs]
        hit = [n for n in reached if n is not None]
        mean = float(np.mean(reached)) if len(hit) == len(reached) else None
        summary[f"evals_to_{milestone}"] = {
            "mean": mean, "fraction_of_pool": mean / pool if mean is not None else None,
            "per_seed": reached, "seeds_reached": len(hit),
        }
    if "wall_time" in runs[0]:
        summary["wall_time_mean"] = float(np.mean([r["wall_time"] for r in runs]))
    return summary


def milestone_cell(entry: dict[str, Any], n_seeds: int) -> str:
    if entry["mean"] is None:
        return f"not reached ({n_seeds - entry['seeds_reached']} of {n_seeds} seeds)"
    return f"{entry['mean']:.0f} ({100 * entry['fraction_of_pool']:.2g}%)"


def markdown_table(rows: list[dict[str, Any]], top_k: int) -> str:
    lines = [f"| objective | model | acquisition | seeds | top-{top_k} recall at budget, mean (min) | "
             f"evaluations to 50% of top-{top_k} (% of pool) | to 90% (% of pool) | wall time per campaign |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        n = len(row["seeds"])
        wall = f"{row['wall_time_mean']:.0f} s" if "wall_time_mean" in row else "–"
        lines.append(f"| {row['objective']} | {row['model']} | {row['acquisition']} | {n} | "
                     f"{100 * row['recall_mean']:.1f}% ({100 * row['recall_min']:.1f}%) | "
                     f"{milestone_cell(row['evals_to_0.5'], n)} | {milestone_cell(row['evals_to_0.9'], n)} | {wall} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objective", "--objectives", dest="objectives", nargs="+", default=["ionization-energy"],
                        help="one or more objectives (ionization-energy, atomization-energy, qm9:<column>)")
    parser.add_argument("--maximize", action="store_true", help="for qm9:<column> objectives")
    parser.add_argument("--minimize", action="store_true", help="for qm9:<column> objectives")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=None,
                        help=f"surrogates to measure (default: {' '.join(DEFAULT_MODELS)})")
    parser.add_argument("--model", choices=MODELS, default=None, help="one surrogate: shorthand for --models MODEL")
    parser.add_argument("--acquisitions", nargs="+", choices=ACQUISITIONS, default=None,
                        help=f"acquisition functions to measure (default: {' '.join(ACQUISITIONS)})")
    parser.add_argument("--acquisition", choices=ACQUISITIONS, default=None,
                        help="one acquisition: shorthand for --acquisitions ACQUISITION")
    parser.add_argument("--budget", type=int, default=None, help="evaluations per campaign (default: 1%% of the pool)")
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--initial-count", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pool-size", type=int, default=None, help="search a random QM9 subset (default: all)")
    parser.add_argument("--extra", default="", help="more run.py options, e.g. '--generate-size 64 --beta 2'")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON-lines file: each finished campaign is appended at once; campaigns already in it "
                             "are skipped on a rerun")
    parser.add_argument("--resume-from", type=Path, nargs="+", default=[],
                        help="more JSON-lines files of finished campaigns to reuse instead of running them again")
    parser.add_argument("--keep-runs", default=None,
                        help="keep each campaign's run directory under this directory (default: deleted)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="stop a campaign that runs longer than this many seconds (default: no limit)")
    parser.add_argument("--hang-grace", type=float, default=120,
                        help="stop a campaign this many seconds after its last evaluation was recorded if it has not "
                             "ended by itself; its results count (default: 120)")
    parser.add_argument("--stop-after", type=float, default=None,
                        help="start no new campaign after this many minutes; report what was measured")
    args = parser.parse_args()
    if args.model and args.models:
        parser.error("give --model or --models, not both")
    if args.acquisition and args.acquisitions:
        parser.error("give --acquisition or --acquisitions, not both")
    models = [args.model] if args.model else args.models or list(DEFAULT_MODELS)
    acquisitions = [args.acquisition] if args.acquisition else args.acquisitions or list(ACQUISITIONS)

    qm9 = load_qm9()
    objectives = {}  # objective -> maximize
    for name in args.objectives:
        objective = parse_objective(name)
        maximize = True if args.maximize else False if args.minimize else objective.maximize
        if maximize is None:
            parser.error(f"--objective {name}: say --maximize or --minimize")
        objectives[name] = maximize

    # Per objective and seed: the pool, its values, the top-k threshold, the budget, and random search.
    pools: dict[tuple[str, int], dict[str, Any]] = {}
    for name, maximize in objectives.items():
        for seed in args.seeds:
            rows = sample_pool(len(qm9), args.pool_size, seed)
            values = qm9_objective_values(name)[rows]
            budget = args.budget or max(args.initial_count + 1, len(rows) // 100)
            ordered = np.sort(values)[::-1] if maximize else np.sort(values)
            threshold = float(ordered[args.top_k - 1])
            random_order = np.random.default_rng(1000 + seed).permutation(len(rows))
            random = search_metrics(values[random_order], threshold, args.top_k, maximize, budget)
            pools[name, seed] = {"values": values, "budget": budget, "pool": len(rows), "threshold": threshold,
                                 "random": {"objective": name, "maximize": maximize, "seed": seed, **random}}

    done = load_done([*args.resume_from, *([args.out] if args.out else [])])
    start = time.monotonic()
    results: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    not_run: list[dict[str, Any]] = []
    # Campaign order: model, acquisition, objective, seed, so that --stop-after keeps whole rows of the first
    # models and acquisitions.
    for model in models:
        for acquisition in acquisitions:
            for name, maximize in objectives.items():
                for seed in args.seeds:
                    pool = pools[name, seed]
                    key = {"objective": name, "maximize": maximize, "model": model, "acquisition": acquisition,
                           "seed": seed, "budget": pool["budget"], "pool": pool["pool"], "pool_size": args.pool_size,
                           "top_k": args.top_k, "initial_count": args.initial_count, "extra": args.extra}
                    label = f"{name} {model} {acquisition} seed {seed}"
                    previous = done.get(tuple(key[f] for f in KEY_FIELDS))
                    if previous is not None:
                        result = previous
                        print(f"{label}: from {args.out or 'earlier output'}", flush=True)
                    elif args.stop_after is not None and time.monotonic() - start > 60 * args.stop_after:
                        not_run.append(key)
                        print(f"{label}: not run (--stop-after {args.stop_after:g} min)", flush=True)
                        continue
                    else:
                        result = {"kind": "campaign", **run_campaign(args, key, ["--maximize"] if maximize
                                                                     else ["--minimize"], pool["values"],
                                                                     pool["threshold"])}
                        if "error" in result:
                            failed.append(result)
                            print(f"{label}: campaign FAILED ({result['error'][-300:]!r})", file=sys.stderr,
                                  flush=True)
                            continue
                        if args.out:
                            append_line(args.out, result)
                    results.append(result)
                    milestones = ", ".join(f"{m} of top-{args.top_k} after {n if n is not None else 'not reached'}"
                                           for m, n in result["evals_to"].items())
                    print(f"{label}: recall {result['recall']:.2f} after {result['budget']} evaluations "
                          f"(random {pool['random']['recall']:.2f}); {milestones}; {result['wall_time']:.0f} s",
                          flush=True)

    rows: list[dict[str, Any]] = []
    for model in models:
        for acquisition in acquisitions:
            for name in objectives:
                runs = [r for r in results
                        if (r["model"], r["acquisition"], r["objective"]) == (model, acquisition, name)]
                if runs:
                    rows.append({"objective": name, "model": model, "acquisition": acquisition,
                                 **summarize(runs, runs[0]["pool"])})
    random_rows = []
    for name in objectives:
        runs = [pools[name, seed]["random"] for seed in args.seeds]
        random_rows.append({"objective": name, "model": "random", "acquisition": "–",
                            **summarize(runs, pools[name, args.seeds[0]]["pool"])})
    table_rows = [row for name in objectives for row in [*[r for r in rows if r["objective"] == name],
                                                          *[r for r in random_rows if r["objective"] == name]]]

    first = pools[next(iter(objectives)), args.seeds[0]]
    print()
    print(f"Top-{args.top_k} recall within {first['budget']} evaluations ({100 * first['budget'] / first['pool']:.2g}% "
          f"of a pool of {first['pool']}), seeds {' '.join(map(str, args.seeds))}; random search is a random order "
          f"of the whole pool, so its milestones may lie beyond the budget.")
    print()
    print(markdown_table(table_rows, args.top_k))
    if not_run:
        print(f"\nNot run (--stop-after): {len(not_run)} campaigns: "
              + "; ".join(f"{k['objective']} {k['model']} {k['acquisition']} seed {k['seed']}" for k in not_run))
    if failed:
        print(f"\nFailed: {len(failed)} campaigns: "
              + "; ".join(f"{k['objective']} {k['model']} {k['acquisition']} seed {k['seed']}" for k in failed))
    print()
    print(json.dumps({
        "benchmark": "search_efficiency", "objectives": objectives, "models": models, "acquisitions": acquisitions,
        "budget": first["budget"], "pool": first["pool"], "top_k": args.top_k, "initial_count": args.initial_count,
        "budget_fraction": first["budget"] / first["pool"], "seeds": args.seeds, "extra": args.extra,
        "combinations": rows, "random": random_rows,
        "not_run": [{k: key[k] for k in ("objective", "model", "acquisition", "seed")} for key in not_run],
        "failed": [{k: f[k] for k in ("objective", "model", "acquisition", "seed", "error")} for f in failed],
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
        "runs": results, "random_runs": [pools[name, seed]["random"] for name in objectives for seed in args.seeds],
    }))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
