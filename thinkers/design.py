"""Molecular design: interleave surrogate-guided generation with QC, so neither waits for the other.

Two agent threads share a priority queue of candidate molecules:

* the **generator** retrains the surrogate on everything evaluated so far, scores the unevaluated pool,
  and pushes the best-ranked molecules as a new batch;
* the **consumer** keeps exactly ``parallel_guesses`` QC tasks in flight, taking the next candidate the
  moment a slot frees. The queue serves the initial random molecules first, then the most recent batch,
  and inside a batch the best-ranked first: stale candidates are used only when nothing newer waits.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from queue import Empty, PriorityQueue
from typing import Any

import numpy as np
from colmena.models import Result
from colmena.queue.base import ColmenaQueues
from colmena.thinker import agent, result_processor, task_submitter
from proxystore.proxy import Proxy, extract

from methods.acquisition import acquire
from methods.library import BLOCK, Library
from store.names import (
    FEATURE_RECORDS,
    RL_RECORDS,
    SCREENING_RECORDS,
    SIMULATION_RECORDS,
    SUBMITTED_RECORDS,
    TRAINING_RECORDS,
)
from store.results import failure_reason, task_timing
from store.rundir import RunDirectory
from thinkers.base import SteeringThinker
from thinkers.proxies import ProxyLedger
from thinkers.requests import AwaitedRequests, CampaignStopped
from thinkers.slots import SlotCounter
from thinkers.topics import ML_TOPIC, QC_TOPIC

logger = logging.getLogger(__name__)

INITIAL_BATCH = -1
"""Batch number of the initial random molecules; they are served before every model batch."""

RL_AGENT_FILE = "rl_agent.pkl"
"""The RL generator's agent, saved after every round so a resumed campaign keeps what it learned."""


@dataclass
class DesignHistory:
    """What a resumed design campaign takes over from the records of its earlier attempts.

    Attributes:
        finished: Every molecule whose result (success or failure) is recorded, in order.
        unfinished: Molecules sent to QC whose result never came back (killed, or recorded as abandoned).
        next_batch: First batch number not used yet (newer batches have priority in the queue).
        rounds: Model rounds trained so far.
        next_submission: First QC submission number not used yet.
        rl_agent: The RL agent as saved after its last round, or None.
    """

    finished: list[dict[str, Any]] = field(default_factory=list)
    unfinished: list[dict[str, Any]] = field(default_factory=list)
    next_batch: int = 0
    rounds: int = 0
    next_submission: int = 1
    rl_agent: Any = None

    @classmethod
    def load(cls, run_dir: RunDirectory) -> DesignHistory:
        """Rebuild the campaign's state from its records (nothing else is needed)."""
        simulations = run_dir.read_records(SIMULATION_RECORDS)
        finished = [r for r in simulations if not r.get("abandoned")]
        done = {r["smiles"] for r in finished}
        unfinished: dict[str, dict[str, Any]] = {}
        submissions = run_dir.read_records(SUBMITTED_RECORDS)
        keys = ("smiles", "row", "batch", "rank", "score")
        for submission in submissions:
            for info in submission.get("candidates", []):
                if info["smiles"] not in done:
                    unfinished.setdefault(info["smiles"], {k: info.get(k) for k in keys})
        for record in simulations:
            if record.get("abandoned") and record["smiles"] not in done:
                unfinished.setdefault(record["smiles"], {k: record.get(k) for k in keys})
        batches = [int(r["batch"]) for r in run_dir.read_records(SCREENING_RECORDS) if "batch" in r]
        return cls(
            finished=finished,
            unfinished=list(unfinished.values()),
            next_batch=max(batches, default=-1) + 1,
            rounds=len(run_dir.read_records(TRAINING_RECORDS)),
            next_submission=max((int(s.get("submission", 0)) for s in submissions), default=0) + 1,
            rl_agent=run_dir.read_pickle(RL_AGENT_FILE),
        )


@dataclass(order=True)
class Candidate:
    """A molecule waiting for QC. Ordering is the queue's priority: initial batch, then newest batch, then rank."""

    priority: tuple[float, int]
    smiles: str = field(compare=False)
    row: int = field(compare=False)
    batch: int = field(compare=False)
    rank: int = field(compare=False)
    score: float | None = field(compare=False, default=None)


def candidate(smiles: str, row: int, batch: int, rank: int, score: float | None = None) -> Candidate:
    """Build a candidate with the queue's ordering: -inf for the initial batch, else -batch; then rank."""
    first = -np.inf if batch == INITIAL_BATCH else -batch
    return Candidate((first, rank), smiles, row, batch, rank, score)


@dataclass(frozen=True)
class DesignPlan:
    """What the thinker needs to know about the campaign, independent of how the settings were given."""

    total_evaluations: int
    initial_count: int
    parallel_guesses: int
    qc_batch: int
    generate_size: int
    retrain_after: int
    ml_workers: int
    model: str
    maximize: bool
    seed: int
    units: str = "eV"
    acquisition: str = "greedy"
    beta: float = 1.0
    ensemble_size: int = 4
    mpnn_epochs: int = 64
    mpnn_warm_epochs: int = 8
    mpnn_width: int = 32
    generator: str = "pool"
    rl_episodes: int = 10
    max_heavy_atoms: int = 9


class DesignThinker(SteeringThinker):
    """Screens a pool of molecules with a surrogate and spends a fixed QC budget on the most promising ones."""

    def __init__(
        self,
        queues: ColmenaQueues,
        plan: DesignPlan,
        run_dir: RunDirectory,
        library: Library,
        pool_smiles: np.ndarray,
        pool_rows: np.ndarray,
        qc_args: tuple[Any, ...],
        history: DesignHistory | None = None,
        ledger: ProxyLedger | None = None,
    ):
        """Create the thinker.

        Args:
            queues: Client side of the Colmena queues, with the simulation and ML topics.
            plan: Budget, batch sizes and model choice.
            run_dir: Where records are written.
            library: The search space's handle: workers score its cached feature blocks.
            pool_smiles: SMILES of every molecule of the library (its row order).
            pool_rows: Rows of ``pool_smiles`` that form the search space.
            qc_args: Arguments after the SMILES list for ``evaluate_molecules`` (spec, task config, atom energies).
            history: What earlier attempts recorded, when the campaign is resumed.
            ledger: Proxies of the models sent to workers (one per round, evicted when the round is over);
                without one, models travel by value.
        """
        super().__init__(queues, SlotCounter(plan.parallel_guesses, ["qc"]))
        self.rec.reallocate(None, "qc", plan.parallel_guesses)
        self.plan = plan
        self.run_dir = run_dir
        self.pool_smiles = pool_smiles
        self.pool_rows = np.asarray(pool_rows, dtype=np.int64)
        self._pool_row = {str(pool_smiles[r]): int(r) for r in self.pool_rows}  # generated molecules: -1
        self.qc_args = qc_args
        self.library = library
        self.ledger = ledger or ProxyLedger()
        self.largest_message = 0  # bytes, over every ML task of the run: the evidence big objects went by proxy
        self._last_round_largest = 0

        self.task_queue: PriorityQueue[Candidate] = PriorityQueue()
        self.attempted: set[int] = set()  # pool rows submitted to QC (whatever the outcome)
        self.attempted_smiles: set[str] = set()  # every molecule submitted, generated ones included
        self.rl_agent: Any = None  # the RL generator's agent, carried from round to round
        self.in_flight: dict[int, list[dict[str, Any]]] = {}  # QC tasks sent and not yet returned
        self.database: dict[str, float] = {}  # SMILES -> objective value, successful evaluations only
        self.n_submitted = 0
        self.n_done = 0
        self.n_failed = 0
        self.best: tuple[str, float] | None = None
        self.start_time = time.monotonic()
        self._state = threading.Condition()
        self._trained_on = 0
        self._round = 0
        self.ml = AwaitedRequests(queues, ML_TOPIC, self.done)  # ml requests the agents await themselves
        self._mpnn_members: list[Any] = []  # the last trained MPNN ensemble, which the next round continues from
        self._batches = itertools.count()

        self._done_at_training = 0
        self._warned_no_std = False
        self._submissions = itertools.count(1)
        self._rng = np.random.default_rng(plan.seed)
        # The same random start as the first attempt (same seed, nothing tried yet); on a resume the molecules
        # already recorded are skipped when they come up.
        self._enqueue_random(plan.initial_count)
        if history is not None:
            self._take_over(history)

    def _take_over(self, history: DesignHistory) -> None:
        """Continue from earlier attempts: their results count, their unfinished molecules go first."""
        for record in history.finished:
            self.attempted_smiles.add(record["smiles"])
            if record.get("row") is not None and int(record["row"]) >= 0:
                self.attempted.add(int(record["row"]))
            self._count_result(record)
        self.n_submitted = self.n_done
        for rank, info in enumerate(history.unfinished):  # they were the most urgent when the run stopped
            item = candidate(info["smiles"], int(info["row"]) if info.get("row") is not None else -1,
                             int(info["batch"]), int(info["rank"] or 0), info.get("score"))
            item.priority = (-np.inf, -len(history.unfinished) + rank)
            self.task_queue.put(item)
        self._batches = itertools.count(history.next_batch)
        self._round = history.rounds
        self._submissions = itertools.count(history.next_submission)
        self.rl_agent = history.rl_agent
        logger.info("Resumed: %d molecules recorded (%d failed), %d unfinished to redo, best %s", self.n_done,
                    self.n_failed, len(history.unfinished),
                    f"{self.best[1]:.4g} {self.plan.units} ({self.best[0]})" if self.best else "none yet")

    # --- shared bookkeeping -------------------------------------------------------------------------

    def _enqueue_random(self, count: int) -> None:
        """Queue random, not yet tried molecules with the initial batch's (top) priority."""
        with self._state:
            excluded = np.fromiter(self.attempted, dtype=np.int64)
        fresh = self.pool_rows[~np.isin(self.pool_rows, excluded)]
        for rank, row in enumerate(self._rng.choice(fresh, size=min(count, len(fresh)), replace=False)):
            self.task_queue.put(candidate(str(self.pool_smiles[row]), int(row), INITIAL_BATCH, rank))

    def _count_result(self, outcome: dict[str, Any]) -> None:
        """One more molecule done: a success joins the database (and maybe becomes the best), or a failure counts."""
        self.n_done += 1
        if outcome.get("success"):
            value = float(outcome["value"])
            self.database[outcome["smiles"]] = value
            if self.best is None or self._is_better(value, self.best[1]):
                self.best = (outcome["smiles"], value)
        else:
            self.n_failed += 1

    def _is_better(self, value: float, than: float) -> bool:
        return value > than if self.plan.maximize else value < than

    # --- consumer: keep the QC workers busy ------------------------------------------------------------

    @task_submitter(task_type="qc", n_slots=1)
    def submit_qc(self) -> None:
        """Send the next candidates from the priority queue to QC as soon as a slot is free."""
        batch: list[Candidate] = []
        while not self.done.is_set() and not batch:
            with self._state:
                remaining = self.plan.total_evaluations - self.n_submitted
            if remaining <= 0:
                with self._state:
                    if self.n_done >= self.plan.total_evaluations:  # a resume of a finished campaign
                        self.done.set()
                return  # budget fully submitted; results still arriving release slots, nothing more to send
            try:
                item = self.task_queue.get(timeout=0.5)
            except Empty:
                continue
            if item.smiles in self.attempted_smiles or item.smiles in {c.smiles for c in batch}:
                continue
            batch.append(item)
            # Pack more waiting candidates into the same task, without waiting for new ones.
            while len(batch) < min(self.plan.qc_batch, remaining):
                try:
                    extra = self.task_queue.get_nowait()
                except Empty:
                    break
                if extra.smiles not in self.attempted_smiles and extra.smiles not in {c.smiles for c in batch}:
                    batch.append(extra)
        if not batch:
            self.rec.release("qc", 1)  # shutting down: give the slot back
            return
        candidates = [{"smiles": c.smiles, "row": c.row, "batch": c.batch, "rank": c.rank, "score": c.score}
                      for c in batch]
        with self._state:
            self.n_submitted += len(batch)
            self.attempted.update(c.row for c in batch if c.row >= 0)
            self.attempted_smiles.update(c.smiles for c in batch)
            submission = next(self._submissions)
            self.in_flight[submission] = candidates
        # Durable before it is sent: a resume redoes exactly what was out when the run was killed.
        self.run_dir.records(SUBMITTED_RECORDS).write({"submission": submission, "candidates": candidates})
        self.queues.send_inputs(
            [c.smiles for c in batch],
            *self.qc_args,
            method="evaluate_molecules",
            topic=QC_TOPIC,
            task_info={"candidates": candidates, "submission": submission},
        )

    @result_processor(topic=QC_TOPIC)
    def store_qc(self, result: Result) -> None:
        """Record every molecule of a finished QC task, success or failure, and free its slot."""
        self.rec.release("qc", 1)
        candidates = result.task_info["candidates"]
        with self._state:
            if self.in_flight.pop(result.task_info["submission"], None) is None:
                return  # already recorded as not finished when the run was stopped
        if result.success:
            outcomes = result.value
        else:  # the whole task failed (worker lost, crash outside a molecule): each molecule failed with it
            reason = failure_reason(result, "task failed without a reason")
            outcomes = [{"smiles": c["smiles"], "success": False, "value": None,
                         "failure_reason": f"task failure: {reason}"} for c in candidates]
        timing = task_timing(result)
        writer = self.run_dir.records(SIMULATION_RECORDS)
        for info, outcome in zip(candidates, outcomes, strict=True):
            source = "initial" if info["batch"] == INITIAL_BATCH else "model"
            with self._state:
                self._count_result(outcome)
                n_done, n_failed, best = self.n_done, self.n_failed, self.best
                self._state.notify_all()
            writer.write({**outcome, **info, "source": source, "n_done": n_done, "retries": result.retries,
                          "elapsed": time.monotonic() - self.start_time, **timing})
            if not outcome["success"]:
                self.logger.warning("QC failed for %s: %s", outcome["smiles"], outcome["failure_reason"])
        best_text = f"{best[1]:.4g} {self.plan.units} ({best[0]})" if best else "none yet"
        logger.info("[%d/%d] evaluated | best %s | failures %d", n_done, self.plan.total_evaluations,
                    best_text, n_failed)
        if n_done >= self.plan.total_evaluations:
            logger.info("QC budget spent; stopping")
            self.done.set()

    def abandon_in_flight(self, reason: str) -> int:
        """Record every molecule still out at QC as not evaluated, with the reason; returns how many.

        Called when the run stops before their results come back (interrupt, task server lost), so the
        records say exactly which molecules were sent and never finished instead of dropping them.
        """
        self.done.set()
        with self._state:
            pending = [c for candidates in self.in_flight.values() for c in candidates]
            self.in_flight.clear()
        writer = self.run_dir.records(SIMULATION_RECORDS)
        for info in pending:
            writer.write({"smiles": info["smiles"], "success": False, "value": None, "abandoned": True,
                          "failure_reason": f"not finished: {reason}", **info,
                          "source": "initial" if info["batch"] == INITIAL_BATCH else "model"})
        return len(pending)

    # --- generator: retrain, score, push -------------------------------------------------------------

    def _wait_for_new_data(self) -> bool:
        """Block until the model should be retrained; False when the campaign is over.

        Retrain after ``retrain_after`` new successful results, or at once when the task queue has run dry
        and anything new arrived (even failures: the pool minus what was tried still yields new candidates),
        so the consumer never starves while the generator waits.
        """
        first = self._trained_on == 0
        needed = min(self.plan.retrain_after, self.plan.initial_count) if first else self.plan.retrain_after
        with self._state:
            while not self.done.is_set():
                if self.n_done >= self.plan.total_evaluations:
                    return False
                new_successes = len(self.database) - self._trained_on
                dry = self.task_queue.empty()
                idle = dry and self.n_done == self.n_submitted
                if len(self.database) >= 2:
                    if new_successes >= needed or (dry and self.n_done > self._done_at_training):
                        return True
                elif idle:
                    # Nothing to learn from yet and nothing left to try (the first molecules all failed).
                    self.logger.warning("Fewer than 2 successful evaluations; adding random molecules")
                    self._enqueue_random(self.plan.initial_count)
                if idle and not first and self.n_done == self._done_at_training:
                    self.logger.warning("The search space is exhausted before the QC budget; stopping")
                    self.done.set()
                    return False
                self._state.wait(timeout=0.5)
        return False

    @agent
    def generate(self) -> None:
        """Train, propose, rank, push; repeat as data arrives.

        Proposals come from screening the pool or from the RL agent; the acquisition function ranks them,
        and the best become the newest batch of the task queue.
        """
        try:
            self._generate()
        except CampaignStopped as stopped:
            self.logger.info("Campaign over while the generator waited: %s", stopped)
            self.ml.forget()

    def _generate(self) -> None:
        if self.plan.generator == "pool":  # while the first QC results arrive, the ml workers featurize
            self._prepare_features()
        while self._wait_for_new_data():
            with self._state:
                smiles, values = list(self.database), list(self.database.values())
                self._trained_on, self._done_at_training = len(smiles), self.n_done
            round_start = time.monotonic()

            model = self._train(smiles, values)
            if model is None:
                continue

            handle = self.ledger.put(model)  # stored once per round, however many tasks use it
            try:
                if self.plan.generator == "rl":
                    candidates = self._propose_with_rl(handle)
                else:
                    candidates = self._screen_pool(handle)
            finally:
                self.ledger.retire(handle)  # every task that used it has returned: evicted now
            if candidates is None:
                return
            smiles_list, means, stds = candidates
            if len(smiles_list) == 0:
                continue
            with self._state:
                best_value = self.best[1] if self.best else None
            scores = self._acquisition_scores(means, stds, best_value)
            order = np.argsort(-scores)
            batch = next(self._batches)
            chosen = []
            for index in order:
                smiles_text = str(smiles_list[index])
                if smiles_text in self.attempted_smiles:
                    continue  # molecules still waiting from older batches are queued again, at this batch's rank
                chosen.append((smiles_text, float(means[index]), float(stds[index]) if stds is not None else None))
                if len(chosen) >= self.plan.generate_size:
                    break
            for rank, (smiles_text, mean, _) in enumerate(chosen):
                self.task_queue.put(candidate(smiles_text, self._pool_row.get(smiles_text, -1), batch, rank, mean))
            self.run_dir.records(SCREENING_RECORDS).write({
                "batch": batch, "generator": self.plan.generator, "n_train": len(smiles),
                "n_scored": len(smiles_list), "n_queued": len(chosen),
                "best_predicted": chosen[0][1] if chosen else None,
                "acquisition": self.plan.acquisition,
                "top": [{"smiles": t, "mean": m, "std": s} for t, m, s in chosen[:10]],
                "round_time": time.monotonic() - round_start,
                "largest_message": self._last_round_largest,
            })
            logger.info("Batch %d: trained on %d, scored %d, queued %d (best predicted %.3f) in %.1f s",
                        batch, len(smiles), len(smiles_list), len(chosen), chosen[0][1] if chosen else float("nan"),
                        time.monotonic() - round_start)

    def _acquisition_scores(self, means: np.ndarray, stds: np.ndarray | None, best: float | None) -> np.ndarray:
        """Rank by the chosen acquisition; models without an uncertainty fall back to greedy (with a warning)."""
        name = self.plan.acquisition
        if name != "greedy" and stds is None:
            if not self._warned_no_std:
                self.logger.warning("Model %s gives no uncertainty: --acquisition %s falls back to greedy",
                                    self.plan.model, name)
                self._warned_no_std = True
            name = "greedy"
        return acquire(name, means, stds, maximize=self.plan.maximize, best=best, beta=self.plan.beta)

    def _prepare_features(self) -> None:
        """Make sure every block of the library has the model's features cached on the ml workers.

        A worker says which blocks its cache lacks; those are featurized as parallel ``ml`` tasks (about 1 ms
        of RDKit per molecule, once per library and kind). A second campaign on the same library finds them
        all cached and goes straight to scoring. Runs on the generator thread while the initial molecules
        are at QC, so on a first run the QC workers are not kept waiting either.
        """
        from methods.surrogates import AUTO_CANDIDATES, MODELS

        names = AUTO_CANDIDATES if self.plan.model == "auto" else (self.plan.model,)
        kinds = sorted({MODELS[name].feature_kind for name in names})
        start = time.monotonic()
        self.ml.send(self.library, kinds, method="missing_blocks")
        answer = self.ml.wait(1)[0]
        if not answer.success:
            raise RuntimeError(f"cannot read the feature cache: {failure_reason(answer)}")
        missing = [(kind, block) for kind in kinds for block in answer.value[kind]]
        for kind, block in missing:
            rows = self.library.block_rows(block)
            self.ml.send(self.library, kind, block, self.pool_smiles[rows.start:rows.stop].tolist(),
                          method="featurize_block")
        results = self.ml.wait(len(missing))
        self._note_sizes(results)
        failed = [r for r in results if not r.success]
        record = {"library": self.library.key, "kind": "+".join(kinds), "molecules": self.library.size,
                  "blocks": self.library.n_blocks * len(kinds), "blocks_computed": len(missing) - len(failed),
                  "blocks_failed": len(failed), "wall_time": time.monotonic() - start,
                  "compute_time": sum(r.time.running or 0.0 for r in results if r.success)}
        if failed:
            record["failure_reason"] = failure_reason(failed[0])
        self.run_dir.records(FEATURE_RECORDS).write(record)
        if failed:
            raise RuntimeError(f"featurizing the search space failed: {record['failure_reason']}")
        if missing:
            logger.info("Featurized %d of %d blocks (%s, %d molecules) in %.1f s", len(missing),
                        record["blocks"], record["kind"], self.library.size, record["wall_time"])

    def _judge(self, record: dict[str, Any]) -> None:
        """Say plainly when the model is no better than predicting the mean: the search is then close to random.

        Judged on the hold-out (or cross-validated) error once there are at least 20 results; the record gets
        ``no_better_than_mean`` and the log a warning each time it holds, so it cannot go unnoticed.
        """
        error, baseline = record.get("holdout_mae"), record.get("holdout_baseline_mae")
        if error is None or baseline is None or record.get("n_train", 0) < 20:
            return
        record["no_better_than_mean"] = bool(error >= 0.95 * baseline)
        if record["no_better_than_mean"]:
            self.logger.warning("Model %s does no better than predicting the mean (hold-out error %.3g vs %.3g "
                                "%s): the search is close to random", record.get("chosen", record.get("model")),
                                error, baseline, self.plan.units)
        if record.get("chosen"):
            self.logger.info("auto: %s chosen (cross-validated error %s)", record["chosen"],
                             ", ".join(f"{n} {e:.3g}" for n, e in record.get("cv_mae", {}).items()))

    def _note_sizes(self, results: list[Result]) -> int:
        """Track the largest ML message (inputs or result) of the run; returns the largest of these."""
        largest = max((max(r.message_sizes.values(), default=0) for r in results), default=0)
        self.largest_message = max(self.largest_message, largest)
        return largest

    def _screen_pool(self, model: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
        """Score every unevaluated pool molecule: SMILES, means, stds (None once the pool is exhausted).

        One ``ml`` task per cached block of the library, each sending only the block number and the rows
        still to score, and getting back two float32 numbers per molecule: every message stays far below a
        megabyte whatever the library's size.
        """
        with self._state:
            attempted = np.fromiter(self.attempted, dtype=np.int64)
        unseen = np.sort(self.pool_rows[~np.isin(self.pool_rows, attempted)])
        if len(unseen) == 0:
            self.logger.info("Every molecule of the pool has been attempted; nothing left to score")
            return None
        groups = np.split(unseen, np.flatnonzero(np.diff(unseen // BLOCK)) + 1)
        for group in groups:
            block = int(group[0] // BLOCK)
            local = (group - block * BLOCK).astype(np.int32)
            whole = len(local) == len(self.library.block_rows(block))
            self.ml.send(model, self.library, block, None if whole else local, method="score_block",
                          task_info={"block": block})
        scored = self.ml.wait(len(groups))
        self._last_round_largest = self._note_sizes(scored)
        failed = [r for r in scored if not r.success]
        if failed:
            self.logger.error("Scoring failed: %s",
                              failure_reason(failed[0]))
            return np.array([], dtype=str), np.zeros(0), None
        by_block = {int(r.task_info["block"]): r.value for r in scored}
        ordered = [by_block[int(group[0] // BLOCK)] for group in groups]
        means = np.concatenate([mean for mean, _ in ordered])
        stds = None if any(std is None for _, std in ordered) else np.concatenate([std for _, std in ordered])
        return self.pool_smiles[unseen], means, stds

    def _propose_with_rl(self, model: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Run the RL agent against the current surrogate; its new molecules become the candidates.

        The agent (weights, exploration rate, recent experience) lives here between rounds: the task
        takes it and gives it back updated, so it keeps learning across the campaign.
        """
        with self._state:
            exclude = sorted(self.attempted_smiles)
            ranked = sorted(self.database.items(), key=lambda kv: kv[1], reverse=self.plan.maximize)
        starts = ["C"] + [smiles for smiles, _ in ranked[:3]]  # grow from scratch, and edit the best found
        agent = self.ledger.put(self.rl_agent) if self.rl_agent is not None else None  # ~1 MB of weights
        try:
            self.ml.send(
                agent, model, self.plan.rl_episodes, self.plan.maximize, exclude,
                method="generate_molecules",
                input_kwargs={"n_propose": 2 * self.plan.generate_size,
                              "max_heavy_atoms": self.plan.max_heavy_atoms, "start_smiles": starts,
                              "seed": self.plan.seed + self._round,
                              "result_store": self.ledger.store.config() if self.ledger.store else None},
            )
            result = self.ml.wait(1)[0]
        finally:
            if agent is not None:
                self.ledger.retire(agent)
        self._note_sizes([result])
        record: dict[str, Any] = {"round": self._round, "success": result.success, **task_timing(result)}
        if not result.success:
            record["failure_reason"] = failure_reason(result)
            self.run_dir.records(RL_RECORDS).write(record)
            self.logger.error("RL generation failed: %s", record["failure_reason"])
            return np.array([], dtype=str), np.zeros(0), None
        proposals, agent_back, stats = result.value
        # The updated agent came back by proxy (evicted as it is resolved here), or by value without a store.
        self.rl_agent = extract(agent_back) if isinstance(agent_back, Proxy) else agent_back
        self.run_dir.write_pickle(RL_AGENT_FILE, self.rl_agent)  # a resume continues with what it has learned
        self.run_dir.records(RL_RECORDS).write({**record, **stats,
                                                "top": proposals[:10]})
        smiles = np.array([p["smiles"] for p in proposals], dtype=str)
        means = np.array([p["mean"] for p in proposals], dtype=float)
        stds = None if any(p["std"] is None for p in proposals) else np.array([p["std"] for p in proposals])
        return smiles, means, stds

    def _train(self, smiles: list[str], values: list[float]) -> Any | None:
        """Train the surrogate on every successful result, as one ``ml`` task or one task per ensemble member.

        Returns the trained model, or None when training failed (recorded; the generator waits for more data).
        """
        self._round += 1
        warm: list[Any] = []  # last round's members, by proxy, for the members that continue from them
        if self.plan.model == "mpnn":
            previous = self._mpnn_members if self.plan.mpnn_warm_epochs > 0 else []
            for member in range(self.plan.ensemble_size):
                seed = self.plan.seed + 1000 * self._round + member  # a new bootstrap every round
                kwargs: dict[str, Any] = {"seed": seed, "epochs": self.plan.mpnn_epochs,
                                          "hidden": self.plan.mpnn_width}
                if member < len(previous):
                    warm.append(self.ledger.put(previous[member]))
                    kwargs.update(initial=warm[-1], epochs=self.plan.mpnn_warm_epochs)
                self.ml.send(smiles, values, method="train_mpnn", input_kwargs=kwargs)
        elif self.plan.model == "auto":
            self.ml.send(smiles, values, self.plan.seed, method="select_surrogate")
        else:
            self.ml.send(self.plan.model, smiles, values, self.plan.seed, method="train_surrogate")
        try:
            results = self.ml.wait(self.plan.ensemble_size if self.plan.model == "mpnn" else 1)
        finally:
            for handle in warm:
                self.ledger.retire(handle)
        self._note_sizes(results)
        record: dict[str, Any] = {"round": self._round, "model": self.plan.model, "n_train": len(smiles),
                                  "success": all(r.success for r in results),
                                  "time_running": [r.time.running for r in results], **task_timing(results[0])}
        failures = [failure_reason(r) for r in results if not r.success]
        if failures:
            record["failure_reason"] = failures[0]
        good = [r.value for r in results if r.success]
        model = None
        if self.plan.model == "mpnn" and good:
            from methods.surrogates import MPNNEnsemble

            model = MPNNEnsemble(members=good)
            self._mpnn_members = good
            for key in ("oob_mae", "oob_baseline_mae"):
                scores = [m.stats[key] for m in good if key in m.stats]
                if scores:
                    record[key.replace("oob", "holdout")] = float(np.mean(scores))
            record["members"] = [m.stats for m in good]
        elif good:
            model, stats = good[0]
            record.update(stats)
        self._judge(record)
        self.run_dir.records(TRAINING_RECORDS).write(record)
        if model is None:
            self.logger.error("Model training failed: %s", record.get("failure_reason"))
        return model
