"""``summary.json`` of each campaign, computed from the records alone, and the lines the terminal shows of it.

A summary can be rebuilt for any run directory, finished, killed or resumed (``scripts/report.py`` does), because
nothing here reads live steering state; what only the live run knows (proxy counts, the largest message) comes in
as ``extra``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from store.names import (
    INFERENCE_RECORDS,
    REFERENCE_RECORDS,
    SAMPLING_RECORDS,
    SIMULATION_RECORDS,
    STABILITY_RECORDS,
    TRAINING_RECORDS,
)
from store.results import count_failure_reasons, latest_attempt, worker_utilization
from store.rundir import RunDirectory


def summarize_design(run_dir: RunDirectory, maximize: bool, n_workers: int, wall_time: float | None,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The end-of-run summary, computed from the records alone (so it can be rebuilt for any run).

    ``extra`` adds what only the live run knows (proxy counts, the largest message).
    """
    everything = run_dir.read_records(SIMULATION_RECORDS)
    records = [r for r in everything if not r.get("abandoned")]
    successes = [r for r in records if r.get("success")]
    failures = [r for r in records if not r.get("success")]
    best = sorted(successes, key=lambda r: r["value"], reverse=maximize)[:10]
    reasons = count_failure_reasons(failures)
    qc_times = sorted(r["timings"]["total"] for r in successes if r.get("timings", {}).get("total") is not None)
    return {
        "evaluations": len(records),
        "abandoned": len(everything) - len(records),  # sent to QC, never finished (run stopped first)
        "successes": len(successes),
        "failures": len(failures),
        "failure_reasons": reasons,
        "wall_time": wall_time,
        "median_qc_time_per_molecule": qc_times[len(qc_times) // 2] if qc_times else None,
        **worker_utilization(latest_attempt(records), n_workers),
        "best": [{"smiles": r["smiles"], "value": r["value"], "source": r.get("source")} for r in best],
        **(extra or {}),
    }


def design_headline(summary: dict[str, Any], units: str) -> list[str]:
    """The design run's numbers a user looks at first."""
    utilization = summary["qc_utilization"]
    lines = [f"{summary['evaluations']} evaluations, {summary['failures']} failures, QC utilization "
             f"{f'{utilization:.1%}' if utilization else 'n/a'}"]
    if summary["best"]:
        lines.append(f"Best: {summary['best'][0]['smiles']} {summary['best'][0]['value']:.4g} {units}")
    return lines


def summarize_forcefield(run_dir: RunDirectory, qc_workers: int, ml_workers: int, wall_time: float | None,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The forcefield run's summary, from the records alone (so it can be rebuilt for any run, killed or not)."""
    sims = run_dir.read_records(SIMULATION_RECORDS)
    finished = [r for r in sims if not r.get("abandoned")]
    training = run_dir.read_records(TRAINING_RECORDS)
    evaluations = [r for r in training if r.get("event") == "evaluation" and r.get("success")]
    audits = [r for r in finished if r.get("source") == "audit"]
    sampling = run_dir.read_records(SAMPLING_RECORDS)
    stability = run_dir.read_records(STABILITY_RECORDS)
    references = run_dir.read_records(REFERENCE_RECORDS)
    reasons = count_failure_reasons([r for r in finished if not r.get("success")])
    # One point per round, in round order (a resumed attempt measures the ensemble a kill left unmeasured).
    curve = [{k: r.get(k) for k in ("round", "qc_calls", "n_train", "energy_mae", "force_mae", "force_rmse")}
             for r in sorted({r["round"]: r for r in evaluations}.values(), key=lambda r: r["round"])]
    ml_records = ([r for r in training if r.get("event") in ("member", "evaluation")] + sampling + stability
                  + run_dir.read_records(INFERENCE_RECORDS))
    qc_use = worker_utilization(latest_attempt(finished + references), qc_workers)
    ml_use = worker_utilization(latest_attempt(ml_records), ml_workers)
    stability = latest_attempt(stability)  # a resume that trains a new final ensemble checks it again
    stable = [r for r in stability if r.get("stable")]
    audit_errors = [r["audit_error"] for r in audits if r.get("audit_error") is not None]
    return {
        "qc_calls": len(finished),
        "abandoned": len(sims) - len(finished),
        "qc_failures": len(finished) - sum(1 for r in finished if r.get("success")),
        "failure_reasons": reasons,
        "qc_calls_by_source": {s: sum(1 for r in finished if r.get("source") == s)
                               for s in ("initial", "audit", "active")},
        # Every attempt fetches the test set again (from the cache); count each molecule's once, the latest.
        "test_set_size": sum(r.get("n_frames") or 0 for r in {r["molecule"]: r for r in references}.values()),
        "learning_curve": curve,
        "final": curve[-1] if curve else None,
        "audits": {"count": len(audits), "continued": sum(1 for r in audits if r.get("decision") == "continue"),
                   "restarted": sum(1 for r in audits if r.get("decision") == "restart"),
                   "median_error": float(np.median(audit_errors)) if audit_errors else None},
        "sampling": {"runs": len(sampling), "md_steps": sum(r.get("steps_done") or 0 for r in sampling),
                     "blowups": sum(1 for r in sampling if r.get("blown_up"))},
        "stability": {"runs": len(stability), "stable_fraction": len(stable) / len(stability) if stability else None,
                      "mean_steps": float(np.mean([r.get("steps_done") or 0 for r in stability])) if stability
                      else None,
                      "failures": [r.get("failure") for r in stability if not r.get("stable")]},
        "wall_time": wall_time,
        "qc_utilization": qc_use["qc_utilization"],
        "qc_utilization_after_startup": qc_use["qc_utilization_after_startup"],
        "ml_utilization": ml_use["qc_utilization"],
        "ml_utilization_after_startup": ml_use["qc_utilization_after_startup"],
        **(extra or {}),
    }


def forcefield_headline(summary: dict[str, Any]) -> list[str]:
    """The numbers a user looks at first."""
    lines = [f"{summary['qc_calls']} QC calls ({summary['qc_failures']} failed), QC utilization "
             f"{_percent(summary['qc_utilization'])}, ML utilization {_percent(summary['ml_utilization'])}"]
    final = summary.get("final")
    if final:
        lines.append(f"Test set after round {final['round']}: force MAE {final['force_mae']:.3f} eV/Å, "
                     f"energy MAE {final['energy_mae']:.4f} eV/atom")
    stability = summary["stability"]
    if stability["runs"]:
        lines.append(f"Stability: {stability['stable_fraction']:.0%} of {stability['runs']} MD runs stayed physical")
    return lines


def _percent(value: float | None) -> str:
    return f"{value:.1%}" if value is not None else "n/a"
