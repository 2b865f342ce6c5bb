"""Requests an agent sends and waits for itself (not through a result processor), and how to stop waiting.

Colmena's result processors run until every request sent is answered. A request whose answer an agent awaits
directly (training, scoring, inference) and that never returns — lost with its worker, or still running when
the budget is spent — would keep a result processor, and so the run, alive for ever. :class:`AwaitedRequests`
remembers such requests until their results are taken, and :meth:`AwaitedRequests.forget` tells the queues to
stop counting the rest. Colmena has no public call for that: its client keeps the outstanding task ids in
``_active_tasks`` (colmena 0.7.2), and this module is the one place that touches them.
"""

from __future__ import annotations

import threading
from typing import Any

from colmena.exceptions import TimeoutException
from colmena.models import Result
from colmena.queue.base import ColmenaQueues


class CampaignStopped(Exception):
    """The campaign ended while an agent still awaited results; what they would have produced is not needed."""


def forget_tasks(queues: ColmenaQueues, task_ids: set[str]) -> None:
    """Make the queues stop counting ``task_ids`` as outstanding (their results will not be awaited)."""
    with queues._active_lock:
        queues._active_tasks.difference_update(task_ids)
        if not queues._active_tasks:
            queues._all_complete.set()


class AwaitedRequests:
    """The requests on one topic whose results an agent awaits itself."""

    def __init__(self, queues: ColmenaQueues, topic: str, done: threading.Event):
        """Track requests on ``topic``; a wait gives up once ``done`` is set."""
        self.queues = queues
        self.topic = topic
        self.done = done
        self._lock = threading.Lock()
        self._out: set[str] = set()

    def send(self, *args: Any, **kwargs: Any) -> str:
        """Send one request on the topic, remembering it until its result is taken; returns its task id."""
        task_id = self.queues.send_inputs(*args, topic=self.topic, **kwargs)
        with self._lock:
            self._out.add(task_id)
        return task_id

    def wait(self, n_results: int, partial_when_stopped: bool = False) -> list[Result]:
        """Collect ``n_results`` results from the topic, in the order they arrive.

        Args:
            n_results: How many results to wait for.
            partial_when_stopped: When the campaign ends first, return the results taken so far instead of
                raising (the rest are forgotten).

        Raises:
            CampaignStopped: the campaign ended (``done`` set) while results were still awaited.
        """
        results: list[Result] = []
        while len(results) < n_results:
            try:
                result = self.queues.get_result(topic=self.topic, timeout=1)
            except TimeoutException:
                if self.done.is_set():
                    if partial_when_stopped:
                        self.forget()
                        return results
                    raise CampaignStopped(f"{n_results - len(results)} of {n_results} {self.topic} results "
                                          "not awaited") from None
                continue
            with self._lock:
                self._out.discard(result.task_id)
            results.append(result)
        return results

    def forget(self) -> int:
        """Stop counting every request still out (their results will never be awaited); returns how many."""
        with self._lock:
            outstanding, self._out = self._out, set()
        forget_tasks(self.queues, outstanding)
        return len(outstanding)
