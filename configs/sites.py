"""Parsl sites: small functions ``name(run_dir, options) -> parsl.Config``, one per machine kind.

Every site provides two HighThroughputExecutors labelled by :mod:`configs.names`: ``qc`` for quantum
chemistry and ``ml`` for training and inference, so QC never queues behind a model (and the reverse).
Cluster sites (PBS, Slurm, multi-site) add functions here with the same signature.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.providers import LocalProvider

from configs.names import ML_EXECUTOR, QC_EXECUTOR


@dataclass(frozen=True)
class SiteOptions:
    """What a site needs to know about the campaign to size its executors."""

    qc_workers: int
    ml_workers: int
    qc_cores_per_task: int = 1


def _bin_dir() -> Path:
    """The directory holding this interpreter's entry points (``process_worker_pool.py``, ``interchange.py``).

    Parsl finds both through ``PATH``; putting the running environment first means ``.venv/bin/python run.py``
    works without activating the virtual environment.
    """
    return Path(sys.executable).parent


def _local_executor(label: str, workers: int, threads_per_task: int, run_dir: Path) -> HighThroughputExecutor:
    """A worker pool of exactly ``workers`` processes on this machine, each task using ``threads_per_task``."""
    bin_dir = _bin_dir()
    return HighThroughputExecutor(
        label=label,
        address="127.0.0.1",
        loopback_address="127.0.0.1",
        # CurveZMQ (Parsl's default, stated so it stays on): a client without this run's keys, which sit in the
        # run directory with mode 0700, cannot complete the handshake, so nothing it sends is ever unpickled.
        encrypted=True,
        max_workers_per_node=workers,
        # Parsl caps workers at cores / cores_per_worker; share the cores out so the count asked for is honoured.
        cores_per_worker=(os.cpu_count() or 1) / workers,
        interchange_launch_cmd=[str(bin_dir / "interchange.py")],
        worker_logdir_root=str(run_dir),
        # Workers notice a vanished interchange within seconds instead of the default two minutes.
        heartbeat_period=2,
        heartbeat_threshold=10,
        provider=LocalProvider(
            init_blocks=1,
            min_blocks=1,
            max_blocks=1,
            # One OpenMP/BLAS thread per core a task owns: xTB and NumPy would otherwise each grab every core.
            worker_init=(
                f"export PATH={bin_dir}:$PATH OMP_NUM_THREADS={threads_per_task} "
                f"OPENBLAS_NUM_THREADS={threads_per_task} MKL_NUM_THREADS={threads_per_task} "
                f"TF_NUM_INTRAOP_THREADS={threads_per_task} TF_NUM_INTEROP_THREADS=1 "
                "TF_CPP_MIN_LOG_LEVEL=2"
            ),
        ),
    )


def local(run_dir: Path, options: SiteOptions) -> Config:
    """Run on this machine: both partitions as local worker pools bound to loopback, Parsl's files in the run dir."""
    run_dir = Path(run_dir).resolve()
    return Config(
        executors=[
            _local_executor(QC_EXECUTOR, options.qc_workers, options.qc_cores_per_task, run_dir),
            _local_executor(ML_EXECUTOR, options.ml_workers, 1, run_dir),
        ],
        run_dir=str(run_dir / "parsl"),
        strategy="none",  # blocks are started once and kept: workers keep QC codes loaded between tasks
        strategy_period=0.5,  # the first blocks start at the first strategy tick: default 5 s of idle start
        usage_tracking=0,
    )


SITES: dict[str, Callable[[Path, SiteOptions], Config]] = {"local": local}
