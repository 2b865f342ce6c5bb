"""The command line: generated from each campaign's settings, validated, and ``--resume`` taken apart.

Options, defaults and help text come from the pydantic settings classes, so they never drift apart; every
invalid value exits with status 2 and one line naming the option (or, when resuming, the saved file and key).
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from pathlib import Path

from pydantic import ValidationError

from campaigns import CAMPAIGNS
from configs.settings.models import SITE_OPTIONS, CommonSettings
from store.names import RUN_PARAMS
from store.rundir import RunDirectory, RunDirectoryError

DEFAULT_CAMPAIGN = "design"
REDIS_PASSWORD_VARIABLE = "MOLSTEER_REDIS_PASSWORD"
"""Environment variable with the password of a Redis server started by a launch script (kept out of ``ps``)."""
REDIS_OPTIONS = ("redis_host", "redis_port", "redis_password")
RESUME_SERVICE_OPTIONS = (*REDIS_OPTIONS, *SITE_OPTIONS)
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
    sites = parser.add_argument_group("where workers run", "See docs/clusters.md.")
    services = parser.add_argument_group(
        "the queues' Redis server", "Without --redis-port, a run uses a server that answers on the default port "
        "without a password, or starts its own on a free port.")
    for name, info in settings_class.model_fields.items():
        annotation = info.annotation
        group = sites if name in SITE_OPTIONS else services if name in REDIS_OPTIONS else parser
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
    _validate(parser, settings_class, params, saved_in=resume_dir / RUN_PARAMS)  # before comparing budgets
    if budget in given and given[budget] < params.get(budget, 0):
        parser.error(f"{_option(budget)}: cannot be lowered when resuming (the run was started with "
                     f"{params[budget]})")
    if "redis_port" not in given and params.get("redis_port") == settings_class.model_fields["redis_port"].default:
        del params["redis_port"]  # never named: this attempt may start its own server on a free port again
    params.update(given)
    return campaign, _validate(parser, settings_class, params), parser, resume_dir


def saved_parameters(campaign: str, settings: CommonSettings) -> dict[str, typing.Any]:
    """What ``run_params.json`` keeps: every option with defaults filled in, except a password."""
    return {"campaign": campaign, **settings.model_dump(mode="json", exclude={"redis_password"})}


