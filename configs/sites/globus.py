"""Run the campaign's tasks on the user's own Globus Compute endpoints: one for the qc methods, one for ml.

Colmena 0.7.2 ships :class:`colmena.task_server.globus.GlobusComputeTaskServer`, but it was written against an
older Globus Compute SDK: its ``_setup`` builds ``Executor(funcx_client=...)``, which SDK 4.19 rejects with a
``TypeError`` (the keyword is now ``client=``), and it routes tasks by overwriting the one executor's
``endpoint_id`` before each submission, which races with the resubmissions Colmena makes from the SDK's
result thread. :class:`GlobusTaskServer` keeps everything else of Colmena's class (function registration at
construction, the lost-manager resubmission, retries and results sent back through the queues) and replaces
those two parts. :func:`build_globus_task_server` turns the ``(method, label)`` pairs every campaign assembly
already provides for Parsl into that task server, checking the endpoint options first.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from colmena.models import Result
from colmena.queue.base import ColmenaQueues
from colmena.task_server.globus import GlobusComputeTaskServer
from globus_compute_sdk import Client, Executor

from configs.settings.models import SettingsError, one_line

logger = logging.getLogger(__name__)

__all__ = ["GlobusTaskServer", "build_globus_task_server", "endpoint_option"]


def endpoint_option(label: str) -> str:
    """The command-line option that holds the endpoint id for one executor label (``qc`` -> ``--globus-qc-endpoint``).

    Defined once so the error messages here and the options ``run.py`` declares cannot drift apart.
    """
    return f"--globus-{label}-endpoint"


class GlobusTaskServer(GlobusComputeTaskServer):
    """Colmena's Globus Compute task server, working with globus-compute-sdk 4.19 and later.

    Each method is registered with Globus Compute when the server is constructed (in the parent process, so
    a registration failure stops the campaign before anything starts), and runs on the endpoint it was mapped
    to. Unlike Colmena's class, which shares one SDK ``Executor`` and sets its ``endpoint_id`` just before
    each submission, this server opens one ``Executor`` per endpoint in :meth:`_setup`: the SDK copies the
    executor's endpoint into each task when it is submitted, so a retry submitted from the SDK's result
    thread while the main thread submits to the other endpoint could otherwise land on the wrong machine.

    Attributes:
        fx_execs: One SDK executor per endpoint id, created in the task-server process by :meth:`_setup`.
    """

    def __init__(
        self,
        methods: Mapping[Callable[..., Any], str],
        client: Client,
        queues: ColmenaQueues,
        timeout: int | None = None,
        batch_size: int = 128,
    ) -> None:
        """Register every method with Globus Compute and remember which endpoint it runs on.

        Args:
            methods: Each worker function mapped to the id of the Globus Compute endpoint that runs it.
            client: An authenticated Globus Compute client; it registers the functions here and is handed to
                the executors, which use it to submit tasks and fetch results.
            queues: Queues shared with the thinker.
            timeout: Seconds to wait for a task request before the server stops (``None``: wait forever).
            batch_size: Most tasks one executor sends to the web service in one request.
        """
        super().__init__(dict(methods), client, queues, timeout, batch_size)
        self.fx_execs: dict[str, Executor] = {}

    @property
    def endpoints(self) -> list[str]:
        """The distinct endpoint ids the registered methods run on, sorted so executors start in a fixed order."""
        return sorted({endpoint for _, endpoint in self.registered_funcs.values()})

    def _setup(self) -> None:
        """Open one SDK executor per endpoint, in the task-server process (executors start threads at creation).

        The SDK's ``Executor`` takes the client as ``client=`` and the endpoint as ``endpoint_id=``; Colmena's
        ``funcx_client=`` is rejected by SDK 4.19.
        """
        batch_size = self._batch_options["batch_size"]
        self.fx_execs = {
            endpoint: Executor(endpoint_id=endpoint, client=self.fx_client, batch_size=batch_size,
                               label=f"molsteer-{endpoint[:8]}")
            for endpoint in self.endpoints
        }
        logger.info("Opened Globus Compute executors for endpoints %s", ", ".join(self.fx_execs))

    def _submit(self, task: Result, topic: str) -> Future:
        """Send a task to its method's endpoint through that endpoint's executor, as Colmena does.

        The Colmena wrapper registered for the method receives the whole :class:`Result` as ``result=`` and
        returns it completed, so the future's result is what goes back to the thinker.
        """
        func_id, endpoint = self.registered_funcs[task.method]
        task.mark_start_task_submission()
        future = self.fx_execs[endpoint].submit_to_registered_function(func_id, kwargs={"result": task})
        logger.info("Submitted %s (function %s) to run on endpoint %s", task.method, func_id, endpoint)
        return future

    def perform_callback(self, future: Future, result: Result, topic: str) -> None:
        """Send a finished task back to the thinker, or resubmit it, exactly as Colmena's class does.

        The one addition: a future cancelled when the server shuts down is logged and dropped. Colmena would
        call ``future.exception()`` on it, which raises ``CancelledError`` inside the SDK's callback thread.
        """
        if future.cancelled():
            logger.info("Task %s (%s) was cancelled at shutdown; no result is sent", result.task_id, result.method)
            return
        super().perform_callback(future, result, topic)

    def _cleanup(self) -> None:
        """Shut every executor down, cancelling tasks not yet sent and waiting for those already sent."""
        for endpoint, executor in self.fx_execs.items():
            logger.info("Shutting down the Globus Compute executor for endpoint %s", endpoint)
            executor.shutdown(cancel_futures=True)
        self.fx_execs = {}


def _endpoint_id(label: str, value: object) -> str:
    """The canonical endpoint id for one label, or a :class:`SettingsError` naming the option to fix."""
    option = endpoint_option(label)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise SettingsError(
            f"{option} is required with --task-server globus: the id (a UUID) of the Globus Compute endpoint "
            f"that runs the {label} tasks"
        )
    try:
        if not isinstance(value, str):
            raise TypeError(type(value).__name__)
        return str(uuid.UUID(value.strip()))
    except (TypeError, ValueError) as exc:
        raise SettingsError(
            f"{option} {one_line(repr(value), 80)} is not a Globus Compute endpoint id: expected a UUID such as "
            "4b116d3c-1703-4f8f-9f6f-39921e5864df (see `globus-compute-endpoint list`)"
        ) from exc


def build_globus_task_server(
    methods: Sequence[tuple[Callable[..., Any], str]],
    queues: ColmenaQueues,
    endpoints: Mapping[str, str | None],
    client: Client | None = None,
    timeout: int | None = None,
) -> GlobusTaskServer:
    """Build the Globus Compute task server for a campaign's methods, routing each by its executor label.

    The options are checked before any client exists, so a typo costs no login. Only the labels the methods
    actually use need an endpoint; ``qc`` and ``ml`` may share one.

    Args:
        methods: The campaign assembly's ``(function, label)`` pairs, the same ones handed to Parsl, where the
            label is ``qc`` or ``ml`` (:mod:`configs.sites.executors`).
        queues: Queues shared with the thinker.
        endpoints: Endpoint id for each label, e.g. ``{"qc": settings.globus_qc_endpoint, "ml": ...}``; a
            ``None`` or empty value counts as not given.
        client: Globus Compute client to use. If ``None``, a real ``globus_compute_sdk.Client()`` is created,
            which triggers Globus login (tokens stored by an earlier login, else an interactive prompt) and
            talks to the Globus Compute service; tests pass a mock.
        timeout: Seconds the task server waits for a task request before it stops (``None``: forever).

    Returns:
        The task server, not yet started; every method is already registered with Globus Compute.

    Raises:
        SettingsError: A label in use has no endpoint id, or one that is not a UUID; the message names the
            option (``--globus-qc-endpoint``, ``--globus-ml-endpoint``).
        ValueError: Two methods share a name, so Colmena could not tell their tasks apart.
    """
    problems: list[str] = []
    routed: dict[Callable[..., Any], str] = {}
    checked: dict[str, str] = {}
    names: dict[str, str] = {}
    for method, label in methods:
        name = getattr(method, "__name__", repr(method))
        if name in names:
            raise ValueError(f"two task-server methods are both named {name!r}: Colmena routes tasks by name")
        names[name] = label
        if label not in checked:
            try:
                checked[label] = _endpoint_id(label, endpoints.get(label))
            except SettingsError as exc:
                checked[label] = ""
                problems.append(str(exc))
        routed[method] = checked[label]
    if problems:
        raise SettingsError("; ".join(problems))

    if client is None:
        logger.info("Creating a Globus Compute client (this logs in to Globus)")
        client = Client()
    for label, endpoint in checked.items():
        logger.info("Globus Compute endpoint for %s tasks: %s", label, endpoint)
    return GlobusTaskServer(routed, client, queues, timeout=timeout)
