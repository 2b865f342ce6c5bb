#!/usr/bin/env python
"""QC cost per molecule: median and p90 wall time of the objective computation on a fixed QM9 sample.

Runs each molecule in this process on one core (as one QC worker would), split into RDKit embedding,
relaxation and single-point energies. Prints a table, then one JSON line with the results.

    python scripts/bench_qc.py                       # xTB on 50 molecules, NWChem HF/STO-3G on 3
    python scripts/bench_qc.py --codes xtb --n-xtb 200
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core per QC task, as the qc workers run them

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from methods.data import load_qm9  # noqa: E402
from methods.simulate import QCSpec, compute_atom_energies, evaluate_molecule  # noqa: E402

LEVELS = {"xtb": {"code": "xtb", "method": "GFN2-xTB"}, "nwchem": {"code": "nwchem", "method": "hf", "basis": "sto-3g"}}


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def bench(code: str, smiles: list[str], objective: str, ie_type: str) -> dict:
    spec = QCSpec(objective=objective, ie_type=ie_type, **LEVELS[code])
    config = {"ncores": 1}
    start = time.perf_counter()
    atoms = compute_atom_energies(spec, config) if objective == "atomization-energy" else None
    warmup = evaluate_molecule("C", spec, config, atoms)  # pays the one-time import/start-up cost
    startup = time.perf_counter() - start
    records = [evaluate_molecule(s, spec, config, atoms) for s in smiles]
    ok = [r for r in records if r.success]
    parts = {}
    for part in ("embed", "relax", "energy", "total"):
        values = [r.timings.get(part, 0.0) for r in ok]
        parts[part] = {"median": percentile(values, 50), "p90": percentile(values, 90)}
    steps = [sum(r.relax_steps.values()) for r in ok]
    return {
        "code": code, "method": spec.method, "basis": spec.basis, "molecules": len(records), "failures":
        len(records) - len(ok), "startup_s": startup, "warmup_ok": warmup.success,
        "median_s": parts["total"]["median"], "p90_s": parts["total"]["p90"], "parts": parts,
        "median_relax_steps": percentile(steps, 50),
        "failure_reasons": sorted({r.failure_reason[:80] for r in records if not r.success}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codes", nargs="+", choices=sorted(LEVELS), default=["xtb", "nwchem"])
    parser.add_argument("--n-xtb", type=int, default=50, help="QM9 molecules for xTB")
    parser.add_argument("--n-nwchem", type=int, default=3, help="QM9 molecules for NWChem (slow)")
    parser.add_argument("--objective", choices=["ionization-energy", "atomization-energy"], default="ionization-energy")
    parser.add_argument("--ie-type", choices=["adiabatic", "vertical"], default="adiabatic")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    qm9 = load_qm9()
    order = np.random.default_rng(args.seed).permutation(len(qm9))
    results = []
    for code in args.codes:
        n = args.n_xtb if code == "xtb" else args.n_nwchem
        smiles = qm9.smiles[order[:n]].tolist()
        result = bench(code, smiles, args.objective, args.ie_type)
        results.append(result)
        med = {part: f"{v['median']:.3f}" if v["median"] is not None else "n/a" for part, v in result["parts"].items()}
        p90 = f"{result['p90_s']:.3f}" if result["p90_s"] is not None else "n/a"
        print(f"{code:7s} {result['method']}/{result['basis'] or '-'}: {result['molecules']} molecules, "
              f"{result['failures']} failed, median {med['total']} s, p90 {p90} s (embed {med['embed']}, "
              f"relax {med['relax']}, energy {med['energy']}); start-up {result['startup_s']:.2f} s", flush=True)
        for reason in result["failure_reasons"]:
            print(f"        failed: {reason}", flush=True)
    print(json.dumps({"benchmark": "qc_cost", "objective": args.objective, "ie_type": args.ie_type,
                      "seed": args.seed, "machine": f"{platform.node()} {os.cpu_count()} cores",
                      "results": results}))


if __name__ == "__main__":
    main()
