"""The forcefield campaign end to end: `python run.py forcefield` with real Redis, Parsl workers and GFN2-xTB."""

import json
import sqlite3

import pytest

from tests.conftest import needs_redis
from tests.test_e2e import assert_valid_png, read_jsonl

pytestmark = [needs_redis, pytest.mark.e2e, pytest.mark.timeout(900)]

TINY = ["--molecules", "CO", "NC=O", "--qc-budget", "52", "--initial-displacements", "9",
        "--ensemble-size", "2", "--retrain-after", "16", "--first-epochs", "60", "--train-epochs", "25",
        "--test-steps", "48", "--test-every", "6", "--min-run-length", "10", "--max-run-length", "60",
        "--sample-every", "5", "--inference-batch", "12", "--n-to-select", "6", "--stability-runs", "1",
        "--stability-steps", "60", "--qc-workers", "1", "--ml-workers", "2", "--seed", "3"]


def test_tiny_forcefield_campaign_killed_resumed_learns_and_leaves_nothing_behind(tmp_path):
    """A tiny real campaign, killed with SIGKILL once past its initial set and resumed to the end.

    The resumed campaign must be indistinguishable in its results from one that ran straight through: every
    QC result kept, none computed twice, the budget reached, a full learning curve, report and clean-up.
    """
    from tests.conftest import free_port
    from tests.test_resilience import Run, finished_records, wait_for_records, wait_for_run_dir

    port = str(free_port())
    log = tmp_path / "console.txt"
    runs = tmp_path / "runs"
    run = Run(["forcefield", *TINY, "--runs-dir", str(runs), "--redis-port", port], log)
    run_dir = wait_for_run_dir(runs)
    wait_for_records(run_dir / "simulation_records.jsonl", 24, 300)  # past the initial set, into sampling
    run.kill()
    assert not run.survivors(within=60)
    before = {r["qc_id"]: r.get("energy") for r in finished_records(run_dir)}
    resumed = Run(["--resume", str(run_dir), "--redis-port", port], log)
    assert resumed.wait(timeout=600) == 0, log.read_text()[-4000:]
    assert not resumed.survivors(within=60)
    assert "Resumed: " in log.read_text() and "Traceback" not in log.read_text()

    finished = finished_records(run_dir)
    assert len(finished) == 52 and len({r["qc_id"] for r in finished}) == 52  # budget reached, ids unique
    assert all({r["qc_id"]: r.get("energy") for r in finished}[q] == e for q, e in before.items())  # kept
    assert {r["resume"] for r in finished} == {0, 1}
    params = json.loads((run_dir / "run_params.json").read_text())
    assert params["campaign"] == "forcefield" and params["molecules"] == ["CO", "NC=O"]

    # train.db: every successful QC call, with energies, forces and where the structure came from
    with sqlite3.connect(run_dir / "train.db") as db:
        assert db.execute("select count(*) from systems").fetchone()[0] >= 42
    import ase.db
    import numpy as np

    rows = list(ase.db.connect(run_dir / "train.db").select())
    structures = {tuple(np.round(row.positions, 6).ravel()) for row in rows}
    assert len(structures) == len(rows) == sum(r["success"] for r in finished)  # no structure computed twice
    sources = {row.source for row in rows}
    assert "initial" in sources and sources & {"audit", "active"}, sources
    assert all(row.forces.shape == (row.natoms, 3) and row.energy < 0 for row in rows)

    records = read_jsonl(run_dir / "simulation_records.jsonl")
    assert len(records) == 52 and all(r["success"] or r["failure_reason"] for r in records)
    audits = [r for r in records if r["source"] == "audit"]
    assert all(r["decision"] in ("continue", "restart") for r in audits)
    for name in ("sampling_records.jsonl", "training_records.jsonl", "simulation_records.jsonl",
                 "reference_records.jsonl", "stability_records.jsonl", "allocation_records.jsonl"):
        assert (run_dir / name).stat().st_size > 0, name
    members = [t for t in read_jsonl(run_dir / "training_records.jsonl") if t["event"] == "member"]
    assert members and all(t["success"] for t in members)
    assert any((run_dir / "models").rglob("member-*.pkl"))

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["exit_status"] == 0 and summary["qc_calls"] == 52 and summary["attempts"] == 2
    curve = summary["learning_curve"]
    assert len(curve) >= 2 and summary["test_set_size"] == 2 * 8
    # every trained ensemble measured once, even one the kill caught between its training and its evaluation
    rounds = sorted({t["round"] for t in read_jsonl(run_dir / "training_records.jsonl") if t["event"] == "ensemble"})
    assert [p["round"] for p in curve] == rounds, curve
    assert curve[-1]["force_mae"] < curve[0]["force_mae"], curve  # it learned
    true_forces = np.load(run_dir / "test_parity.npz")["forces_true"]
    assert curve[-1]["force_mae"] < 0.6 * np.abs(true_forces).mean(), curve  # far better than zero forces
    assert summary["stability"]["runs"] == 1
    assert 0 < summary["qc_utilization"] <= 1 and 0 < summary["ml_utilization"] <= 1
    assert summary["proxies_live"] <= summary["proxies_created"] and summary["proxies_evicted"] > 0
    assert not (run_dir / "proxystore").exists() or not any((run_dir / "proxystore").iterdir())

    report = (run_dir / "report.md").read_text()
    for plot in ("ff_learning_curve.png", "ff_parity.png", "ff_allocation.png"):
        assert f"plots/{plot}" in report, plot
        assert_valid_png(run_dir / "plots" / plot)

    # A kill just after the final ensemble was trained leaves its records up to that point and nothing after:
    # the resume measures that ensemble and checks its stability, without a single new QC call.
    lines = (run_dir / "training_records.jsonl").read_text().splitlines(keepends=True)
    last_ensemble = max(i for i, line in enumerate(lines) if json.loads(line)["event"] == "ensemble")
    (run_dir / "training_records.jsonl").write_text("".join(lines[:last_ensemble + 1]))
    (run_dir / "stability_records.jsonl").write_text("")
    again = Run(["--resume", str(run_dir), "--redis-port", port], log)
    assert again.wait(timeout=300) == 0, log.read_text()[-4000:]
    assert not again.survivors(within=60)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["qc_calls"] == 52 and len(finished_records(run_dir)) == 52 and summary["attempts"] == 3
    assert [p["round"] for p in summary["learning_curve"]] == rounds
    final = [t for t in read_jsonl(run_dir / "training_records.jsonl") if t["event"] == "evaluation"][-1]
    assert final["round"] == rounds[-1] and final["resume"] == 2 and final["success"]
    assert summary["stability"]["runs"] == 1
    assert log.read_text().rsplit("Resumed: ", 1)[1].split("\n")[0].count(" 0 unfinished to redo")  # all done


def test_forcefield_rejects_a_molecule_not_in_qm9(tmp_path):
    import subprocess
    import sys

    from tests.test_e2e import ROOT

    result = subprocess.run([sys.executable, "run.py", "forcefield", "--molecules", "CCCCCCCCCCCC", "--qc-budget",
                             "10", "--initial-displacements", "1", "--runs-dir", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2  # refused before anything starts: no run directory, no service
    assert "--molecules" in result.stderr and "Traceback" not in result.stdout + result.stderr
    assert not any(tmp_path.iterdir())
