"""Write a run's ``report.md`` (and its plots) from the run directory alone, whichever campaign made it.

Reports read records, never live steering: the same report comes out of a finished, killed or resumed run,
written by ``run.py`` at the end of every attempt or later by ``python scripts/report.py RUN_DIR``.
"""

from __future__ import annotations

from pathlib import Path

from store.names import REPORT, RUN_PARAMS, SUMMARY
from store.rundir import read_json


def write_report(run_dir: Path | str, top_k: int = 100) -> Path:
    """Write ``report.md`` and ``plots/*.png`` into the run directory; returns the report's path.

    Args:
        run_dir: A run directory (it has ``run_params.json``).
        top_k: For a design run on QM9, the pool's top-k reference line in the best-value plot.
    """
    run_dir = Path(run_dir)
    params = read_json(run_dir / RUN_PARAMS)
    summary = read_json(run_dir / SUMMARY)
    if params.get("campaign") == "forcefield":
        from reporting.forcefield import forcefield_report

        lines = forcefield_report(run_dir, params, summary)
    else:
        from reporting.design import design_report

        lines = design_report(run_dir, params, summary, top_k=top_k)
    report = run_dir / REPORT
    report.write_text("\n".join(lines) + "\n")
    return report
