"""Turning task results into records and records into numbers: timings, failure reasons, worker utilization.

Thinkers use :func:`task_timing` and :func:`failure_reason` when they write a record; summaries, reports,
benchmarks and tests read the same records with the other functions, so every number is computed one way.
"""

from __future__ import annotations

from typing import Any

from colmena.models import Result

from methods.failures import CAUSE_SEPARATOR

TASK_LEGS: dict[str, tuple[str, str, str]] = {
    "thinker_to_task_server": ("thinker → task server", "created", "input_received"),
    "task_server_to_worker": ("task server → worker", "input_received", "compute_started"),
    "running": ("compute", "compute_started", "compute_ended"),
    "worker_to_task_server": ("worker → task server", "compute_ended", "result_sent"),
    "task_server_to_thinker": ("task server → thinker", "result_sent", "result_received"),
}
"""The legs of a task's round trip: key → (label, Colmena timestamp where it starts, where it ends).

Records keep the timestamps as ``timestamp_<name>`` (:func:`task_timing`); reports and benchmarks split the
round trip the same way.
"""


def failure_reason(result: Result, default: str = "unknown") -> str:
    """Why a task failed, as its record keeps it: Colmena's exception text, or ``default`` when it gave none."""
    return result.failure_info.exception if result.failure_info else default


def latest_attempt(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records written by the latest attempt that wrote any (all of them for a run never resumed).

    Rates such as worker utilization are measured within one attempt: across attempts the wall-clock window
    would include the time the run was stopped.
    """
    if not records:
        return []
    last = max(int(r.get("resume") or 0) for r in records)
    return [r for r in records if int(r.get("resume") or 0) == last]


def task_timing(result: Result) -> dict[str, Any]:
    """Colmena's timestamps and time spans of a task, flattened for the records."""
    timing = {f"time_{k}": v for k, v in result.time.model_dump().items() if k != "additional"}
    timing.update({f"timestamp_{k}": v for k, v in result.timestamp.model_dump().items()})
    timing["task_id"] = result.task_id
    timing["worker"] = result.worker_info.hostname if result.worker_info else None
    return timing


REASON_KEY_LENGTH = 160
"""Characters of a failure reason that group failures in ``summary.json`` (the records keep all of it)."""


def count_failure_reasons(failures: list[dict[str, Any]]) -> dict[str, int]:
    """How many failed records share each reason, keyed by the reason's first words.

    The key stops at :data:`methods.failures.CAUSE_SEPARATOR`, which separates a cause from the program output
    it came with, so failures with one cause and different outputs count together.
    """
    reasons: dict[str, int] = {}
    for record in failures:
        reason = str(record.get("failure_reason") or "unknown").split(CAUSE_SEPARATOR, 1)[0]
        key = reason if len(reason) <= REASON_KEY_LENGTH else reason[:REASON_KEY_LENGTH - 1] + "…"
        reasons[key] = reasons.get(key, 0) + 1
    return reasons


def worker_utilization(records: list[dict[str, Any]], n_workers: int) -> dict[str, float | None]:
    """Utilization of one worker partition = busy time / (workers × wall time of its tasks).

    Busy time is each task's running time on a worker, counted once per task (a task may hold several
    molecules); the wall time runs from the first task's creation to the last result's arrival. The keys are
    named ``qc_*`` (what ``summary.json`` has always called the QC partition's numbers); the forcefield summary
    renames them for its ML partition.
    """
    tasks: dict[str, dict[str, Any]] = {}
    for record in records:
        tasks.setdefault(record.get("task_id"), record)
    starts = [r["timestamp_created"] for r in tasks.values() if r.get("timestamp_created")]
    computes = [r["timestamp_compute_started"] for r in tasks.values() if r.get("timestamp_compute_started")]
    ends = [r["timestamp_result_received"] for r in tasks.values() if r.get("timestamp_result_received")]
    busy = sum(r.get("time_running") or 0.0 for r in tasks.values())
    if not starts or not ends or n_workers <= 0:
        return {"qc_utilization": None, "qc_utilization_after_startup": None, "qc_busy_time": busy,
                "qc_wall_time": None}
    wall = max(ends) - min(starts)
    steady = max(ends) - min(computes) if computes else None
    return {
        "qc_utilization": busy / (n_workers * wall) if wall > 0 else None,
        # The same, from the first computation on: what is left once the workers have started.
        "qc_utilization_after_startup": busy / (n_workers * steady) if steady else None,
        "qc_busy_time": busy,
        "qc_wall_time": wall,
    }
