#!/usr/bin/env python
"""Surrogates and the RL generator on real QM9 data: hold-out error, and the time of one round of each.

Trains gc, knn and the MPNN ensemble on ``--n-train`` random QM9 molecules (objective: QM9's −HOMO, eV),
scores ``--n-test`` others, and times one RL round (``--episodes``) against the trained gc model. One core,
sequentially; in a campaign the ensemble members train in parallel on the ml workers. Ends with one JSON line.

    python scripts/bench_models.py --n-train 400 --ensemble-size 4 --epochs 64 --episodes 10
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from methods.data import load_qm9  # noqa: E402
from methods.mpnn import ensemble_predict, train_mpnn  # noqa: E402
from methods.rl import generate_molecules  # noqa: E402
from methods.surrogates import train_surrogate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=400)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--ensemble-size", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=64)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    qm9 = load_qm9()
    rows = np.random.default_rng(args.seed).choice(len(qm9), args.n_train + args.n_test, replace=False)
    train, test = rows[:args.n_train], rows[args.n_train:]
    y = -qm9.columns["HOMO_au"] * 27.211386
    baseline = float(np.abs(y[train].mean() - y[test]).mean())
    results: dict = {"baseline_mae": baseline}

    for name in ("gc", "knn"):
        start = time.perf_counter()
        model, _ = train_surrogate(name, qm9.smiles[train].tolist(), y[train].tolist(), seed=args.seed)
        train_time = time.perf_counter() - start
        mean, _ = model.predict(qm9.smiles[test].tolist())
        results[name] = {"mae": float(np.abs(mean - y[test]).mean()), "train_s": train_time}
        print(f"{name:5s} MAE {results[name]['mae']:.3f} eV (mean {baseline:.3f}); training {train_time:.2f} s",
              flush=True)
        if name == "gc":
            gc_model = model

    start = time.perf_counter()
    member_times, members = [], []
    for k in range(args.ensemble_size):
        t = time.perf_counter()
        members.append(train_mpnn(qm9.smiles[train].tolist(), y[train].tolist(), seed=args.seed + k,
                                  epochs=args.epochs))
        member_times.append(time.perf_counter() - t)
    mean, std = ensemble_predict(members, qm9.smiles[test].tolist())
    results["mpnn"] = {"mae": float(np.abs(mean - y[test]).mean()), "mean_std": float(std.mean()),
                       "member_train_s": member_times, "round_sequential_s": time.perf_counter() - start,
                       "ensemble_size": args.ensemble_size, "epochs": args.epochs}
    print(f"mpnn  MAE {results['mpnn']['mae']:.3f} eV; {args.ensemble_size} members, "
          f"{np.mean(member_times):.1f} s each on one core", flush=True)

    start = time.perf_counter()
    proposals, agent, stats = generate_molecules(None, gc_model, args.episodes, maximize=True,
                                                 exclude=qm9.smiles[train].tolist(), seed=args.seed)
    results["rl"] = {"round_s": time.perf_counter() - start, **stats}
    print(f"rl    one round of {args.episodes} episodes: {results['rl']['round_s']:.1f} s, "
          f"{stats['molecules_proposed']} new molecules proposed", flush=True)
    print(json.dumps({"benchmark": "models", "n_train": args.n_train, "n_test": args.n_test,
                      "machine": f"{platform.node()} {os.cpu_count()} cores", **results}))


if __name__ == "__main__":
    main()
