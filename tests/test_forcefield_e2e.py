"""The forcefield campaign end to end: `python run.py forcefield` with real Redis, Parsl workers and GFN2-xTB."""

import json
import sqlite3
import subprocess
import sys
import time

import pytest

from store.names import (
    ALLOCATION_RECORDS,
    REFERENCE_RECORDS,
    REPORT,
    RUN_PARAMS,
    SAMPLING_RECORDS,
    SIMULATION_RECORDS,
    STABILITY_RECORDS,
    SUMMARY,
    TRAIN_DB,
    TRAINING_RECORDS,
)
from store.rundir import read_jsonl
from tests.conftest import free_port, needs_redis
from tests.runs import ROOT, finished_records, wait_for_records, wait_for_run_dir
from tests.test_e2e import assert_valid_png

pytestmark = [needs_redis, pytest.mark.e2e, pytest.mark.timeout(900)]

TINY = ["--molecules", "CO", "NC=O", "--qc-budget", "52", "--initial-displacements", "9",
        "--ensemble-size", "2", "--retrain-after", "16", "--first-epochs", "60", "--train-epochs", "25",
        "--test-steps", "48", "--test-every", "6", "--min-run-length", "10", "--max-run-length", "60",
        "--sample-every", "5", "--inference-batch", "12", "--n-to-select", "6", "--stability-runs", "1",
        "--stability-steps", "60", "--qc-workers", "1", "--ml-workers", "2", "--seed", "3"]


def ensemble_trained(run_dir, round_: int | None = None) -> bool:
    """The ensemble of round ``round_`` is recorded; by default the final round's (its members say ``final``)."""
    records = read_jsonl(run_dir / TRAINING_RECORDS)
    final = {r["round"] for r in records if r["event"] == "member" and r.get("final")}
    wanted = final if round_ is None else {round_}
    return any(r["event"] == "ensemble" and r["round"] in wanted for r in records)


def cut_back_to_final_ensemble(run_dir) -> None:
    """Leave the records as a kill just after the final ensemble was trained leaves them: nothing after it."""
    lines = (run_dir / TRAINING_RECORDS).read_text().splitlines(keepends=True)
    events = []
    for line in lines:
        try:
            events.append(json.loads(line).get("event"))
        except json.JSONDecodeError:  # a line the kill cut short
            events.append(None)
    last_ensemble = max(i for i, event in enumerate(events) if event == "ensemble")
    (run_dir / TRAINING_RECORDS).write_text("".join(lines[:last_ensemble + 1]))
    (run_dir / STABILITY_RECORDS).write_text("")


def test_tiny_forcefield_campaign_killed_resumed_learns_and_leaves_nothing_behind(tmp_path, run_py):
    """A tiny real campaign, killed with SIGKILL once past its initial set, resumed, killed again just after its
    final ensemble was trained, and resumed to the end.

    The resumed campaign must be indistinguishable in its results from one that ran straight through: every
    QC result kept, none computed twice, the budget reached, a full learning curve, report and clean-up. The
    last resume measures the final ensemble and checks its stability without a single new QC call.
    """
    port = str(free_port())
    log = tmp_path / "console.txt"
    runs = tmp_path / "runs"
    run = run_py("forcefield", *TINY, "--runs-dir", str(runs), "--redis-port", port, log=log)
    run_dir = wait_for_run_dir(runs)
    # Past the initial set, into sampling, with the first ensemble just trained (its evaluation may not be back)
    wait_for_records(run_dir / SIMULATION_RECORDS, 21, 300)
    deadline = time.monotonic() + 300
    while not ensemble_trained(run_dir, 1) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run.poll() is None and ensemble_trained(run_dir, 1), log.read_text()[-4000:]
    run.kill()
    assert not run.survivors(within=60)
    before = {r["qc_id"]: r.get("energy") for r in finished_records(run_dir)}

    resumed = run_py("--resume", str(run_dir), "--redis-port", port, log=log)
    deadline = time.monotonic() + 600
    while not ensemble_trained(run_dir) and resumed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert resumed.poll() is None, log.read_text()[-4000:]  # still measuring that ensemble, or checking it
    assert ensemble_trained(run_dir), "no final ensemble within 600 s"
    resumed.kill()
    assert not resumed.survivors(within=60)
    finished = finished_records(run_dir)
    assert len(finished) == 52 and len({r["qc_id"] for r in finished}) == 52  # budget reached, ids unique
    assert all({r["qc_id"]: r.get("energy") for r in finished}[q] == e for q, e in before.items())  # kept
    assert {r["resume"] for r in finished} == {0, 1}
    rounds = sorted({t["round"] for t in read_jsonl(run_dir / TRAINING_RECORDS) if t["event"] == "ensemble"})

    # A kill just after the final ensemble was trained leaves its records up to that point and nothing after:
    # the resume measures that ensemble and checks its stability, without a single new QC call.
    cut_back_to_final_ensemble(run_dir)
    again = run_py("--resume", str(run_dir), "--redis-port", port, log=log)
    assert again.wait(timeout=300) == 0, log.read_text()[-4000:]
    assert not again.survivors(within=60)
    assert "Resumed: " in log.read_text() and "Traceback" not in log.read_text()
    assert log.read_text().rsplit("Resumed: ", 1)[1].split("\n")[0].count(" 0 unfinished to redo")  # all done
    final = [t for t in read_jsonl(run_dir / TRAINING_RECORDS) if t["event"] == "evaluation"][-1]
    assert final["round"] == rounds[-1] and final["resume"] == 2 and final["success"]

    finished = finished_records(run_dir)
    assert len(finished) == 52 and len({r["qc_id"] for r in finished}) == 52  # no QC call after the budget
    assert {r["resume"] for r in finished} == {0, 1}
    params = json.loads((run_dir / RUN_PARAMS).read_text())
    assert params["campaign"] == "forcefield" and params["molecules"] == ["CO", "NC=O"]

    # train.db: every successful QC call, with energies, forces and where the structure came from
    with sqlite3.connect(run_dir / TRAIN_DB) as db:
        assert db.execute("select count(*) from systems").fetchone()[0] >= 42
    import ase.db
    import numpy as np

    rows = list(ase.db.connect(run_dir / TRAIN_DB).select())
    structures = {tuple(np.round(row.positions, 6).ravel()) for row in rows}
    assert len(structures) == len(rows) == sum(r["success"] for r in finished)  # no structure computed twice
    sources = {row.source for row in rows}
    assert "initial" in sources and sources & {"audit", "active"}, sources
    assert all(row.forces.shape == (row.natoms, 3) and row.energy < 0 for row in rows)

    records = read_jsonl(run_dir / SIMULATION_RECORDS)
    assert len(records) == 52 and all(r["success"] or r["failure_reason"] for r in records)
    audits = [r for r in records if r["source"] == "audit"]
    assert all(r["decision"] in ("continue", "restart") for r in audits)
    for name in (SAMPLING_RECORDS, TRAINING_RECORDS, SIMULATION_RECORDS,
                 REFERENCE_RECORDS, STABILITY_RECORDS, ALLOCATION_RECORDS):
        assert (run_dir / name).stat().st_size > 0, name
    members = [t for t in read_jsonl(run_dir / TRAINING_RECORDS) if t["event"] == "member"]
    assert members and all(t["success"] for t in members)
    assert any((run_dir / "models").rglob("member-*.pkl"))

    summary = json.loads((run_dir / SUMMARY).read_text())
    assert summary["exit_status"] == 0 and summary["qc_calls"] == 52 and summary["attempts"] == 3
    curve = summary["learning_curve"]
    assert len(curve) >= 2 and summary["test_set_size"] == 2 * 8
    # every trained ensemble measured once, even one a kill caught between its training and its evaluation
    assert [p["round"] for p in curve] == rounds, curve
    assert curve[-1]["force_mae"] < curve[0]["force_mae"], curve  # it learned
    true_forces = np.load(run_dir / "test_parity.npz")["forces_true"]
    assert curve[-1]["force_mae"] < 0.6 * np.abs(true_forces).mean(), curve  # far better than zero forces
    assert summary["stability"]["runs"] == 1
    assert 0 < summary["qc_utilization"] <= 1 and 0 < summary["ml_utilization"] <= 1
    assert summary["proxies_live"] <= summary["proxies_created"] and summary["proxies_evicted"] > 0
    assert not (run_dir / "proxystore").exists() or not any((run_dir / "proxystore").iterdir())

    report = (run_dir / REPORT).read_text()
    for plot in ("ff_learning_curve.png", "ff_parity.png", "ff_allocation.png"):
        assert f"plots/{plot}" in report, plot
        assert_valid_png(run_dir / "plots" / plot)


def test_forcefield_rejects_a_molecule_not_in_qm9(tmp_path):
    """A QM9 index that QM9 does not have is one clear error (any SMILES is a molecule; an index must be QM9's)."""
    result = subprocess.run([sys.executable, "run.py", "forcefield", "--molecules", "CO", "999999", "--qc-budget",
                             "10", "--initial-displacements", "1", "--runs-dir", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2  # refused before anything starts: no run directory, no service
    assert "--molecules" in result.stderr and "999999" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stdout + result.stderr
    assert not any(tmp_path.iterdir())
