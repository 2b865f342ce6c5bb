"""A running campaign's life after start: supervision while it runs, and a shutdown that always happens.

Supervision turns the two silent ways a campaign can stall (its Redis server lost, its task server dead) into
clear errors; shutdown stops every process the run started, records what was still out, writes the summary
and the report, and says how to resume, whatever ended the run.
"""

from __future__ import annotations

import logging
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from campaigns.contract import Assembly
from configs.services.lifeline import stop_descendants
from configs.services.proxystore import close_proxy_store
from configs.services.queues import ManagedRedis, RedisWatch, ServiceError
from configs.settings.models import SettingsError
from store.names import SUMMARY
from store.rundir import RunDirectory

logger = logging.getLogger(__name__)


class TaskServerLost(RuntimeError):
    """The task server process died while the campaign still needed it."""


class RedisLost(RuntimeError):
    """The queues' Redis server stopped answering or was restarted: the tasks queued in it are gone."""


@dataclass
class RunParts:
    """What a run has started so far; shutdown stops exactly these, in reverse order.

    Attributes:
        run_dir: The run directory (locked for this attempt).
        watchdog: The lifeline process that stops everything if this one dies.
        started: ``time.monotonic()`` when the run started.
        redis_server: The Redis server this run started (None when it uses one that was running).
        queues: Client side of the Colmena queues.
        watch: Watches the Redis server for loss or restart.
        task_server: The Parsl task server process.
        proxy_store: The run's ProxyStore.
        assembly: The assembled campaign.
        thinker: The campaign's thinker, once built.
    """

    run_dir: RunDirectory
    watchdog: subprocess.Popen
    started: float
    redis_server: ManagedRedis | None = None
    queues: Any = None
    watch: RedisWatch | None = None
    task_server: Any = None
    proxy_store: Any = None
    assembly: Assembly | None = None
    thinker: Any = None


def supervise(parts: RunParts) -> None:
    """Wait for the thinker to finish; stop it at once when Redis or the task server is lost.

    Raises:
        RedisLost: the queues' server stopped answering or restarted (queued tasks are gone with it).
        TaskServerLost: the task server died (no result could ever come back).
        RuntimeError: an agent of the thinker crashed.
    """
    thinker = parts.thinker
    try:
        while thinker.is_alive():
            thinker.join(timeout=0.5)
            lost = parts.watch.problem()
            if lost:
                raise RedisLost(lost)
            if not parts.task_server.is_alive():
                raise TaskServerLost(f"the task server stopped unexpectedly (exit code {parts.task_server.exitcode}); "
                                     f"see {parts.run_dir.path / 'runtime.log'}")
    finally:
        thinker.done.set()
    if getattr(thinker, "agent_failures", None):
        raise RuntimeError(f"the campaign stopped because an agent failed: {thinker.agent_failures[0]}")


def classify_failure(exc: BaseException, parts: RunParts) -> tuple[int, str]:
    """The exit status and the reason recorded for unfinished tasks, logging the error in one line."""
    if isinstance(exc, KeyboardInterrupt):
        logger.warning("Interrupted: shutting down")
        return 130, "run interrupted"
    if isinstance(exc, RedisLost):
        logger.error("%s: the run cannot go on", exc)
        return 1, "Redis lost"
    lost = parts.watch.problem(now=True) if parts.watch is not None else None  # often the cause: agents die with it
    if lost:
        logger.error("%s: the run cannot go on (%s)", lost, exc)
        return 1, "Redis lost"
    logger.error("%s", exc)
    return 1, "task server lost" if isinstance(exc, TaskServerLost) else "run stopped by an error"


WORKERS_SETTLE = 15.0
"""Seconds the workers get to end after the task server cancelled their blocks, before they count as left over."""

HANDLED = (KeyboardInterrupt, RedisLost, TaskServerLost, ServiceError, SettingsError, RuntimeError)
"""Errors that end a run with a clear message (anything else also shuts down, with its traceback)."""


def _stop_task_server(parts: RunParts) -> None:
    """Ask the task server to stop through the queues (it stops its workers); terminate it if it will not."""
    task_server = parts.task_server
    try:
        parts.queues.send_kill_signal()
        task_server.join(timeout=60)
    except Exception as exc:  # noqa: BLE001 - shutdown must go on whatever broke
        logger.warning("Task server did not stop cleanly: %s", exc)
    if task_server.is_alive():
        task_server.terminate()
        task_server.join(timeout=10)


def shut_down(parts: RunParts, status: int, reason: str) -> None:
    """Stop everything the run started, then write what it did: summary, report, and how to resume.

    Order matters: tasks still out are recorded as not finished before their workers go; Redis is stopped after
    the task server (which needs it to stop its workers); the campaign evicts its proxies before the store closes.
    """
    run_dir = parts.run_dir
    if parts.thinker is not None and status != 0:
        abandoned = parts.thinker.abandon_in_flight(reason)
        if abandoned:
            logger.warning("%d tasks were out and are recorded as not finished", abandoned)
    if parts.task_server is not None:
        _stop_task_server(parts)
    keep = {parts.watchdog.pid}
    redis_process = parts.redis_server.process if parts.redis_server is not None else None
    # A task server that ended cleanly has cancelled its worker blocks: give them a moment to finish leaving.
    clean = parts.task_server is not None and parts.task_server.exitcode == 0
    leftovers = stop_descendants(keep=keep | ({redis_process.pid} if redis_process else set()),
                                 settle=WORKERS_SETTLE if clean else 0.0)
    if leftovers:
        logger.info("Stopped processes left after the task server: %s", ", ".join(leftovers))
    if parts.redis_server is not None:
        parts.redis_server.stop()
    stop_descendants(keep=keep)
    try:
        if parts.assembly is not None:
            parts.assembly.close()
        if parts.proxy_store is not None:
            close_proxy_store(parts.proxy_store, run_dir.path)
    except Exception:  # noqa: BLE001 - the records matter more than a proxy store's clean-up
        logger.exception("Could not release the campaign's resources")
    run_dir.close()
    if parts.assembly is not None:
        summary = parts.assembly.summarize(time.monotonic() - parts.started)
        summary["exit_status"] = status
        summary["attempts"] = run_dir.attempt + 1
        run_dir.write_json(SUMMARY, summary)
        logger.info("Done in %.1f s. Results in %s", summary["wall_time"], run_dir.path)
        for line in parts.assembly.headline(summary):
            logger.info("%s", line)
    try:
        from reporting.report import write_report

        logger.info("Report: %s", write_report(run_dir.path))
    except Exception:  # noqa: BLE001 - the records are safe; a broken plot must not hide the run's status
        logger.exception("Could not write the report; rerun python scripts/report.py %s", run_dir.path)
    if status != 0:
        logger.warning("Everything finished is recorded. To continue: python run.py --resume %s", run_dir.path)
    parts.watchdog.terminate()  # the run cleaned up after itself: the watchdog has nothing to do
    parts.watchdog.wait(timeout=10)
