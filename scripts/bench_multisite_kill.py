#!/usr/bin/env python
"""kill -9 of a two-site run, and how long until nothing of it is left on either side.

Starts ``scripts/run-multisite.sh`` against the emulated remote site of ``tests/clusters.py`` (a network
namespace behind a real ``sshd``; needs root), waits until ml results arrive from the remote workers, then
SIGKILLs either the launch script alone (``--target script``: ``run.py``, Redis and the tunnels live on
without it, and the script's guard must stop them) or its whole process group (``--target group``: as a
closed terminal or a killed job would). It then measures how long until no process of the run remains here
(run.py's watchdog and the guard at work) and in the remote namespace (each remote block stops when its SSH
session ends).

Usage: ``python scripts/bench_multisite_kill.py [--target script|group] [--repeats N]``; ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from store.names import TRAINING_RECORDS  # noqa: E402
from tests.clusters import leftover_processes, remote_site  # noqa: E402

VENV_BIN = Path(sys.executable).parent


def once(work: Path, target: str, timeout: float = 60) -> dict:
    """One run killed once ml results arrive; seconds until nothing is left, and what was left if not."""
    with remote_site(work / "remote") as remote:
        runs = work / "runs"
        command = ["bash", str(ROOT / "scripts" / "run-multisite.sh"), "--remote-host", remote.host,
                   "--ssh-config", str(remote.ssh_config), "--remote-dir", str(work / "remote-workers"),
                   "--remote-init", f"export PATH={VENV_BIN}:$PATH; cd {ROOT}", "--", "--initial-count", "4",
                   "--search-size", "400", "--qc-workers", "1", "--runs-dir", str(runs)]
        env = {**os.environ, "TMPDIR": str(work), "MOLSTEER_ACTIVATE": f"export PATH={VENV_BIN}:$PATH"}
        log = work / "launcher.log"
        with open(log, "w") as output:
            launcher = subprocess.Popen(command, cwd=work, env=env, stdout=output, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            found = list(runs.glob(f"*/{TRAINING_RECORDS}"))
            if found and found[0].read_text().strip():
                break
            time.sleep(0.2)
        else:
            os.killpg(launcher.pid, signal.SIGTERM)
            launcher.wait()
            raise RuntimeError(f"no ml result arrived from the remote site within 180 s:\n{log.read_text()[-3000:]}")
        remote_before = len(remote.pids())
        if target == "group":
            os.killpg(launcher.pid, signal.SIGKILL)
        else:
            os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait()  # as the user's shell would reap it
        killed = time.monotonic()

        def left() -> list[str]:
            here = leftover_processes(str(runs)) + leftover_processes(f"{work}/molsteer-redis")
            return here + [f"remote pid {pid}" for pid in remote.pids()]

        while (remaining := left()) and time.monotonic() - killed < timeout:
            time.sleep(0.1)
        return {"seconds": round(time.monotonic() - killed, 1), "left": remaining,
                "remote_processes_before": remote_before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=["script", "group"], default="script")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    results = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="bench-multisite-kill-") as work:
            results.append(once(Path(work), args.target))
            print(f"kill -9 of the {args.target}: nothing left after {results[-1]['seconds']} s "
                  f"(left: {results[-1]['left'] or 'none'})")
    print(json.dumps({"benchmark": "multisite_kill", "target": args.target, "runs": results,
                      "median_seconds": round(statistics.median(r["seconds"] for r in results), 1),
                      "runs_with_leftovers": sum(bool(r["left"]) for r in results)}))


if __name__ == "__main__":
    main()
