"""The run directory: one place per run for parameters, records and the summary.

Every run writes the same files, whichever campaign or site it uses, so reports, benchmarks and (later)
resuming a killed campaign read one format:

* ``run_params.json``, ``qc_spec.json``, ``host_info.json``, ``parsl_config.txt``, ``runtime.log``
* ``<kind>_records.jsonl``: one JSON object per line, appended, flushed and fsynced as events happen, so a
  killed run keeps everything it finished; each line says which attempt wrote it (``resume``: 0 for the first
  run, 1 for the first resume, ...)
* ``attempt_records.jsonl``: one line per start of the run (the first one and every ``--resume``)
* ``processes.json``: the processes the current attempt started, so a resume can stop what a killed run left
* ``summary.json`` at the end

A record counts once its line is on disk. A line torn by a kill (no final newline, or not JSON) is moved to
``<file>.torn`` with a warning when the file is next opened for writing, and skipped with a warning when read,
so it never breaks a resume or a summary.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from methods.data import atomic_save
from store.names import ATTEMPT_RECORDS, RUN_PARAMS
from store.processes import read_processes

LOCK_FILE = ".lock"

logger = logging.getLogger(__name__)


class RunDirectoryError(ValueError):
    """A run directory that cannot be used: missing, not a molsteer run, or in use by a running process."""


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


def set_aside_torn_tail(path: Path) -> str | None:
    """Move a last line without its newline (a write cut by a kill) to ``<file>.torn``; returns it, if any.

    Appending after a torn line would glue the next record onto it and lose both, so every writer calls this
    before its first append.
    """
    if not path.exists() or path.stat().st_size == 0:
        return None
    with open(path, "rb+") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - 1))
        if handle.read(1) == b"\n":
            return None
        # Find the last complete line: read backwards in blocks until a newline shows up.
        end = size
        keep = 0
        while end > 0:
            start = max(0, end - 65536)
            handle.seek(start)
            block = handle.read(end - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            end = start
        handle.seek(keep)
        torn = handle.read()
        with open(path.with_name(path.name + ".torn"), "ab") as aside:
            aside.write(torn + b"\n")
            aside.flush()
            os.fsync(aside.fileno())
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
    text = torn.decode("utf-8", errors="replace")
    logger.warning("%s ended in a line cut short by a kill; set aside in %s.torn: %.80s", path.name, path.name, text)
    return text


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete record of a JSON-lines file; a torn or corrupt line is skipped with a warning."""
    if not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s line %d is not a complete record (cut by a kill?); skipped", path.name, number)
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file of the run directory, or ``{}`` when it is not there (yet): a killed run may lack it."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else {}


class JsonlWriter:
    """Thread-safe appender of JSON lines; each line is flushed and fsynced before ``write`` returns.

    Records are the campaign's memory across kills: a result counts only once it is durably on disk, so
    ``write`` does not return before the operating system says so. An fsync costs about a millisecond here,
    far below any QC task.
    """

    def __init__(self, path: Path, stamp: dict[str, Any] | None = None):
        self.path = path
        self.stamp = dict(stamp or {})
        self._lock = threading.Lock()
        set_aside_torn_tail(path)
        self._handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (with the writer's stamp, such as the attempt number) and make it durable."""
        line = json.dumps(_jsonable({**record, **self.stamp}), allow_nan=False)
        with self._lock:
            if self._handle.closed:  # a late result after shutdown began: reopen rather than lose it
                self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            self._handle.write(line + "\n")
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._handle.close()


def parameter_hash(params: dict[str, Any]) -> str:
    """Short, stable hash of the parameters: runs with the same settings share it."""
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


class RunDirectory:
    """``runs/<UTC time>-<parameter hash>/`` and the files in it.

    One process at a time owns a run directory: :meth:`create` and :meth:`reopen` take a POSIX lock on
    ``.lock`` that the kernel releases when the process dies however it dies (``kill -9`` included), and that
    forked children (the task server) do not inherit. ``attempt`` is 0 for a new run and counts resumes.
    """

    def __init__(self, path: Path, attempt: int = 0):
        self.path = Path(path)
        self.attempt = attempt
        self._writers: dict[str, JsonlWriter] = {}
        self._lock = threading.Lock()
        self._lock_handle: Any = None

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
        run_dir._take_lock()
        run_dir.write_json(RUN_PARAMS, params)
        return run_dir

    @staticmethod
    def saved_params(path: Path) -> dict[str, Any]:
        """The parameters a run was started with, read without touching the directory.

        Raises:
            RunDirectoryError: not a directory, or no readable ``run_params.json`` in it.
        """
        path = Path(path)
        try:
            is_dir = path.is_dir()
        except OSError as exc:  # a name too long, a loop of links
            raise RunDirectoryError(f"{str(path)[:200]} cannot be used: {exc.strerror}") from None
        if not is_dir:
            raise RunDirectoryError(f"{str(path)[:200]} is not a directory")
        try:
            params = json.loads((path / RUN_PARAMS).read_text())
        except FileNotFoundError:
            raise RunDirectoryError(f"{path} is not a molsteer run directory (no run_params.json)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunDirectoryError(f"{path}/run_params.json cannot be read: {exc}") from None
        if not isinstance(params, dict) or "campaign" not in params:
            raise RunDirectoryError(f"{path}/run_params.json does not describe a molsteer campaign")
        return params

    @classmethod
    def reopen(cls, path: Path) -> RunDirectory:
        """Take over an existing run directory for the next attempt (``--resume``).

        Raises:
            RunDirectoryError: not a run directory, or another process still runs it.
        """
        cls.saved_params(path)
        attempts = read_jsonl(Path(path) / ATTEMPT_RECORDS)
        run_dir = cls(Path(path), attempt=1 + max((int(a.get("resume", 0)) for a in attempts), default=0))
        run_dir._take_lock()
        return run_dir

    def _take_lock(self) -> None:
        handle = open(self.path / LOCK_FILE, "a+")  # noqa: SIM115 - held for the life of the process
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            owner = read_processes(self.path).get("main", {}).get("pid", "unknown")
            raise RunDirectoryError(f"{self.path} is in use by a running molsteer process (pid {owner}); "
                                    "stop it first, or wait for it to end") from None
        self._lock_handle = handle

    def begin_attempt(self, info: dict[str, Any]) -> None:
        """Record that this attempt started (the first run or a resume), with what started it."""
        self.records(ATTEMPT_RECORDS).write({"started": datetime.now(UTC).isoformat(), **info})

    @property
    def name(self) -> str:
        """Directory name, unique per run (used as the Redis key prefix too)."""
        return self.path.name

    def write_json(self, name: str, data: Any) -> Path:
        """Write a JSON document into the run directory, atomically (a kill leaves the old or the new one)."""
        text = json.dumps(_jsonable(data), indent=2, default=str) + "\n"
        atomic_save(self.path / name, lambda temporary: temporary.write_text(text, encoding="utf-8"))
        return self.path / name

    def read_json(self, name: str) -> Any:
        """Read a JSON document from the run directory."""
        return json.loads((self.path / name).read_text())

    def write_pickle(self, name: str, obj: Any) -> Path:
        """Save steering state (an RL agent, a model) atomically, for a later resume."""
        import pickle

        payload = pickle.dumps(obj)
        atomic_save(self.path / name, lambda temporary: temporary.write_bytes(payload))
        return self.path / name

    def read_pickle(self, name: str) -> Any:
        """Load what :meth:`write_pickle` saved; None when it was never saved (or cannot be read)."""
        import pickle

        try:
            with open(self.path / name, "rb") as handle:
                return pickle.load(handle)  # noqa: S301 - our own file, in our own run directory
        except FileNotFoundError:
            return None
        except Exception:  # noqa: BLE001 - lost state is rebuilt from the records; say so, do not fail the resume
            logger.warning("Could not read %s; starting that state afresh", name, exc_info=True)
            return None

    def records(self, name: str) -> JsonlWriter:
        """The (shared) appender for a records file; every line it writes carries this attempt's number."""
        with self._lock:
            if name not in self._writers:
                self._writers[name] = JsonlWriter(self.path / name, {"resume": self.attempt})
            return self._writers[name]

    def read_records(self, name: str) -> list[dict[str, Any]]:
        """All complete records of a file, every attempt's (empty when the file does not exist yet)."""
        return read_jsonl(self.path / name)

    def close(self) -> None:
        """Close every records file."""
        with self._lock:
            for writer in self._writers.values():
                writer.close()
            self._writers.clear()
