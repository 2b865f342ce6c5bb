"""Steering logic with Colmena's in-process queues and a local task server: fast, no Redis, no Parsl.

QC is replaced by a lookup of QM9's own HOMO energies (a "lookup objective"), so the priority order,
the in-flight count and the stop condition are checked at full speed. The real path is in test_e2e.py.
"""

import multiprocessing
import threading
import time

import numpy as np
import pytest
from colmena.queue.python import PipeQueues
from colmena.task_server.local import LocalTaskServer

from methods.data import CACHE_VERSION
from methods.library import Library, featurize_block, missing_blocks
from methods.surrogates import score_block, train_surrogate
from store.names import SCREENING_RECORDS, SIMULATION_RECORDS, TRAINING_RECORDS
from store.rundir import RunDirectory
from store.summaries import summarize_design as summarize
from thinkers.design import INITIAL_BATCH, DesignPlan, DesignThinker, candidate
from thinkers.topics import DESIGN_TOPICS

_VALUES: dict[str, float] = {}


class ThreadSafePipeQueues(PipeQueues):
    """Colmena's PipeQueues with locked writers.

    A ``multiprocessing`` pipe is not safe for concurrent writers: the thinker's agents send requests from
    several threads, and the task server sends results from several executor threads, so unlocked sends
    interleave bytes and corrupt messages (seen as ``UnpicklingError``). Redis, used in production, is safe.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._send_lock = threading.Lock()

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_send_lock", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._send_lock = threading.Lock()

    def _send_request(self, message: str, topic: str):
        with self._send_lock:
            super()._send_request(message, topic)

    def _send_result(self, message: str, topic: str):
        with self._send_lock:
            super()._send_result(message, topic)


def evaluate_molecules(smiles, delay, fail_marker):
    """Stand-in for methods.simulate.evaluate_molecules with the same name and record shape."""
    from methods.data import load_qm9

    if not _VALUES:
        qm9 = load_qm9()
        _VALUES.update(zip(qm9.smiles.tolist(), (-qm9.columns["HOMO_au"] * 27.2114).tolist(), strict=True))
    time.sleep(delay)
    return [
        {"smiles": s, "success": fail_marker not in s, "value": _VALUES[s] if fail_marker not in s else None,
         "failure_reason": None if fail_marker not in s else "lookup refused", "timings": {"total": delay}}
        for s in smiles
    ]


def test_candidates_are_served_initial_then_newest_batch_then_rank():
    from queue import PriorityQueue

    queue = PriorityQueue()
    for item in [candidate("a", 0, 0, 0), candidate("b", 1, 1, 1), candidate("c", 2, INITIAL_BATCH, 5),
                 candidate("d", 3, 1, 0), candidate("e", 4, 0, 1), candidate("f", 5, INITIAL_BATCH, 0)]:
        queue.put(item)
    order = [queue.get().smiles for _ in range(6)]
    assert order == ["f", "c", "d", "b", "a", "e"]


def max_overlap(intervals):
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


@pytest.mark.timeout(300)
@pytest.mark.parametrize("qc_batch", [1, 3])
def test_thinker_keeps_slots_full_and_stops_at_budget(tmp_path, qm9, qc_batch):
    plan = DesignPlan(total_evaluations=60, initial_count=10, parallel_guesses=3, qc_batch=qc_batch,
                      generate_size=24, retrain_after=4, ml_workers=1, model="gc", maximize=True, seed=1)
    pool_rows = np.random.default_rng(0).choice(len(qm9), 3000, replace=False)
    queues = ThreadSafePipeQueues(topics=DESIGN_TOPICS)
    methods = [evaluate_molecules, train_surrogate, missing_blocks, featurize_block, score_block]
    server = LocalTaskServer(queues, methods, threads=True, num_workers=8)
    run_dir = RunDirectory.create(tmp_path, {"test": qc_batch})
    thinker = DesignThinker(queues, plan, run_dir, Library(f"qm9-v{CACHE_VERSION}", len(qm9)), qm9.smiles, pool_rows,
                            (0.1, "F"))
    server.start()
    try:
        thinker.start()
        thinker.join(timeout=240)
        assert not thinker.is_alive(), "thinker did not stop after spending the budget"
    finally:
        queues.send_kill_signal()
        server.join(timeout=30)
    run_dir.close()

    records = run_dir.read_records(SIMULATION_RECORDS)
    assert len(records) == plan.total_evaluations
    assert len({r["row"] for r in records}) == plan.total_evaluations  # nothing evaluated twice
    assert set(r["row"] for r in records) <= set(pool_rows.tolist())

    failures = [r for r in records if not r["success"]]
    assert all(r["failure_reason"] == "lookup refused" and "F" in r["smiles"] for r in failures)

    # The initial random molecules are all sent before any model-chosen one.
    by_task = {}
    for r in records:
        by_task.setdefault(r["task_id"], r)
    tasks = sorted(by_task.values(), key=lambda r: r["timestamp_created"])
    sources = [r["source"] for r in sorted(records, key=lambda r: (r["timestamp_created"], r["rank"]))]
    assert sources[:plan.initial_count] == ["initial"] * plan.initial_count
    assert set(sources[plan.initial_count:]) == {"model"}

    # Exactly `parallel_guesses` QC tasks in flight: never more, and reached.
    in_flight = max_overlap([(r["timestamp_created"], r["timestamp_result_received"]) for r in tasks])
    assert in_flight == plan.parallel_guesses
    if qc_batch > 1:
        assert max(sum(1 for r in records if r["task_id"] == t) for t in by_task) == qc_batch

    # The newest batch is served first, best rank first; the model really steered the search.
    model_records = sorted((r for r in records if r["source"] == "model"),
                           key=lambda r: (r["timestamp_created"], r["rank"]))
    batches = [r["batch"] for r in model_records]
    assert batches == sorted(batches)
    for previous, current in zip(model_records, model_records[1:], strict=False):
        if previous["batch"] == current["batch"]:
            assert previous["rank"] < current["rank"]
    initial_values = [r["value"] for r in records if r["source"] == "initial" and r["success"]]
    model_values = [r["value"] for r in model_records if r["success"]]
    assert np.mean(model_values) > np.mean(initial_values)

    assert len(run_dir.read_records(TRAINING_RECORDS)) >= 2
    screening = run_dir.read_records(SCREENING_RECORDS)
    assert screening and all(s["n_queued"] > 0 for s in screening)

    summary = summarize(run_dir, maximize=True, n_workers=plan.parallel_guesses, wall_time=1.0)
    assert summary["evaluations"] == plan.total_evaluations
    assert summary["failures"] == len(failures)
    assert summary["best"][0]["value"] == max(r["value"] for r in records if r["success"])
    assert 0 < summary["qc_utilization"] <= 1


_RELEASE_TRAINING = multiprocessing.Event()  # the task server is a forked process: a thread event would not reach it


def lost_training(*args, **kwargs):
    """A training task whose result never comes back while the campaign runs (a worker or server lost)."""
    _RELEASE_TRAINING.wait(120)
    raise RuntimeError("released by the test")


lost_training.__name__ = "train_surrogate"  # served under the name the thinker asks for


def test_generator_waiting_for_a_lost_ml_task_does_not_outlive_the_campaign(tmp_path, qm9):
    """The budget is spent while a training result is outstanding: the thinker still stops (run.py exits)."""
    plan = DesignPlan(total_evaluations=12, initial_count=12, parallel_guesses=3, qc_batch=1, generate_size=8,
                      retrain_after=4, ml_workers=1, model="gc", maximize=True, seed=1)
    pool_rows = np.random.default_rng(0).choice(len(qm9), 3000, replace=False)
    queues = ThreadSafePipeQueues(topics=DESIGN_TOPICS)
    methods = [evaluate_molecules, lost_training, missing_blocks, featurize_block, score_block]
    server = LocalTaskServer(queues, methods, threads=True, num_workers=4)
    run_dir = RunDirectory.create(tmp_path, {"test": "lost"})
    thinker = DesignThinker(queues, plan, run_dir, Library(f"qm9-v{CACHE_VERSION}", len(qm9)), qm9.smiles, pool_rows,
                            (0.05, "F"))
    server.start()
    try:
        thinker.start()
        thinker.join(timeout=90)
        stuck = thinker.is_alive()
    finally:
        _RELEASE_TRAINING.set()
        queues.send_kill_signal()
        server.join(timeout=30)
        server_stuck = server.is_alive()
        if server_stuck:
            server.terminate()
    run_dir.close()
    assert not stuck, "the generator kept waiting for an ml result after the campaign ended"
    assert not server_stuck, "the task server did not stop once the lost training was released"
    assert len(run_dir.read_records(SIMULATION_RECORDS)) == plan.total_evaluations
    assert run_dir.read_records(TRAINING_RECORDS) == []  # the training never returned: nothing was made up
