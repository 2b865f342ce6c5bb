#!/usr/bin/env python
"""Start-up time of every site: how long from launching a campaign until its first QC and first ml task run.

Each site runs the same tiny design campaign (real xTB) through the launcher a user would use:

* ``local``: ``python run.py``;
* ``pbs``: ``run.sh`` as a batch scheduler runs it, with a node file listing this host three times (emulated
  nodes; the workers are started by a real ``mpiexec``);
* ``slurm``: ``run.py --site slurm`` against a real single-node Slurm started for the benchmark;
* ``multisite``: ``scripts/run-multisite.sh`` with the ml workers in a network namespace reached only through a
  real ``sshd`` (the emulated remote site of ``tests/clusters.py``).

The clock starts when the launcher is started (after the emulated cluster is up). "First QC" and "first ml"
are the earliest ``timestamp_compute_started`` among the run's QC and training records. Needs root for the
Slurm and multisite emulations (``make test`` installs their packages).

Usage: ``python scripts/bench_sites.py [--sites local pbs slurm multisite] [--repeats N]``; prints a table and
ends with one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from store.names import SIMULATION_RECORDS, TRAINING_RECORDS  # noqa: E402
from store.rundir import read_jsonl  # noqa: E402
from tests.clusters import local_slurm, remote_site  # noqa: E402

VENV_BIN = Path(sys.executable).parent
CAMPAIGN = ["--initial-count", "4", "--search-size", "4", "--qc-workers", "1", "--retrain-after", "2", "--seed", "5"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(command: list[str], env: dict[str, str], runs: Path, cwd: Path) -> dict:
    """Run one launcher and read from its records when the first QC and ml tasks started."""
    start = time.time()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    wall = time.time() - start
    if done.returncode != 0:
        raise RuntimeError(f"{command[:3]} exited {done.returncode}: {(done.stdout + done.stderr)[-2000:]}")
    run_dir = next(d for d in runs.iterdir() if d.is_dir())
    qc = [r["timestamp_compute_started"] for r in read_jsonl(run_dir / SIMULATION_RECORDS)
          if r.get("timestamp_compute_started")]
    ml = [r["timestamp_compute_started"] for r in read_jsonl(run_dir / TRAINING_RECORDS)
          if r.get("timestamp_compute_started")]
    return {"first_qc_s": round(min(qc) - start, 2), "first_ml_s": round(min(ml) - start, 2) if ml else None,
            "wall_s": round(wall, 1)}


def run_site(site: str, work: Path) -> dict:
    runs = work / "runs"
    env = {**os.environ, "TMPDIR": str(work), "MOLSTEER_ACTIVATE": f"export PATH={VENV_BIN}:$PATH"}
    if site == "local":
        return measure([sys.executable, "run.py", *CAMPAIGN, "--redis-port", str(free_port()),
                        "--runs-dir", str(runs)], env, runs, ROOT)
    if site == "pbs":
        nodefile = work / "nodefile"
        nodefile.write_text(f"{socket.gethostname()}\n" * 3)
        env.update(PBS_NODEFILE=str(nodefile), PBS_O_WORKDIR=str(ROOT), PBS_JOBID=f"bench.{os.getpid()}")
        return measure(["bash", str(ROOT / "run.sh"), *CAMPAIGN, "--runs-dir", str(runs)], env, runs, work)
    if site == "slurm":
        with local_slurm(work / "slurm") as cluster:
            env = {**cluster.env, "TMPDIR": str(work)}
            return measure([sys.executable, "run.py", *CAMPAIGN, "--site", "slurm", "--slurm-partition",
                            cluster.partition, "--shared-nodes", "--redis-port", str(free_port()),
                            "--runs-dir", str(runs)], env, runs, ROOT)
    if site == "multisite":
        with remote_site(work / "remote") as remote:
            return measure(["bash", str(ROOT / "scripts" / "run-multisite.sh"), "--remote-host", remote.host,
                            "--ssh-config", str(remote.ssh_config), "--remote-dir", str(work / "remote-workers"),
                            "--remote-init", f"export PATH={VENV_BIN}:$PATH; cd {ROOT}", "--", *CAMPAIGN,
                            "--runs-dir", str(runs)], env, runs, work)
    raise ValueError(site)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", nargs="+", default=["local", "pbs", "slurm", "multisite"],
                        choices=["local", "pbs", "slurm", "multisite"])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    results: dict[str, dict] = {}
    for site in args.sites:
        samples = []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory(prefix=f"bench-{site}-") as work:
                with contextlib.suppress(KeyboardInterrupt):
                    samples.append(run_site(site, Path(work)))
        results[site] = {key: statistics.median(s[key] for s in samples) if all(s[key] is not None for s in samples)
                         else None for key in samples[0]}
        results[site]["repeats"] = len(samples)
    print(f"{'site':10} {'first QC task (s)':>18} {'first ml task (s)':>18} {'whole run (s)':>14}")
    for site, r in results.items():
        print(f"{site:10} {r['first_qc_s']:>18} {r['first_ml_s']!s:>18} {r['wall_s']:>14}")
    print(json.dumps({"benchmark": "sites", "campaign": " ".join(CAMPAIGN), "sites": results}))


if __name__ == "__main__":
    main()
