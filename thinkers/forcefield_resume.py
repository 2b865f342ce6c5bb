"""What a resumed forcefield campaign takes over from its run directory: ``train.db``, the records, the models.

A kill can come at any point; :meth:`ForcefieldHistory.load` reads what the earlier attempts finished, drops what
they left half-done (a ``train.db`` row whose record was never written, a stale lock file) and says which QC jobs
were out, so the resumed thinker redoes exactly those.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field
from typing import Any

from ase import Atoms

from store.names import (
    SAMPLING_RECORDS,
    SELECTION_RECORDS,
    SIMULATION_RECORDS,
    SUBMITTED_RECORDS,
    TRAINING_RECORDS,
)
from store.rundir import RunDirectory
from store.traindb import open_train_db
from thinkers.forcefield_rules import QCJob

logger = logging.getLogger(__name__)


@dataclass
class ForcefieldHistory:
    """What a resumed forcefield campaign takes over from its earlier attempts.

    The QC results are the campaign's capital: every recorded one is kept (``train.db``), never recomputed, and
    counts against the budget. The last complete ensemble is reloaded rather than retrained. MD trajectories,
    the selection pool and waiting picks are cheap and restart; the test set comes back from its cache.

    Attributes:
        frames: Every successful QC result, labelled (from ``train.db``), in order.
        done: Recorded QC calls (failures included) and failures.
        source_counts: Recorded QC calls per source.
        unfinished: QC jobs sent and never recorded (killed, or recorded as abandoned), to redo first.
        dispatched_initial: Indices of initial jobs already sent (finished or to redo).
        next_qc_id: First QC id not used yet.
        model_round: Last round whose ensemble completed (0: none), with its members and training-set size.
        model_qc_calls: QC calls recorded when that round started.
        model_evaluated: Whether that ensemble was measured on the test set (a kill can come in between).
        sample_runs, selection_batches: Where the MD run and selection counters (and so their seeds) go on.
    """

    frames: list[Atoms] = field(default_factory=list)
    done: int = 0
    failed: int = 0
    source_counts: dict[str, int] = field(default_factory=dict)
    unfinished: list[QCJob] = field(default_factory=list)
    dispatched_initial: set[int] = field(default_factory=set)
    next_qc_id: int = 1
    model_round: int = 0
    members: list[Any] = field(default_factory=list)
    trained_at: int = 0
    model_qc_calls: int = 0
    model_evaluated: bool = False
    sample_runs: int = 0
    selection_batches: int = 0

    @classmethod
    def load(cls, run_dir: RunDirectory, ensemble_size: int) -> ForcefieldHistory:
        """Rebuild the campaign's state from ``train.db``, the records and the saved models."""
        records = run_dir.read_records(SIMULATION_RECORDS)
        finished = [r for r in records if not r.get("abandoned")]
        finished_ids = {int(r["qc_id"]) for r in finished}
        history = cls(done=len(finished), failed=sum(not r.get("success") for r in finished))
        for record in finished:
            history.source_counts[record["source"]] = history.source_counts.get(record["source"], 0) + 1
        database = run_dir.path / "train.db"
        stale_lock = database.with_name(database.name + ".lock")
        if stale_lock.exists():  # a write killed while holding ASE's lock (earlier molsteer versions took it)
            stale_lock.unlink()
            logger.info("Removed %s, left by the killed attempt", stale_lock.name)
        if database.exists():
            seen: set[int] = set()
            orphans = []
            with open_train_db(database) as db:
                for row in sorted(db.select(), key=lambda row: row.qc_id):
                    if row.qc_id in finished_ids and row.qc_id not in seen:
                        seen.add(row.qc_id)
                        history.frames.append(row.toatoms())
                    else:  # written just before a kill, without its record: the structure is redone, so drop it
                        orphans.append(row.id)
                if orphans:
                    db.delete(orphans)
            if orphans:
                logger.info("Removed %d train.db row(s) whose QC record was never written; they are redone",
                            len(orphans))
        submitted = run_dir.read_records(SUBMITTED_RECORDS)
        # A job an earlier resume already sent again lives on under its new id (finished, or redone in turn).
        sent_again = {int(e["extra"]["redo_of"]) for e in submitted if (e.get("extra") or {}).get("redo_of")}
        redo: dict[int, QCJob] = {}
        for entry in submitted:
            extra = dict(entry.get("extra") or {})
            if "initial_index" in extra:
                history.dispatched_initial.add(int(extra["initial_index"]))
            if int(entry["qc_id"]) in finished_ids or int(entry["qc_id"]) in sent_again:
                continue
            atoms = Atoms(numbers=entry["numbers"], positions=entry["positions"])
            extra["redo_of"] = int(entry["qc_id"])
            redo[int(entry["qc_id"])] = QCJob(atoms, entry["source"], entry["molecule"], None,
                                              entry.get("model_energy"), extra)
        history.unfinished = list(redo.values())
        ids = [int(e["qc_id"]) for e in submitted] + list(finished_ids)
        history.next_qc_id = max(ids, default=0) + 1
        history.sample_runs = max((int(r.get("run_id", 0)) for r in run_dir.read_records(SAMPLING_RECORDS)),
                                  default=0) + 1000 * run_dir.attempt  # runs out when killed had no record
        history.selection_batches = max((int(r.get("batch", 0)) for r in run_dir.read_records(SELECTION_RECORDS)),
                                        default=0) + 1000 * run_dir.attempt

        training = run_dir.read_records(TRAINING_RECORDS)
        rounds = [r for r in training if r.get("event") == "ensemble"]
        evaluated = {int(r["round"]) for r in training if r.get("event") == "evaluation" and r.get("success")}
        for record in sorted(rounds, key=lambda r: r["round"], reverse=True):
            folder = run_dir.path / "models" / f"round-{int(record['round']):03d}"
            members = []
            for member in range(ensemble_size):
                path = folder / f"member-{member}.pkl"
                if path.exists():
                    try:
                        members.append(pickle.loads(path.read_bytes()))  # noqa: S301 - our own run directory
                    except Exception:  # noqa: BLE001 - a model cut by the kill: use an older round
                        logger.warning("Could not read %s; trying an older round", path)
                        members = []
                        break
            if members:
                history.model_round, history.members = int(record["round"]), members
                history.trained_at = int(record["n_train"])
                history.model_qc_calls = int(record["qc_calls"])
                history.model_evaluated = history.model_round in evaluated
                break
        return history


