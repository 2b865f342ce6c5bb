"""The forcefield thinker's rules on their own: audits, run lengths, and proxies that do not accumulate."""

import pytest

from thinkers.forcefield_rules import audit_error, next_run_length
from thinkers.proxies import ProxyLedger


def test_audit_error_is_per_atom():
    assert audit_error(-100.0, -100.09, 9) == pytest.approx(0.01)
    assert audit_error(-100.09, -100.0, 9) == pytest.approx(0.01)


@pytest.mark.parametrize("error, expected", [
    (0.001, 150),   # well inside the tolerance: longer runs
    (0.008, 100),   # inside, but not by much: unchanged
    (0.02, 50),     # failed audit: halved
    (None, 50),     # blow-up or failed QC: halved
])
def test_run_length_adapts_to_the_audit(error, expected):
    assert next_run_length(100, error, tolerance=0.01, shortest=20, longest=400) == expected


def test_run_length_stays_within_bounds():
    length = 100
    for _ in range(20):
        length = next_run_length(length, 0.0, 0.01, 20, 400)
    assert length == 400
    for _ in range(20):
        length = next_run_length(length, 1.0, 0.01, 20, 400)
    assert length == 20


def test_audit_decision_continues_or_restarts():
    """The thinker's audit: within tolerance the trajectory continues from the audited structure, else restarts."""
    from ase.build import molecule

    from thinkers.forcefield_rules import QCJob, Trajectory

    class Stub:
        plan = type("Plan", (), {"energy_tolerance": 0.01, "min_run_length": 20, "max_run_length": 400})()

    from thinkers.forcefield import ForcefieldThinker

    start = molecule("CH3OH")
    moved = start.copy()
    moved.positions += 0.05
    stub = Stub()
    import threading

    stub._state = threading.Condition()
    stub.trajectories = [Trajectory(0, "CO", start, 100, busy=True)]
    settle = ForcefieldThinker._settle_audit

    good = settle(stub, QCJob(moved, "audit", "CO", 0, model_energy=-100.0), {"success": True, "energy": -100.01})
    assert good["decision"] == "continue" and stub.trajectories[0].current is moved
    assert not stub.trajectories[0].busy and stub.trajectories[0].run_length == 150

    bad = settle(stub, QCJob(moved, "audit", "CO", 0, model_energy=-100.0), {"success": True, "energy": -101.0})
    assert bad["decision"] == "restart" and stub.trajectories[0].current is None
    assert stub.trajectories[0].restarts == 1 and stub.trajectories[0].run_length == 75

    failed = settle(stub, QCJob(moved, "audit", "CO", 0, model_energy=-100.0), {"success": False, "energy": None})
    assert failed["decision"] == "restart" and failed["audit_error"] is None


def test_replaced_proxies_are_evicted_once_their_tasks_return(tmp_path):
    """A real ProxyStore file store: count the stored objects as models are replaced."""
    from proxystore.connectors.file import FileConnector
    from proxystore.store import Store

    folder = tmp_path / "store"
    store = Store("ledger-test", FileConnector(str(folder)), register=True)
    try:
        ledger = ProxyLedger(store)

        def stored() -> int:
            return sum(1 for p in folder.iterdir() if p.is_file() and p.suffix != ".ready")

        starting = ledger.put({"weights": [1.0] * 1000})
        model = ledger.put({"weights": [2.0] * 1000})
        ledger.acquire(model)  # an MD run is using it
        assert stored() == 2
        for generation in range(10):  # ten retraining rounds replace the sampling model
            new = ledger.put({"weights": [float(generation)] * 1000})
            ledger.retire(model)
            if generation == 0:
                assert stored() == 3  # still in use by the running task: not evicted yet
                ledger.release(model)
            model = new
        assert stored() == 2  # the starting model and the current one: nothing accumulates
        assert ledger.stats() == {"proxies_created": 12, "proxies_evicted": 10, "proxies_live": 2}
        assert starting["weights"][0] == 1.0  # the kept proxy still resolves
    finally:
        store.close(clear=True)


def test_resume_drops_a_train_db_row_whose_record_was_never_written(tmp_path):
    """A kill between writing train.db and the QC record leaves an orphan row: the resume removes it (and redoes
    the structure), so train.db holds exactly the recorded results."""
    import ase.db
    from ase import Atoms

    from store.names import SIMULATION_RECORDS
    from store.rundir import RunDirectory
    from thinkers.forcefield_resume import ForcefieldHistory

    run_dir = RunDirectory.create(tmp_path, {"campaign": "forcefield"})
    with ase.db.connect(run_dir.path / "train.db") as db:
        for qc_id in (1, 2, 3):
            db.write(Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.7 + qc_id / 100]]), source="initial",
                     molecule="H2", qc_id=qc_id, trajectory=-1)
    for qc_id in (1, 2):  # the record of qc_id 3 never made it to disk
        run_dir.records(SIMULATION_RECORDS).write({"qc_id": qc_id, "source": "initial", "success": True})
    run_dir.close()
    history = ForcefieldHistory.load(RunDirectory.reopen(run_dir.path), ensemble_size=2)
    assert len(history.frames) == 2 and history.done == 2
    with ase.db.connect(run_dir.path / "train.db") as db:
        assert sorted(row.qc_id for row in db.select()) == [1, 2]


@pytest.mark.parametrize("evaluated", [False, True])
def test_resume_knows_whether_the_reloaded_ensemble_was_measured(tmp_path, evaluated):
    """A kill between a round's training and its test-set evaluation must not cost the learning curve its point:
    the history says the reloaded ensemble is unmeasured (the resumed thinker then measures it), and the summary
    keeps one point per round, in round order, whichever attempt measured it."""
    import pickle

    from store.names import TRAINING_RECORDS
    from store.rundir import RunDirectory
    from store.summaries import summarize_forcefield as summarize
    from thinkers.forcefield_resume import ForcefieldHistory

    run_dir = RunDirectory.create(tmp_path, {"campaign": "forcefield"})
    for round_, calls in ((1, 20), (2, 36)):
        folder = run_dir.path / "models" / f"round-{round_:03d}"
        folder.mkdir(parents=True)
        for member in range(2):
            (folder / f"member-{member}.pkl").write_bytes(pickle.dumps({"round": round_, "member": member}))
        run_dir.records(TRAINING_RECORDS).write({"event": "ensemble", "round": round_, "qc_calls": calls,
                                                 "n_train": calls - 1})
    run_dir.records(TRAINING_RECORDS).write({"event": "evaluation", "round": 1, "qc_calls": 20, "n_train": 19,
                                             "success": True, "force_mae": 0.5})
    if evaluated:
        run_dir.records(TRAINING_RECORDS).write({"event": "evaluation", "round": 2, "qc_calls": 36, "n_train": 35,
                                                 "success": True, "force_mae": 0.3})
    run_dir.close()
    history = ForcefieldHistory.load(RunDirectory.reopen(run_dir.path), ensemble_size=2)
    assert history.model_round == 2 and history.members[1] == {"round": 2, "member": 1}
    assert (history.model_qc_calls, history.trained_at, history.model_evaluated) == (36, 35, evaluated)

    # the resumed attempt measures round 2 after a repeated measurement of round 1: one point each, in order
    resumed = RunDirectory.reopen(run_dir.path)
    for round_, mae in ((2, 0.31), (1, 0.52)):
        resumed.records(TRAINING_RECORDS).write({"event": "evaluation", "round": round_, "qc_calls": 0,
                                                 "n_train": 0, "success": True, "force_mae": mae})
    curve = summarize(resumed, 1, 1, None)["learning_curve"]
    assert [(p["round"], p["force_mae"]) for p in curve] == [(1, 0.52), (2, 0.31)]


def test_a_job_redone_by_one_resume_is_not_redone_again_by_the_next(tmp_path):
    """Killed twice: the first resume sent job 2 again as job 3 (killed again before it finished) and job 4 as
    job 5 (finished). The second resume redoes job 3 only: job 2 lives on as job 3, job 4 as job 5."""
    from store.names import SIMULATION_RECORDS, SUBMITTED_RECORDS
    from store.rundir import RunDirectory
    from thinkers.forcefield_resume import ForcefieldHistory

    run_dir = RunDirectory.create(tmp_path, {"campaign": "forcefield"})
    h2 = {"numbers": [1, 1], "positions": [[0, 0, 0], [0, 0, 0.74]], "source": "active", "molecule": "H2"}
    for qc_id, extra in ((1, {}), (2, {}), (4, {}), (3, {"redo_of": 2}), (5, {"redo_of": 4})):
        run_dir.records(SUBMITTED_RECORDS).write({"qc_id": qc_id, **h2, "extra": extra})
    for qc_id in (1, 5):
        run_dir.records(SIMULATION_RECORDS).write({"qc_id": qc_id, "source": "active", "success": False,
                                                   "failure_reason": "SCF did not converge"})
    run_dir.close()
    history = ForcefieldHistory.load(RunDirectory.reopen(run_dir.path), ensemble_size=2)
    assert [job.extra["redo_of"] for job in history.unfinished] == [3]
    assert history.done == 2 and history.failed == 2 and history.next_qc_id == 6


def test_a_lock_file_left_by_a_killed_write_does_not_stop_the_resume(tmp_path):
    """ASE's lock is a file created and deleted around each write: a kill in between left ``train.db.lock`` and
    the resumed run waited for it for ever. train.db is now opened without it, and a stale one is removed."""
    import threading

    from ase import Atoms

    from store.rundir import RunDirectory
    from store.traindb import open_train_db
    from thinkers.forcefield_resume import ForcefieldHistory

    run_dir = RunDirectory.create(tmp_path, {"campaign": "forcefield"})
    database = run_dir.path / "train.db"
    with open_train_db(database) as db:
        db.write(Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]]), qc_id=1)
    assert not (run_dir.path / "train.db.lock").exists()  # no lock file is made
    (run_dir.path / "train.db.lock").touch()  # what ase.db's own lock leaves after a SIGKILL in a write
    writer = threading.Thread(target=lambda: open_train_db(database).write(Atoms("H"), qc_id=2), daemon=True)
    writer.start()
    writer.join(timeout=10)
    assert not writer.is_alive()  # ase.db.connect(database).write would wait for ever here
    assert open_train_db(database).count() == 2
    (run_dir.path / "train.db.lock").touch()
    run_dir.close()
    ForcefieldHistory.load(RunDirectory.reopen(run_dir.path), ensemble_size=2)
    assert not (run_dir.path / "train.db.lock").exists()


def test_a_pool_below_the_inference_batch_is_picked_from_once_nothing_else_can_move():
    """Near the end of the budget a small pool must not wait for ever: when no QC job waits or runs and no MD
    run is out, the selector picks from what there is. While anything could still grow the pool, it waits."""
    import threading

    from ase.build import molecule

    from thinkers.forcefield import ForcefieldThinker
    from thinkers.forcefield_rules import QCJob, Trajectory

    class Stub:
        pass

    stub = Stub()
    stub._state = threading.Condition()
    start = molecule("CH3OH")
    stub.trajectories = [Trajectory(0, "CO", start, 100), Trajectory(1, "CO", start, 100)]
    stub.pool = [(start, "CO", 0)] * 20
    stub.in_flight, stub.initial_jobs, stub.audit_jobs, stub.active_jobs = {}, [], [], []
    all_there_is = ForcefieldThinker._pool_is_all_there_is

    assert all_there_is(stub)
    stub.trajectories[1].busy = True  # an MD run is out: its frames will come
    assert not all_there_is(stub)
    stub.trajectories[1].busy = False
    stub.audit_jobs = [QCJob(start, "audit", "CO", 0)]  # QC has work: its audit continues a trajectory
    assert not all_there_is(stub)
    stub.audit_jobs = []
    stub.in_flight = {3: QCJob(start, "active", "CO", 0)}
    assert not all_there_is(stub)
    stub.in_flight, stub.pool = {}, []
    assert not all_there_is(stub)  # nothing to pick from
