"""The design campaign's ``report.md``: best value over evaluations, utilization, overhead, top molecules, failures.

Built from the records alone, so it works for any finished or killed run; :func:`reporting.report.write_report`
calls it for design runs (at the end of every attempt, or from ``python scripts/report.py runs/<dir>``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: reports are written on clusters without displays

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from store.names import QC_SPEC, SIMULATION_RECORDS, TRAINING_RECORDS  # noqa: E402
from store.results import TASK_LEGS  # noqa: E402
from store.rundir import read_json, read_jsonl  # noqa: E402

logger = logging.getLogger(__name__)

LEGS = {label: (f"timestamp_{start}", f"timestamp_{end}") for label, start, end in TASK_LEGS.values()}
"""Legs of a task's round trip, between the records' timestamps (:data:`store.results.TASK_LEGS`)."""


def _per_task(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    tasks: dict[str, dict[str, Any]] = {}
    for record in records:
        tasks.setdefault(record.get("task_id"), record)
    return list(tasks.values())


def _pool_reference(params: dict[str, Any], top_k: int) -> tuple[float, float] | None:
    """In QM9 lookup mode: the best value and the k-th best value of the searched pool."""
    if params.get("qc_code") != "qm9":
        return None
    from methods.data import load_qm9, sample_pool
    from methods.simulate import qm9_objective_values

    rows = sample_pool(len(load_qm9()), params.get("pool_size"), params.get("seed", 0))
    values = qm9_objective_values(params["objective"])[rows]
    ordered = np.sort(values)[::-1] if params.get("maximize", True) else np.sort(values)
    return float(ordered[0]), float(ordered[min(top_k, len(ordered)) - 1])


def plot_best(records, params, units, out: Path, top_k: int) -> Path:
    """Best value found against evaluations and against wall time."""
    maximize = params.get("maximize", True)
    ordered = sorted(records, key=lambda r: r.get("n_done", 0))
    values = np.array([r["value"] if r["success"] else np.nan for r in ordered], dtype=float)
    filled = np.where(np.isnan(values), -np.inf if maximize else np.inf, values)
    best = np.maximum.accumulate(filled) if maximize else np.minimum.accumulate(filled)
    best[~np.isfinite(best)] = np.nan
    start = min(r["timestamp_created"] for r in ordered)
    times = np.array([r["timestamp_result_received"] - start for r in ordered])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for axis, x, label in ((axes[0], np.arange(1, len(best) + 1), "QC evaluations"), (axes[1], times, "wall time (s)")):
        axis.plot(x, best, color="C0", label="best found")
        axis.scatter(x, values, s=6, color="C7", alpha=0.5, label="each evaluation")
        axis.set_xlabel(label)
    reference = _pool_reference(params, top_k)
    if reference is not None:
        for axis in axes:
            axis.axhline(reference[0], color="C3", linestyle="--", label="best in QM9 pool")
            axis.axhline(reference[1], color="C2", linestyle=":", label=f"QM9 top-{top_k} threshold")
    axes[0].set_ylabel(f"{params.get('objective')} ({units})")
    axes[1].legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def utilization_series(records, n_workers: int, bins: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of QC workers computing, in time bins from the first task's creation."""
    tasks = [t for t in _per_task(records) if t.get("timestamp_compute_started") and t.get("timestamp_compute_ended")]
    start = min(t["timestamp_created"] for t in tasks)
    end = max(t["timestamp_result_received"] for t in tasks)
    edges = np.linspace(start, end, bins + 1)
    busy = np.zeros(bins)
    for task in tasks:
        lo, hi = task["timestamp_compute_started"], task["timestamp_compute_ended"]
        overlap = np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0, None)
        busy += overlap
    width = edges[1] - edges[0]
    return (edges[:-1] + width / 2) - start, busy / (width * max(n_workers, 1))


def plot_utilization(records, n_workers: int, out: Path) -> Path:
    """QC worker utilization over time."""
    centers, fraction = utilization_series(records, n_workers)
    fig, axis = plt.subplots(figsize=(8, 3))
    axis.fill_between(centers, np.minimum(fraction, 1.5), step="mid", alpha=0.6)
    axis.axhline(1.0, color="k", linewidth=0.8)
    axis.set_ylim(0, max(1.1, float(np.nanmax(fraction)) * 1.05))
    axis.set_xlabel("time since first QC task (s)")
    axis.set_ylabel(f"busy fraction of {n_workers} QC workers")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def overhead_table(records) -> dict[str, dict[str, float]]:
    """Median and p90 of each leg of the QC tasks' round trips (seconds)."""
    tasks = _per_task(records)
    table = {}
    for leg, (a, b) in LEGS.items():
        spans = np.array([t[b] - t[a] for t in tasks if t.get(a) is not None and t.get(b) is not None], dtype=float)
        if len(spans):
            table[leg] = {"median": float(np.median(spans)), "p90": float(np.percentile(spans, 90))}
    return table


def plot_overhead(table, out: Path) -> Path:
    """Where a QC task's round trip goes: median of each leg."""
    fig, axis = plt.subplots(figsize=(8, 3))
    legs = list(table)
    medians = [table[leg]["median"] * 1000 for leg in legs]
    axis.barh(legs, medians, color=["C1" if leg != "compute" else "C0" for leg in legs])
    axis.set_xscale("log")
    axis.set_xlabel("median time per task (ms, log scale)")
    axis.invert_yaxis()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_learning_curve(training, out: Path) -> Path | None:
    """Surrogate hold-out error against training-set size, beside predicting the mean."""
    points = [t for t in training if t.get("holdout_mae") is not None]
    if not points:
        return None
    fig, axis = plt.subplots(figsize=(6, 3.2))
    axis.plot([t["n_train"] for t in points], [t["holdout_mae"] for t in points], "o-", label="model")
    axis.plot([t["n_train"] for t in points], [t["holdout_baseline_mae"] for t in points], "--", label="mean")
    axis.set_xlabel("training molecules")
    axis.set_ylabel("hold-out MAE")
    axis.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def draw_molecules(best: list[dict[str, Any]], folder: Path) -> list[Path]:
    """2-D structure drawings of the best molecules (RDKit)."""
    from rdkit import Chem
    from rdkit.Chem import Draw

    folder.mkdir(exist_ok=True)
    paths = []
    for rank, entry in enumerate(best, start=1):
        mol = Chem.MolFromSmiles(entry["smiles"])
        path = folder / f"top-{rank:02d}.png"
        if mol is not None:
            Draw.MolToFile(mol, str(path), size=(220, 160))
        paths.append(path)
    return paths


def design_report(run_dir: Path, params: dict[str, Any], summary: dict[str, Any], top_k: int = 100) -> list[str]:
    """The design report's lines; plots and molecule drawings are written into ``run_dir/plots``."""
    spec = read_json(run_dir / QC_SPEC)
    # Molecules recorded as abandoned (out when a run stopped) were never evaluated; a resume redoes them.
    records = [r for r in read_jsonl(run_dir / SIMULATION_RECORDS) if not r.get("abandoned")]
    training = read_jsonl(run_dir / TRAINING_RECORDS)
    units = spec.get("units", "")
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    n_workers = int(params.get("qc_workers", 1))

    lines = [f"# Campaign report: {run_dir.name}", ""]
    lines += [f"- Objective: **{params.get('objective')}** "
              f"({'largest' if params.get('maximize', True) else 'smallest'}), {units}",
              f"- QC: {params.get('qc_code')} {params.get('method') or ''} {params.get('basis') or ''}".rstrip(),
              f"- Surrogate: {params.get('model')}; QC workers {n_workers}; "
              f"{params.get('parallel_guesses')} tasks in flight"]
    chosen = [t["chosen"] for t in training if t.get("chosen")]
    if chosen:
        lines.append("- `--model auto` chose " + ", ".join(f"{name} in {chosen.count(name)} rounds"
                                                        for name in sorted(set(chosen))))
    useless = [t for t in training if t.get("no_better_than_mean")]
    if useless:
        lines.append(f"- **Warning: in {len(useless)} of {len(training)} rounds the model did no better than "
                     "predicting the mean (hold-out error); in those rounds the search was close to random.**")
    if summary:
        utilization = summary.get("qc_utilization")
        lines += [f"- Evaluations: {summary.get('evaluations')} ({summary.get('failures')} failed); "
                  f"wall time {summary.get('wall_time') or 0:.0f} s; QC worker utilization "
                  f"{utilization:.1%}" if utilization is not None else "- QC worker utilization: n/a"]
        if (summary.get("attempts") or 1) > 1:
            lines.append(f"- Attempts: {summary['attempts']} (the run was resumed {summary['attempts'] - 1} times; "
                         "the wall time is the last attempt's)")
    lines.append("")
    if not records:
        lines.append("No QC results were recorded.")
        (run_dir / "report.md").write_text("\n".join(lines) + "\n")
        return run_dir / "report.md"

    plot_best(records, params, units, plots / "best_vs_evaluations.png", top_k)
    lines += ["## Best value found", "", "![best found](plots/best_vs_evaluations.png)", ""]
    plot_utilization(records, n_workers, plots / "qc_utilization.png")
    lines += ["## QC worker utilization over time", "", "![utilization](plots/qc_utilization.png)", ""]
    table = overhead_table(records)
    plot_overhead(table, plots / "task_overhead.png")
    lines += ["## Where a QC task's time goes", "",
              "“task server → worker” includes waiting for a free worker: with more tasks in flight than QC "
              "workers, a task queues there by design, so that no worker waits for the thinker.", "",
              "![overhead](plots/task_overhead.png)", "",
              "| leg | median (ms) | p90 (ms) |", "| --- | ---: | ---: |"]
    lines += [f"| {leg} | {v['median'] * 1000:.1f} | {v['p90'] * 1000:.1f} |" for leg, v in table.items()]
    lines.append("")
    if plot_learning_curve(training, plots / "learning_curve.png"):
        lines += ["## Surrogate learning curve", "", "![learning curve](plots/learning_curve.png)", ""]

    maximize = params.get("maximize", True)
    best = sorted((r for r in records if r["success"]), key=lambda r: r["value"], reverse=maximize)[:10]
    images = draw_molecules(best, plots / "molecules")
    lines += ["## Top molecules", "", "| rank | structure | SMILES | value | chosen by |",
              "| ---: | --- | --- | ---: | --- |"]
    for rank, (entry, image) in enumerate(zip(best, images, strict=True), start=1):
        lines.append(f"| {rank} | ![{entry['smiles']}](plots/molecules/{image.name}) | `{entry['smiles']}` | "
                     f"{entry['value']:.4g} | {entry.get('source', '')} |")
    failures = [r for r in records if not r["success"]]
    if failures:
        lines += ["", "## Failures", "", "| SMILES | reason |", "| --- | --- |"]
        for record in failures[:20]:
            reason = str(record.get("failure_reason"))[:160].replace("|", "/")
            lines.append(f"| `{record['smiles']}` | {reason} |")
        if len(failures) > 20:
            lines.append(f"| … | {len(failures) - 20} more in simulation_records.jsonl |")
    return lines
