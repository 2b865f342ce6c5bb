#!/usr/bin/env python
"""xTB ionization energies against experiment, for each ``--ie-correction`` of the design campaign.

Evaluates every molecule of ``data/experimental_ie.csv`` (NIST WebBook evaluated IEs) with the campaign's own
worker code (:func:`methods.simulate.evaluate_molecule`, one core, in this process) once per option, and prints
one line per option: mean absolute and mean signed error against experiment (eV), Spearman rank correlation,
Pearson r and failures; then one JSON line with all of it, per-molecule values included.

``ipea-xtb`` needs ``param_ipea-xtb.txt`` (from the xtb program; xtb-python does not ship it) in a directory on
``$XTBPATH``; without it every molecule of that option fails, with the reason.

    python scripts/bench_ie.py                                  # 40 molecules, adiabatic, all three options
    XTBPATH=/path/to/xtb/share python scripts/bench_ie.py --ie-type vertical --options none ipea-xtb
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core per QC task, as the qc workers run them

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from methods.simulate import HARTREE_TO_EV, XTB_IP_SHIFT_HARTREE, QCSpec, evaluate_molecule  # noqa: E402

logger = logging.getLogger(__name__)

OPTIONS = ("none", "shift", "ipea-xtb")


def read_experiment(path: Path) -> list[dict[str, Any]]:
    """Rows of the experimental file (``#`` lines are its provenance header), with ``ie_ev`` as a float."""
    with path.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(line for line in handle if not line.startswith("#")))
    return [{**row, "ie_ev": float(row["ie_ev"])} for row in rows]


def metrics(calculated: list[float | None], experiment: list[float]) -> dict[str, Any]:
    """Errors (calculated − experiment) and correlations over the molecules that did not fail."""
    pairs = [(c, e) for c, e in zip(calculated, experiment, strict=True) if c is not None]
    if len(pairs) < 3:
        return {"n": len(pairs), "mae_ev": None, "mse_ev": None, "max_abs_error_ev": None, "spearman": None,
                "pearson": None}
    calc, exp = np.array(pairs).T
    errors = calc - exp
    return {
        "n": len(pairs),
        "mae_ev": float(np.abs(errors).mean()),
        "mse_ev": float(errors.mean()),
        "max_abs_error_ev": float(np.abs(errors).max()),
        "spearman": float(stats.spearmanr(calc, exp).statistic),
        "pearson": float(stats.pearsonr(calc, exp).statistic),
    }


def failure_reasons(records: list[Any]) -> dict[str, list[str]]:
    """The SMILES that failed, grouped by reason: a missing parameter file fails every molecule the same way."""
    reasons: dict[str, list[str]] = {}
    for record in records:
        if not record.success:
            reasons.setdefault(record.failure_reason[:300], []).append(record.smiles)
    return reasons


def bench(option: str, rows: list[dict[str, Any]], method: str, ie_type: str, seed: int) -> dict[str, Any]:
    spec = QCSpec(code="xtb", method=method, objective="ionization-energy", ie_type=ie_type, ie_correction=option,
                  seed=seed)
    start = time.perf_counter()
    records = [evaluate_molecule(row["smiles"], spec, {"ncores": 1}) for row in rows]
    values = [r.value if r.success else None for r in records]
    return {
        "option": option,
        **metrics(values, [row["ie_ev"] for row in rows]),
        "failures": sum(not r.success for r in records),
        "failure_reasons": failure_reasons(records),
        "time_s": time.perf_counter() - start,
        "values_ev": {row["name"]: v for row, v in zip(rows, values, strict=True)},
    }


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "experimental_ie.csv")
    parser.add_argument("--options", nargs="+", choices=OPTIONS, default=list(OPTIONS))
    parser.add_argument("--ie-type", choices=["adiabatic", "vertical"], default="adiabatic")
    parser.add_argument("--method", default="GFN2-xTB", help="xTB method of the relaxations (the campaign's)")
    parser.add_argument("--seed", type=int, default=0, help="RDKit embedding seed")
    parser.add_argument("--limit", type=int, default=None, help="only the first N molecules (a quick check)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    rows = read_experiment(args.data)[: args.limit]
    print(f"{len(rows)} molecules from {args.data.name}, {args.method} {args.ie_type}, "
          f"empirical shift {XTB_IP_SHIFT_HARTREE * HARTREE_TO_EV:.4f} eV", flush=True)
    results = []
    for option in args.options:
        result = bench(option, rows, args.method, args.ie_type, args.seed)
        results.append(result)
        print(f"{option:9s} MAE {fmt(result['mae_ev'])} eV  MSE {fmt(result['mse_ev']):>5s} eV  "
              f"max |err| {fmt(result['max_abs_error_ev'])} eV  Spearman {fmt(result['spearman'], 3)}  "
              f"Pearson {fmt(result['pearson'], 3)}  n {result['n']}  failures {result['failures']}  "
              f"({result['time_s']:.0f} s)", flush=True)
        for reason, smiles in result["failure_reasons"].items():
            print(f"          {len(smiles)} failed ({' '.join(smiles[:5])}{' …' if len(smiles) > 5 else ''}): {reason}",
                  flush=True)
    print(json.dumps({"benchmark": "ie_calibration", "data": args.data.name, "method": args.method,
                      "ie_type": args.ie_type, "seed": args.seed, "shift_ev": XTB_IP_SHIFT_HARTREE * HARTREE_TO_EV,
                      "experiment_ev": {row["name"]: row["ie_ev"] for row in rows},
                      "machine": f"{platform.node()} {os.cpu_count()} cores", "results": results}))


if __name__ == "__main__":
    main()
