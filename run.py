#!/usr/bin/env python
"""Run a campaign: parse → validate → assemble → start → supervise → always shut down.

``python run.py [design] [options]`` runs the molecular-design campaign (the default), ``python run.py forcefield
[options]`` the forcefield campaign. This file is wiring only: the command line comes from ``campaigns/cli.py``,
each campaign's set-up from ``campaigns/<name>.py``, supervision and shutdown from ``campaigns/lifecycle.py``;
what runs on workers lives in ``methods/``, the steering in ``thinkers/``, settings, sites and services in
``configs/``, and the run directory in ``store/``. Whatever happens (normal end, error, Ctrl+C), every process
the run started — redis-server, the Parsl interchange and workers — is stopped before it exits.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import signal
import sys
import threading
import time
import typing
from pathlib import Path

from campaigns.cli import REDIS_PASSWORD_VARIABLE, parse_settings
from campaigns.contract import Campaign
from campaigns.lifecycle import HANDLED, RunParts, classify_failure, shut_down, supervise
from campaigns.startup import host_info, open_run_directory, wait_for_warm_workers
from configs.services.lifeline import become_subreaper, mark_environment, start_watchdog, stop_leftovers
from configs.services.proxystore import open_proxy_store
from configs.services.queues import AuthRedisQueues, RedisWatch, connect_redis
from configs.settings.models import SettingsError, load_qc_config
from configs.sites.catalog import SITES, SiteOptions, check_site, workers_share_files
from configs.sites.executors import QC_EXECUTOR
from configs.sites.taskservers import build_task_server
from store.processes import register_process
from thinkers.topics import STARTUP_TOPIC

logger = logging.getLogger("molsteer")
PROGRESS_LOGGERS = ("molsteer", "campaigns.cli", "campaigns.startup", "campaigns.lifecycle", "campaigns.design",
                    "campaigns.forcefield", "thinkers.design", "thinkers.forcefield", "thinkers.forcefield_resume",
                    "thinkers.forcefield_ensemble", "configs.services.queues")
"""Loggers whose INFO messages the terminal shows (Colmena's per-agent child loggers are not among them);
everything goes to runtime.log."""


class OneLineFormatter(logging.Formatter):
    """The terminal gets the first line of a message, never a traceback: the full text is in ``runtime.log``."""

    def format(self, record: logging.LogRecord) -> str:  # noqa: D102
        first = record.getMessage().strip().splitlines()[0] if record.getMessage().strip() else ""
        if record.exc_info and record.exc_info[1] is not None and not first.endswith(str(record.exc_info[1])):
            first += f" ({type(record.exc_info[1]).__name__}: {str(record.exc_info[1]).splitlines()[0][:200]})"
        return f"{self.formatTime(record, '%H:%M:%S')} {first}"


def configure_logging(log_file: Path) -> None:
    """Terminal: molsteer's progress, one line each; ``runtime.log``: everything at INFO, libraries included."""
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    file_handler = logging.FileHandler(log_file)
    file_handler.setFormatter(formatter)
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(OneLineFormatter())
    console.addFilter(lambda record: record.levelno >= logging.WARNING or record.name in PROGRESS_LOGGERS)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.handlers[:] = [file_handler, console]
    for name in ("parsl", "colmena"):
        logging.getLogger(name).setLevel(logging.INFO)


def _forked_child(log: Path) -> None:
    """In a forked child (the task server): its own signal handling, and its stderr into a log file.

    Ctrl+C reaches the whole process group, but the task server is stopped through the queues; SIGTERM
    simply ends it. A crash of it (Redis gone, say) prints a traceback that belongs in a log, not the terminal.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        stream = open(log, "a", buffering=1)  # noqa: SIM115 - the child's stderr for the rest of its life
    except OSError:
        return
    os.dup2(stream.fileno(), 2)
    sys.stderr = stream


def _interrupt(signum: int, frame: object) -> None:
    """SIGINT (Ctrl+C) and SIGTERM (a batch scheduler, `kill`) take the same clean shutdown path."""
    raise KeyboardInterrupt


def start(parts: RunParts, settings: typing.Any, module: Campaign, site_options: SiteOptions,
          task_config: dict[str, typing.Any]) -> None:
    """Redis, the queues, the task server and its warm-up, the proxy store, the campaign and its thinker.

    Workers start first and warm up while this process loads the campaign's data (``assemble``): the first QC
    task then finds a warm worker instead of waiting for one to boot.
    """
    from methods.simulate import warm_up

    run_dir = parts.run_dir
    topics, methods = module.task_methods(settings)
    # A launch script that starts Redis itself hands its password over in the environment, not in `ps`.
    # Workers on another site reach Redis through a tunnel to the named port: only then must it be that port.
    fixed_port = "redis_port" in settings.model_fields_set or settings.site == "multisite"
    password, parts.redis_server, port = connect_redis(
        settings.redis_host, settings.redis_port,
        settings.redis_password or os.environ.get(REDIS_PASSWORD_VARIABLE), run_dir.path / "redis", fixed_port)
    if parts.redis_server is not None:
        register_process(run_dir.path, run_dir.attempt, "redis", parts.redis_server.process.pid)
    parts.queues = AuthRedisQueues((*topics, STARTUP_TOPIC), hostname=settings.redis_host, port=port,
                                   password=password, prefix=f"molsteer-{run_dir.name}", keep_inputs=False,
                                   serialization_method="pickle", max_retries=settings.max_retries)
    parts.watch = RedisWatch(settings.redis_host, port, password)
    parsl_config = None
    if settings.task_server == "parsl":
        parsl_config = SITES[settings.site](run_dir.path, site_options)
        (run_dir.path / "parsl_config.txt").write_text(repr(parsl_config) + "\n")
    parts.task_server = build_task_server(settings, [*methods, (warm_up, QC_EXECUTOR)], parts.queues, parsl_config,
                                          site_options.qc_cores_per_task)
    parts.task_server.start()
    register_process(run_dir.path, run_dir.attempt, "task_server", parts.task_server.pid)
    for _ in range(settings.qc_workers):
        parts.queues.send_inputs(settings.qc_code, settings.method, task_config, method="warm_up",
                                 topic=STARTUP_TOPIC)
    # Workers on another site cannot read this file system: their proxies live in the queues' own Redis.
    parts.proxy_store = open_proxy_store(run_dir.path, f"molsteer-{run_dir.name}-{run_dir.attempt}",
                                         parts.queues if not workers_share_files(settings) else None)
    parts.assembly = module.assemble(settings, run_dir, task_config, parts.proxy_store)
    wait_for_warm_workers(parts.queues, settings.qc_workers, run_dir, parts.started)
    parts.thinker = parts.assembly.build_thinker(parts.queues)
    logger.info("Campaign: %s", parts.assembly.description)
    parts.thinker.start()


def main(argv: list[str] | None = None) -> int:
    """Run one campaign, or continue one (``--resume``); returns the process exit status."""
    campaign, settings, parser, resume = parse_settings(argv)
    from campaigns import CAMPAIGNS

    try:  # everything that can be checked before a run directory or a process exists
        qc_machine = load_qc_config(settings.qc_config, settings.site)
        module: Campaign = importlib.import_module(CAMPAIGNS[campaign][1])  # after validation: --help is quick
        module.check(settings)
        site_options = SiteOptions.from_settings(settings, qc_machine.ncores)
        if settings.task_server == "parsl":  # a site that cannot work fails here, in one line, not as a hung run
            check_site(site_options, settings.site, settings.redis_port)
    except SettingsError as exc:
        parser.error(str(exc))

    run_dir = open_run_directory(campaign, settings, parser, resume)
    run_dir.begin_attempt({"pid": os.getpid(), "command": sys.argv,
                           settings.resume_budget: getattr(settings, settings.resume_budget)})
    configure_logging(run_dir.path / "runtime.log")
    if resume is not None:
        logger.info("Resuming %s (attempt %d)", run_dir.path, run_dir.attempt + 1)
        leftovers = stop_leftovers(run_dir.path)
        if leftovers:
            logger.warning("Stopped processes an earlier attempt left behind: %s", ", ".join(leftovers))
    # Every process started from here on carries the run's marker; the watchdog stops them all if this one dies.
    mark_environment(run_dir.path, run_dir.attempt)
    watchdog = start_watchdog(run_dir.path, run_dir.attempt)
    register_process(run_dir.path, run_dir.attempt, "main", os.getpid())
    register_process(run_dir.path, run_dir.attempt, "watchdog", watchdog.pid)
    become_subreaper()
    os.register_at_fork(after_in_child=functools.partial(_forked_child, run_dir.path / "task_server.log"))
    logger.info("Run directory: %s", run_dir.path)
    run_dir.write_json("host_info.json" if run_dir.attempt == 0 else f"host_info.resume-{run_dir.attempt}.json",
                       host_info())

    parts = RunParts(run_dir=run_dir, watchdog=watchdog, started=time.monotonic())
    status, reason = 1, "run stopped by an error"
    # SIGINT explicitly too: a run started in the background by a non-interactive shell (a batch script,
    # `nohup … &`) inherits SIGINT as ignored, and Python then never turns it into KeyboardInterrupt.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        start(parts, settings, module, site_options, qc_machine.task_config(run_dir.path))
        supervise(parts)
        status = 0
    except HANDLED as exc:
        status, reason = classify_failure(exc, parts)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        shut_down(parts, status, reason)
    return status


def exit_now(status: int) -> typing.NoReturn:
    """End the process once the run has shut down, even if a library thread is stuck.

    After Redis is lost or restarted, a Colmena agent can stay blocked forever in a read from the reconnected
    server, and Python's exit joins the thread pool the agents run in, so the finished process would never end.
    Everything is stopped, recorded and flushed by now, so such threads are abandoned rather than waited for.
    """
    stuck = [t.name for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive()]
    if stuck:
        logger.debug("Leaving threads that did not end: %s", ", ".join(stuck))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    if stuck:
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    exit_now(main())
