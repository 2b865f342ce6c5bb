"""Benchmark scripts run on a tiny budget and end with one JSON line with sane fields (no timing asserts)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import needs_redis

ROOT = Path(__file__).resolve().parents[1]


def run_script(*args: str, timeout: int = 600) -> dict:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    return json.loads(last)


@pytest.mark.timeout(300)
def test_bench_qc_xtb():
    """GFN2-xTB evaluates every molecule of the fixed sample (seed 0: four ordinary QM9 molecules, which all
    succeed): the timings describe real relaxations, not failures that returned early."""
    data = run_script("scripts/bench_qc.py", "--codes", "xtb", "--n-xtb", "4")
    (xtb,) = data["results"]
    assert xtb["code"] == "xtb" and xtb["molecules"] == 4
    assert xtb["failures"] == 0 and xtb["failure_reasons"] == [], xtb["failure_reasons"]
    assert xtb["warmup_ok"] is True
    assert 0 < xtb["median_s"] <= xtb["p90_s"] and xtb["median_s"] == xtb["parts"]["total"]["median"]
    assert xtb["parts"]["relax"]["median"] > 0 and xtb["parts"]["embed"]["median"] > 0
    assert xtb["median_relax_steps"] >= 5  # a relaxation from an RDKit geometry takes tens of steps (about 55 here)


@needs_redis
@pytest.mark.timeout(300)
def test_bench_overhead():
    data = run_script("scripts/bench_overhead.py", "--tasks", "60", "--warmup", "5")
    assert data["stack"]["median_ms"] > 0 and data["process_pool"]["median_ms"] > 0
    assert data["stack"]["p90_ms"] >= data["stack"]["median_ms"]
    assert data["median_ratio"] == pytest.approx(data["stack"]["median_ms"] / data["process_pool"]["median_ms"])
    assert set(data["stack"]["stages_median_ms"]) >= {"running", "task_server_to_worker"}


@needs_redis
@pytest.mark.timeout(400)
def test_bench_search_tiny():
    data = run_script("scripts/bench_search.py", "--pool-size", "3000", "--budget", "80", "--top-k", "10",
                      "--initial-count", "10", "--seeds", "0", "--models", "gc", "--acquisitions", "greedy")
    assert data["budget"] == 80 and data["top_k"] == 10 and data["pool"] == 3000
    assert not data["failed"] and not data["not_run"]
    (found,) = data["combinations"]
    (random,) = data["random"]
    assert (found["objective"], found["model"], found["acquisition"]) == ("ionization-energy", "gc", "greedy")
    assert 0 <= random["recall_mean"] <= 1 and 0 <= found["recall_mean"] <= 1
    assert found["recall_curve_mean"]["1"] == found["recall_mean"]
    # A budget of 80 out of 3000 finds the top-10 far better than chance (expected 0.27 at random).
    assert found["recall_mean"] > random["recall_mean"]


@pytest.mark.timeout(400)
def test_bench_models_tiny():
    """Hold-out errors on QM9's -HOMO (eV) in the range each method reaches on 60 training molecules.

    Measured here (seed 0, deterministic): predicting the training mean 0.39 eV; gc 0.25; knn 0.34; the MPNN after
    3 epochs, barely trained, 0.44. A model predicting in the wrong units, or a constant, is off by eV.
    """
    data = run_script("scripts/bench_models.py", "--n-train", "60", "--n-test", "40", "--ensemble-size", "2",
                      "--epochs", "3", "--episodes", "2")
    baseline = data["baseline_mae"]
    assert 0.2 < baseline < 0.8  # QM9's -HOMO spreads over ~0.6 eV (standard deviation)
    assert 0.05 < data["gc"]["mae"] < 0.8 * baseline  # group contributions learn from 60 molecules
    assert 0.05 < data["knn"]["mae"] < baseline  # so do the neighbours, less
    assert 0.05 < data["mpnn"]["mae"] < 1.5 * baseline  # 3 epochs: near the mean, not off by eV
    assert 0 < data["mpnn"]["mean_std"] < 2.0 and data["mpnn"]["ensemble_size"] == 2
    assert len(data["mpnn"]["member_train_s"]) == 2
    assert data["rl"]["episodes"] == 2 and data["rl"]["round_s"] > 0
    assert data["rl"]["molecules_proposed"] > 0 and 0 < data["rl"]["valid_fraction"] <= 1


@pytest.mark.timeout(300)
def test_cv_knn_tiny():
    """The cross-validation behind knn's settings: every variant scored; on the atomization energy the
    composition baseline beats the neighbours alone by far, as the README's table says."""
    data = run_script("scripts/cv_knn.py", "--sizes", "100", "--test", "100", "--folds", "1")
    ie, ae = data["results"]
    assert ie["objective"] == "ionization-energy" and ae["objective"] == "atomization-energy"
    assert {"mean", "plain k5", "baseline l0.1", "auto"} <= set(ae["mae"])
    assert ae["mae"]["baseline l0.1"] < 0.3 * ae["mae"]["plain k5"] < ae["mae"]["mean"]
    for row in (ie, ae):
        scores = row["uncertainty"]
        assert set(scores) == {"calibrated", "spread"}
        assert all(0 <= value["coverage_1sigma"] <= 1 and np.isfinite(value["nll"]) for value in scores.values())


@needs_redis
@pytest.mark.timeout(900)
def test_bench_forcefield_tiny():
    """Two real tiny campaigns (active learning and random selection) and their comparison."""
    data = run_script("scripts/bench_forcefield.py", "--parallel", "--qc-budget", "20", "--at", "12", "20", "--",
                      "--molecules", "CO", "--initial-displacements", "5", "--ensemble-size", "2",
                      "--retrain-after", "7", "--first-epochs", "20", "--train-epochs", "5", "--test-steps", "20",
                      "--test-every", "5", "--min-run-length", "10", "--max-run-length", "20", "--sample-every", "5",
                      "--inference-batch", "6", "--n-to-select", "3", "--stability-runs", "1",
                      "--stability-steps", "20", "--ml-workers", "1", timeout=880)
    assert data["qc_budget"] == 20
    for selector in ("disagreement", "random"):
        curve = data[selector]["learning_curve"]
        assert curve and curve[-1]["qc_calls"] == 20 and all(p["force_mae"] > 0 for p in curve)
    assert data["random"]["qc_calls_by_source"]["active"] > 0  # random picks come from the same pool
    ratio = data["ratio_random_over_active"]["20"]
    assert ratio == pytest.approx(data["random"]["final"]["force_mae"] / data["disagreement"]["final"]["force_mae"])
