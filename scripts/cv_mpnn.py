"""Choose the MPNN's width and its per-round training by cross-validation, and measure its inference speed.

A campaign retrains the ensemble every round on a training set that grows by a few dozen molecules. This
script measures, on random QM9 molecules (never the benchmark's top-k: the folds are random), the hold-out
error of:

* ``cold``: a member trained from random weights for ``--epochs`` epochs, at each ``--widths`` width and
  number of message-passing ``--steps``;
* ``warm-E``: a member trained first on all but the last ``--new`` training molecules, then continued from
  those weights on all of them for E epochs (E in ``--warm-epochs``), which is what a campaign round does
  from its second round on;

with the wall time of each. ``--speed`` adds inference time per molecule and member for each width and
batch size, on a cached library block when one is given (``--graphs``), else on QM9 graphs.

Usage::

    python scripts/cv_mpnn.py --widths 32 64 --steps 3 --warm-epochs 8 16   # width; continued training
    python scripts/cv_mpnn.py --steps 3 2 --warm-epochs                      # message-passing rounds
    python scripts/cv_mpnn.py --objective atomization-energy --steps 3 2 --warm-epochs
    python scripts/cv_mpnn.py --speed --graphs ~/.cache/molsteer/libraries/<key>/graphs-v1-00000.npz

The last line printed is one JSON object with every measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")  # one core, as on an ml worker sharing the node
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from methods.data import load_qm9  # noqa: E402
from methods.mpnn import GraphBatch, _model_for, featurize, predict_mpnn, train_mpnn  # noqa: E402
from methods.simulate import qm9_objective_values  # noqa: E402


def hold_out_mae(member, smiles: list[str], values: np.ndarray) -> float:
    return float(np.nanmean(np.abs(predict_mpnn(member, smiles) - values)))


def cross_validate(args: argparse.Namespace) -> list[dict]:
    qm9 = load_qm9()
    values = qm9_objective_values(args.objective)
    rng = np.random.default_rng(args.seed)
    rows = rng.choice(len(values), args.n, replace=False)
    folds = np.array_split(rows, args.folds)
    results = []
    for k, test in enumerate(folds):
        train = np.concatenate([f for j, f in enumerate(folds) if j != k])
        train_smiles = [str(qm9.smiles[i]) for i in train]
        test_smiles = [str(qm9.smiles[i]) for i in test]
        y_train, y_test = values[train], values[test]
        baseline = float(np.mean(np.abs(y_test - y_train.mean())))
        for width, steps in [(w, t) for w in args.widths for t in args.steps]:
            start = time.perf_counter()
            member = train_mpnn(train_smiles, list(y_train), seed=k, epochs=args.epochs, hidden=width, steps=steps,
                                batch_size=args.batch_size)
            results.append({"fold": k, "mode": "cold", "width": width, "steps": steps, "epochs": args.epochs,
                            "seconds": time.perf_counter() - start, "mae": hold_out_mae(member, test_smiles, y_test),
                            "baseline_mae": baseline, "n_train": len(train)})
            print(json.dumps(results[-1]), flush=True)
            if width != args.warm_width or steps != args.steps[0] or not args.warm_epochs:
                continue
            # Last round's member: the same recipe on the training set minus its newest molecules.
            earlier = train_mpnn(train_smiles[:-args.new], list(y_train[:-args.new]), seed=k + 100,
                                 epochs=args.epochs, hidden=width, batch_size=args.batch_size)
            for epochs in args.warm_epochs:
                start = time.perf_counter()
                member = train_mpnn(train_smiles, list(y_train), seed=k + 200, epochs=epochs, initial=earlier,
                                    batch_size=args.batch_size)
                results.append({"fold": k, "mode": f"warm-{epochs}", "width": width, "steps": steps, "epochs": epochs,
                                "seconds": time.perf_counter() - start,
                                "mae": hold_out_mae(member, test_smiles, y_test), "baseline_mae": baseline,
                                "n_train": len(train)})
                print(json.dumps(results[-1]), flush=True)
    return results


def summarize(results: list[dict]) -> dict[str, dict]:
    table: dict[str, dict] = {}
    for key in sorted({(r["mode"], r["width"], r["steps"]) for r in results}):
        rows = [r for r in results if (r["mode"], r["width"], r["steps"]) == key]
        table[f"{key[0]} width {key[1]} steps {key[2]}"] = {
            "mae_mean": float(np.mean([r["mae"] for r in rows])),
            "mae_per_fold": [round(r["mae"], 4) for r in rows],
            "baseline_mae_mean": float(np.mean([r["baseline_mae"] for r in rows])),
            "seconds_mean": float(np.mean([r["seconds"] for r in rows])),
        }
    return table


def inference_speed(args: argparse.Namespace) -> list[dict]:
    import tensorflow as tf

    if args.graphs:
        graphs = GraphBatch.load(args.graphs)
        source = str(args.graphs)
    else:
        graphs = featurize([str(s) for s in load_qm9().smiles[:args.speed_molecules]])
        source = "qm9"
    graphs = graphs.take(np.arange(min(args.speed_molecules, graphs.n_graphs)))
    out = []
    for width in args.widths:
        model, forward = _model_for(width, args.steps[0])
        for batch_size in args.batch_sizes:
            timings = []
            for _ in range(2):  # the first pass traces the function
                start = time.perf_counter()
                for first in range(0, graphs.n_graphs, batch_size):
                    batch = graphs.take(np.arange(first, min(first + batch_size, graphs.n_graphs)))
                    forward(batch.atoms, batch.bonds, batch.connectivity, batch.graph_index,
                            tf.constant(batch.n_graphs)).numpy()
                timings.append(time.perf_counter() - start)
            out.append({"width": width, "batch_size": batch_size, "source": source, "molecules": graphs.n_graphs,
                        "atoms_per_molecule": len(graphs.atoms) / graphs.n_graphs,
                        "us_per_molecule_member": timings[1] / graphs.n_graphs * 1e6})
            print(json.dumps(out[-1]), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objective", default="ionization-energy")
    parser.add_argument("--n", type=int, default=1200, help="random QM9 molecules, split into the folds")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--epochs", type=int, default=64, help="epochs of a member trained from scratch")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warm-width", type=int, default=32, help="width at which continued training is tried")
    parser.add_argument("--steps", type=int, nargs="+", default=[2], help="message-passing rounds to compare")
    parser.add_argument("--warm-epochs", type=int, nargs="*", default=[8, 16])
    parser.add_argument("--new", type=int, default=32, help="molecules added since the previous round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-cv", action="store_true", help="only measure inference speed")
    parser.add_argument("--speed", action="store_true", help="measure inference time too")
    parser.add_argument("--graphs", type=Path, default=None, help="a cached graphs block (.npz) to time")
    parser.add_argument("--speed-molecules", type=int, default=8192)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 512, 1024, 4096])
    args = parser.parse_args()
    report: dict = {"benchmark": "mpnn_cross_validation", "objective": args.objective, "n": args.n,
                    "folds": args.folds, "epochs": args.epochs, "new": args.new}
    if not args.no_cv:
        results = cross_validate(args)
        report["results"] = summarize(results)
    if args.speed or args.no_cv:
        report["speed"] = inference_speed(args)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
