"""The cluster sites for real: a batch job split by mpiexec, blocks from Slurm, and ml workers on a remote site.

Each test runs a tiny campaign through the launcher a user would use (``run.sh``, ``run.py --site slurm``,
``scripts/run-multisite.sh``) against real programs started by :mod:`tests.clusters`, watches where the worker
pools run while it goes, and checks that nothing of the run — Redis, interchanges, workers, jobs, tunnels —
is left on either side afterwards.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from store.rundir import read_jsonl
from tests.clusters import leftover_processes, local_slurm, remote_site
from tests.conftest import free_port, needs_nwchem, needs_redis

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.e2e, needs_redis]

TINY_FORCEFIELD = ["--molecules", "CO", "--initial-displacements", "3", "--qc-budget", "12", "--ensemble-size", "2",
                   "--retrain-after", "4", "--first-epochs", "10", "--train-epochs", "5", "--test-steps", "10",
                   "--test-every", "5", "--min-run-length", "10", "--max-run-length", "10", "--sample-every", "5",
                   "--inference-batch", "4", "--n-to-select", "2", "--stability-runs", "0", "--ml-workers", "1",
                   "--seed", "2"]
TINY_DESIGN = ["--initial-count", "4", "--search-size", "4", "--qc-workers", "1", "--retrain-after", "2",
               "--seed", "5"]


class PoolWatcher:
    """Samples the Parsl worker pools running during a test: their ancestors' names and network namespace."""

    def __init__(self, marker: str) -> None:
        if not marker:
            raise ValueError("a marker is required: without one every worker pool on the machine would count")
        self.marker = marker  # only pools whose command line names it (the test's own runs, not the machine's)
        self.pools: dict[int, dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> PoolWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(0.3):
            for proc in psutil.process_iter(["pid", "name", "cmdline"]):
                try:
                    cmdline = " ".join(proc.info["cmdline"] or [])
                    if proc.pid in self.pools or "process_worker_pool" not in cmdline or self.marker not in cmdline:
                        continue
                    self.pools[proc.pid] = {
                        "ancestors": [p.name() for p in proc.parents()],
                        "netns": os.readlink(f"/proc/{proc.pid}/ns/net"),
                        "cmdline": cmdline,
                    }
                except (psutil.Error, OSError):
                    continue


def only_run_dir(runs: Path) -> Path:
    dirs = [d for d in runs.iterdir() if d.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def wait_for_no_leftovers(marker: str, timeout: float = 15) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := leftover_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.3)
    return left


@needs_nwchem
def test_run_sh_batch_job_mpiexec_workers_and_a_two_rank_nwchem_task(tmp_path):
    """run.sh as PBS would run it: three "nodes" (this host, repeated), ml on one, QC tasks over the other two."""
    host = socket.gethostname()
    nodefile = tmp_path / "nodefile"
    nodefile.write_text(f"{host}\n" * 3)
    qc_config = tmp_path / "qcengine.yml"
    qc_config.write_text("pbs:\n  ncores: 1\n  memory: 1\n  use_mpiexec: true\n"
                         "  mpiexec_command: \"mpiexec --bind-to none -n {total_ranks} -H {host_slots}\"\n")
    runs = tmp_path / "runs"
    env = {**os.environ, "PBS_NODEFILE": str(nodefile), "PBS_O_WORKDIR": str(ROOT), "PBS_JOBID": "4242.test",
           "TMPDIR": str(tmp_path), "MOLSTEER_ACTIVATE": f"export PATH={VENV_BIN}:$PATH"}
    env.pop("SLURM_JOB_NODELIST", None)
    command = ["bash", str(ROOT / "run.sh"), "forcefield", "--qc-code", "nwchem", "--molecules", "O",
               "--initial-displacements", "2", "--qc-budget", "6", "--ensemble-size", "2", "--retrain-after", "3",
               "--first-epochs", "10", "--train-epochs", "5", "--test-steps", "2", "--test-every", "2",
               "--min-run-length", "10", "--max-run-length", "10", "--sample-every", "5", "--inference-batch", "4",
               "--n-to-select", "2", "--stability-runs", "0", "--ml-workers", "1", "--qc-nodes-per-task", "2",
               "--qc-config", str(qc_config), "--runs-dir", str(runs)]
    with PoolWatcher(marker=str(tmp_path)) as watcher:
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=420)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Traceback" not in output
    run_dir = only_run_dir(runs)

    # The job's nodes were split: two for QC, one for ml, each partition seeing its own node file.
    assert (run_dir / "nodes" / "qc.nodes").read_text().split() == [host, host]
    assert (run_dir / "nodes" / "ml.nodes").read_text().split() == [host]
    # Worker pools were started by a real mpiexec (the ml partition's launcher).
    assert any("mpiexec" in pool["ancestors"] or "orted" in pool["ancestors"] for pool in watcher.pools.values()), \
        watcher.pools
    # Every QC calculation ran as NWChem on 2 MPI ranks over the two QC "nodes" Parsl's MPI executor gave it.
    qc = [r for r in read_jsonl(run_dir / "simulation_records.jsonl") if r["success"]]
    assert len(qc) == 6
    assert all(r["ran_on"]["mpi_ranks"] == 2 and r["ran_on"]["mpi_nodes"] == [host, host] for r in qc), \
        [r["ran_on"] for r in qc]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["exit_status"] == 0
    # Nothing of the job is left: Redis (its directory is under TMPDIR), interchanges, pools, mpiexec, orted.
    assert wait_for_no_leftovers(str(tmp_path)) == []
    assert not list(tmp_path.glob("molsteer-redis.*")), "run.sh left its Redis directory"


def test_slurm_site_gets_workers_through_real_sbatch_jobs(tmp_path):
    """--site slurm against a real single-node Slurm: both partitions' pools run inside Slurm jobs."""
    with local_slurm(tmp_path / "slurm") as cluster:
        runs = tmp_path / "runs"
        env = {**cluster.env, "TMPDIR": str(tmp_path)}
        command = [sys.executable, "run.py", *TINY_DESIGN, "--site", "slurm", "--slurm-partition", cluster.partition,
                   "--shared-nodes", "--walltime", "00:10:00", "--redis-port", str(free_port()),
                   "--runs-dir", str(runs)]
        with PoolWatcher(marker=str(tmp_path)) as watcher:
            result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-4000:] + cluster.logs()
        run_dir = only_run_dir(runs)
        assert len(read_jsonl(run_dir / "simulation_records.jsonl")) == 8
        # The pools ran as job steps of Slurm (under slurmstepd), one job per partition.
        under_slurm = [p for p in watcher.pools.values() if "slurmstepd" in p["ancestors"]]
        assert len(under_slurm) >= 2, watcher.pools
        scripts = [s for s in (run_dir / "parsl").rglob("parsl.*.block-*") if s.suffix not in (".stdout", ".stderr")]
        assert len(scripts) == 2 and all("#SBATCH" in s.read_text() for s in scripts), scripts
        # Parsl cancelled its blocks: no job of the run is queued or running any more.
        deadline = time.monotonic() + 20
        while (queued := cluster.run("squeue", "-h", "-o", "%i %j %T").stdout.strip()) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert queued == "", queued
        assert wait_for_no_leftovers(str(runs)) == []


def test_run_sh_runs_unchanged_under_sbatch(tmp_path):
    """The same run.sh submitted with a real sbatch: the one-node job's node list comes from Slurm."""
    with local_slurm(tmp_path / "slurm") as cluster:
        runs, log = tmp_path / "runs", tmp_path / "job.out"
        job = cluster.sbatch("--nodes=1", f"--partition={cluster.partition}", "--time=00:10:00",
                             f"--output={log}", f"--chdir={ROOT}",
                             f"--export=ALL,TMPDIR={tmp_path},MOLSTEER_ACTIVATE=export PATH={VENV_BIN}:$PATH",
                             str(ROOT / "run.sh"), *TINY_DESIGN, "--runs-dir", str(runs))
        with PoolWatcher(marker=str(runs)) as watcher:
            state = cluster.wait(job, timeout=300)
        output = log.read_text() if log.exists() else ""
        assert state == "COMPLETED", output[-4000:] + cluster.logs()
        run_dir = only_run_dir(runs)
        assert "from $SLURM_JOB_NODELIST" in (run_dir / "runtime.log").read_text()
        assert len(read_jsonl(run_dir / "simulation_records.jsonl")) == 8
        # Both partitions share the job's one node; their pools were started by mpiexec inside the Slurm job.
        assert (run_dir / "nodes" / "qc.nodes").read_text() == (run_dir / "nodes" / "ml.nodes").read_text()
        pools = list(watcher.pools.values())
        assert len(pools) >= 2 and all("slurmstepd" in p["ancestors"] for p in pools), pools
        assert any("mpiexec" in p["ancestors"] for p in pools), pools
        # Nothing of the job is left: the run's processes, run.sh's Redis, the job itself.
        assert wait_for_no_leftovers(str(runs)) == []
        assert wait_for_no_leftovers(str(tmp_path / "molsteer-redis")) == []
        assert not list(tmp_path.glob("molsteer-redis.*")), "run.sh left its Redis directory"
        assert cluster.run("squeue", "-h").stdout.strip() == ""


def test_multisite_ml_runs_on_the_remote_site_through_ssh_tunnels_only(tmp_path):
    """scripts/run-multisite.sh with the forcefield campaign: QC here, training, MD and inference in a network
    namespace reachable only over SSH, models passed by proxy through the tunnelled Redis, nothing left after."""
    with remote_site(tmp_path / "remote") as remote:
        remote_netns = remote.ssh("readlink /proc/self/ns/net").stdout.strip()
        runs = tmp_path / "runs"
        command = ["bash", str(ROOT / "scripts" / "run-multisite.sh"), "--remote-host", remote.host,
                   "--ssh-config", str(remote.ssh_config), "--remote-dir", str(tmp_path / "remote-workers"),
                   "--remote-init", f"export PATH={VENV_BIN}:$PATH; cd {ROOT}",
                   "--", "forcefield", *TINY_FORCEFIELD, "--runs-dir", str(runs)]
        env = {**os.environ, "TMPDIR": str(tmp_path), "MOLSTEER_ACTIVATE": f"export PATH={VENV_BIN}:$PATH"}
        with PoolWatcher(marker=str(tmp_path)) as watcher:
            result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=420)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-4000:] + remote.logs()
        run_dir = only_run_dir(runs)

        # ml tasks ran on the remote site (its hostname), QC here; the pools' network namespaces say the same.
        for name in ("sampling_records.jsonl", "inference_records.jsonl"):
            ml = read_jsonl(run_dir / name)
            assert ml and {r["worker"] for r in ml} == {"remote-site"}, (name, ml[:2])
        simulation = read_jsonl(run_dir / "simulation_records.jsonl")
        assert len(simulation) == 12 and {r["worker"] for r in simulation} == {socket.gethostname()}
        assert all(r["success"] for r in simulation)
        namespaces = {pool["netns"] for pool in watcher.pools.values()}
        assert remote_netns in namespaces and os.readlink("/proc/self/ns/net") in namespaces, watcher.pools
        # Models went to the remote workers by proxy, through Redis (there is no proxy directory here), and the
        # store was emptied at the end.
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["proxies_created"] > 0 and summary["proxies_live"] == 0, summary
        assert not (run_dir / "proxystore").exists()
        # The workers' keys were removed from the remote site when the block ended.
        assert not list((tmp_path / "remote-workers").rglob("certificates"))

        # Nothing left on the remote site, nor here (Redis, tunnels, interchanges, workers).
        deadline = time.monotonic() + 15
        while remote.pids() and time.monotonic() < deadline:
            time.sleep(0.3)
        assert remote.pids() == []
        assert wait_for_no_leftovers(str(tmp_path)) == []


def test_multisite_refuses_a_remote_without_tunnels(tmp_path):
    """run.py --site multisite without the tunnels: one line naming the missing ports, exit 2, no run directory."""
    with remote_site(tmp_path / "remote") as remote:
        runs = tmp_path / "runs"
        command = [sys.executable, "run.py", "--site", "multisite", "--remote-host", remote.host,
                   "--ssh-config", str(remote.ssh_config), "--remote-init", f"export PATH={VENV_BIN}:$PATH; cd {ROOT}",
                   "--redis-port", str(free_port()), "--runs-dir", str(runs)]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "tunnels are missing" in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert not runs.exists()

        # A remote whose Python cannot import Parsl is named as such.
        command[command.index("--remote-init") + 1] = "export PATH=/usr/bin:/bin"
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and "Parsl" in result.stderr, result.stderr
