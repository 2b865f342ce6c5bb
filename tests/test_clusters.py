"""The cluster test infrastructure: a real local Slurm and an SSH-reached network namespace, and their clean-up."""

from __future__ import annotations

import errno
import os
import shlex
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.clusters import RemoteSite, leftover_processes, local_slurm, remote_site

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

DAEMONS = ("slurmctld", "slurmd", "munged", "slurmstepd")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _names(descriptions: list[str]) -> str:
    return "\n".join(descriptions)


# --------------------------------------------------------------------------------------------------- Slurm


def test_local_slurm_runs_a_job_and_leaves_nothing(tmp_path: Path) -> None:
    workdir = tmp_path / "slurm"
    with local_slurm(workdir) as cluster:
        running = leftover_processes(str(cluster.conf))
        for daemon in ("slurmctld", "slurmd", "munged"):
            assert any(daemon in line for line in running), _names(running)
        daemon_pids = [int(line.split()[0]) for line in running]
        assert cluster.partition == "debug" and cluster.cpus >= 1
        assert cluster.env["SLURM_CONF"] == str(cluster.conf)

        out = tmp_path / "job.out"
        job_id = cluster.sbatch(f"--output={out}", "--wrap", "hostname")
        assert cluster.wait(job_id, timeout=30) == "COMPLETED", cluster.logs()
        assert out.read_text().strip() == socket.gethostname()
        failing = cluster.sbatch(f"--output={tmp_path / 'fail.out'}", "--wrap", "exit 3")
        assert cluster.wait(failing, timeout=30) == "FAILED"
        assert "slurmctld" in cluster.logs()

    assert leftover_processes(str(cluster.conf)) == []
    assert leftover_processes(f"{workdir}/") == []
    assert not [pid for pid in daemon_pids if _alive(pid)]
    assert (workdir / "log" / "slurmctld.log").stat().st_size > 0  # logs stay for a failing test to show


def test_local_slurm_exit_kills_running_jobs(tmp_path: Path) -> None:
    with local_slurm(tmp_path / "slurm") as cluster:
        job_id = cluster.sbatch(f"--output={tmp_path / 'sleep.out'}", "--wrap", "sleep 300")
        deadline = time.monotonic() + 20
        while cluster.state(job_id) != "RUNNING":
            assert time.monotonic() < deadline, cluster.logs()
            time.sleep(0.2)
        deadline = time.monotonic() + 10
        while not any("sleep 300" in line for line in leftover_processes(str(cluster.conf))):
            assert time.monotonic() < deadline, _names(leftover_processes(str(cluster.conf)))
            time.sleep(0.1)
        assert any("slurmstepd" in line for line in leftover_processes(str(cluster.conf)))

    left = leftover_processes(str(cluster.conf))
    assert left == [], _names(left)


# --------------------------------------------------------------------------------------------------- remote site

PROBE = """
import socket, sys
try:
    conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
except OSError as exc:
    print("error", exc.errno)
else:
    conn.sendall(b"ping\\n")
    print("reply", conn.makefile().readline().strip())
"""


def _probe(site: RemoteSite, host: str, port: int) -> tuple[str, str]:
    """Connect to host:port from inside the site (over SSH) and say what happened."""
    result = site.ssh(shlex.join([sys.executable, "-c", PROBE, host, str(port)]))
    assert result.returncode == 0, result.stderr + site.logs()
    kind, _, detail = result.stdout.strip().partition(" ")
    return kind, detail


class _Pong(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.server.hits += 1  # type: ignore[attr-defined]
        self.wfile.write(b"pong " + self.rfile.readline())


@contextmanager
def _local_server() -> Iterator[socketserver.ThreadingTCPServer]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Pong)
    server.hits = 0  # type: ignore[attr-defined]
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_remote_site_runs_commands_inside_its_namespace(tmp_path: Path) -> None:
    workdir = tmp_path / "site"
    with remote_site(workdir) as site:
        result = site.ssh("hostname")
        assert result.returncode == 0, result.stderr + site.logs()
        assert result.stdout.strip() == "remote-site" == site.hostname
        assert socket.gethostname() != "remote-site"  # only the connection's own UTS namespace was renamed

        there = site.ssh("readlink", "/proc/self/ns/net").stdout.strip()
        inside = subprocess.run(["ip", "netns", "exec", site.namespace, "readlink", "/proc/self/ns/net"],
                                capture_output=True, text=True, check=True).stdout.strip()
        assert there.startswith("net:[") and there == inside
        assert there != os.readlink("/proc/self/ns/net")

        # A long-running process started there is one of the namespace's processes, and so is its sshd.
        sleeper = subprocess.Popen([*site.ssh_command(), "echo $$; exec sleep 300"], stdout=subprocess.PIPE,
                                   text=True)
        remote_pid = int(sleeper.stdout.readline())
        assert remote_pid in site.pids()
        # sshd rewrites its command line (and with it the environment area), so find it by namespace, not by marker.
        assert "sshd" in {Path(f"/proc/{pid}/comm").read_text().strip() for pid in site.pids()}
        spawned = site.pids()

    sleeper.wait(timeout=10)  # its sshd was killed, so the ssh client ends too
    sleeper.stdout.close()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert site.namespace not in listed
    assert not Path("/run/netns", site.namespace).exists()
    assert not [pid for pid in spawned if _alive(pid)]
    left = leftover_processes(f"{workdir}/")
    assert left == [], _names(left)


def test_remote_site_reaches_local_services_only_through_a_reverse_tunnel(tmp_path: Path) -> None:
    workdir = tmp_path / "site"
    with _local_server() as server, remote_site(workdir) as site:
        port = server.server_address[1]
        # The namespace has only loopback: the local port is not there, and nothing outside is routable.
        assert _probe(site, "127.0.0.1", port) == ("error", str(errno.ECONNREFUSED))
        assert _probe(site, "192.0.2.1", port) == ("error", str(errno.ENETUNREACH))
        assert server.hits == 0

        with site.reverse_tunnel(port) as tunnel_pid:
            assert _alive(tunnel_pid)
            assert _probe(site, "127.0.0.1", port) == ("reply", "pong ping")
            assert server.hits == 1
        assert not _alive(tunnel_pid)
        assert _probe(site, "127.0.0.1", port) == ("error", str(errno.ECONNREFUSED))

        # The same through a hand-started `ssh -N -R`, as the application under test would start it.
        tunnel = subprocess.Popen([*site.ssh_command("-N", "-o", "ExitOnForwardFailure=yes",
                                                     "-R", f"{port}:127.0.0.1:{port}")])
        deadline = time.monotonic() + 15
        while not site.listening(port):
            assert tunnel.poll() is None and time.monotonic() < deadline, site.logs()
            time.sleep(0.1)
        assert _probe(site, "127.0.0.1", port) == ("reply", "pong ping")
        namespace = site.namespace

    # The site's exit killed the tunnel's sshd, which ends the ssh client.
    assert tunnel.wait(timeout=10) is not None
    assert namespace not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    left = leftover_processes(f"{workdir}/")
    assert left == [], _names(left)
