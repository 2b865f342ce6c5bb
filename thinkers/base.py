"""What every molsteer thinker shares: agents whose crash fails the run, and what the wiring asks of a thinker.

Each campaign's thinker (``thinkers/design.py``, ``thinkers/forcefield.py``) is a :class:`SteeringThinker`; how
it is put together from settings lives in ``campaigns/``, which this package never imports.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol

from colmena.thinker import BaseThinker


class CampaignThinker(Protocol):
    """What ``run.py`` needs of a thinker beyond Colmena's ``BaseThinker`` (a thread with a ``done`` event)."""

    def abandon_in_flight(self, reason: str) -> int:
        """Record every task still out as not finished, with the reason; returns how many."""
        ...


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
