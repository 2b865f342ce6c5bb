"""Start-up of a run: its directory, what it runs on, and the wait for warm QC workers.

Workers start before the campaign loads its data and run a warm-up task each (importing the QC stack, one tiny
calculation); the campaign's first QC task is sent once they are warm, so utilization counts no start-up idle
time that could have been avoided.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
from colmena.exceptions import TimeoutException
from colmena.models import Result

from campaigns.cli import saved_parameters
from configs.services.queues import AuthRedisQueues
from configs.settings.models import CommonSettings
from store.names import RUN_PARAMS
from store.results import failure_reason
from store.rundir import RunDirectory, RunDirectoryError
from thinkers.topics import STARTUP_TOPIC

logger = logging.getLogger(__name__)


def host_info() -> dict:
    """Where and with what the run happened, for reproducing it later."""
    versions = {}
    for package in ("colmena", "parsl", "redis", "qcengine", "qcelemental", "xtb", "rdkit", "ase",
                    "scikit-learn", "numpy", "pydantic", "tensorflow-cpu", "qm9pack"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    programs = {}
    for program, flag in (("redis-server", "--version"), ("nwchem", None)):
        path = shutil.which(program)
        programs[program] = {"path": path}
        if path and flag:
            out = subprocess.run([path, flag], capture_output=True, text=True, timeout=10).stdout.strip()
            programs[program]["version"] = out
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version,
        "cpu_count": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "packages": versions,
        "programs": programs,
        "command": sys.argv,
    }


def open_run_directory(campaign: str, settings: CommonSettings, parser: argparse.ArgumentParser,
                       resume: Path | None) -> RunDirectory:
    """A new run directory, or the resumed one (locked, its budget raised if a larger one was given)."""
    if resume is None:
        try:
            return RunDirectory.create(settings.runs_dir, saved_parameters(campaign, settings))
        except OSError as exc:
            parser.error(f"--runs-dir {str(settings.runs_dir)[:200]}: cannot create a run directory there "
                         f"({exc.strerror or exc})")
    try:
        run_dir = RunDirectory.reopen(resume)
    except RunDirectoryError as exc:
        parser.error(f"--resume: {exc}")
    params = saved_parameters(campaign, settings)
    if params != run_dir.read_json(RUN_PARAMS):  # a larger budget is the run's plan from now on
        run_dir.write_json(RUN_PARAMS, params)
    return run_dir


WARM_UP_WAIT = 60.0
"""Longest wait (s) for warm QC workers once the data is loaded; batch queues may hold workers back for longer."""


def next_result(queues: AuthRedisQueues, topic: str) -> Result:
    """The next result on ``topic``, however long it takes (a set-up request the campaign cannot start without).

    The wiring's supervision is not running yet; a lost task server or Redis ends the run through its own
    errors, and Ctrl+C interrupts the wait.
    """
    while True:
        try:
            return queues.get_result(topic=topic, timeout=1)
        except TimeoutException:
            continue


def wait_for_warm_workers(queues: AuthRedisQueues, n_workers: int, run_dir: RunDirectory, start: float) -> None:
    """Wait until every QC worker has run its warm-up task (or :data:`WARM_UP_WAIT` passed); record when.

    The campaign's first QC task is sent only after this, so the QC workers' utilization counts no start-up
    idle time that could have been avoided; if workers are slow to come (a batch queue), the campaign starts
    anyway and the workers pick tasks up when they arrive.
    """
    waited_from = time.monotonic()
    warm: list[dict[str, object]] = []
    while len(warm) < n_workers and time.monotonic() - waited_from < WARM_UP_WAIT:
        try:
            result = queues.get_result(topic=STARTUP_TOPIC, timeout=1)
        except TimeoutException:
            continue
        if not result.success:  # a worker that cannot even import the QC stack: its real tasks will say why
            logger.warning("A QC worker failed to warm up: %s", failure_reason(result))
            warm.append({"success": False})
            continue
        warm.append({**result.value, "success": True, "ready_after": time.monotonic() - start})
    waited = time.monotonic() - waited_from
    if len(warm) < n_workers:
        logger.info("%d of %d QC workers ready after %.0f s; starting the campaign anyway", len(warm), n_workers,
                    waited)
    else:
        logger.info("QC workers warm %.1f s after start (waited %.1f s after loading the data)",
                    time.monotonic() - start, waited)
    run_dir.write_json("startup.json" if run_dir.attempt == 0 else f"startup.resume-{run_dir.attempt}.json",
                       {"qc_workers": n_workers, "warm": warm, "waited_after_loading": waited})


