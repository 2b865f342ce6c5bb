"""Real cluster components for tests: a single-node Slurm, an SSH-reached "remote site", and a leftover check.

Why this module exists: molsteer drives Parsl and Colmena on batch systems and on remote login nodes. Mocks of
``sbatch`` or of an SSH channel cannot show that a run really submits, tunnels and cleans up, so these helpers start the
real programs (Debian's slurm-wlm, munge and OpenSSH) on this machine, without systemd, in private directories and on
free ports, so that several test sessions can run side by side and nothing of them outlives the test.

Both context managers need root (Slurm runs as ``SlurmUser=root``; network namespaces need CAP_SYS_ADMIN) and skip the
test with the reason when they cannot run. ``make system-packages`` installs the programs when run as root.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SSHD = "/usr/sbin/sshd"
_INSTALL_HINT = "(make test installs it as root)"
# AF_UNIX paths are limited to 108 bytes; Slurm and munge put sockets under their directories, so keep those short.
_MAX_SOCKET_DIR = 80


# --------------------------------------------------------------------------------------------------- processes


def _read_proc(pid: int, name: str) -> bytes | None:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as handle:
            return handle.read()
    except OSError:  # gone, or not ours to read (kernel threads, other users without root)
        return None


def _marked_pids(marker: str) -> list[int]:
    """PIDs (other than this process) whose command line or environment contains ``marker``."""
    needle = marker.encode()
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        for name in ("cmdline", "environ"):
            data = _read_proc(pid, name)
            if data is not None and needle in data:
                found.append(pid)
                break
    return found


def _describe(pid: int) -> str:
    cmdline = _read_proc(pid, "cmdline")
    if cmdline is None:
        return f"{pid} <gone>"
    args = cmdline.rstrip(b"\0").split(b"\0")
    return f"{pid} {shlex.join(arg.decode(errors='replace') for arg in args)}"


def _is_zombie(pid: int) -> bool:
    stat = _read_proc(pid, "stat")
    if stat is None:
        return True  # gone counts as not alive
    # The state letter follows the ")" that closes the command name (which may itself contain spaces or parentheses).
    return stat[stat.rfind(b")") + 2: stat.rfind(b")") + 3] in (b"Z", b"X")


def leftover_processes(marker: str) -> list[str]:
    """Describe the processes whose command line or environment contains ``marker``.

    Why: a test of a run must prove that no daemon, tunnel or worker survived it. Every process a run starts carries
    something unique to it, a path under its run directory on the command line or a variable such as ``SLURM_CONF`` in
    its environment, which this finds even when the process was re-parented to init. End a directory marker with ``/``
    so that ``.../run1/`` does not also match ``.../run10/``. Unreadable processes, zombies and this process are
    ignored.

    Args:
        marker: The text to look for in ``/proc/<pid>/cmdline`` and ``/proc/<pid>/environ``.

    Returns:
        One ``"<pid> <command line>"`` string per matching live process.
    """
    return [_describe(pid) for pid in _marked_pids(marker) if not _is_zombie(pid)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _terminate(pids: Sequence[int], grace: float = 5.0, popens: Sequence[subprocess.Popen] = ()) -> list[int]:
    """SIGTERM ``pids``, SIGKILL what is still alive after ``grace`` seconds; return the PIDs that survived even that.

    Popen objects among them are reaped with ``wait`` so that they do not linger as zombies of this process.
    """
    by_pid = {p.pid: p for p in popens}

    def reap() -> None:
        for proc in by_pid.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0)

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        living = [pid for pid in pids if _alive(pid)]
        for pid in living:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            reap()
            if not any(_alive(pid) for pid in living):
                break
            time.sleep(0.05)
    reap()
    return [pid for pid in pids if _alive(pid)]


def _free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that nobody listens on now (kept bound until all are chosen, so they differ)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"==> {path} <== unreadable: {exc}"
    return f"==> {path} <==\n" + "\n".join(text.splitlines()[-lines:])


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"{what} needs root {_INSTALL_HINT}")


def _require_programs(what: str, programs: Sequence[str]) -> None:
    missing = [p for p in programs if not (os.access(p, os.X_OK) if "/" in p else shutil.which(p))]
    if missing:
        pytest.skip(f"{what} needs {', '.join(missing)}, which is not installed {_INSTALL_HINT}")


def _short_dir(workdir: Path, name: str, stack: contextlib.ExitStack) -> Path:
    """``workdir/name``, or a short private directory under /tmp if sockets in there could exceed the AF_UNIX limit."""
    path = workdir / name
    if len(str(path)) > _MAX_SOCKET_DIR:
        path = Path(tempfile.mkdtemp(prefix=f"molsteer-{name}-", dir="/tmp"))
        stack.callback(shutil.rmtree, path, ignore_errors=True)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------------------------------- Slurm

_FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL",
                 "DEADLINE", "SPECIAL_EXIT", "REVOKED"}


@dataclass(frozen=True)
class SlurmCluster:
    """A running single-node Slurm cluster started by :func:`local_slurm`.

    Attributes:
        env: A full environment (a copy of ``os.environ`` plus ``SLURM_CONF``) for ``sbatch``, ``squeue``, ``scancel``
            and for the application under test, so they talk to this cluster and no other.
        conf: The cluster's ``slurm.conf``; its path is also a marker for :func:`leftover_processes`, since every
            daemon, step and job of the cluster carries it in ``SLURM_CONF``.
        partition: The one (default) partition.
        cpus: The node's CPU count as Slurm sees it.
    """

    env: dict[str, str]
    conf: Path
    partition: str
    cpus: int

    def run(self, *command: str, **kwargs: Any) -> subprocess.CompletedProcess:
        """Run a Slurm client command (``sbatch``, ``squeue``, ...) against this cluster, capturing text output."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", 60)
        kwargs.setdefault("env", self.env)
        return subprocess.run(list(command), **kwargs)

    def sbatch(self, *args: str) -> str:
        """Submit a batch job (``sbatch --parsable ARGS``) and return its ID; a failed submission raises, with logs."""
        result = self.run("sbatch", "--parsable", *args)
        if result.returncode != 0:
            raise RuntimeError(f"sbatch {shlex.join(args)} failed: {result.stderr}\n{self.logs()}")
        return result.stdout.strip().split(";")[0]

    def state(self, job_id: str) -> str:
        """The job's state (``PENDING``, ``RUNNING``, ``COMPLETED``, ...), or ``""`` if Slurm no longer knows it."""
        return self.run("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T").stdout.strip()

    def wait(self, job_id: str, timeout: float = 60) -> str:
        """Wait until the job has ended and return its final state.

        Why not ``sbatch --wait``: it polls only every 10 s, which would make every test 10 s slower; this polls
        ``squeue`` (finished jobs stay listed for ``MinJobAge=300`` s) every 0.1 s.
        """
        deadline = time.monotonic() + timeout
        while (state := self.state(job_id)) not in _FINAL_STATES:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {state or 'unknown'} after {timeout} s\n{self.logs()}")
            time.sleep(0.1)
        return state

    def logs(self, lines: int = 40) -> str:
        """The tail of the slurmctld, slurmd and munged logs, to show why a test against this cluster failed."""
        logdir = self.conf.parent / "log"
        names = ("slurmctld.log", "slurmd.log", "slurmctld.out", "slurmd.out", "munged.log", "munged.out")
        return "\n".join(_tail(logdir / name, lines) for name in names if (logdir / name).exists())


def _node_line(env: dict[str, str]) -> tuple[str, int]:
    """The ``NodeName=`` line from ``slurmd -C`` (RealMemory capped at the real memory) and the CPU count."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30, env=env, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("NodeName="))
    fields = dict(field.split("=", 1) for field in line.split())
    with open("/proc/meminfo") as handle:
        mem_mib = next(int(row.split()[1]) // 1024 for row in handle if row.startswith("MemTotal:"))
    # A RealMemory above what slurmd finds at registration drains the node; stay at or below the real value.
    fields["RealMemory"] = str(min(int(fields.get("RealMemory", mem_mib)), mem_mib))
    fields["NodeAddr"] = "127.0.0.1"
    return " ".join(f"{key}={value}" for key, value in fields.items()), int(fields["CPUs"])


def _make_munge_key(path: Path, env: dict[str, str]) -> None:
    if shutil.which("mungekey"):
        command = ["mungekey", "--create", f"--keyfile={path}"]
    elif shutil.which("create-munge-key"):  # munge before 0.5.14
        command = ["create-munge-key", "-f", "-k", str(path)]  # pragma: no cover - older Debian only
    else:
        path.write_bytes(os.urandom(1024))
        command = []
    if command:
        subprocess.run(command, check=True, capture_output=True, timeout=30, env=env)
    path.chmod(0o600)


def _wait_for(condition: Any, timeout: float, what: str, procs: dict[str, subprocess.Popen], logs: Any) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode} while waiting for {what}\n{logs()}")
        if condition():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}\n{logs()}")


@contextlib.contextmanager
def local_slurm(workdir: Path) -> Iterator[SlurmCluster]:
    """Start a real single-node Slurm cluster on localhost, without systemd, and tear it down completely.

    Why: to test that molsteer submits, runs and cancels real batch jobs. Everything the cluster writes (munge key and
    socket, ``slurm.conf``, state, spool, logs) lives under ``workdir``, and its ports are free ones, so two test
    sessions on one machine never share a daemon. On exit all jobs are cancelled, the daemons stopped (SIGTERM, then
    SIGKILL) and any process still carrying this cluster's ``SLURM_CONF`` (a ``slurmstepd``, a job) is killed; if one
    survives even that, a ``RuntimeError`` says which.

    Args:
        workdir: A directory of this test's own (created if missing); the logs stay there afterwards.

    Yields:
        The running cluster, its node idle.
    """
    what = "a local Slurm cluster"
    _require_root(what)
    _require_programs(what, ["slurmctld", "slurmd", "munged", "sbatch", "squeue", "scancel", "sinfo"])

    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "slurm.conf"
    logdir = workdir / "log"
    for sub in ("log", "state", "run"):
        (workdir / sub).mkdir(mode=0o700, exist_ok=True)

    # Outside Slurm variables (say, the tests themselves run inside a job) would confuse the clients; SLURM_CONF rules.
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    env["SLURM_CONF"] = str(conf)
    procs: dict[str, subprocess.Popen] = {}
    handles = []
    cluster: SlurmCluster | None = None

    def start(name: str, command: list[str]) -> None:
        out = open(logdir / f"{name}.out", "ab")  # noqa: SIM115 - closed at teardown
        handles.append(out)
        procs[name] = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)

    def logs() -> str:
        return SlurmCluster(env=env, conf=conf, partition="debug", cpus=0).logs()

    with contextlib.ExitStack() as stack:
        try:
            # munge: a private daemon, key and socket (there is no /run/munge without systemd).
            munge_dir = _short_dir(workdir, "munge", stack)
            munge_socket = munge_dir / "munge.socket"
            key = munge_dir / "munge.key"
            _make_munge_key(key, env)
            # --force: munged insists that every directory above its socket be world-searchable, which pytest's 0700
            # /tmp/pytest-of-<user> is not; everything here runs as root, so the warning is harmless. In the foreground
            # munged logs to stderr (munged.out) and ignores --log-file.
            start("munged", ["munged", "--foreground", "--force", f"--socket={munge_socket}", f"--key-file={key}",
                             f"--pid-file={workdir / 'run' / 'munged.pid'}", f"--seed-file={munge_dir / 'munged.seed'}",
                             f"--log-file={logdir / 'munged.log'}"])
            _wait_for(munge_socket.exists, 15, "munged's socket", procs, logs)

            node_line, cpus = _node_line(env)
            spool = _short_dir(workdir, "spool", stack)
            ctld_port, slurmd_port = _free_ports(2)
            conf.write_text("\n".join([
                f"ClusterName=molsteer{uuid.uuid4().hex[:8]}",
                "SlurmctldHost=localhost",
                f"SlurmctldPort={ctld_port}",
                f"SlurmdPort={slurmd_port}",
                "SlurmUser=root",
                "SlurmdUser=root",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                f"AuthInfo=socket={munge_socket}",
                f"StateSaveLocation={workdir / 'state'}",
                f"SlurmdSpoolDir={spool}",
                f"SlurmctldPidFile={workdir / 'run' / 'slurmctld.pid'}",
                f"SlurmdPidFile={workdir / 'run' / 'slurmd.pid'}",
                f"SlurmctldLogFile={logdir / 'slurmctld.log'}",
                f"SlurmdLogFile={logdir / 'slurmd.log'}",
                "SlurmctldDebug=info",
                "SlurmdDebug=info",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/none",
                "JobCompType=jobcomp/none",
                "MpiDefault=none",
                "SwitchType=switch/none",
                "MailProg=/bin/true",
                # Jobs share the node by CPU (the default select/linear would hand each job the whole node).
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_CPU",
                "ReturnToService=2",
                # Cancelled jobs get SIGKILL 2 s after SIGTERM (default 30 s), which keeps teardown fast.
                "KillWait=2",
                "InactiveLimit=0",
                "MinJobAge=300",
                node_line,
                "PartitionName=debug Nodes=ALL Default=YES State=UP MaxTime=INFINITE",
                "",
            ]))

            start("slurmctld", ["slurmctld", "-D", "-i", "-f", str(conf)])
            start("slurmd", ["slurmd", "-D", "-f", str(conf)])

            def idle() -> bool:
                result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env,
                                        timeout=15)
                return result.returncode == 0 and "idle" in result.stdout.split()

            _wait_for(idle, 30, "the node to become idle", procs, logs)
            cluster = SlurmCluster(env=env, conf=conf, partition="debug", cpus=cpus)
            yield cluster
        finally:
            _stop_slurm(cluster is not None or "slurmctld" in procs, env, conf, procs)
            for handle in handles:
                handle.close()


def _stop_slurm(cancel: bool, env: dict[str, str], conf: Path, procs: dict[str, subprocess.Popen]) -> None:
    """Cancel every job, stop slurmd, slurmctld and munged, and kill whatever of the cluster is left."""
    if cancel and procs.get("slurmctld") is not None and procs["slurmctld"].poll() is None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(["scancel", f"--user={getpass.getuser()}"], env=env, capture_output=True, timeout=15)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                queue = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True,
                                       timeout=15)
                if queue.returncode != 0 or not queue.stdout.strip():
                    break
                time.sleep(0.2)
    for name in ("slurmd", "slurmctld", "munged"):  # clients first, then the controller, munge last
        if name in procs:
            _terminate([procs[name].pid], grace=5, popens=[procs[name]])
    # slurmstepd and job processes are not children of slurmd once started and survive it; all carry SLURM_CONF.
    survivors = _terminate(_marked_pids(str(conf)), grace=3)
    survivors += [proc.pid for proc in procs.values() if proc.poll() is None]
    if survivors:
        raise RuntimeError(f"processes of the Slurm cluster {conf} survived SIGKILL: "
                           + "; ".join(_describe(pid) for pid in survivors))


# --------------------------------------------------------------------------------------------------- remote site


@dataclass(frozen=True, kw_only=True)
class RemoteSite:
    """An emulated remote login node started by :func:`remote_site`: a network namespace reached only through SSH.

    Attributes:
        host: The name to give ``ssh -F ssh_config`` (a ``Host`` entry of that file).
        ssh_config: An OpenSSH client configuration whose ``remote-site`` entry starts a fresh ``sshd -i`` inside the
            namespace for every connection (key, known host and batch mode are all set).
        namespace: The network namespace's name (``ip netns``); it has only a loopback interface.
        hostname: The host name that processes started over SSH see (a UTS namespace of each connection's own).
    """

    host: str = "remote-site"
    ssh_config: Path
    namespace: str
    hostname: str = "remote-site"

    def ssh(self, *command: str, **kwargs: Any) -> subprocess.CompletedProcess:
        """Run ``ssh -F ssh_config remote-site COMMAND...`` (text output captured, 60 s timeout unless overridden).

        As with any ``ssh``, the arguments are joined by spaces and run by the remote shell: quote them yourself
        (``shlex.join``) when they contain spaces or shell syntax.
        """
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", 60)
        return subprocess.run(["ssh", "-F", str(self.ssh_config), self.host, *command], **kwargs)

    def ssh_command(self, *options: str) -> list[str]:
        """The ``ssh`` argument list (without a remote command) for callers that start it themselves."""
        return ["ssh", "-F", str(self.ssh_config), *options, self.host]

    def pids(self) -> list[int]:
        """The PIDs of every process inside the namespace (``ip netns pids``)."""
        out = subprocess.run(["ip", "netns", "pids", self.namespace], capture_output=True, text=True, timeout=15)
        return [int(pid) for pid in out.stdout.split()]

    def listening(self, port: int) -> bool:
        """Whether something listens on TCP ``port`` inside the namespace (as a tunnel's remote end does)."""
        out = subprocess.run(["ip", "netns", "exec", self.namespace, "ss", "-Hltn"], capture_output=True, text=True,
                             timeout=15).stdout
        local_addresses = [line.split()[3] for line in out.splitlines() if len(line.split()) > 3]
        return any(address.rsplit(":", 1)[-1] == str(port) for address in local_addresses)

    @contextlib.contextmanager
    def reverse_tunnel(self, port: int, local_port: int | None = None, timeout: float = 15) -> Iterator[int]:
        """Forward ``127.0.0.1:port`` inside the site to ``127.0.0.1:local_port`` here (``ssh -N -R``) while open.

        Why: on a real site the workers reach the services of the steering machine (Redis, the Parsl interchange) only
        through such tunnels, on the same port numbers. Waits until the remote end listens; stops ``ssh`` on exit.

        Yields:
            The PID of the ``ssh`` client that holds the tunnel.
        """
        local_port = port if local_port is None else local_port
        command = self.ssh_command("-N", "-o", "ExitOnForwardFailure=yes", "-R", f"{port}:127.0.0.1:{local_port}")
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while not self.listening(port):
                if proc.poll() is not None:
                    raise RuntimeError(f"ssh -R {port} exited with {proc.returncode}: {proc.stderr.read().decode()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"ssh -R {port} did not open within {timeout} s\n{self.logs()}")
                time.sleep(0.1)
            yield proc.pid
        finally:
            _terminate([proc.pid], grace=5, popens=[proc])
            proc.stderr.close()

    def logs(self, lines: int = 40) -> str:
        """The tail of the sshd log (all connections append to it), to show why a test against the site failed."""
        return _tail(self.ssh_config.parent / "sshd.log", lines)


def _netns_exists(name: str) -> bool:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=15).stdout
    return name in (line.split()[0] for line in out.splitlines() if line.split())


@contextlib.contextmanager
def remote_site(workdir: Path) -> Iterator[RemoteSite]:
    """Emulate a remote supercomputer's login node: a network namespace reached only through a real OpenSSH sshd.

    Why: to test that molsteer's multi-site mode really works across a network boundary. The namespace has only a
    loopback interface, so a process in it reaches the steering machine's services only through ``ssh -R`` tunnels, as
    on a real site. Every SSH connection starts ``sshd -i`` inside the namespace in a UTS namespace of its own named
    ``remote-site``, so a test can prove where a process ran by its host name and its network namespace. Keys, known
    hosts, configurations and the sshd log are throw-away files under ``workdir``. On exit every process in the
    namespace is killed (SIGTERM, then SIGKILL) and the namespace deleted; a ``RuntimeError`` says if that failed.

    Args:
        workdir: A directory of this test's own (created if missing).

    Yields:
        The site; ``site.ssh("hostname")`` prints ``remote-site``.
    """
    what = "an emulated remote site"
    _require_root(what)
    _require_programs(what, ["ip", "unshare", "hostname", "ssh", "ssh-keygen", SSHD])

    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    namespace = f"molsteer-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    added = subprocess.run(["ip", "netns", "add", namespace], capture_output=True, text=True, timeout=15)
    if added.returncode != 0:
        pytest.skip(f"cannot create a network namespace (ip netns add: {(added.stderr or added.stdout).strip()})")
    try:
        subprocess.run(["ip", "-n", namespace, "link", "set", "lo", "up"], check=True, capture_output=True, timeout=15)
        site = RemoteSite(ssh_config=workdir / "ssh_config", namespace=namespace)
        _write_ssh_files(workdir, namespace)
        yield site
    finally:
        survivors = _stop_namespace(namespace)
        if survivors or _netns_exists(namespace):
            raise RuntimeError(f"network namespace {namespace} not cleaned up; survivors: {survivors}")


def _write_ssh_files(workdir: Path, namespace: str) -> None:
    # sshd's privilege-separation directory; systemd's tmpfiles would make it, so make it here.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    host_key, user_key = workdir / "ssh_host_ed25519_key", workdir / "id_ed25519"
    for key, comment in ((host_key, "remote-site host key"), (user_key, "molsteer test key")):
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)], check=True,
                           capture_output=True, timeout=30)
    (workdir / "authorized_keys").write_text(user_key.with_suffix(".pub").read_text())
    host_pub = " ".join(host_key.with_suffix(".pub").read_text().split()[:2])
    (workdir / "known_hosts").write_text(f"remote-site {host_pub}\n")
    sshd_config = workdir / "sshd_config"
    sshd_config.write_text("\n".join([
        f"HostKey {host_key}",
        f"AuthorizedKeysFile {workdir / 'authorized_keys'}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",  # the keys live in a test directory that sshd would otherwise find too open
        "PermitRootLogin prohibit-password",
        "AllowTcpForwarding yes",
        "GatewayPorts no",
        "X11Forwarding no",
        "PrintMotd no",
        "PidFile none",
        "LogLevel INFO",
        "Subsystem sftp internal-sftp",
        "",
    ]))
    inner = (f"hostname remote-site && exec {SSHD} -i -f {shlex.quote(str(sshd_config))}"
             f" -E {shlex.quote(str(workdir / 'sshd.log'))}")
    proxy = shlex.join(["ip", "netns", "exec", namespace, "unshare", "--uts", "sh", "-c", inner])
    (workdir / "ssh_config").write_text("\n".join([
        "Host remote-site",
        "  HostName remote-site",
        "  User root",
        f"  IdentityFile {user_key}",
        "  IdentitiesOnly yes",
        f"  UserKnownHostsFile {workdir / 'known_hosts'}",
        "  StrictHostKeyChecking yes",
        "  BatchMode yes",
        "  ConnectTimeout 15",
        "  ServerAliveInterval 15",
        "  ControlMaster no",
        "  ControlPath none",
        "  LogLevel ERROR",
        f"  ProxyCommand {proxy.replace('%', '%%')}",
        "",
    ]))


def _stop_namespace(namespace: str) -> list[str]:
    """Kill every process in the namespace, delete it, and describe what survived."""
    survivors: list[int] = []
    for _ in range(3):  # an sshd may fork while we kill; look again until the namespace is empty
        out = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, timeout=15)
        pids = [int(pid) for pid in out.stdout.split()]
        if not pids:
            survivors = []
            break
        survivors = _terminate(pids, grace=3)
    subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, timeout=15)
    return [_describe(pid) for pid in survivors]
