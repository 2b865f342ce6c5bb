"""What a campaign gives the wiring: checks, worker methods, and one assembly point that yields a thinker.

Every campaign module in this package has three functions, and ``run.py`` calls them in this order:

* ``check(settings)``: rejects input that cannot run (a search space, starting molecules) with
  :class:`configs.settings.models.SettingsError`, before any run directory or process exists;
* ``task_methods(settings) -> (topics, [(function, executor label), ...])``: known before any data is loaded,
  so the wiring starts the workers first and they warm up while the campaign loads its data;
* ``assemble(settings, run_dir, task_config, proxy_store) -> Assembly``: loads the data, takes a resumed run's
  history over, and returns what the wiring needs to run, summarize and close the campaign.

The wiring does the rest the same way for every campaign: run directory, logging, Redis, the Parsl task
server, start, supervision, shutdown, summary and report. A new campaign is one more module here and one more
entry in :data:`campaigns.CAMPAIGNS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from colmena.queue.base import ColmenaQueues

from store.rundir import RunDirectory


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


class Campaign(Protocol):
    """The three functions a campaign module provides (see the module's docstring for when each is called)."""

    def check(self, settings: Any) -> None:
        """Reject settings that cannot run, with ``SettingsError``, before anything starts."""
        ...

    def task_methods(self, settings: Any) -> tuple[tuple[str, ...], list[tuple[Callable[..., Any], str]]]:
        """The queue topics, and each worker function with the executor label it runs on."""
        ...

    def assemble(self, settings: Any, run_dir: RunDirectory, task_config: dict[str, Any],
                 proxy_store: Any) -> Assembly:
        """Load the data, take a resumed run's history over, and return the runnable campaign."""
        ...
