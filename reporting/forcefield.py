"""``report.md`` for a forcefield run: learning curve, test-set parity, audits, and the sampling/QC allocation.

Built from the records alone (and ``test_parity.npz``, the last evaluation's forces), like the design report, so
it can be rebuilt for any run, killed or not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from store.names import ALLOCATION_RECORDS, SIMULATION_RECORDS  # noqa: E402
from store.rundir import read_jsonl  # noqa: E402


def _save(fig: Any, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_learning_curve(evaluations: list[dict[str, Any]], out: Path) -> Path | None:
    """Test-set force MAE and RMSE against the QC calls made so far."""
    points = [e for e in evaluations if e.get("force_mae") is not None]
    if not points:
        return None
    calls = [e["qc_calls"] for e in points]
    fig, axis = plt.subplots(figsize=(6, 3.4))
    axis.plot(calls, [e["force_mae"] for e in points], "o-", label="force MAE")
    axis.plot(calls, [e["force_rmse"] for e in points], "s--", label="force RMSE", alpha=0.7)
    axis.set_xlabel("QC calls")
    axis.set_ylabel("test-set force error (eV/Å)")
    axis.set_yscale("log")
    axis.legend()
    return _save(fig, out)


def plot_parity(parity_file: Path, out: Path) -> Path | None:
    """Predicted (ensemble mean) against QC forces on the test set, for the last evaluated ensemble."""
    if not parity_file.exists():
        return None
    with np.load(parity_file) as data:
        true, pred = data["forces_true"].ravel(), data["forces_pred"].ravel()
    if true.size == 0:
        return None
    fig, axis = plt.subplots(figsize=(4.2, 4.2))
    axis.scatter(true, pred, s=3, alpha=0.3)
    limit = float(np.abs(np.concatenate([true, pred])).max()) * 1.05
    axis.plot([-limit, limit], [-limit, limit], "k-", linewidth=0.8)
    axis.set_xlim(-limit, limit)
    axis.set_ylim(-limit, limit)
    axis.set_xlabel("QC force component (eV/Å)")
    axis.set_ylabel("predicted (eV/Å)")
    return _save(fig, out)


def plot_audits(audits: list[dict[str, Any]], tolerance: float | None, out: Path) -> Path | None:
    """Audit errors over time, coloured by the decision they led to."""
    points = [a for a in audits if a.get("audit_error") is not None and a.get("elapsed") is not None]
    if not points:
        return None
    fig, axis = plt.subplots(figsize=(7, 3.2))
    for decision, color in (("continue", "C2"), ("restart", "C3")):
        chosen = [a for a in points if a.get("decision") == decision]
        axis.scatter([a["elapsed"] for a in chosen], [a["audit_error"] * 1000 for a in chosen], s=12, color=color,
                     label=decision)
    if tolerance:
        axis.axhline(tolerance * 1000, color="k", linewidth=0.8, linestyle="--", label="tolerance")
    axis.set_yscale("log")
    axis.set_xlabel("time (s)")
    axis.set_ylabel("|model − QC| (meV/atom)")
    axis.legend()
    return _save(fig, out)


def plot_allocation(allocation: list[dict[str, Any]], out: Path) -> Path | None:
    """Slots given to sampling and to QC over time (Colmena's resource counter), with the QC backlog."""
    if not allocation:
        return None
    times = [a["elapsed"] for a in allocation]
    fig, axis = plt.subplots(figsize=(7, 3.2))
    axis.step(times, [a["sample_slots"] for a in allocation], where="post", label="sampling slots")
    axis.step(times, [a["qc_slots"] for a in allocation], where="post", label="QC slots")
    twin = axis.twinx()
    twin.plot(times, [a["backlog"] for a in allocation], "k:", alpha=0.6, label="QC backlog")
    twin.set_ylabel("structures waiting for QC")
    axis.set_xlabel("time (s)")
    axis.set_ylabel("slots")
    axis.legend(loc="upper left")
    return _save(fig, out)


def forcefield_report(run_dir: Path, params: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    """The report's lines; plots are written into ``run_dir/plots``."""
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    # The summary's curve: one point per round, in round order, whichever attempt measured it.
    evaluations = summary.get("learning_curve") or []
    simulations = read_jsonl(run_dir / SIMULATION_RECORDS)
    audits = [s for s in simulations if s.get("source") == "audit"]
    lines = [f"# Forcefield report: {run_dir.name}", "",
             f"- Molecules: {', '.join(params.get('molecules') or [])}",
             f"- QC: {params.get('qc_code')} {params.get('method') or ''} {params.get('basis') or ''}".rstrip(),
             f"- Ensemble of {params.get('ensemble_size')}, selector **{params.get('selector')}**, "
             f"MD at {params.get('temperature')} K, {params.get('timestep')} fs"]
    if summary:
        lines.append(f"- QC calls: {summary.get('qc_calls')} ({summary.get('qc_failures')} failed), by source "
                     f"{summary.get('qc_calls_by_source')}; wall time {summary.get('wall_time') or 0:.0f} s")
        for kind in ("qc", "ml"):
            value = summary.get(f"{kind}_utilization")
            lines.append(f"- {kind.upper()} worker utilization: {f'{value:.1%}' if value is not None else 'n/a'}")
        stability = summary.get("stability") or {}
        if stability.get("runs"):
            lines.append(f"- Stability of the final ensemble: {stability['stable_fraction']:.0%} of "
                         f"{stability['runs']} MD runs of {params.get('stability_steps')} steps stayed physical "
                         f"(mean {stability['mean_steps']:.0f} steps)")
    lines.append("")
    if evaluations:
        lines += ["## Learning curve (held-out QC reference MD)", "",
                  "| round | QC calls | training structures | energy MAE (eV/atom) | force MAE (eV/Å) | "
                  "force RMSE (eV/Å) |", "| ---: | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {e['round']} | {e['qc_calls']} | {e['n_train']} | {e['energy_mae']:.4f} | "
                  f"{e['force_mae']:.3f} | {e['force_rmse']:.3f} |" for e in evaluations]
        lines.append("")
    if plot_learning_curve(evaluations, plots / "ff_learning_curve.png"):
        lines += ["![learning curve](plots/ff_learning_curve.png)", ""]
    if plot_parity(run_dir / "test_parity.npz", plots / "ff_parity.png"):
        lines += ["## Forces on the test set, last ensemble", "", "![parity](plots/ff_parity.png)", ""]
    if plot_audits(audits, params.get("energy_tolerance"), plots / "ff_audits.png"):
        lines += ["## Audit errors over time", "", "![audits](plots/ff_audits.png)", ""]
    if plot_allocation(read_jsonl(run_dir / ALLOCATION_RECORDS), plots / "ff_allocation.png"):
        lines += ["## Sampling and QC slots over time", "", "![allocation](plots/ff_allocation.png)", ""]
    failures = [s for s in simulations if not s.get("success")]
    if failures:
        lines += ["## QC failures", "", "| source | molecule | reason |", "| --- | --- | --- |"]
        for record in failures[:20]:
            reason = str(record.get("failure_reason"))[:160].replace("|", "/")
            lines.append(f"| {record.get('source')} | `{record.get('molecule')}` | {reason} |")
    return lines
