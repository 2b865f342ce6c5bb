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
import threading
import time
import uuid
from collections import deque
from typing import Any

import numpy as np
from ase import Atoms
from colmena.models import Result
from colmena.queue.base import ColmenaQueues
from colmena.thinker import agent, result_processor, task_submitter

from store.names import (
    ALLOCATION_RECORDS,
    REFERENCE_RECORDS,
    SAMPLING_RECORDS,
    SIMULATION_RECORDS,
    SUBMITTED_RECORDS,
    TRAINING_RECORDS,
)
from store.results import failure_reason, task_timing
from store.rundir import RunDirectory
from store.traindb import open_train_db
from thinkers.base import SteeringThinker
from thinkers.forcefield_ensemble import EnsembleUse
from thinkers.forcefield_resume import ForcefieldHistory
from thinkers.forcefield_rules import (
    MAX_POOL,
    ForcefieldPlan,
    QCJob,
    Trajectory,
    audit_error,
    next_run_length,
    rebalance,
)
from thinkers.proxies import ProxyLedger
from thinkers.requests import AwaitedRequests
from thinkers.slots import SlotCounter
from thinkers.topics import (
    FF_EVALUATE_TOPIC,
    FF_INFER_TOPIC,
    FF_QC_TOPIC,
    FF_REFERENCE_TOPIC,
    FF_SAMPLE_TOPIC,
    FF_TRAIN_TOPIC,
)

logger = logging.getLogger(__name__)


class ForcefieldThinker(EnsembleUse, SteeringThinker):
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
        self.inference = AwaitedRequests(queues, FF_INFER_TOPIC, self.done)  # awaited by the selector
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
            record["failure_reason"] = failure_reason(result)
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
            reason = failure_reason(result, "task failed without a reason")
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
            record["failure_reason"] = failure_reason(result)
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
            record["failure_reason"] = failure_reason(result)
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
            record["failure_reason"] = failure_reason(result)
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
