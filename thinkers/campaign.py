"""What a campaign gives ``run.py``: one assembly point from validated settings to task-server methods and a thinker.

Every campaign module (``thinkers/design.py``, ``thinkers/forcefield.py``) has a function
``assemble(settings, run_dir, task_config) -> Assembly``. ``run.py`` does the rest the same way for all of them:
run directory, logging, Redis, the Parsl task server, start, join, shutdown, summary, report. A new campaign is
one more module and one more line in ``run.py``'s registry, not more branches in ``run.py``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from colmena.queue.base import ColmenaQueues
from colmena.thinker import BaseThinker


class CampaignThinker(Protocol):
    """What ``run.py`` needs of a thinker beyond Colmena's ``BaseThinker`` (a thread with a ``done`` event)."""

    def abandon_in_flight(self, reason: str) -> int:
        """Record every task still out as not finished, with the reason; returns how many."""
        ...


@dataclass
class Assembly:
    """A campaign, ready to run.

    Attributes:
        topics: Colmena queue topics the thinker and the task server talk on.
        methods: Worker functions and the Parsl executor label (``qc`` or ``ml``) each runs on.
        build_thinker: Makes the thinker once the task server runs (a campaign may first ask workers for
            set-up results, such as reference atom energies).
        summarize: Builds ``summary.json`` from the records, given the wall time; called after shutdown.
        headline: The summary's few most important numbers, as lines for the terminal.
        close: Releases what the assembly holds (proxy stores); called on every exit path.
        description: One line saying what is about to run.
    """

    topics: tuple[str, ...]
    methods: list[tuple[Callable[..., Any], str]]
    build_thinker: Callable[[ColmenaQueues], Any]
    summarize: Callable[[float | None], dict[str, Any]]
    headline: Callable[[dict[str, Any]], list[str]]
    close: Callable[[], None] = field(default=lambda: None)
    description: str = ""


class SteeringThinker(BaseThinker):
    """A Colmena thinker that remembers which agents crashed, so a crash is a failed run, not a quiet early end.

    Colmena logs an agent's exception and sets ``done``, and the thinker then ends as if the campaign had
    finished. ``run.py`` reads :attr:`agent_failures` after the thinker ends and exits non-zero with the reason.
    """

    agent_failures: list[str]

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.agent_failures = []

    @classmethod
    def list_agents(cls) -> list[Callable]:
        """Colmena's agents, each wrapped to record its exception before Colmena handles it."""
        guarded = []
        for func in super().list_agents():
            def run_agent(thinker: SteeringThinker, _func: Callable = func) -> Any:
                try:
                    return _func(thinker)
                except BaseException as exc:
                    thinker.agent_failures.append(f"{_func.__name__}: {type(exc).__name__}: {exc}")
                    raise
            guarded.append(functools.update_wrapper(run_agent, func))  # keeps Colmena's agent attributes
        return guarded
