"""What the forcefield thinker does with a trained ensemble: pick structures for QC, and check the final one.

A mixin of :class:`thinkers.forcefield.ForcefieldThinker` (its state lives there): the **selector** runs the
ensemble on the pooled MD structures and queues the ones it disagrees about most, and at the end the final
ensemble's **stability** runs show whether MD with it stays physical. Kept apart so each file holds one concern.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from ase import Atoms
from colmena.models import Result
from colmena.thinker import agent, result_processor

from store.names import (
    INFERENCE_RECORDS,
    SELECTION_RECORDS,
    STABILITY_RECORDS,
)
from store.results import failure_reason, task_timing
from thinkers.forcefield_rules import (
    QCJob,
)
from thinkers.topics import (
    FF_STABILITY_TOPIC,
)

logger = logging.getLogger(__name__)


class EnsembleUse:
    """Selector and stability agents, sharing the forcefield thinker's state (``self._state``, ``pool``, ...)."""

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
            self.inference.send(handles, chunk, method="infer_energies",
                                task_info={"batch": batch, "chunk": index}, keep_inputs=False)
        results: dict[int, Result] = {r.task_info["chunk"]: r
                                      for r in self.inference.wait(len(chunks), partial_when_stopped=True)}
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
            reason = failure_reason(failed[0]) if failed else "stopped"
            self.logger.error("Inference failed: %s", reason)
            return None, {}
        predictions = np.concatenate([np.asarray(results[i].value) for i in range(len(chunks))], axis=1)
        return predictions, {"n_tasks": len(chunks)}

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
            record.update({"stable": False, "failure": failure_reason(result), "steps_done": 0})
        self.run_dir.records(STABILITY_RECORDS).write(record)
        with self._state:
            self.stability_due -= 1
            finished = self.stability_due <= 0
        if finished:
            self.done.set()
