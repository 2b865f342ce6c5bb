"""End to end, as users run it: `python run.py` with a real auto-started redis-server, real Parsl workers, real xTB."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from store.names import (
    FEATURE_RECORDS,
    QC_SPEC,
    REPORT,
    RL_RECORDS,
    RUN_PARAMS,
    SCREENING_RECORDS,
    SIMULATION_RECORDS,
    SUMMARY,
    TRAINING_RECORDS,
)
from store.rundir import read_jsonl
from tests.conftest import free_port, needs_redis
from tests.runs import ROOT, Run

SERVICE_MARKERS = ("redis-server", "process_worker_pool", "interchange.py")
_LAST_PORT: list[int] = []

pytestmark = [needs_redis, pytest.mark.e2e, pytest.mark.timeout(600)]


def service_pids(tag: str = "") -> set[int]:
    """Redis, interchange and worker processes; with a tag, only those whose command line names it."""
    pids = set()
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            text = " ".join([proc.info["name"] or ""] + (proc.info["cmdline"] or []))
        except psutil.Error:
            continue
        if any(marker in text for marker in SERVICE_MARKERS) and tag in text:
            pids.add(proc.info["pid"])
    return pids


def assert_nothing_left(before: set[int], run_root: Path, port: int) -> None:
    """No service process of this run survives: none naming its directory or its Redis port.

    Matching on the run's own directory and port keeps the check exact when other runs share the machine.
    """
    def left_now() -> set[int]:
        return (service_pids(str(run_root)) | service_pids(f"127.0.0.1:{port}")) - before

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and left_now():
        time.sleep(0.2)
    left = left_now()
    commands = [psutil.Process(p).cmdline() for p in left if psutil.pid_exists(p)]
    assert not left, f"processes outlived the run: {commands}"


def campaign(run_py, tmp_path: Path, *args: str, name: str | None = None,
             env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, Path]:
    """Run run.py (the campaign ``name``, or the default) to completion; check no process of the run is left.

    ``run_py`` is the fixture of that name: a run still going when a check fails or the wait times out is ended
    by its teardown.
    """
    before = service_pids()
    port = free_port()
    run = run_py(*([name] if name else []), "--runs-dir", str(tmp_path), "--redis-port", str(port), *args,
                 split_stderr=True, env=env)
    status = run.wait(timeout=540)
    result = subprocess.CompletedProcess(run.process.args, status, run.output(), run.error_output())
    assert_nothing_left(before, tmp_path, port)
    assert not run.survivors(within=10), "processes of the run outlived it"
    run_dirs = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(run_dirs) == 1, result.stdout + result.stderr
    return result, run_dirs[0]


def test_default_campaign_shape_with_real_services(tmp_path, run_py):
    result, run_dir = campaign(run_py, tmp_path, "--initial-count", "4", "--search-size", "4", "--parallel-guesses",
                               "3", "--retrain-after", "2", "--generate-size", "4", "--seed", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    for name in (RUN_PARAMS, QC_SPEC, "host_info.json", "parsl_config.txt", "runtime.log",
                 SIMULATION_RECORDS, SCREENING_RECORDS, TRAINING_RECORDS, SUMMARY):
        assert (run_dir / name).is_file(), name
    params = json.loads((run_dir / RUN_PARAMS).read_text())
    assert params["search_size"] == 4 and params["qc_code"] == "xtb"
    assert "HighThroughputExecutor" in (run_dir / "parsl_config.txt").read_text()

    records = read_jsonl(run_dir / SIMULATION_RECORDS)
    assert len(records) == 8
    for record in records:
        assert record["success"] or record["failure_reason"]
        assert record["time_running"] > 0 and record["timestamp_result_received"] >= record["timestamp_created"]
    values = [r["value"] for r in records if r["success"]]
    assert len(values) >= 6 and all(5 < v < 25 for v in values)  # GFN2-xTB ionization energies, eV
    assert {r["source"] for r in records} == {"initial", "model"}
    assert read_jsonl(run_dir / TRAINING_RECORDS)[0]["success"]
    assert read_jsonl(run_dir / SCREENING_RECORDS)[0]["n_scored"] > 100_000  # all of QM9 is screened

    summary = json.loads((run_dir / SUMMARY).read_text())
    assert summary["evaluations"] == 8 and summary["exit_status"] == 0
    assert summary["best"][0]["value"] == max(values)
    assert 0 < summary["qc_utilization"] <= 1
    assert "evaluated | best" in result.stdout  # live progress on the terminal
    redis_conf = (run_dir / "redis" / "redis.conf").read_text()
    assert "bind 127.0.0.1" in redis_conf and 'save ""' in redis_conf
    assert_report(run_dir)


def assert_valid_png(path: Path) -> None:
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as image:
        image.verify()


def assert_report(run_dir: Path) -> None:
    """run.py wrote report.md; every image it links exists and is a valid PNG."""
    import re

    report = (run_dir / REPORT).read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert {"plots/best_vs_evaluations.png", "plots/qc_utilization.png", "plots/task_overhead.png"} <= set(images)
    assert any(i.startswith("plots/molecules/") for i in images)
    for image in images:
        assert_valid_png(run_dir / image)


def test_lookup_mode_campaign_and_report_script(tmp_path, run_py):
    result, run_dir = campaign(run_py, tmp_path, "--qc-code", "qm9", "--objective", "qm9:HOMO_LUMO_gap_au",
                               "--minimize", "--pool-size", "2000", "--initial-count", "10", "--search-size", "40")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = read_jsonl(run_dir / SIMULATION_RECORDS)
    assert len(records) == 50 and all(r["success"] for r in records)
    summary = json.loads((run_dir / SUMMARY).read_text())
    assert summary["best"][0]["value"] == min(r["value"] for r in records)
    (run_dir / REPORT).unlink()
    # The script on the run directory and on a path that is none, at the same time.
    scripts = [subprocess.Popen([sys.executable, "scripts/report.py", str(path)], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for path in (run_dir, tmp_path / "nope")]
    try:
        (_, regenerated), (_, bad) = [script.communicate(timeout=120) for script in scripts]
    finally:
        for script in scripts:
            script.kill()
            script.wait()
    assert scripts[0].returncode == 0, regenerated
    assert_report(run_dir)
    assert "QM9 top-100 threshold" not in (run_dir / REPORT).read_text()  # the legend is in the PNG
    assert scripts[1].returncode == 2 and "not a run directory" in bad


def test_atomization_campaign_with_batched_tasks(tmp_path, run_py):
    result, run_dir = campaign(run_py, tmp_path, "--objective", "atomization-energy", "--initial-count", "2",
                               "--search-size", "2", "--qc-batch", "2", "--parallel-guesses", "2", "--model", "knn")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    atoms = json.loads((run_dir / "atom_energies.json").read_text())["energies"]
    assert set(atoms) == {"H", "C", "N", "O", "F", "S", "Cl", "Br"}
    records = read_jsonl(run_dir / SIMULATION_RECORDS)
    assert len(records) == 4
    assert all(r["value"] < 0 for r in records if r["success"])
    assert max(sum(1 for r in records if r["task_id"] == t) for t in {r["task_id"] for r in records}) == 2


LIBRARY = """# sulfur, chlorine and bromine, and two lines that must be skipped
CS methanethiol
CSC dimethyl_sulfide
CCS ethanethiol
c1ccsc1 thiophene
CSSC dimethyl_disulfide
CS(C)=O dmso
ClCCl dichloromethane
CCl chloromethane
ClC(Cl)Cl chloroform
Clc1ccccc1 chlorobenzene
CC(Cl)=O acetyl_chloride
CBr bromomethane
BrCCBr dibromoethane
Brc1ccccc1 bromobenzene
FC(F)(F)Br bromotrifluoromethane
Brc1ccc(Cl)cc1
Clc1ccc(S)cc1
CCSCC
NCCCl
CCBr
c1ccc2sccc2c1 benzothiophene
C[Si](C)(C)C tetramethylsilane
[Na+].[Cl-] salt
"""


def test_a_library_with_sulfur_and_halogens_real_xtb_features_cached_models_by_proxy(tmp_path, run_py):
    """A user's library as the search space, end to end with real xTB, twice on the same file.

    The first campaign featurizes the library on the ml workers and caches it; the second finds the cache and
    computes nothing. Models go to workers by proxy, one per round, all evicted by the end; no message is
    anywhere near a megabyte.
    """
    library = tmp_path / "library.smi"
    library.write_text(LIBRARY)
    cache = tmp_path / "cache"
    options = ("--search-space", str(library), "--acquisition", "ucb", "--retrain-after", "3")
    result, run_dir = campaign(run_py, tmp_path / "first", *options, "--initial-count", "5", "--search-size", "7",
                               env={"MOLSTEER_CACHE": str(cache)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "line 23: element Si is not supported" in result.stdout
    records = read_jsonl(run_dir / SIMULATION_RECORDS)
    assert len(records) == 12 and all(r["success"] for r in records), records
    evaluated = {r["smiles"] for r in records}
    for element in ("S", "Cl", "Br"):
        assert any(element in s for s in evaluated), f"no molecule with {element} evaluated"
    assert all(5 < r["value"] < 20 for r in records)  # GFN2-xTB IEs of small molecules, eV
    assert {r["source"] for r in records} == {"initial", "model"}
    features = read_jsonl(run_dir / FEATURE_RECORDS)
    # --model auto (the default) compares gc and knn, so both feature kinds are computed: one block each.
    assert features[0]["kind"] == "fingerprints+groups" and features[0]["molecules"] == 21
    assert features[0]["blocks"] == features[0]["blocks_computed"] == 2 and features[0]["blocks_failed"] == 0
    summary = json.loads((run_dir / SUMMARY).read_text())
    rounds = read_jsonl(run_dir / SCREENING_RECORDS)
    assert summary["proxies_created"] >= len(rounds) >= 2 and summary["proxies_live"] == 0
    assert 0 < summary["largest_ml_message"] < 1 << 20
    assert not (run_dir / "proxystore").exists()

    again, second_dir = campaign(run_py, tmp_path / "second", *options, "--initial-count", "3", "--search-size", "2",
                                 env={"MOLSTEER_CACHE": str(cache)})
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    reused = read_jsonl(second_dir / FEATURE_RECORDS)
    assert reused[0]["blocks_computed"] == 0 and reused[0]["library"] == features[0]["library"]


def start_long_campaign(run_py, tmp_path: Path, port: int, min_records: int) -> tuple[Run, Path]:
    """Start a long default campaign (``run_py``: the fixture); return it once it has ``min_records`` QC results.

    Returns the run and its ``simulation_records.jsonl``.
    """
    run = run_py("--runs-dir", str(tmp_path), "--redis-port", str(port), "--search-size", "500")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        found = list(tmp_path.glob(f"*/{SIMULATION_RECORDS}"))
        if found and len(read_jsonl(found[0])) >= min_records:
            return run, found[0]
        if run.poll() is not None:
            raise AssertionError(run.output())
        time.sleep(0.1)
    raise AssertionError(f"no {min_records} QC results within 300 s")  # the fixture's teardown ends the run


@pytest.mark.parametrize("signum", [signal.SIGINT], ids=["ctrl-c"])  # SIGTERM: tests/test_resilience.py
def test_interrupt_stops_everything_and_keeps_records(tmp_path, signum, run_py):
    before = service_pids()
    port = free_port()
    run, records = start_long_campaign(run_py, tmp_path, port, min_records=2)
    run.send_signal(signum)
    status = run.wait(timeout=120)
    assert status == 130, run.output()[-3000:]
    assert_nothing_left(before, tmp_path, port)
    assert not run.survivors(within=10)
    summary = json.loads((records.parent / SUMMARY).read_text())
    assert summary["exit_status"] == 130 and summary["evaluations"] >= 2


def test_remote_redis_that_does_not_answer_is_a_clear_error(tmp_path, run_py):
    result, _ = campaign(run_py, tmp_path, "--redis-host", "127.0.0.2", "--search-size", "2", "--initial-count", "2")
    assert result.returncode == 1
    assert "No Redis server answers at 127.0.0.2" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_full_design_loop_rl_generator_mpnn_ensemble_ucb(tmp_path, run_py):
    """--generator rl --model mpnn --acquisition ucb with real xTB: RL and training statistics are recorded."""
    result, run_dir = campaign(run_py, tmp_path, "--generator", "rl", "--model", "mpnn", "--acquisition", "ucb",
                               "--rl-episodes", "4", "--ensemble-size", "2", "--mpnn-epochs", "5",
                               "--mpnn-warm-epochs", "2", "--pool-size", "500", "--initial-count", "6",
                               # A round in flight when the QC budget is spent is abandoned, so the budget must
                               # outlast two rounds (7-9 s each here: both are done ~18 s after the workers are
                               # warm, 22 evaluations take ~25 s) for the warm start and the agent's return to show.
                               "--search-size", "16", "--retrain-after", "4")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rl = read_jsonl(run_dir / RL_RECORDS)
    assert len(rl) >= 2 and all(r["success"] and r["episodes"] == 4 for r in rl)
    assert rl[-1]["episodes_total"] == 4 * len(rl)  # the agent came back and kept learning
    assert all(r["valid_fraction"] == 1.0 and r["molecules_proposed"] > 0 for r in rl)
    training = read_jsonl(run_dir / TRAINING_RECORDS)
    assert all(t["model"] == "mpnn" and len(t["members"]) == 2 for t in training)
    assert len(training) >= 2
    assert not any(m["warm_start"] for m in training[0]["members"])  # the first round starts from scratch,
    assert all(m["warm_start"] for t in training[1:] for m in t["members"])  # later ones continue from it
    screening = read_jsonl(run_dir / SCREENING_RECORDS)
    assert all(s["generator"] == "rl" and s["acquisition"] == "ucb" for s in screening)
    summary = json.loads((run_dir / SUMMARY).read_text())
    # The agent (~1.2 MB of weights) goes to its task and comes back by proxy; every proxy is evicted.
    assert 0 < summary["largest_ml_message"] < 1 << 20
    assert summary["proxies_live"] == 0
    records = read_jsonl(run_dir / SIMULATION_RECORDS)
    assert len(records) == 22
    assert any(r["source"] == "model" for r in records)


def test_lost_task_server_stops_the_run_and_records_what_was_out(tmp_path, run_py):
    """If the task server dies (OOM killer, crash), run.py says so, records the molecules that were out, stops."""
    before = service_pids()
    port = free_port()
    run, records_file = start_long_campaign(run_py, tmp_path, port, min_records=2)
    servers = [c for c in psutil.Process(run.pid).children() if "run.py" in " ".join(c.cmdline())]
    assert len(servers) == 1, servers
    servers[0].kill()
    status = run.wait(timeout=120)
    output = run.output()
    assert status == 1, output[-3000:]
    assert "task server stopped unexpectedly" in output
    assert_nothing_left(before, tmp_path, port)
    assert not run.survivors(within=10)
    run_dir = records_file.parent
    records = read_jsonl(run_dir / SIMULATION_RECORDS)
    abandoned = [r for r in records if r.get("abandoned")]
    assert abandoned and all(r["failure_reason"] == "not finished: task server lost" for r in abandoned)
    summary = json.loads((run_dir / SUMMARY).read_text())
    assert summary["abandoned"] == len(abandoned) and summary["exit_status"] == 1
