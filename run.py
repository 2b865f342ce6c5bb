#!/usr/bin/env python
"""Run a campaign: parse → run directory → Redis, task server, thinker → start → join → shut down.

``python run.py [design] [options]`` runs the molecular-design campaign (the default), ``python run.py forcefield
[options]`` the forcefield campaign. This file is wiring only: each campaign's ``assemble`` (in ``thinkers/``)
turns its validated settings into task-server methods and a thinker, and everything else is done here the same
way for every campaign. What runs on workers lives in ``methods/``, the steering in ``thinkers/``, and the
Parsl sites and validated settings in ``configs/``. Whatever happens (normal end, error, Ctrl+C), every
process the run started — redis-server, the Parsl interchange and workers — is stopped before it exits.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.metadata
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import typing
from pathlib import Path

import psutil
from pydantic import ValidationError

from configs.lifeline import mark_environment, register_process, start_watchdog, stop_leftovers
from configs.names import QC_EXECUTOR
from configs.services import (
    AuthRedisQueues,
    RedisWatch,
    ServiceError,
    become_subreaper,
    connect_redis,
    stop_descendants,
)
from configs.settings import (
    SITE_OPTIONS,
    CampaignSettings,
    CommonSettings,
    ForcefieldSettings,
    SettingsError,
    load_qc_config,
)
from configs.sites import SITES, SiteOptions, check_site
from configs.taskservers import build_task_server
from thinkers.records import RunDirectory, RunDirectoryError

logger = logging.getLogger("molsteer")
PROGRESS_LOGGERS = ("molsteer", "thinkers.design", "thinkers.forcefield", "configs.services")
"""Loggers whose INFO messages the terminal shows; everything else goes to runtime.log (warnings go to both)."""

CAMPAIGNS: dict[str, tuple[type[CommonSettings], str, str]] = {
    "design": (CampaignSettings, "thinkers.design",
               "Find molecules with the largest ionization energy or smallest atomization energy, spending quantum "
               "chemistry where a surrogate model says it matters most. (Other campaign: run.py forcefield --help)"),
    "forcefield": (ForcefieldSettings, "thinkers.forcefield",
                   "Train an ensemble of machine-learned interatomic potentials where molecular dynamics with the "
                   "model goes, spending quantum chemistry only where the ensemble disagrees or audits fail."),
}
"""Campaign name → its settings (the CLI is generated from them), its assembly module, and its description."""
DEFAULT_CAMPAIGN = "design"
REDIS_PASSWORD_VARIABLE = "MOLSTEER_REDIS_PASSWORD"
"""Environment variable with the password of a Redis server started by a launch script (kept out of ``ps``)."""
RESUME_SERVICE_OPTIONS = ("redis_host", "redis_port", "redis_password", *SITE_OPTIONS)
"""Options ``--resume`` accepts besides a larger budget: the queues' server and where workers run (a new batch
job, another cluster) may differ from attempt to attempt; the campaign itself may not."""


class OneLineParser(argparse.ArgumentParser):
    """Argument errors as one line (and exit status 2), not the usage block followed by the error."""

    def error(self, message: str) -> typing.NoReturn:  # noqa: D102
        message = " ".join(message.split())  # an argument holding a line break must not break the line
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(campaign: str = DEFAULT_CAMPAIGN) -> argparse.ArgumentParser:
    """The CLI of one campaign, generated from its settings so options, defaults and help never drift apart."""
    settings_class, _, description = CAMPAIGNS[campaign]
    prog = "run.py" if campaign == DEFAULT_CAMPAIGN else f"run.py {campaign}"
    parser = OneLineParser(prog=prog, description=description)
    defaults = settings_class()
    sites = parser.add_argument_group("where workers run", "See the README's 'Running on a cluster'.")
    for name, info in settings_class.model_fields.items():
        annotation = info.annotation
        group = sites if name in SITE_OPTIONS else parser
        if name == "maximize":  # a direction, spelled as two flags
            direction = parser.add_mutually_exclusive_group()
            direction.add_argument("--maximize", dest="maximize", action="store_const", const=True,
                                   default=argparse.SUPPRESS, help=info.description)
            direction.add_argument("--minimize", dest="maximize", action="store_const", const=False,
                                   default=argparse.SUPPRESS, help="See --maximize")
            continue
        kwargs: dict = {"help": info.description, "default": argparse.SUPPRESS}
        if annotation is bool:  # a switch: given means True
            group.add_argument("--" + name.replace("_", "-"), action="store_const", const=True, **kwargs)
            continue
        if isinstance(annotation, types.UnionType):  # `X | None`: the option takes an X
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        origin = typing.get_origin(annotation)
        if origin is typing.Literal:
            kwargs["choices"] = typing.get_args(annotation)
        elif origin is typing.Annotated:
            kwargs["type"] = typing.get_args(annotation)[0]
        elif origin is list:
            kwargs["nargs"] = "+"
            kwargs["type"] = typing.get_args(annotation)[0]
        elif annotation in (int, float, Path, str):
            kwargs["type"] = annotation
        if "default" not in info.description:
            default = getattr(defaults, name)
            kwargs["help"] += f" (default: {' '.join(map(str, default)) if isinstance(default, list) else default})"
        group.add_argument("--" + name.replace("_", "-"), **kwargs)
    budget = "--" + settings_class.resume_budget.replace("_", "-")
    parser.add_argument("--resume", metavar="RUN_DIR", default=argparse.SUPPRESS,
                        help=f"Continue a stopped or killed run in RUN_DIR with its saved options (only a larger "
                             f"{budget} may be given); finished results are kept, unfinished ones are redone")
    return parser


def split_campaign(argv: list[str]) -> tuple[str, list[str]]:
    """The campaign named first on the command line (``design`` when none is), and the remaining arguments."""
    if argv and argv[0] in CAMPAIGNS:
        return argv[0], argv[1:]
    return DEFAULT_CAMPAIGN, argv


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _validate(parser: argparse.ArgumentParser, settings_class: type[CommonSettings],
              given: dict[str, typing.Any], saved_in: Path | None = None) -> CommonSettings:
    """Settings from option values; an invalid value exits with status 2 and one line naming the option.

    With ``saved_in`` the values come from that file (a resumed run's ``run_params.json``), and the message
    names the file and key instead of an option the user never typed.
    """
    try:
        return settings_class(**given)
    except ValidationError as exc:
        error = exc.errors()[0]
        if saved_in is not None:
            where = f"--resume: {saved_in}: {'.'.join(map(str, error['loc'])) or 'options'}"
        else:
            where = _option(str(error["loc"][0])) if error["loc"] else "options"
        parser.error(f"{where}: {error['msg'].removeprefix('Value error, ')}")


def _take_resume(argv: list[str]) -> tuple[str | None, list[str]]:
    """Pull ``--resume DIR`` (or ``--resume=DIR``) out of the arguments; the rest are parsed as usual."""
    rest, resume = [], None
    arguments = iter(argv)
    for argument in arguments:
        if argument == "--resume":
            resume = next(arguments, None)
            if resume is None or resume.startswith("-"):
                OneLineParser(prog="run.py").error("--resume: expected the run directory to continue")
        elif argument.startswith("--resume="):
            resume = argument.split("=", 1)[1]
        else:
            rest.append(argument)
    if resume is not None and not resume.strip():
        OneLineParser(prog="run.py").error("--resume: expected the run directory to continue")
    return resume, rest


def parse_settings(argv: list[str] | None) -> tuple[str, CommonSettings, argparse.ArgumentParser, Path | None]:
    """Parse and validate the command line: the campaign, its settings, its parser and the run to resume (if any).

    With ``--resume DIR`` the campaign and every option come from ``DIR/run_params.json``; only the campaign's
    budget may be given again, larger, and the Redis server to use this time (``RESUME_SERVICE_OPTIONS``: where
    the queues live is not part of the campaign, and the password is never saved). Anything else given is an
    error that says so, rather than a silent change of a running campaign.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        resume = None
    else:
        resume, argv = _take_resume(argv)
    named, rest = split_campaign(argv)
    if resume is None:
        parser = build_parser(named)
        given = vars(parser.parse_args(rest))
        return named, _validate(parser, CAMPAIGNS[named][0], given), parser, None

    resume_dir = Path(resume)
    try:
        saved = RunDirectory.saved_params(resume_dir)
    except RunDirectoryError as exc:
        OneLineParser(prog="run.py").error(f"--resume: {exc}")
    campaign = saved["campaign"]
    if not isinstance(campaign, str) or campaign not in CAMPAIGNS:
        OneLineParser(prog="run.py").error(f"--resume: {resume_dir} holds an unknown campaign {campaign!r}")
    if argv and argv[0] in CAMPAIGNS and argv[0] != campaign:
        OneLineParser(prog="run.py").error(f"--resume: {resume_dir} is a {campaign} run, not {argv[0]}")
    settings_class = CAMPAIGNS[campaign][0]
    parser = build_parser(campaign)
    given = vars(parser.parse_args(rest))
    budget = settings_class.resume_budget
    for name in given:
        if name not in (budget, *RESUME_SERVICE_OPTIONS):
            parser.error(f"{_option(name)}: cannot be changed when resuming (the run keeps its saved options; "
                         f"only a larger {_option(budget)}, the Redis server and where workers run may be given)")
    params = {k: v for k, v in saved.items() if k in settings_class.model_fields}
    _validate(parser, settings_class, params, saved_in=resume_dir / "run_params.json")  # before comparing budgets
    if budget in given and given[budget] < params.get(budget, 0):
        parser.error(f"{_option(budget)}: cannot be lowered when resuming (the run was started with "
                     f"{params[budget]})")
    params.update(given)
    return campaign, _validate(parser, settings_class, params), parser, resume_dir


def saved_parameters(campaign: str, settings: CommonSettings) -> dict[str, typing.Any]:
    """What ``run_params.json`` keeps: every option with defaults filled in, except a password."""
    return {"campaign": campaign, **settings.model_dump(mode="json", exclude={"redis_password"})}


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


class TaskServerLost(RuntimeError):
    """The task server process died while the campaign still needed it."""


class RedisLost(RuntimeError):
    """The queues' Redis server stopped answering or was restarted: the tasks queued in it are gone."""


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
    if params != run_dir.read_json("run_params.json"):  # a larger budget is the run's plan from now on
        run_dir.write_json("run_params.json", params)
    return run_dir


STARTUP_TOPIC = "startup"
"""Queue topic of the warm-up tasks, apart from every campaign's own topics."""

WARM_UP_WAIT = 60.0
"""Longest wait (s) for warm QC workers once the data is loaded; batch queues may hold workers back for longer."""


def wait_for_warm_workers(queues: AuthRedisQueues, n_workers: int, run_dir: RunDirectory, start: float) -> None:
    """Wait until every QC worker has run its warm-up task (or :data:`WARM_UP_WAIT` passed); record when.

    The campaign's first QC task is sent only after this, so the QC workers' utilization counts no start-up
    idle time that could have been avoided; if workers are slow to come (a batch queue), the campaign starts
    anyway and the workers pick tasks up when they arrive.
    """
    from colmena.exceptions import TimeoutException

    waited_from = time.monotonic()
    warm: list[dict[str, object]] = []
    while len(warm) < n_workers and time.monotonic() - waited_from < WARM_UP_WAIT:
        try:
            result = queues.get_result(topic=STARTUP_TOPIC, timeout=1)
        except TimeoutException:
            continue
        if not result.success:  # a worker that cannot even import the QC stack: its real tasks will say why
            logger.warning("A QC worker failed to warm up: %s",
                           result.failure_info.exception if result.failure_info else "unknown")
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


def main(argv: list[str] | None = None) -> int:
    """Run one campaign, or continue one (``--resume``); returns the process exit status."""
    campaign, settings, parser, resume = parse_settings(argv)
    try:
        qc_machine = load_qc_config(settings.qc_config, settings.site)
    except SettingsError as exc:
        parser.error(str(exc))

    # Imported after validation, so `--help` and bad options answer at once.
    module = importlib.import_module(CAMPAIGNS[campaign][1])
    check = getattr(module, "check", None)
    if check is not None:  # campaign-specific input (a search space, starting molecules): before anything starts
        try:
            check(settings)
        except SettingsError as exc:
            parser.error(str(exc))

    site_options = SiteOptions.from_settings(settings, qc_machine.ncores)
    if settings.task_server == "parsl":  # a site that cannot work fails here, in one line, not as a hung run
        try:
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
    task_config = qc_machine.task_config(run_dir.path)

    start = time.monotonic()
    redis_server = task_server = queues = thinker = assembly = watch = None
    reason = "run stopped by an error"
    status = 1
    # SIGINT explicitly too: a run started in the background by a non-interactive shell (a batch script,
    # `nohup … &`) inherits SIGINT as ignored, and Python then never turns it into KeyboardInterrupt.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        # Workers start first and warm up while this process loads the campaign's data (``assemble``): the
        # first QC task then finds a warm worker instead of waiting for one to boot.
        from methods.simulate import warm_up

        topics, methods = module.task_methods(settings)
        # A launch script that starts Redis itself hands its password over in the environment, not in `ps`.
        password, redis_server = connect_redis(settings.redis_host, settings.redis_port,
                                               settings.redis_password or os.environ.get(REDIS_PASSWORD_VARIABLE),
                                               run_dir.path / "redis")
        if redis_server is not None:
            register_process(run_dir.path, run_dir.attempt, "redis", redis_server.process.pid)
        queues = AuthRedisQueues((*topics, STARTUP_TOPIC), hostname=settings.redis_host, port=settings.redis_port,
                                 password=password, prefix=f"molsteer-{run_dir.name}", keep_inputs=False,
                                 serialization_method="pickle", max_retries=settings.max_retries)
        watch = RedisWatch(settings.redis_host, settings.redis_port, password)
        parsl_config = None
        if settings.task_server == "parsl":
            parsl_config = SITES[settings.site](run_dir.path, site_options)
            (run_dir.path / "parsl_config.txt").write_text(repr(parsl_config) + "\n")
        task_server = build_task_server(settings, [*methods, (warm_up, QC_EXECUTOR)], queues, parsl_config,
                                        qc_machine.ncores)
        task_server.start()
        register_process(run_dir.path, run_dir.attempt, "task_server", task_server.pid)
        for _ in range(settings.qc_workers):
            queues.send_inputs(settings.qc_code, settings.method, task_config, method="warm_up",
                               topic=STARTUP_TOPIC)

        assembly = module.assemble(settings, run_dir, task_config)
        wait_for_warm_workers(queues, settings.qc_workers, run_dir, start)
        thinker = assembly.build_thinker(queues)
        logger.info("Campaign: %s", assembly.description)
        thinker.start()
        try:
            while thinker.is_alive():
                thinker.join(timeout=0.5)
                lost = watch.problem()
                if lost:  # queued tasks are gone with it: stop clearly rather than wait for them forever
                    raise RedisLost(lost)
                if not task_server.is_alive():  # without it no result can ever come back: stop, don't hang
                    raise TaskServerLost(f"the task server stopped unexpectedly (exit code {task_server.exitcode}); "
                                         f"see {run_dir.path / 'runtime.log'}")
        finally:
            thinker.done.set()
        if getattr(thinker, "agent_failures", None):
            raise RuntimeError(f"the campaign stopped because an agent failed: {thinker.agent_failures[0]}")
        status = 0
    except KeyboardInterrupt:
        logger.warning("Interrupted: shutting down")
        status = 130
        reason = "run interrupted"
    except RedisLost as exc:
        status = 1
        reason = "Redis lost"
        logger.error("%s: the run cannot go on", exc)
    except (TaskServerLost, ServiceError, SettingsError, RuntimeError) as exc:
        status = 1
        reason = "task server lost" if isinstance(exc, TaskServerLost) else reason
        lost = watch.problem(now=True) if watch is not None else None  # often the cause: agents die with Redis
        if lost:
            reason = "Redis lost"
            logger.error("%s: the run cannot go on (%s)", lost, exc)
        else:
            logger.error("%s", exc)
    finally:
        if thinker is not None and status != 0:
            abandoned = thinker.abandon_in_flight(reason)
            if abandoned:
                logger.warning("%d tasks were out and are recorded as not finished", abandoned)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if task_server is not None:
            try:
                queues.send_kill_signal()
                task_server.join(timeout=60)
            except Exception as exc:  # noqa: BLE001 - shutdown must go on whatever broke
                logger.warning("Task server did not stop cleanly: %s", exc)
            if task_server.is_alive():
                task_server.terminate()
                task_server.join(timeout=10)
        keep = {watchdog.pid}
        redis_pid = {redis_server.process.pid} if redis_server is not None and redis_server.process else set()
        leftovers = stop_descendants(keep=keep | redis_pid)
        if leftovers:
            logger.info("Stopped processes left after the task server: %s", ", ".join(leftovers))
        if redis_server is not None:
            redis_server.stop()
        stop_descendants(keep=keep)
        if assembly is not None:
            try:
                assembly.close()
            except Exception:  # noqa: BLE001 - the records matter more than a proxy store's clean-up
                logger.exception("Could not release the campaign's resources")
        run_dir.close()
        if assembly is not None:
            summary = assembly.summarize(time.monotonic() - start)
            summary["exit_status"] = status
            summary["attempts"] = run_dir.attempt + 1
            run_dir.write_json("summary.json", summary)
            logger.info("Done in %.1f s. Results in %s", summary["wall_time"], run_dir.path)
            for line in assembly.headline(summary):
                logger.info("%s", line)
        try:
            from reporting.report import write_report

            logger.info("Report: %s", write_report(run_dir.path))
        except Exception:  # noqa: BLE001 - the records are safe; a broken plot must not hide the run's status
            logger.exception("Could not write the report; rerun python scripts/report.py %s", run_dir.path)
        if status != 0:
            logger.warning("Everything finished is recorded. To continue: python run.py --resume %s", run_dir.path)
        watchdog.terminate()  # the run cleaned up after itself: the watchdog has nothing to do
        watchdog.wait(timeout=10)
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
