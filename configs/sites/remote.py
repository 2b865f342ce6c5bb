"""Worker pools on another site, started over OpenSSH: a small Parsl execution provider and a pre-flight check.

Parsl no longer ships SSH channels, so molsteer starts remote workers itself. Each block is one ``ssh`` process
kept open for the block's life: the remote side starts the worker pool in its own session and then waits on
the SSH connection's standard input. When the connection ends for any reason (the block is cancelled, the run
ends, ``run.py`` is killed and its watchdog stops the local ``ssh``, or the network drops), the remote side
reads end-of-file and stops the whole worker session. Nothing is left running on the remote site.

Workers reach this site's interchange (and Redis, for proxies) only through tunnels (``ssh -R``) that
``scripts/run-multisite.sh`` opens, so they connect to ``127.0.0.1`` on the remote login node. The
interchange accepts only workers of the same Python minor version and Parsl version; :func:`check_remote`
compares them before anything starts, so a mismatch is one clear line rather than workers that never register.
"""

from __future__ import annotations

import base64
import io
import logging
import re
import shlex
import subprocess
import sys
import tarfile
import threading
from importlib.metadata import version
from pathlib import Path
from typing import Any

from parsl.jobs.states import JobState, JobStatus
from parsl.launchers import SingleNodeLauncher
from parsl.providers.base import ExecutionProvider
from parsl.providers.errors import SubmitException
from parsl.utils import RepresentationMixin

from configs.settings.models import SettingsError, one_line

logger = logging.getLogger(__name__)

CERT_OPTION = re.compile(r"--cert_dir\s+(\S+)")


def ssh_command(host: str, ssh_config: Path | None = None) -> list[str]:
    """The ``ssh`` invocation for ``host``: never prompts, notices a dead connection within a minute."""
    command = ["ssh"]
    if ssh_config is not None:
        command += ["-F", str(ssh_config)]
    return command + ["-o", "BatchMode=yes", "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4", host]


def remote_run_dir(remote_dir: str, run_name: str) -> str:
    """The run's directory on the remote site (relative paths are relative to the remote home)."""
    return f"{remote_dir.rstrip('/')}/{run_name}"


def _block_script(remote_dir: str, block: str, worker_init: str, command: str) -> str:
    """The remote side of one block: prepare, start the pool in its own session, stop it when SSH goes away."""
    return f"""set -e
mkdir -p {shlex.quote(remote_dir)}
{worker_init}
set +e
setsid bash -c {shlex.quote(command)} > {shlex.quote(f"{remote_dir}/{block}.log")} 2>&1 < /dev/null &
pid=$!
echo $pid > {shlex.quote(f"{remote_dir}/{block}.pid")}
echo "molsteer-block-started $pid $(hostname)"
cat > /dev/null
kill -TERM -- -$pid 2> /dev/null
for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 -- -$pid 2> /dev/null || break; sleep 0.5; done
kill -KILL -- -$pid 2> /dev/null
rm -f {shlex.quote(f"{remote_dir}/{block}.pid")}
rm -rf {shlex.quote(f"{remote_dir}/certificates")}
"""


class SSHProvider(ExecutionProvider, RepresentationMixin):
    """Parsl blocks on a remote host, each one ``ssh`` session whose end stops the block's workers.

    Args:
        host: SSH destination (a host name or an alias of the ssh configuration).
        ssh_config: ssh client configuration file (``ssh -F``), or None for the user's own.
        remote_dir: this run's directory on the remote host: block logs, pid files and the encryption keys.
        worker_init: shell lines run on the remote host before the pool starts (activate its environment).
        log_dir: local directory for each block's ``ssh`` output.
    """

    def __init__(self, host: str, ssh_config: Path | None = None, remote_dir: str = "molsteer-workers",
                 worker_init: str = "", log_dir: Path | None = None, init_blocks: int = 1, min_blocks: int = 1,
                 max_blocks: int = 1, nodes_per_block: int = 1, parallelism: float = 1, cmd_timeout: int = 60):
        self._label = "ssh"
        self.host = host
        self.ssh_config = ssh_config
        self.remote_dir = remote_dir
        self.worker_init = worker_init
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.init_blocks = init_blocks
        self.min_blocks = min_blocks
        self.max_blocks = max_blocks
        self.nodes_per_block = nodes_per_block
        self.parallelism = parallelism
        self.cmd_timeout = cmd_timeout
        self.launcher = SingleNodeLauncher()
        self.script_dir: str | None = None
        self.cores_per_node = None
        self.mem_per_node = None
        self.resources: dict[str, dict[str, Any]] = {}
        self._count = 0
        self._lock = threading.Lock()

    @property
    def label(self) -> str:  # noqa: D102
        return self._label

    @property
    def status_polling_interval(self) -> int:  # noqa: D102
        return 5

    def _ssh(self) -> list[str]:
        return ssh_command(self.host, self.ssh_config)

    def _copy_certificates(self, local: Path, remote: str) -> None:
        """Send the executor's CurveZMQ key folder to the remote host (mode 0700), as a tar stream over SSH."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            archive.add(local, arcname="certificates")
        script = (f"umask 077 && mkdir -p {shlex.quote(remote)} && rm -rf {shlex.quote(remote)}/certificates && "
                  f"tar -C {shlex.quote(remote)} -xf - && chmod 700 {shlex.quote(remote)}/certificates")
        done = subprocess.run([*self._ssh(), script], input=buffer.getvalue(), capture_output=True,
                              timeout=self.cmd_timeout)
        if done.returncode != 0:
            raise SubmitException("ssh", f"could not copy the worker keys to {self.host}:{remote}",
                                  stderr=done.stderr.decode(errors="replace"))

    def submit(self, command: str, tasks_per_node: int, job_name: str = "molsteer.ssh") -> str:
        """Start one block on the remote host and return its id once the pool process exists there."""
        with self._lock:
            self._count += 1
            block = f"block-{self._count}"
        certificates = CERT_OPTION.search(command)
        if certificates:  # the pool needs this run's keys, under the remote run directory
            local = Path(certificates.group(1))
            self._copy_certificates(local, self.remote_dir)
            command = command.replace(certificates.group(0), f"--cert_dir {self.remote_dir}/certificates")
        script = _block_script(self.remote_dir, block, self.worker_init, command)
        encoded = base64.b64encode(script.encode()).decode()
        remote = f'exec bash -c "$(echo {encoded} | base64 -d)"'  # any login shell runs this line
        log = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = open(self.log_dir / f"{block}.ssh.log", "ab")  # noqa: SIM115 - kept for the block's life
        process = subprocess.Popen([*self._ssh(), remote], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=log or subprocess.DEVNULL)
        started = process.stdout.readline().decode(errors="replace").split()
        if not started or started[0] != "molsteer-block-started":
            process.kill()
            process.wait()
            raise SubmitException(job_name, f"the worker pool did not start on {self.host}"
                                            + (f" (see {self.log_dir / f'{block}.ssh.log'})" if log else ""))
        logger.info("Started %s on %s (remote pid %s, host %s)", block, self.host, started[1], started[2])
        self.resources[block] = {"process": process, "log": log, "status": JobStatus(JobState.RUNNING)}
        return block

    def status(self, job_ids: list[str]) -> list[JobStatus]:
        """RUNNING while the block's SSH session lasts; its end means the pool was stopped."""
        statuses = []
        for job_id in job_ids:
            job = self.resources[job_id]
            code = job["process"].poll()
            if code is not None and not job["status"].terminal:
                state = JobState.CANCELLED if job.get("cancelled") else (
                    JobState.COMPLETED if code == 0 else JobState.FAILED)
                job["status"] = JobStatus(state, exit_code=code)
            statuses.append(job["status"])
        return statuses

    def cancel(self, job_ids: list[str]) -> list[bool]:
        """End each block's SSH session: the remote side then stops its worker session."""
        done = []
        for job_id in job_ids:
            job = self.resources[job_id]
            job["cancelled"] = True
            process: subprocess.Popen = job["process"]
            try:
                process.stdin.close()
                process.wait(timeout=15)
            except (OSError, subprocess.TimeoutExpired):
                process.kill()
                process.wait()
            if job["log"] is not None:
                job["log"].close()
            done.append(True)
        return done


REMOTE_PROBE = """
import socket, sys
try:
    import parsl
    parsl_version = parsl.__version__
except Exception as exc:
    parsl_version = "missing"
try:
    import methods.simulate
    molsteer = "ok"
except Exception as exc:
    molsteer = type(exc).__name__
closed = []
for port in sys.argv[1:]:
    try:
        socket.create_connection(("127.0.0.1", int(port)), timeout=5).close()
    except OSError:
        closed.append(port)
print("molsteer-probe", "%d.%d" % sys.version_info[:2], parsl_version, molsteer, ",".join(closed) or "-")
"""


def check_remote(options: Any, redis_port: int) -> None:
    """Before a multisite run: the remote host answers, runs the same Python and Parsl, and the tunnels exist.

    Raises:
        SettingsError: one line saying which of these failed and what to do.
    """
    host = options.remote_host
    encoded = base64.b64encode(REMOTE_PROBE.encode()).decode()
    script = "\n".join(x for x in (
        options.remote_init,
        f"echo {encoded} | base64 -d | \"$(command -v python || command -v python3)\" - "
        f"{options.ml_worker_port} {redis_port}",
    ) if x)
    try:
        done = subprocess.run([*ssh_command(host, options.ssh_config), script], capture_output=True, text=True,
                              timeout=120)
    except FileNotFoundError as exc:
        raise SettingsError("--site multisite needs the ssh client (Debian: openssh-client)") from exc
    except subprocess.TimeoutExpired as exc:
        raise SettingsError(f"--remote-host {host}: no answer over SSH within 120 s") from exc
    probe = next((line.split() for line in done.stdout.splitlines() if line.startswith("molsteer-probe")), None)
    if probe is None:
        detail = one_line(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
        raise SettingsError(f"--remote-host {host}: cannot run Python there over SSH ({detail}); check "
                            f"--remote-init and --ssh-config")
    _, python, parsl_version, molsteer, closed = probe[:5]
    here_python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    here_parsl = version("parsl")
    if python != here_python or parsl_version != here_parsl:
        raise SettingsError(f"--remote-host {host}: Python {python} with Parsl {parsl_version} there, Python "
                            f"{here_python} with Parsl {here_parsl} here; Parsl workers must match both (install "
                            f"the same environment there, e.g. make setup in a clone, and point --remote-init at it)")
    if molsteer != "ok":
        raise SettingsError(f"--remote-host {host}: molsteer's methods cannot be imported there ({molsteer}); "
                            f"make --remote-init activate an environment with molsteer installed")
    if closed != "-":
        ports = closed.split(",")
        raise SettingsError(f"--remote-host {host}: nothing answers on its 127.0.0.1 port(s) {', '.join(ports)}; "
                            f"the SSH tunnels are missing (start with scripts/run-multisite.sh, or open them with "
                            f"ssh -R {ports[0]}:127.0.0.1:{ports[0]} …)")
