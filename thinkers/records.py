"""The run directory: one place per run for parameters, records and the summary.

Every run writes the same files, whichever campaign or site it uses, so reports, benchmarks and (later)
resuming a killed campaign read one format:

* ``run_params.json``, ``qc_spec.json``, ``host_info.json``, ``parsl_config.txt``, ``runtime.log``
* ``<kind>_records.jsonl``: one JSON object per line, appended and flushed as events happen, so a killed run
  keeps everything it finished
* ``summary.json`` at the end
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from colmena.models import Result

SIMULATION_RECORDS = "simulation_records.jsonl"
SCREENING_RECORDS = "screening_records.jsonl"
TRAINING_RECORDS = "training_records.jsonl"
RL_RECORDS = "rl_records.jsonl"


def _jsonable(value: Any) -> Any:
    """NaN and infinities become null, so every line is strict JSON that any tool can read."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # NumPy scalars
        return _jsonable(value.item())
    return value


class JsonlWriter:
    """Thread-safe appender of JSON lines; each line is flushed at once."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def write(self, record: dict[str, Any]) -> None:
        """Append one record."""
        line = json.dumps(_jsonable(record), allow_nan=False)
        with self._lock:
            self._handle.write(line + "\n")
            self._handle.flush()

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._handle.close()


def parameter_hash(params: dict[str, Any]) -> str:
    """Short, stable hash of the parameters: runs with the same settings share it."""
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


class RunDirectory:
    """``runs/<UTC time>-<parameter hash>/`` and the files in it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._writers: dict[str, JsonlWriter] = {}
        self._lock = threading.Lock()

    @classmethod
    def create(cls, root: Path, params: dict[str, Any]) -> RunDirectory:
        """Make a new, uniquely named run directory and save the parameters in it."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        base = Path(root) / f"{stamp}-{parameter_hash(params)}"
        path, n = base, 1
        while path.exists():
            n += 1
            path = base.with_name(f"{base.name}-{n}")
        path.mkdir(parents=True)
        run_dir = cls(path)
        run_dir.write_json("run_params.json", params)
        return run_dir

    @property
    def name(self) -> str:
        """Directory name, unique per run (used as the Redis key prefix too)."""
        return self.path.name

    def write_json(self, name: str, data: Any) -> Path:
        """Write a JSON document into the run directory."""
        target = self.path / name
        target.write_text(json.dumps(_jsonable(data), indent=2, default=str) + "\n")
        return target

    def read_json(self, name: str) -> Any:
        """Read a JSON document from the run directory."""
        return json.loads((self.path / name).read_text())

    def records(self, name: str) -> JsonlWriter:
        """The (shared) appender for a records file."""
        with self._lock:
            if name not in self._writers:
                self._writers[name] = JsonlWriter(self.path / name)
            return self._writers[name]

    def read_records(self, name: str) -> list[dict[str, Any]]:
        """All records of a file (empty when the file does not exist yet)."""
        path = self.path / name
        if not path.exists():
            return []
        with open(path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]

    def close(self) -> None:
        """Close every records file."""
        with self._lock:
            for writer in self._writers.values():
                writer.close()
            self._writers.clear()


def task_timing(result: Result) -> dict[str, Any]:
    """Colmena's timestamps and time spans of a task, flattened for the records."""
    timing = {f"time_{k}": v for k, v in result.time.model_dump().items() if k != "additional"}
    timing.update({f"timestamp_{k}": v for k, v in result.timestamp.model_dump().items()})
    timing["task_id"] = result.task_id
    timing["worker"] = result.worker_info.hostname if result.worker_info else None
    return timing


def qc_utilization(records: list[dict[str, Any]], n_workers: int) -> dict[str, float | None]:
    """QC worker utilization = QC-busy time / (QC workers × wall time of the QC phase).

    Busy time is each task's running time on a worker, counted once per task (a task may hold several
    molecules); the wall time runs from the first QC task's creation to the last QC result's arrival.
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


def summarize(run_dir: RunDirectory, maximize: bool, n_workers: int, wall_time: float | None) -> dict[str, Any]:
    """The end-of-run summary, computed from the records alone (so it can be rebuilt for any run)."""
    everything = run_dir.read_records(SIMULATION_RECORDS)
    records = [r for r in everything if not r.get("abandoned")]
    successes = [r for r in records if r.get("success")]
    failures = [r for r in records if not r.get("success")]
    best = sorted(successes, key=lambda r: r["value"], reverse=maximize)[:10]
    reasons: dict[str, int] = {}
    for record in failures:
        key = str(record.get("failure_reason") or "unknown")[:80]
        reasons[key] = reasons.get(key, 0) + 1
    qc_times = sorted(r["timings"]["total"] for r in successes if r.get("timings", {}).get("total") is not None)
    return {
        "evaluations": len(records),
        "abandoned": len(everything) - len(records),  # sent to QC, never finished (run stopped first)
        "successes": len(successes),
        "failures": len(failures),
        "failure_reasons": reasons,
        "wall_time": wall_time,
        "median_qc_time_per_molecule": qc_times[len(qc_times) // 2] if qc_times else None,
        **qc_utilization(records, n_workers),
        "best": [{"smiles": r["smiles"], "value": r["value"], "source": r.get("source")} for r in best],
    }
