"""The task server of a run, assembled once for every campaign: Parsl executors from a site, or Globus Compute.

Each campaign hands over ``(method, executor label)`` pairs; this module decides how they are served. The
one addition to Colmena's ``ParslTaskServer`` is for Parsl's MPI executor, which refuses a task without a
``parsl_resource_specification`` (and Colmena never passes one): :class:`ResourceTaskServer` sends each task
of such an executor with the node and rank counts of its partition.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from colmena.models.results import Result
from colmena.queue.base import ColmenaQueues
from colmena.task_server import ParslTaskServer
from colmena.task_server.base import BaseTaskServer, convert_to_colmena_method
from parsl.app.python import PythonApp
from parsl.config import Config
from parsl.executors import MPIExecutor

logger = logging.getLogger(__name__)


class AcceptsResources:
    """A Colmena method that Parsl may call with ``parsl_resource_specification`` (which the method ignores).

    Parsl passes the keyword on to the function it runs; the MPI executor has already read it by then and
    exported the task's nodes and ranks as ``$PARSL_*`` variables, which is what the QC method uses.
    """

    def __init__(self, method: Callable[[Result], Result]):
        self.method = method
        self.__name__ = getattr(method, "name", getattr(method, "__name__", "method"))

    def __call__(self, result: Result, parsl_resource_specification: dict | None = None) -> Result:  # noqa: D102
        return self.method(result)


class ResourceTaskServer(ParslTaskServer):
    """Colmena's Parsl task server, sending tasks of chosen executors with a resource specification.

    Args:
        methods: ``(function, {"executors": [label]})`` pairs, as for ``ParslTaskServer``.
        queues: the run's queues.
        config: the Parsl configuration.
        resources: executor label -> ``parsl_resource_specification`` for every task sent there.
    """

    def __init__(self, methods: list[tuple[Callable, dict]], queues: ColmenaQueues, config: Config,
                 resources: dict[str, dict[str, Any]]):
        super().__init__(methods, queues, config)
        self.resources_: dict[str, dict[str, Any]] = {}
        for function, options in methods:
            label = options["executors"][0]
            if label not in resources:
                continue
            method = convert_to_colmena_method(function)
            self.methods_[method.name] = (PythonApp(AcceptsResources(method), **options), "basic")
            self.resources_[method.name] = dict(resources[label])

    def _submit(self, task: Result, topic: str):  # noqa: D102
        spec = self.resources_.get(task.method)
        if spec is None:
            return super()._submit(task, topic)
        task.mark_start_task_submission()
        app, _ = self.methods_[task.method]
        return app(task, parsl_resource_specification=dict(spec))


def build_task_server(settings: Any, methods: list[tuple[Callable, str]], queues: ColmenaQueues,
                      parsl_config: Config | None, qc_cores_per_task: int) -> BaseTaskServer:
    """The task server ``settings.task_server`` names, serving ``(method, executor label)`` pairs.

    Args:
        settings: the campaign's settings (``task_server``, ``qc_nodes_per_task``, Globus endpoint ids).
        methods: each method with the label of the partition (``qc`` or ``ml``) it runs on.
        queues: the run's queues.
        parsl_config: the site's Parsl configuration (unused by Globus Compute).
        qc_cores_per_task: MPI ranks per node of one QC task (QCEngine's ``ncores``).
    """
    if settings.task_server == "globus":
        from configs.sites.globus import build_globus_task_server

        return build_globus_task_server(methods, queues, {"qc": settings.globus_qc_endpoint,
                                                          "ml": settings.globus_ml_endpoint})
    pairs = [(method, {"executors": [label]}) for method, label in methods]
    mpi = {executor.label: {"num_nodes": settings.qc_nodes_per_task, "ranks_per_node": qc_cores_per_task}
           for executor in parsl_config.executors if isinstance(executor, MPIExecutor)}
    if mpi:
        logger.info("Tasks on %s get their nodes from Parsl's MPI executor: %s", ", ".join(mpi), mpi)
        return ResourceTaskServer(pairs, queues, parsl_config, mpi)
    return ParslTaskServer(pairs, queues, parsl_config)
