"""Forcefield campaign: learn an interatomic potential where molecular dynamics with the model goes.

Four agents steer two loosely coupled loops (the design of fast-finetuned-forcefields, on molsteer's foundation):

* the **trainer** fine-tunes an ensemble of potentials, each member from its own previous weights on a new
  bootstrap of every QC result so far, and hands out the first member back as the sampling model;
* the **sampler** keeps MD runs going with the sampling model; each run's last structure is *audited* by QC
  (the trajectory continues when the model was right there, and restarts from its start when it was not), and
  every ``sample_every`` steps a structure goes to the selection pool;
* the **selector** runs the ensemble on the pool and picks the structures it disagrees about most, skipping
  ones whose errors are correlated with a structure already picked;
* the **calculator** spends the QC budget on the audit and active-learning lists, writing ``train.db``.

An **allocator** shifts slots between sampling and QC with Colmena's resource counter: a long audit list slows
sampling, an empty one gives sampling more room. Models travel by proxy (:mod:`thinkers.proxies`).
"""

from __future__ import annotations

import itertools
import logging
import pickle
import shutil
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from colmena.exceptions import TimeoutException
from colmena.models import Result
from colmena.queue.base import ColmenaQueues
from colmena.thinker import ResourceCounter, agent, result_processor, task_submitter

from configs.names import (
    FF_EVALUATE_TOPIC,
    FF_INFER_TOPIC,
    FF_QC_TOPIC,
    FF_REFERENCE_TOPIC,
    FF_SAMPLE_TOPIC,
    FF_STABILITY_TOPIC,
    FF_TOPICS,
    FF_TRAIN_TOPIC,
    ML_EXECUTOR,
    QC_EXECUTOR,
)
from configs.sites import workers_share_files
from thinkers.campaign import Assembly, SteeringThinker
from thinkers.proxies import ProxyLedger, close_proxy_store, open_proxy_store
from thinkers.records import (
    SUBMITTED_RECORDS,
    RunDirectory,
    count_failure_reasons,
    latest_attempt,
    task_timing,
)
from thinkers.slots import SlotCounter

logger = logging.getLogger(__name__)

SAMPLING_RECORDS = "sampling_records.jsonl"
INFERENCE_RECORDS = "inference_records.jsonl"
SIMULATION_RECORDS = "simulation_records.jsonl"
TRAINING_RECORDS = "training_records.jsonl"
SELECTION_RECORDS = "selection_records.jsonl"
ALLOCATION_RECORDS = "allocation_records.jsonl"
STABILITY_RECORDS = "stability_records.jsonl"
REFERENCE_RECORDS = "reference_records.jsonl"

MAX_POOL = 2000
"""Most structures kept waiting for selection; older ones are dropped first (a newer model samples better)."""


# --- the rules, as small pure functions (tested on their own) --------------------------------------------------


def rebalance(counter: ResourceCounter, backlog: int, sampling_open: bool, cancel: threading.Event) -> str | None:
    """Move one slot between sampling and QC when the QC backlog says so; returns the move made, if any.

    A backlog of more than twice the QC slots takes a slot from sampling (never its last); an empty backlog gives
    one back to sampling (QC keeps at least one). The move waits at most 0.5 s for the slot to come free, so the
    allocator keeps looking at the backlog; with :class:`~thinkers.slots.SlotCounter` a wait that runs out loses
    nothing.

    Args:
        counter: The thinker's resource counter, with task types ``sample`` and ``qc``.
        backlog: QC jobs waiting to be sent (initial, audit and active-learning lists).
        sampling_open: Whether sampling still runs (a model exists and the final round has not begun).
        cancel: Set when the campaign ends; a waiting move gives up.
    """
    if not sampling_open:
        return None
    sample, qc = counter.allocated_slots("sample"), counter.allocated_slots("qc")
    if backlog > 2 * max(qc, 1) and sample > 1:
        return "sample→qc" if counter.reallocate("sample", "qc", 1, timeout=0.5, cancel_if=cancel) else None
    if backlog == 0 and qc > 1:
        return "qc→sample" if counter.reallocate("qc", "sample", 1, timeout=0.5, cancel_if=cancel) else None
    return None


def open_train_db(path: Path) -> Any:
    """The run's ASE database of labelled structures, without ASE's lock file.

    ASE locks a database by creating ``<name>.lock`` and deleting it afterwards, so a process killed during a
    write leaves the file behind and every later writer waits for it for ever. Only one process runs a run
    directory at a time (the run directory's own lock) and one thread writes, so that lock adds nothing;
    SQLite's own locking still guards each transaction, and the kernel releases it when a process dies.
    """
    import ase.db

    return ase.db.connect(path, use_lock_file=False)


def audit_error(model_energy: float, qc_energy: float, n_atoms: int) -> float:
    """Absolute model error at an audited structure, eV/atom."""
    return abs(float(model_energy) - float(qc_energy)) / n_atoms


def next_run_length(length: int, error: float | None, tolerance: float, shortest: int, longest: int) -> int:
    """Adapt a trajectory's run length to its audit.

    A failed audit (or a blow-up, ``error=None``) halves it: the model is not yet trusted that far. An audit well
    inside the tolerance (under half) lengthens it by half: fewer audits per step where the model is good.
    Otherwise it stays. Always within ``[shortest, longest]``.
    """
    if error is None or error > tolerance:
        length = length // 2
    elif error < tolerance / 2:
        length = int(round(length * 1.5))
    return int(min(longest, max(shortest, length)))


@dataclass
class Trajectory:
    """One MD trajectory the sampler continues run after run, from its molecule's starting structure."""

    id: int
    molecule: str
    start: Atoms
    run_length: int
    current: Atoms | None = None
    busy: bool = False  # a sampling run or its audit is out
    runs: int = 0
    restarts: int = 0
    blowups: int = 0

    def restart(self) -> None:
        """Back to the starting structure (new velocities are drawn by the next run)."""
        self.current = None
        self.restarts += 1


@dataclass
class QCJob:
    """A structure waiting for QC energies and forces, and why it was chosen."""

    atoms: Atoms
    source: str  # initial, audit or active
    molecule: str
    trajectory: int | None = None
    model_energy: float | None = None  # the sampling model's energy (eV) at this structure, for audits
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ForcefieldPlan:
    """What the thinker needs from the settings."""

    qc_budget: int
    ensemble_size: int
    retrain_after: int
    first_epochs: int
    train_epochs: int
    learning_rate: float
    parallel_samplers: int
    qc_slots: int
    temperature: float
    timestep: float
    sample_every: int
    min_run_length: int
    max_run_length: int
    energy_tolerance: float
    inference_batch: int
    n_to_select: int
    selector: str
    test_steps: int
    test_every: int
    stability_runs: int
    stability_steps: int
    seed: int


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


class ForcefieldThinker(SteeringThinker):
    """Steers sampling, selection, QC and training of an ensemble of interatomic potentials."""

    def __init__(
        self,
        queues: ColmenaQueues,
        plan: ForcefieldPlan,
        run_dir: RunDirectory,
        starts: list[tuple[str, Atoms]],
        initial: list[QCJob],
        starting_model: Any,
        qc_args: tuple[Any, ...],
        ledger: ProxyLedger,
        history: ForcefieldHistory | None = None,
    ):
        """Create the thinker.

        Args:
            queues: Client side of the Colmena queues with the forcefield topics.
            plan: Budget, cadences, MD and selection settings.
            run_dir: Where records, ``train.db`` and models are written.
            starts: Starting structures, as (molecule name, atoms).
            initial: The initial QC jobs (starting structures and their displacements).
            starting_model: The untrained potential every member starts from.
            qc_args: Arguments after the structures for ``compute_energy_forces`` (spec, task config).
            ledger: Proxies of models and data shared by tasks.
            history: What earlier attempts recorded, when the campaign is resumed.
        """
        total = plan.parallel_samplers + plan.qc_slots
        super().__init__(queues, SlotCounter(total, ["sample", "qc"]))
        self.rec.reallocate(None, "sample", plan.parallel_samplers)
        self.rec.reallocate(None, "qc", plan.qc_slots)
        self.plan = plan
        self.run_dir = run_dir
        self.qc_args = qc_args
        self.ledger = ledger
        self.starts = starts
        self._rng = np.random.default_rng(plan.seed)
        self._state = threading.Condition()
        self.start_time = time.monotonic()

        # QC
        self.initial_jobs: deque[QCJob] = deque(initial)
        self.audit_jobs: deque[QCJob] = deque()
        self.active_jobs: deque[QCJob] = deque()
        self.in_flight: dict[int, QCJob] = {}
        self.qc_submitted = 0
        self.qc_done = 0
        self.qc_failed = 0
        self.training_frames: list[Atoms] = []
        self.source_counts: dict[str, int] = {"initial": 0, "audit": 0, "active": 0}

        # models
        self.starting_model = ledger.put(starting_model)  # proxied once, kept for the whole run
        self.members: list[Any] = []  # handles of the current ensemble's members
        self.sampling_model: Any = None
        self.model_round = 0  # round of the ensemble in use (0: none yet)
        self.model_info: dict[str, Any] = {}  # its QC calls and training-set size, for its test-set evaluation
        self._evaluated: set[int] = set()  # rounds measured on the test set, or being measured
        self._parity_round = 0  # round whose test-set forces test_parity.npz holds
        self._reloaded: tuple[int, list[Any], dict[str, Any]] | None = None  # a resumed, never measured ensemble
        self.sampling_round = 0
        self.training_round = 0
        self._round_members: dict[int, list[tuple[int, Any]]] = {}
        self._round_data: dict[int, Any] = {}
        self._round_returned: dict[int, int] = {}
        self._holds: dict[str, list[Any]] = {}  # task token -> proxies the task uses
        self._training = False
        self._trained_at = 0  # successful QC results the last round started from
        self._final_round: int | None = None

        # sampling
        n_traj = max(2 * plan.parallel_samplers, len(starts))
        self.trajectories = [Trajectory(i, starts[i % len(starts)][0], starts[i % len(starts)][1],
                                        plan.min_run_length) for i in range(n_traj)]
        self.pool: deque[tuple[Atoms, str, int]] = deque(maxlen=MAX_POOL)
        self._sample_runs = 0

        # test set and final checks
        self.test_frames: list[Atoms] = []
        self.test_handle: Any = None
        self._references_due = len(starts)
        self.stability_due = 0

        self._qc_ids = itertools.count(1)
        self._selection_batches = 0
        if history is not None:
            self._take_over(history)

    def _take_over(self, history: ForcefieldHistory) -> None:
        """Continue from earlier attempts: their QC results and last ensemble count; unfinished QC goes first."""
        self.training_frames = list(history.frames)
        self.qc_done = self.qc_submitted = history.done
        self.qc_failed = history.failed
        self.source_counts.update(history.source_counts)
        not_sent = [job for job in self.initial_jobs
                    if int(job.extra.get("initial_index", -1)) not in history.dispatched_initial]
        self.initial_jobs = deque(list(history.unfinished) + not_sent)
        self._qc_ids = itertools.count(history.next_qc_id)
        # MD seeds and selection batches continue where they were: repeating them would repeat the same
        # trajectories with the same model, and compute the same structures again.
        self._sample_runs = history.sample_runs
        self._selection_batches = history.selection_batches
        if history.members:
            handles = [self.ledger.put(member) for member in history.members]
            self.members = handles
            self.model_round = self.training_round = history.model_round
            self._trained_at = history.trained_at
            self.model_info = {"qc_calls": history.model_qc_calls, "n_train": history.trained_at}
            if history.model_evaluated:
                self._evaluated.add(history.model_round)
            else:  # killed before its test-set evaluation: it is measured once the test set is back
                self._reloaded = (history.model_round, [self.ledger.acquire(h) for h in handles],
                                  dict(self.model_info))
            self._replace_sampling_model(handles[0], history.model_round)
        logger.info("Resumed: %d QC calls recorded (%d failed, %d structures to train on), %d unfinished to redo, "
                    "ensemble of round %d reloaded", self.qc_done, self.qc_failed, len(self.training_frames),
                    len(history.unfinished), history.model_round)

    # --- helpers --------------------------------------------------------------------------------------------

    def _elapsed(self) -> float:
        return time.monotonic() - self.start_time

    def _wait(self, predicate, timeout: float = 0.5) -> bool:
        """Wait on the shared condition until ``predicate()`` holds; False once the campaign is done."""
        with self._state:
            while not self.done.is_set():
                if predicate():
                    return True
                self._state.wait(timeout=timeout)
        return False

    def _hold(self, *handles: Any) -> str:
        """Mark proxies as used by one task; returns the token its result brings back to release them."""
        token = uuid.uuid4().hex
        for handle in handles:
            self.ledger.acquire(handle)
        with self._state:
            self._holds[token] = list(handles)
        return token

    def _unhold(self, token: str | None) -> None:
        """The task is back: its proxies may be evicted if they were replaced meanwhile."""
        with self._state:
            handles = self._holds.pop(token, []) if token else []
        for handle in handles:
            self.ledger.release(handle)

    # --- start: the held-out test set ---------------------------------------------------------------------

    @agent(startup=True)
    def request_test_set(self) -> None:
        """Ask QC for each molecule's reference MD trajectory (cached per molecule and level of theory)."""
        for index, (name, atoms) in enumerate(self.starts):
            self.queues.send_inputs(
                name, atoms, *self.qc_args, method="reference_trajectory", topic=FF_REFERENCE_TOPIC,
                input_kwargs={"temperature": self.plan.temperature, "steps": self.plan.test_steps,
                              "sample_every": self.plan.test_every, "timestep": self.plan.timestep,
                              "seed": self.plan.seed + index},
                task_info={"molecule": name},
            )

    @result_processor(topic=FF_REFERENCE_TOPIC)
    def store_test_set(self, result: Result) -> None:
        """Keep the reference frames as the test set; the ensemble is never trained on them."""
        record = {"molecule": result.task_info["molecule"], "success": result.success, **task_timing(result)}
        if result.success:
            frames = result.value
            record["n_frames"] = len(frames)
            with self._state:
                self.test_frames.extend(frames)
        else:
            record["failure_reason"] = result.failure_info.exception if result.failure_info else "unknown"
            self.logger.error("Reference trajectory for %s failed (no test error for it): %s",
                              record["molecule"], record["failure_reason"])
        self.run_dir.records(REFERENCE_RECORDS).write(record)
        with self._state:
            self._references_due -= 1
            if self._references_due == 0 and self.test_frames:
                self.test_handle = self.ledger.put(list(self.test_frames))
                logger.info("Test set: %d structures from QC reference MD at %.0f K", len(self.test_frames),
                            self.plan.temperature)
            self._state.notify_all()

    @agent(startup=True)
    def evaluate_reloaded_ensemble(self) -> None:
        """The ensemble a killed attempt trained but never measured gets its point on the learning curve."""
        if self._reloaded is None:
            return
        round_, handles, info = self._reloaded
        self._reloaded = None
        try:
            self._request_evaluation(round_, info, members=handles)
        finally:
            for handle in handles:
                self.ledger.release(handle)

    # --- calculator ---------------------------------------------------------------------------------------

    def _next_job(self) -> QCJob | None:
        """Initial structures first; then, at random, the next audit or the next active-learning pick."""
        if self.initial_jobs:
            return self.initial_jobs.popleft()
        lists = [jobs for jobs in (self.audit_jobs, self.active_jobs) if jobs]
        if not lists:
            return None
        return lists[int(self._rng.integers(len(lists)))].popleft()

    @task_submitter(task_type="qc", n_slots=1)
    def submit_qc(self) -> None:
        """Whenever a QC slot is free, compute the next structure's energy and forces."""
        job = None
        with self._state:
            while not self.done.is_set():
                if self.qc_submitted >= self.plan.qc_budget:
                    break
                job = self._next_job()
                if job is not None:
                    self.qc_submitted += 1
                    qc_id = next(self._qc_ids)
                    self.in_flight[qc_id] = job
                    break
                self._state.wait(timeout=0.5)
        if job is None:
            self.rec.release("qc", 1)
            self.done.wait(timeout=1.0)  # budget submitted: nothing to do until the campaign ends
            return
        # Durable before it is sent: a resume redoes exactly the structures that were out when the run was killed.
        self.run_dir.records(SUBMITTED_RECORDS).write({
            "qc_id": qc_id, "source": job.source, "molecule": job.molecule, "trajectory": job.trajectory,
            "model_energy": job.model_energy, "extra": job.extra, "numbers": job.atoms.numbers.tolist(),
            "positions": job.atoms.get_positions().tolist()})
        self.queues.send_inputs([job.atoms], *self.qc_args, method="compute_energy_forces", topic=FF_QC_TOPIC,
                                task_info={"qc_id": qc_id, "source": job.source})

    @result_processor(topic=FF_QC_TOPIC)
    def store_qc(self, result: Result) -> None:
        """Store energies and forces in ``train.db``; settle audits; start the next round when due."""
        self.rec.release("qc", 1)
        qc_id = result.task_info["qc_id"]
        with self._state:
            job = self.in_flight.pop(qc_id, None)
        if job is None:
            return  # recorded as not finished when the run stopped
        if result.success:
            outcome = result.value[0]
        else:
            reason = result.failure_info.exception if result.failure_info else "task failed without a reason"
            outcome = {"success": False, "energy": None, "forces": None, "failure_reason": f"task failure: {reason}"}
        n_atoms = len(job.atoms)
        record: dict[str, Any] = {"qc_id": qc_id, "source": job.source, "molecule": job.molecule, "n_atoms": n_atoms,
                                  "success": bool(outcome["success"]), "failure_reason": outcome.get("failure_reason"),
                                  "energy": outcome.get("energy"), "trajectory": job.trajectory,
                                  "retries": result.retries, **job.extra}
        if outcome["success"]:
            from ase.calculators.singlepoint import SinglePointCalculator

            labelled = job.atoms.copy()
            labelled.calc = SinglePointCalculator(labelled, energy=float(outcome["energy"]),
                                                  forces=np.asarray(outcome["forces"], dtype=float))
            record["energy_per_atom"] = float(outcome["energy"]) / n_atoms
            record["max_force"] = float(np.linalg.norm(labelled.get_forces(), axis=1).max())
            record["ran_on"] = outcome.get("ran_on")
            self._write_db(labelled, job, qc_id)
        if job.source == "audit":
            record.update(self._settle_audit(job, outcome))
        with self._state:
            self.qc_done += 1
            self.source_counts[job.source] += 1
            if outcome["success"]:
                self.training_frames.append(labelled)
            else:
                self.qc_failed += 1
            record.update({"qc_calls": self.qc_done, "n_train": len(self.training_frames)})
            done, failed = self.qc_done, self.qc_failed
            self._state.notify_all()
        record.update({"elapsed": self._elapsed(), **task_timing(result)})
        self.run_dir.records(SIMULATION_RECORDS).write(record)
        if not outcome["success"]:
            self.logger.warning("QC failed (%s, %s): %s", job.source, job.molecule, outcome.get("failure_reason"))
        if done % 10 == 0 or done == self.plan.qc_budget:
            with self._state:
                audits, active = len(self.audit_jobs), len(self.active_jobs)
            logger.info("[%d/%d] QC | failures %d | waiting: %d audits, %d picks | pool %d | model round %d",
                        done, self.plan.qc_budget, failed, audits, active, len(self.pool), self.model_round)

    def _write_db(self, atoms: Atoms, job: QCJob, qc_id: int) -> None:
        """Append one labelled structure to ``train.db`` (ASE database), with where it came from."""
        with open_train_db(self.run_dir.path / "train.db") as db:
            db.write(atoms, source=job.source, molecule=job.molecule, qc_id=qc_id,
                     trajectory=-1 if job.trajectory is None else job.trajectory)

    def _settle_audit(self, job: QCJob, outcome: dict[str, Any]) -> dict[str, Any]:
        """Continue the trajectory if the model was right at its last structure, else restart it."""
        error = None
        if outcome["success"] and job.model_energy is not None and np.isfinite(job.model_energy):
            error = audit_error(job.model_energy, outcome["energy"], len(job.atoms))
        passed = error is not None and error <= self.plan.energy_tolerance
        if job.trajectory is None:  # redone after a resume: its trajectory has restarted since
            return {"audit_error": error, "model_energy": job.model_energy,
                    "decision": "continue" if passed else "restart", "run_length": None}
        trajectory = self.trajectories[job.trajectory]
        with self._state:
            if passed:
                trajectory.current = job.atoms
            else:
                trajectory.restart()
            trajectory.run_length = next_run_length(trajectory.run_length, error, self.plan.energy_tolerance,
                                                    self.plan.min_run_length, self.plan.max_run_length)
            trajectory.busy = False
            self._state.notify_all()
        return {"audit_error": error, "model_energy": job.model_energy,
                "decision": "continue" if passed else "restart", "run_length": trajectory.run_length}

    def abandon_in_flight(self, reason: str) -> int:
        """Record every QC calculation still out as not finished, with the reason; returns how many."""
        self.done.set()
        with self._state:
            pending = list(self.in_flight.items())
            self.in_flight.clear()
        for qc_id, job in pending:
            self.run_dir.records(SIMULATION_RECORDS).write({
                "qc_id": qc_id, "source": job.source, "molecule": job.molecule, "n_atoms": len(job.atoms),
                "success": False, "abandoned": True, "failure_reason": f"not finished: {reason}",
                "trajectory": job.trajectory})
        return len(pending)

    # --- trainer ------------------------------------------------------------------------------------------

    def _training_due(self) -> bool:
        if self._training or self._final_round is not None:
            return False
        n_train = len(self.training_frames)
        if self.qc_done >= self.plan.qc_budget:  # budget spent: one last round on everything, if anything is new
            return n_train > self._trained_at or self.model_round == 0
        if self.model_round == 0 and self.training_round == 0:
            return not self.initial_jobs and self.qc_done >= self.qc_submitted and n_train >= 2
        return n_train - self._trained_at >= self.plan.retrain_after

    def _nothing_left_to_train(self) -> bool:
        """Budget spent, no round running, nothing new since the last one (the last QC calls all failed)."""
        return (self.qc_done >= self.plan.qc_budget and not self._training and self._final_round is None
                and self.model_round > 0 and len(self.training_frames) <= self._trained_at)

    def _cannot_start(self) -> bool:
        """Every initial calculation is back and fewer than two succeeded: there is nothing to train on."""
        return (self.model_round == 0 and self.training_round == 0 and not self.initial_jobs
                and self.qc_done >= self.qc_submitted > 0 and len(self.training_frames) < 2)

    @agent
    def submit_training(self) -> None:
        """Launch a round: every member fine-tunes from its previous weights on its own bootstrap sample.

        Raises:
            RuntimeError: the initial QC calculations left fewer than two structures to train on.
        """
        while self._wait(lambda: self._training_due() or self._nothing_left_to_train() or self._cannot_start()):
            if self._cannot_start():
                raise RuntimeError(f"only {len(self.training_frames)} of {self.qc_done} initial QC calculations "
                                   "succeeded: nothing to train on (see simulation_records.jsonl for the reasons)")
            if self._nothing_left_to_train():  # the current ensemble is the final one
                with self._state:
                    self._final_round = self.model_round
                # Measured already, unless a kill came between its training and its evaluation.
                self._request_evaluation(self.model_round, {**self.model_info, "final": True})
                continue
            with self._state:
                self._training = True
                self.training_round += 1
                round_ = self.training_round
                frames = list(self.training_frames)
                self._trained_at = len(frames)
                final = self.qc_done >= self.plan.qc_budget
                if final:
                    self._final_round = round_
                previous = list(self.members)
                qc_calls = self.qc_done
            data = self.ledger.put(frames)
            self._round_data[round_] = data
            self._round_members[round_] = []
            epochs = self.plan.first_epochs if round_ == 1 else self.plan.train_epochs
            for member in range(self.plan.ensemble_size):
                start = previous[member] if member < len(previous) else self.starting_model
                self.queues.send_inputs(
                    start, data, method="train_potential", topic=FF_TRAIN_TOPIC,
                    input_kwargs={"seed": self.plan.seed + 1000 * round_ + member, "epochs": epochs,
                                  "learning_rate": self.plan.learning_rate},
                    task_info={"round": round_, "member": member, "n_train": len(frames), "qc_calls": qc_calls,
                               "final": final, "hold": self._hold(start, data)},
                )
            logger.info("Training round %d: %d members on %d structures (%d QC calls so far)%s", round_,
                        self.plan.ensemble_size, len(frames), qc_calls, ", the final round" if final else "")

    @result_processor(topic=FF_TRAIN_TOPIC)
    def store_model(self, result: Result) -> None:
        """Keep each trained member; the first back samples, the full set selects and is evaluated."""
        round_, member = result.task_info["round"], result.task_info["member"]
        self._unhold(result.task_info.pop("hold", None))
        record: dict[str, Any] = {"event": "member", **result.task_info, "success": result.success,
                                  **task_timing(result)}
        if result.success:
            potential = result.value
            record.update({k: v for k, v in (potential.stats or {}).items() if np.isscalar(v)})
            folder = self.run_dir.path / "models" / f"round-{round_:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"member-{member}.pkl").write_bytes(pickle.dumps(potential))
            handle = self.ledger.put(potential)
            with self._state:
                self._round_members[round_].append((member, handle))
                first = len(self._round_members[round_]) == 1
            if first:
                self._replace_sampling_model(handle, round_)
        else:
            record["failure_reason"] = result.failure_info.exception if result.failure_info else "unknown"
            self.logger.error("Training of member %d in round %d failed: %s", member, round_, record["failure_reason"])
        self.run_dir.records(TRAINING_RECORDS).write(record)
        with self._state:
            returned = self._round_members.setdefault(round_, [])
            self._round_returned[round_] = self._round_returned.get(round_, 0) + 1
            complete = self._round_returned[round_] == self.plan.ensemble_size
        if complete:
            self._finish_round(round_, [h for _, h in sorted(returned, key=lambda pair: pair[0])], result.task_info)

    def _replace_sampling_model(self, handle: Any, round_: int) -> None:
        """A newer model samples from now on; the old one's proxy goes once its last MD run is back."""
        with self._state:
            old = self.sampling_model
            if old is handle:
                return
            self.sampling_model, self.sampling_round = self.ledger.acquire(handle), round_
            self._state.notify_all()
        if old is not None:
            self.ledger.release(old)

    def _finish_round(self, round_: int, handles: list[Any], info: dict[str, Any]) -> None:
        """All members are back: they become the ensemble (members that failed keep their previous weights)."""
        self.ledger.retire(self._round_data.pop(round_))
        with self._state:
            previous = list(self.members)
            members = list(handles)
            if len(members) < self.plan.ensemble_size:  # a failed member: keep the previous one in its place
                members += previous[len(members):self.plan.ensemble_size]
            self.members = members
            self.model_round = round_
            self.model_info = {"qc_calls": info["qc_calls"], "n_train": info["n_train"]}
            self._training = False
            self._state.notify_all()
        # Handles are compared by identity: a proxy's == would compare the models it stands for.
        for old in previous:
            if not any(old is member for member in members):
                self.ledger.retire(old)
        if self.sampling_model is not None and members and not any(self.sampling_model is m for m in members):
            self._replace_sampling_model(members[0], round_)
        record = {"event": "ensemble", "round": round_, "members": len(handles), "n_train": info["n_train"],
                  "qc_calls": info["qc_calls"], "elapsed": self._elapsed(), **self.ledger.stats()}
        self.run_dir.records(TRAINING_RECORDS).write(record)
        self._request_evaluation(round_, info)

    def _request_evaluation(self, round_: int, info: dict[str, Any], members: list[Any] | None = None) -> None:
        """Measure a round's ensemble on the held-out QC trajectory, once (waits for the test set to be back).

        Args:
            round_: The round whose ensemble is measured.
            info: Its ``qc_calls`` and ``n_train``, and ``final`` if the stability runs follow its evaluation.
            members: That ensemble's handles; by default the current ensemble.
        """
        if not self._wait(lambda: self._references_due == 0, timeout=0.5):
            return
        with self._state:
            claimed = round_ in self._evaluated
            self._evaluated.add(round_)
        if claimed or self.test_handle is None:
            if not claimed:
                self.logger.warning("No test set: round %d is not evaluated", round_)
            if info.get("final"):
                self._start_stability()
            return
        members = list(self.members if members is None else members)
        self.queues.send_inputs(members, self.test_handle, method="evaluate", topic=FF_EVALUATE_TOPIC,
                                task_info={"round": round_, "qc_calls": info["qc_calls"], "n_train": info["n_train"],
                                           "final": info.get("final", False), "hold": self._hold(*members)})

    @result_processor(topic=FF_EVALUATE_TOPIC)
    def store_evaluation(self, result: Result) -> None:
        """One point of the learning curve; after the final round, the stability runs start."""
        self._unhold(result.task_info.pop("hold", None))
        record: dict[str, Any] = {"event": "evaluation", **result.task_info, "success": result.success,
                                  **task_timing(result)}
        if result.success:
            metrics = dict(result.value)
            parity = {k: metrics.pop(k) for k in ("forces_true", "forces_pred") if k in metrics}
            record.update(metrics)
            with self._state:  # a reloaded ensemble measured late must not replace a newer round's parity
                newest = record["round"] >= self._parity_round
                self._parity_round = max(self._parity_round, record["round"])
            if parity and newest:
                np.savez_compressed(self.run_dir.path / "test_parity.npz",
                                    **{k: np.asarray(v, dtype=np.float32) for k, v in parity.items()})
            logger.info("Round %d (%d QC calls): test force MAE %.3f eV/Å, RMSE %.3f, energy MAE %.4f eV/atom",
                        record["round"], record["qc_calls"], metrics.get("force_mae", np.nan),
                        metrics.get("force_rmse", np.nan), metrics.get("energy_mae", np.nan))
        else:
            record["failure_reason"] = result.failure_info.exception if result.failure_info else "unknown"
            self.logger.error("Evaluation of round %s failed: %s", record["round"], record["failure_reason"])
        self.run_dir.records(TRAINING_RECORDS).write(record)
        if result.task_info.get("final"):
            self._start_stability()

    # --- sampler ------------------------------------------------------------------------------------------

    def _idle_trajectory(self) -> Trajectory | None:
        if self.sampling_model is None or self._final_round is not None:
            return None
        idle = [t for t in self.trajectories if not t.busy]
        return min(idle, key=lambda t: t.runs) if idle else None

    @task_submitter(task_type="sample", n_slots=1)
    def submit_sampling(self) -> None:
        """Continue the least-sampled idle trajectory for its current run length with the sampling model."""
        with self._state:
            trajectory = None
            while not self.done.is_set():
                trajectory = self._idle_trajectory()
                if trajectory is not None or self._final_round is not None:
                    break
                self._state.wait(timeout=0.5)
            if trajectory is None:
                self.rec.release("sample", 1)
                self.done.wait(timeout=1.0)
                return
            trajectory.busy = True
            trajectory.runs += 1
            self._sample_runs += 1
            model = self.sampling_model
            hold = self._hold(model)  # the condition is re-entrant
            start = trajectory.current if trajectory.current is not None else trajectory.start
            run_id = self._sample_runs
            round_ = self.sampling_round
        self.queues.send_inputs(
            model, start, trajectory.start, trajectory.run_length, self.plan.temperature, self.plan.timestep,
            self.plan.sample_every, self.plan.seed * 100_003 + run_id,
            method="run_sampling", topic=FF_SAMPLE_TOPIC,
            task_info={"run_id": run_id, "trajectory": trajectory.id, "molecule": trajectory.molecule,
                       "steps": trajectory.run_length, "model_round": round_,
                       "from_start": trajectory.current is None, "hold": hold},
        )

    @result_processor(topic=FF_SAMPLE_TOPIC)
    def store_sampling(self, result: Result) -> None:
        """Pool the sampled structures; send the last one to be audited, or restart a trajectory that blew up."""
        self.rec.release("sample", 1)
        self._unhold(result.task_info.pop("hold", None))
        info = result.task_info
        trajectory = self.trajectories[info["trajectory"]]
        record: dict[str, Any] = {**info, "success": result.success, "elapsed": self._elapsed(), **task_timing(result)}
        if not result.success:
            record["failure_reason"] = result.failure_info.exception if result.failure_info else "unknown"
            self.logger.warning("Sampling run %d failed: %s", info["run_id"], record["failure_reason"])
            with self._state:
                trajectory.restart()
                trajectory.busy = False
                self._state.notify_all()
            self.run_dir.records(SAMPLING_RECORDS).write(record)
            return
        md = result.value
        record.update({"steps_done": md.steps_done, "blown_up": md.failure,
                       "final_energy": md.final_energy, "md_time": md.time})
        # Step 0 is where the run started: an audited structure or the starting geometry, both computed already.
        # Before a blow-up, the last physical structure is where the model is most wrong: worth pooling.
        pooled = md.frames[1:] + ([md.final] if md.failure is not None and md.steps_done > 0 else [])
        with self._state:
            for frame in pooled:
                self.pool.append((frame, trajectory.molecule, trajectory.id))
            if md.failure is not None:
                trajectory.blowups += 1
                trajectory.restart()
                trajectory.run_length = next_run_length(trajectory.run_length, None, self.plan.energy_tolerance,
                                                        self.plan.min_run_length, self.plan.max_run_length)
                trajectory.busy = False
            else:
                self.audit_jobs.append(QCJob(md.final, "audit", trajectory.molecule, trajectory.id,
                                             md.final_energy, {"run_id": info["run_id"]}))
            record.update({"n_pooled": len(pooled), "pool": len(self.pool)})
            self._state.notify_all()
        self.run_dir.records(SAMPLING_RECORDS).write(record)
        if md.failure is not None:
            self.logger.info("Trajectory %d blew up after %d steps (%s); restarting it", trajectory.id,
                             md.steps_done, md.failure)

    # --- selector -----------------------------------------------------------------------------------------

    def _pool_is_all_there_is(self) -> bool:
        """A pool smaller than the inference batch is all that can still be picked from.

        No QC job waits or runs and no MD run is out, so nothing would ever fill the pool or spend the budget:
        picking from what is there keeps the campaign going instead of waiting for ever.
        """
        return (bool(self.pool) and not self.in_flight and not self.initial_jobs and not self.audit_jobs
                and not self.active_jobs and not any(t.busy for t in self.trajectories))

    @agent
    def select(self) -> None:
        """Run the ensemble on the pooled structures and queue the ones it disagrees about most for QC."""
        from methods.selection import select_by_disagreement, select_random

        batch_number = self._selection_batches
        while self._wait(lambda: (len(self.pool) >= self.plan.inference_batch or self._pool_is_all_there_is())
                         and len(self.members) > 1
                         and self.qc_submitted < self.plan.qc_budget and self._final_round is None):
            with self._state:
                candidates = list(self.pool)
                self.pool.clear()
                members = list(self.members)
                round_ = self.model_round
            batch_number += 1
            started = time.monotonic()
            frames = [atoms for atoms, _, _ in candidates]
            if self.plan.selector == "random":
                chosen = select_random(len(frames), self.plan.n_to_select, self.plan.seed + batch_number)
                spread = None
                inference: dict[str, Any] = {"n_tasks": 0}
            else:
                predictions, inference = self._infer(members, frames, batch_number, round_)
                if predictions is None:
                    continue
                spread = predictions.std(axis=0)
                chosen = select_by_disagreement(predictions, self.plan.n_to_select)
            jobs = [QCJob(frames[i], "active", candidates[i][1], candidates[i][2],
                          extra={"selection_batch": batch_number,
                                 "energy_std": float(spread[i]) if spread is not None else None})
                    for i in chosen]
            with self._state:
                replaced = len(self.active_jobs)
                self.active_jobs.clear()  # a newer ensemble's picks supersede older ones still waiting
                self.active_jobs.extend(jobs)
                self._state.notify_all()
            self.run_dir.records(SELECTION_RECORDS).write({
                "batch": batch_number, "selector": self.plan.selector, "model_round": round_,
                "n_pool": len(frames), "n_selected": len(jobs), "replaced_waiting": replaced,
                "selected_std": [j.extra["energy_std"] for j in jobs],
                "pool_std_mean": float(spread.mean()) if spread is not None else None,
                "pool_std_max": float(spread.max()) if spread is not None else None,
                "time": time.monotonic() - started, "elapsed": self._elapsed(), **inference,
            })

    def _infer(self, members: list[Any], frames: list[Atoms], batch: int,
               round_: int) -> tuple[np.ndarray | None, dict[str, Any]]:
        """Energies per atom of every member on every frame: (members, frames), from one task per chunk."""
        chunks = [frames[i:i + self.plan.inference_batch] for i in range(0, len(frames), self.plan.inference_batch)]
        for index, chunk in enumerate(chunks):
            handles = [self.ledger.acquire(m) for m in members]
            self.queues.send_inputs(handles, chunk, method="infer_energies", topic=FF_INFER_TOPIC,
                                    task_info={"batch": batch, "chunk": index}, keep_inputs=False)
        results: dict[int, Result] = {}
        while len(results) < len(chunks):
            try:
                result = self.queues.get_result(topic=FF_INFER_TOPIC, timeout=1)
            except TimeoutException:
                if self.done.is_set():
                    break
                continue
            results[result.task_info["chunk"]] = result
        for _ in range(len(results)):
            for member in members:
                self.ledger.release(member)
        for record_result in results.values():
            self.run_dir.records(INFERENCE_RECORDS).write({
                "batch": batch, "chunk": record_result.task_info["chunk"], "model_round": round_,
                "n_structures": len(chunks[record_result.task_info["chunk"]]), "n_models": len(members),
                "success": record_result.success, **task_timing(record_result)})
        failed = [r for r in results.values() if not r.success]
        if failed or len(results) < len(chunks):
            reason = failed[0].failure_info.exception if failed and failed[0].failure_info else "stopped"
            self.logger.error("Inference failed: %s", reason)
            return None, {}
        predictions = np.concatenate([np.asarray(results[i].value) for i in range(len(chunks))], axis=1)
        return predictions, {"n_tasks": len(chunks)}

    # --- allocator -----------------------------------------------------------------------------------------

    @agent
    def allocate(self) -> None:
        """Shift slots between sampling and QC: long audit lists slow sampling, an idle QC queue speeds it up."""
        last, last_time = None, -np.inf
        while not self.done.wait(1.0):
            with self._state:
                backlog = len(self.audit_jobs) + len(self.active_jobs) + len(self.initial_jobs)
                sampling_open = self.sampling_model is not None and self._final_round is None
            moved = rebalance(self.rec, backlog, sampling_open, self.done)
            state = (self.rec.allocated_slots("sample"), self.rec.allocated_slots("qc"))
            if moved or state != last or time.monotonic() - last_time >= 5:  # changes, and a sample every 5 s
                self.run_dir.records(ALLOCATION_RECORDS).write({
                    "elapsed": self._elapsed(), "sample_slots": state[0], "qc_slots": state[1], "backlog": backlog,
                    "pool": len(self.pool), "moved": moved})
                last, last_time = state, time.monotonic()

    # --- the end: stability of the final ensemble ----------------------------------------------------------

    def _start_stability(self) -> None:
        """MD with the final ensemble from each starting structure; the run ends when all are back."""
        if self.plan.stability_runs == 0 or not self.members:
            self.done.set()
            return
        with self._state:
            self.stability_due = self.plan.stability_runs
        for run in range(self.plan.stability_runs):
            name, start = self.starts[run % len(self.starts)]
            members = list(self.members)
            self.queues.send_inputs(
                members, start, start, self.plan.stability_steps, self.plan.temperature, self.plan.timestep,
                self.plan.stability_steps, self.plan.seed + 7919 * (run + 1),
                method="run_sampling", topic=FF_STABILITY_TOPIC,
                task_info={"run": run, "molecule": name, "hold": self._hold(*members)})
        logger.info("QC budget spent; %d stability runs of %d steps with the final ensemble",
                    self.plan.stability_runs, self.plan.stability_steps)

    @result_processor(topic=FF_STABILITY_TOPIC)
    def store_stability(self, result: Result) -> None:
        """Whether the final ensemble's MD stayed physical, and for how long."""
        self._unhold(result.task_info.pop("hold", None))
        record: dict[str, Any] = {**result.task_info, "success": result.success, "steps": self.plan.stability_steps,
                                  **task_timing(result)}
        if result.success:
            md = result.value
            record.update({"steps_done": md.steps_done, "stable": md.failure is None, "failure": md.failure,
                           "time_fs": md.steps_done * self.plan.timestep, "md_time": md.time})
        else:
            record.update({"stable": False, "failure": result.failure_info.exception if result.failure_info
                           else "unknown", "steps_done": 0})
        self.run_dir.records(STABILITY_RECORDS).write(record)
        with self._state:
            self.stability_due -= 1
            finished = self.stability_due <= 0
        if finished:
            self.done.set()


# --- summary ------------------------------------------------------------------------------------------------


def summarize(run_dir: RunDirectory, qc_workers: int, ml_workers: int, wall_time: float | None,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The forcefield run's summary, from the records alone (so it can be rebuilt for any run, killed or not)."""
    from thinkers.records import qc_utilization

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
    qc_use = qc_utilization(latest_attempt(finished + references), qc_workers)
    ml_use = qc_utilization(latest_attempt(ml_records), ml_workers)
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


def headline(summary: dict[str, Any]) -> list[str]:
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


# --- assembly -----------------------------------------------------------------------------------------------


def plan_from_settings(settings: Any) -> ForcefieldPlan:
    """The thinker's plan from validated :class:`configs.settings.ForcefieldSettings`."""
    names = {f for f in ForcefieldPlan.__dataclass_fields__} - {"qc_slots"}
    return ForcefieldPlan(qc_slots=2 * settings.qc_workers, **{name: getattr(settings, name) for name in names})


def check(settings: Any) -> None:
    """Reject starting molecules that cannot be used, before anything starts or any run directory is made.

    Raises:
        SettingsError: a starting molecule is not in QM9.
    """
    from configs.settings import SettingsError
    from methods.sampling import starting_structures

    try:
        starting_structures(settings.molecules)
    except ValueError as exc:
        raise SettingsError(f"--molecules: {exc}") from exc


def task_methods(settings: Any) -> tuple[tuple[str, ...], list[tuple[Any, str]]]:
    """The queue topics and worker methods, known before any data is loaded (``run.py`` starts workers first)."""
    from methods.ensemble import infer_energies
    from methods.mlip import evaluate, train_potential
    from methods.sampling import reference_trajectory, run_sampling
    from methods.simulate import compute_energy_forces

    return FF_TOPICS, [(compute_energy_forces, QC_EXECUTOR), (reference_trajectory, QC_EXECUTOR),
                       (train_potential, ML_EXECUTOR), (run_sampling, ML_EXECUTOR), (infer_energies, ML_EXECUTOR),
                       (evaluate, ML_EXECUTOR)]


def assemble(settings: Any, run_dir: RunDirectory, task_config: dict[str, Any]) -> Assembly:
    """The forcefield campaign's one assembly point: settings → task-server methods and a thinker factory.

    ``run.py`` has run :func:`check` on the settings first. A resumed run (``run_dir.attempt > 0``) takes its
    state over from ``train.db``, the records and the saved models (:class:`ForcefieldHistory`).
    """
    from methods.mlip import PotentialConfig, create_potential
    from methods.sampling import displaced, starting_structures
    from methods.simulate import QCSpec

    starts = starting_structures(settings.molecules)  # check() has vetted them
    spec = QCSpec(code=settings.qc_code, method=settings.method, basis=settings.basis, seed=settings.seed,
                  timeout=settings.qc_timeout)
    run_dir.write_json("qc_spec.json", {**spec.model_dump(), "units": "eV, eV/Å", "task_config": task_config})
    initial = []
    for index, (name, atoms) in enumerate(starts):
        initial.append(QCJob(atoms.copy(), "initial", name))
        for copy in displaced(atoms, settings.initial_displacements, settings.displacement_scale,
                              settings.seed + index):
            initial.append(QCJob(copy, "initial", name))
    for number, job in enumerate(initial):  # the same list on every attempt: a resume skips those already sent
        job.extra["initial_index"] = number
    config = PotentialConfig(max_atoms=max(len(atoms) for _, atoms in starts))
    history = ForcefieldHistory.load(run_dir, settings.ensemble_size) if run_dir.attempt > 0 else None
    shutil.rmtree(run_dir.path / "proxystore", ignore_errors=True)  # a killed attempt's proxies are unusable
    ledger = ProxyLedger()  # its store is opened with the queues: remote workers read proxies from their Redis
    holder: dict[str, ForcefieldThinker] = {}

    def build_thinker(queues: ColmenaQueues) -> ForcefieldThinker:
        ledger.store = open_proxy_store(run_dir.path, f"molsteer-{run_dir.name}-{run_dir.attempt}",
                                        queues if not workers_share_files(settings) else None)
        thinker = ForcefieldThinker(queues, plan_from_settings(settings), run_dir, starts, initial,
                                    create_potential(config, seed=settings.seed), (spec, task_config), ledger,
                                    history)
        holder["thinker"] = thinker
        return thinker

    def close() -> None:
        if ledger.store is not None:
            close_proxy_store(ledger.store, ledger)
            shutil.rmtree(run_dir.path / "proxystore", ignore_errors=True)

    names = ", ".join(name for name, _ in starts)
    topics, methods = task_methods(settings)
    return Assembly(
        topics=topics,
        methods=methods,
        build_thinker=build_thinker,
        summarize=lambda wall_time: summarize(run_dir, settings.qc_workers, settings.ml_workers, wall_time,
                                              extra=ledger.stats()),
        headline=headline,
        close=close,
        description=f"forcefield for {names} with {settings.qc_code} ({settings.method}), {settings.qc_budget} QC "
                    f"calls, ensemble of {settings.ensemble_size}, {settings.qc_workers} QC and "
                    f"{settings.ml_workers} ML workers",
    )
