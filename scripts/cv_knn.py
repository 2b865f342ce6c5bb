#!/usr/bin/env python
"""Cross-validation behind the ``knn`` surrogate's settings: neighbours, composition baseline, ridge penalty.

Random QM9 molecules only, never the search benchmark's answers: for each training size, ``--folds`` random
draws of that many training molecules and ``--test`` test molecules (seeded, disjoint). Variants:

* ``plain kK``: the similarity-weighted mean of the K nearest neighbours (Tanimoto, Morgan fingerprints);
* ``baseline lL``: a ridge fit on atom counts (penalty L) plus the 5 neighbours' mean residual, always;
* ``auto``: the shipped model, which cross-validates the two on its training data and keeps the better;
* ``mean``: predicting the training mean.

For the shipped model it also scores the uncertainty on the test molecules: the Gaussian negative log likelihood
per molecule (lower is better) and the fraction of errors within one predicted standard deviation (0.68 if
calibrated), for the calibrated uncertainty and for the neighbours' raw spread.

Prints a table of test MAEs per objective and training size, then one JSON line.

    python scripts/cv_knn.py                                   # IE and atomization energy, 32/100/800, 3 folds
    python scripts/cv_knn.py --objectives qm9:Dipole_debye --sizes 200
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from methods.data import load_qm9  # noqa: E402
from methods.simulate import qm9_objective_values  # noqa: E402
from methods.surrogates import KNNModel  # noqa: E402

K_VALUES = (3, 5, 10, 20)
SIGMA_FLOOR = 1e-3
"""Standard deviations below this count as this in the log likelihood (a zero spread would make it infinite)."""
PENALTIES = (0.01, 0.1, 1.0, 10.0)


def variants() -> dict[str, KNNModel]:
    """Every model compared, by name; each is refitted per fold."""
    models: dict[str, KNNModel] = {f"plain k{k}": KNNModel(k=k, composition="never") for k in K_VALUES}
    for penalty in PENALTIES:
        models[f"baseline l{penalty:g}"] = KNNModel(composition="always", penalty=penalty)
    models["auto"] = KNNModel()
    return models


def uncertainty_scores(error: np.ndarray, sigma: np.ndarray) -> dict[str, float]:
    """How well ``sigma`` describes the errors: Gaussian NLL per molecule, the share within one sigma, rank order.

    The rank correlation of sigma with the absolute error says whether a larger uncertainty means a larger
    error, which is what exploration relies on.
    """
    from scipy.stats import spearmanr

    sigma = np.maximum(sigma, SIGMA_FLOOR)
    nll = 0.5 * np.log(2 * np.pi * sigma ** 2) + 0.5 * (error / sigma) ** 2
    return {"nll": float(nll.mean()), "coverage_1sigma": float((np.abs(error) <= sigma).mean()),
            "rank_correlation": float(spearmanr(sigma, np.abs(error)).statistic)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objectives", nargs="+", default=["ionization-energy", "atomization-energy"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 100, 800])
    parser.add_argument("--test", type=int, default=400)
    parser.add_argument("--folds", type=int, default=3)
    args = parser.parse_args()

    qm9 = load_qm9()
    results: list[dict] = []
    start = time.perf_counter()
    for objective in args.objectives:
        if objective.startswith("qm9:"):
            y_all = np.asarray(qm9.columns[objective[4:]], dtype=float)
        else:
            y_all = qm9_objective_values(objective)
        for size in args.sizes:
            errors: dict[str, list[float]] = {}
            scores: dict[str, list[dict[str, float]]] = {"calibrated": [], "spread": []}
            chosen = 0
            for fold in range(args.folds):
                rows = np.random.default_rng(1000 + fold).choice(len(y_all), size + args.test, replace=False)
                features = KNNModel().featurize([str(s) for s in qm9.smiles[rows]])
                y = y_all[rows]
                train, test = slice(0, size), slice(size, None)
                errors.setdefault("mean", []).append(float(np.abs(y[train].mean() - y[test]).mean()))
                for name, model in variants().items():
                    model.fit_features(features[train], y[train])
                    mean, sigma = model.predict_features(features[test])
                    errors.setdefault(name, []).append(float(np.abs(mean - y[test]).mean()))
                    if name == "auto":
                        chosen += model.details()["composition_baseline"]
                        raw = copy.copy(model)
                        raw.calibration = None
                        scores["calibrated"].append(uncertainty_scores(mean - y[test], sigma))
                        spread = raw.predict_features(features[test])[1]
                        scores["spread"].append(uncertainty_scores(mean - y[test], spread))
            uncertainty = {kind: {key: float(np.mean([fold[key] for fold in folds])) for key in folds[0]}
                           for kind, folds in scores.items()}
            row = {"objective": objective, "n_train": size, "folds": args.folds, "baseline_chosen": chosen,
                   "mae": {name: float(np.mean(values)) for name, values in errors.items()},
                   "uncertainty": uncertainty}
            results.append(row)
            cells = "  ".join(f"{name} {value:.3f}" for name, value in row["mae"].items())
            print(f"{objective} n={size}: {cells}  (auto used the baseline in {chosen}/{args.folds})", flush=True)
            print("    uncertainty: " + "  ".join(
                f"{kind} nll {value['nll']:.3f}, within 1 sigma {value['coverage_1sigma']:.0%}, "
                f"rank correlation with |error| {value['rank_correlation']:.2f}"
                for kind, value in uncertainty.items()), flush=True)
    print(json.dumps({"benchmark": "cv_knn", "test": args.test, "results": results,
                      "seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
