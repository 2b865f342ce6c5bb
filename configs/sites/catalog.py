"""Parsl sites: small functions ``name(run_dir, options) -> parsl.Config``, one per kind of machine.

Every site provides two executors labelled by :mod:`configs.sites.executors`: ``qc`` for quantum chemistry and
``ml`` for training and inference, so QC never queues behind a model (and the reverse). What differs is where
their workers start and how:

* ``local``: both worker pools on this machine, bound to loopback.
* ``pbs``: inside one batch job (PBS Pro, a Cobalt-era job, or a Slurm allocation). The job's nodes are split:
  the last ``ml_nodes`` serve ml, the rest QC; a real ``mpiexec`` starts one worker pool per node. QC tasks that
  span several nodes go through Parsl's MPI executor, which hands each task its own nodes.
* ``slurm``: each partition is a block of nodes requested from Slurm with ``sbatch``; ``srun`` starts the pools.
* ``multisite``: QC here; ml workers on another site's login node, started over SSH (:mod:`configs.sites.remote`) and
  connected back through SSH tunnels only.

Every interchange binds an explicit address; nothing here contacts the network to guess one. Workers are
encrypted (CurveZMQ), whichever site they are on.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from parsl.config import Config
from parsl.executors import HighThroughputExecutor, MPIExecutor
from parsl.launchers import MpiExecLauncher, SimpleLauncher, SrunLauncher
from parsl.providers import LocalProvider, SlurmProvider

from configs.settings.models import CommonSettings, SettingsError, one_line
from configs.sites.executors import ML_EXECUTOR, QC_EXECUTOR

logger = logging.getLogger(__name__)

NODE_FILES = ("PBS_NODEFILE", "COBALT_NODEFILE")
"""Variables naming a batch job's node file, in the order they are tried; then ``SLURM_JOB_NODELIST``."""


@dataclass(frozen=True)
class SiteOptions:
    """What a site needs to know: how many workers, how big a QC task is, and where the machines are."""

    qc_workers: int
    ml_workers: int
    qc_cores_per_task: int = 1
    address: str | None = None
    worker_init: str = ""
    ml_nodes: int = 1
    qc_nodes: int = 1
    qc_nodes_per_task: int = 1
    mpi_flavor: str = "openmpi"
    slurm_account: str | None = None
    slurm_partition: str | None = None
    slurm_qos: str | None = None
    walltime: str = "01:00:00"
    scheduler_options: str = ""
    shared_nodes: bool = False
    remote_host: str | None = None
    ssh_config: Path | None = None
    remote_dir: str = "molsteer-workers"
    remote_init: str = ""
    ml_worker_port: int = 54931

    @classmethod
    def from_settings(cls, settings: object, qc_cores_per_task: int) -> SiteOptions:
        """The site's share of a campaign's settings (any object with the same attribute names)."""
        names = [name for name in cls.__dataclass_fields__ if name != "qc_cores_per_task"]
        return cls(qc_cores_per_task=qc_cores_per_task, **{name: getattr(settings, name) for name in names})


def _bin_dir() -> Path:
    """The directory holding this interpreter's entry points (``process_worker_pool.py``, ``interchange.py``).

    Parsl finds both through ``PATH``; putting the running environment first means ``.venv/bin/python run.py``
    works without activating the virtual environment, on this machine and on nodes sharing its file system.
    """
    return Path(sys.executable).parent


def worker_environment(threads_per_task: int, extra: str = "", this_python: bool = True) -> str:
    """Shell lines run before a worker pool starts: the user's lines, then PATH and one thread per core a task owns.

    xTB, NumPy and TensorFlow would otherwise each start a thread per core of the node, and workers sharing a
    node would fight over them. ``this_python`` puts the running environment first on PATH (not on another site,
    whose environment the user's lines activate).
    """
    path = f"PATH={_bin_dir()}:$PATH " if this_python else ""
    line = (f"export {path}OMP_NUM_THREADS={threads_per_task} "
            f"OPENBLAS_NUM_THREADS={threads_per_task} MKL_NUM_THREADS={threads_per_task} "
            f"TF_NUM_INTRAOP_THREADS={threads_per_task} TF_NUM_INTEROP_THREADS=1 TF_CPP_MIN_LOG_LEVEL=2")
    return "\n".join(part for part in (extra.strip(), line) if part)


def _executor(label: str, workers: int, address: str, run_dir: Path, provider: object,
              cores_per_worker: float = 1e-6, worker_logdir_root: str | None = None,
              **kwargs: object) -> HighThroughputExecutor:
    """A HighThroughputExecutor with this project's conventions: explicit address, encryption, fast heartbeats."""
    return HighThroughputExecutor(
        label=label,
        address=address,
        loopback_address="127.0.0.1",
        # CurveZMQ (stated so it stays on): a client without this run's keys, which sit in the run directory with
        # mode 0700, cannot complete the handshake, so nothing it sends is ever unpickled.
        encrypted=True,
        max_workers_per_node=workers,
        # Parsl caps workers per node at cores / cores_per_worker; on cluster nodes the count asked for is meant.
        cores_per_worker=cores_per_worker,
        interchange_launch_cmd=[str(_bin_dir() / "interchange.py")],
        worker_logdir_root=worker_logdir_root or str(run_dir),
        # Workers notice a vanished interchange within seconds instead of the default two minutes.
        heartbeat_period=2,
        heartbeat_threshold=10,
        provider=provider,
        **kwargs,
    )


def _local_executor(label: str, workers: int, threads_per_task: int, run_dir: Path) -> HighThroughputExecutor:
    """A worker pool of exactly ``workers`` processes on this machine, each task using ``threads_per_task``."""
    return _executor(label, workers, "127.0.0.1", run_dir,
                     LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1,
                                   worker_init=worker_environment(threads_per_task)),
                     # Share the cores out so the count asked for is honoured on this machine.
                     cores_per_worker=(os.cpu_count() or 1) / workers)


def _config(run_dir: Path, executors: list, strategy: str = "none") -> Config:
    return Config(
        executors=executors,
        run_dir=str(run_dir / "parsl"),
        strategy=strategy,  # "none": blocks are started once and kept, so workers keep QC codes loaded
        strategy_period=0.5,  # the first blocks start at the first strategy tick: default 5 s of idle start
        usage_tracking=0,
    )


def local(run_dir: Path, options: SiteOptions) -> Config:
    """Run on this machine: both partitions as local worker pools bound to loopback, Parsl's files in the run dir."""
    run_dir = Path(run_dir).resolve()
    return _config(run_dir, [
        _local_executor(QC_EXECUTOR, options.qc_workers, options.qc_cores_per_task, run_dir),
        _local_executor(ML_EXECUTOR, options.ml_workers, 1, run_dir),
    ])


def host_address() -> str:
    """The address this host's own name resolves to (``/etc/hosts`` or the site's resolver), never by probing.

    Compute nodes reach the head node by that address on every cluster we know; ``--address`` overrides it.
    """
    name = socket.gethostname()
    try:
        return socket.gethostbyname(name)
    except OSError as exc:
        raise SettingsError(f"cannot resolve this host's name {name!r} ({exc}); give --address") from exc


def batch_job_nodes(environ: dict[str, str] | None = None) -> tuple[list[str], str]:
    """The nodes of the batch job this process runs in, one entry per node, and where they were read from.

    A node file (``$PBS_NODEFILE`` on PBS Pro, ``$COBALT_NODEFILE`` on Cobalt-era machines) lists a node once per
    core on some systems: repeated lines are kept only when *every* line repeats the same host (a single-node
    emulation, where repeats stand for nodes); otherwise duplicates are dropped in order. Slurm's compact
    ``$SLURM_JOB_NODELIST`` is expanded by ``scontrol show hostnames``.

    Raises:
        SettingsError: no batch job is visible, or its node list cannot be read.
    """
    environ = os.environ if environ is None else environ
    for variable in NODE_FILES:
        if environ.get(variable):
            path = Path(environ[variable])
            try:
                lines = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
            except (OSError, UnicodeDecodeError) as exc:
                raise SettingsError(f"${variable} names {path}, which cannot be read ({exc})") from exc
            if not lines:
                raise SettingsError(f"${variable} names {path}, which lists no nodes")
            if len(set(lines)) > 1:
                lines = list(dict.fromkeys(lines))
            return lines, f"${variable} ({path})"
    if environ.get("SLURM_JOB_NODELIST"):
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", environ["SLURM_JOB_NODELIST"]],
                                 capture_output=True, text=True, timeout=30, check=True).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            raise SettingsError(f"cannot expand $SLURM_JOB_NODELIST with scontrol ({exc})") from exc
        return out.split(), "$SLURM_JOB_NODELIST"
    raise SettingsError("--site pbs runs inside a batch job, but none of $PBS_NODEFILE, $COBALT_NODEFILE and "
                        "$SLURM_JOB_NODELIST is set (use qsub run.sh or sbatch run.sh, or --site local)")


def split_nodes(nodes: list[str], ml_nodes: int, qc_nodes_per_task: int) -> tuple[list[str], list[str]]:
    """QC nodes and ml nodes of a batch job: the last ``ml_nodes`` serve ml, the rest QC.

    A one-node job (a debug queue, a first try) runs both partitions on its node.

    Raises:
        SettingsError: the job is too small for the split asked for.
    """
    if len(nodes) == 1 and qc_nodes_per_task == 1:
        return list(nodes), list(nodes)
    if len(nodes) <= ml_nodes:
        raise SettingsError(f"the batch job has {len(nodes)} node(s): --ml-nodes {ml_nodes} leaves none for QC")
    qc, ml = nodes[:-ml_nodes], nodes[-ml_nodes:]
    if len(qc) < qc_nodes_per_task:
        raise SettingsError(f"--qc-nodes-per-task {qc_nodes_per_task} needs that many QC nodes; the batch job "
                            f"leaves {len(qc)} for QC after --ml-nodes {ml_nodes}")
    return qc, ml


def _mpiexec_launcher(flavor: str) -> MpiExecLauncher:
    """One worker pool per node of a node file, with the MPI at hand.

    Open MPI maps round-robin over the (deduplicated) hosts with ``--map-by node``; MPICH-style launchers (MPICH's
    Hydra, Cray PALS) say ``--ppn 1``. Neither binds the pool to a core: its workers share the node.
    """
    if flavor == "openmpi":
        return MpiExecLauncher(bind_cmd="--bind-to", overrides="--map-by node")
    return MpiExecLauncher(bind_cmd="--cpu-bind", overrides="--ppn 1")


def _mpi_environment(flavor: str) -> str:
    """Open MPI refuses to start as root unless told twice; containers and test machines run as root."""
    if flavor == "openmpi" and os.geteuid() == 0:
        return "export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"
    return ""


def pbs(run_dir: Path, options: SiteOptions) -> Config:
    """Inside one batch job: QC on all nodes but the last ``ml_nodes``, ml on those; pools started by ``mpiexec``.

    Each partition gets its own node file in ``run_dir/nodes`` and sees it as ``$PBS_NODEFILE``, which is how
    Parsl's ``MpiExecLauncher`` (and its MPI executor) learn their nodes. With ``qc_nodes_per_task`` above one,
    QC runs on Parsl's ``MPIExecutor``: one worker per group of nodes on the head node, and every QC task gets
    ``$PARSL_MPI_NODELIST`` and its rank counts, from which the QC method builds its ``mpiexec`` line.
    """
    run_dir = Path(run_dir).resolve()
    nodes, source = batch_job_nodes()
    qc_nodes, ml_nodes = split_nodes(nodes, options.ml_nodes, options.qc_nodes_per_task)
    node_dir = run_dir / "nodes"
    node_dir.mkdir(exist_ok=True)
    (node_dir / "qc.nodes").write_text("".join(f"{node}\n" for node in qc_nodes))
    (node_dir / "ml.nodes").write_text("".join(f"{node}\n" for node in ml_nodes))
    logger.info("Batch job nodes from %s: %d for QC, %d for ml", source, len(qc_nodes), len(ml_nodes))
    address = options.address or host_address()
    mpi_env = _mpi_environment(options.mpi_flavor)

    def init(label: str, threads: int, mpi_executor: bool = False) -> str:
        # Parsl's mpiexec launcher writes its host file into the working directory: make that the run directory.
        own_nodes = f"export PBS_NODEFILE={node_dir / f'{label}.nodes'}\ncd {run_dir}"
        if mpi_executor:  # a Slurm allocation's variables would override the node file in Parsl's MPI executor
            own_nodes += "\nunset SLURM_NODELIST SLURM_JOB_NODELIST"
        return worker_environment(threads, "\n".join(x for x in (options.worker_init, mpi_env, own_nodes) if x))

    ml = _executor(ML_EXECUTOR, options.ml_workers, address, run_dir, LocalProvider(
        nodes_per_block=len(ml_nodes), launcher=_mpiexec_launcher(options.mpi_flavor),
        init_blocks=1, min_blocks=1, max_blocks=1, worker_init=init("ml", 1)))
    if options.qc_nodes_per_task == 1:
        qc = _executor(QC_EXECUTOR, options.qc_workers, address, run_dir, LocalProvider(
            nodes_per_block=len(qc_nodes), launcher=_mpiexec_launcher(options.mpi_flavor),
            init_blocks=1, min_blocks=1, max_blocks=1, worker_init=init("qc", options.qc_cores_per_task)))
    else:
        qc = MPIExecutor(
            label=QC_EXECUTOR,
            address=address,
            loopback_address="127.0.0.1",
            encrypted=True,  # MPIExecutor's default is off
            max_workers_per_block=len(qc_nodes) // options.qc_nodes_per_task,
            mpi_launcher="mpiexec",
            interchange_launch_cmd=str(_bin_dir() / "interchange.py"),  # a string here, a list for HTEX
            worker_logdir_root=str(run_dir),
            heartbeat_period=2,
            heartbeat_threshold=10,
            provider=LocalProvider(launcher=SimpleLauncher(), init_blocks=1, min_blocks=1, max_blocks=1,
                                   worker_init=init("qc", options.qc_cores_per_task, mpi_executor=True)),
        )
    return _config(run_dir, [qc, ml])


def slurm(run_dir: Path, options: SiteOptions) -> Config:
    """Blocks from Slurm: one job of ``qc_nodes`` for QC and one of ``ml_nodes`` for ml, pools started by srun.

    The run directory must be on a file system the compute nodes share (it holds the encryption keys and the
    worker logs). The "simple" strategy replaces a block that ended (walltime, node failure) with a new job.
    """
    run_dir = Path(run_dir).resolve()
    address = options.address or host_address()
    scheduler_options = "\n".join(f"#SBATCH {line.strip().removeprefix('#SBATCH').strip()}"
                                  for line in options.scheduler_options.split(";") if line.strip())

    def provider(nodes: int, threads: int) -> SlurmProvider:
        return SlurmProvider(
            partition=options.slurm_partition, account=options.slurm_account, qos=options.slurm_qos,
            nodes_per_block=nodes, init_blocks=1, min_blocks=1, max_blocks=1, walltime=options.walltime,
            scheduler_options=scheduler_options, exclusive=not options.shared_nodes,
            worker_init=worker_environment(threads, options.worker_init), launcher=SrunLauncher(),
        )

    return _config(run_dir, [
        _executor(QC_EXECUTOR, options.qc_workers, address, run_dir, provider(options.qc_nodes,
                                                                              options.qc_cores_per_task)),
        _executor(ML_EXECUTOR, options.ml_workers, address, run_dir, provider(options.ml_nodes, 1)),
    ], strategy="simple")


def multisite(run_dir: Path, options: SiteOptions) -> Config:
    """QC on this machine; ml workers on ``remote_host``, started over SSH, reaching back through tunnels only.

    The ml interchange binds loopback on ``ml_worker_port``; ``scripts/run-multisite.sh`` forwards that port (and
    Redis's) to the remote login node with ``ssh -R``, so the workers there connect to ``127.0.0.1`` as if local.
    """
    from configs.sites.remote import SSHProvider, remote_run_dir

    run_dir = Path(run_dir).resolve()
    remote_dir = remote_run_dir(options.remote_dir, run_dir.name)
    ml = _executor(ML_EXECUTOR, options.ml_workers, "127.0.0.1", run_dir, SSHProvider(
        host=options.remote_host, ssh_config=options.ssh_config, remote_dir=remote_dir,
        worker_init=worker_environment(1, options.remote_init, this_python=False),
        log_dir=run_dir / "remote"), worker_port=options.ml_worker_port, worker_logdir_root=remote_dir)
    return _config(run_dir, [_local_executor(QC_EXECUTOR, options.qc_workers, options.qc_cores_per_task, run_dir),
                             ml])


SITES: dict[str, Callable[[Path, SiteOptions], Config]] = {
    "local": local, "pbs": pbs, "slurm": slurm, "multisite": multisite,
}


def workers_share_files(settings: CommonSettings) -> bool:
    """Whether every worker sees this machine's file system (the run directory), as on one cluster.

    Not so for ml workers on another site, or Globus Compute endpoints anywhere: big objects then travel
    through Redis rather than files in the run directory.
    """
    return settings.site != "multisite" and settings.task_server != "globus"


def check_site(options: SiteOptions, site: str, redis_port: int) -> None:
    """Check, before a run directory exists, that the site can work: a bad one exits with one line, not a hang.

    Raises:
        SettingsError: what is missing, and how to fix it.
    """
    if site == "pbs":
        nodes, _ = batch_job_nodes()
        split_nodes(nodes, options.ml_nodes, options.qc_nodes_per_task)
        if shutil.which("mpiexec") is None:
            raise SettingsError("--site pbs starts workers with mpiexec, which is not on PATH (load the MPI module "
                                "in the job script)")
    elif site == "slurm":
        if shutil.which("sbatch") is None:
            raise SettingsError("--site slurm submits blocks with sbatch, which is not on PATH (run on a Slurm "
                                "login node)")
    elif site == "multisite":
        from configs.sites.remote import check_remote

        check_remote(options, redis_port)
    if options.address is not None and site in ("local", "multisite") and options.address != "127.0.0.1":
        raise SettingsError(f"--address {one_line(options.address)}: the {site} site binds loopback only")
