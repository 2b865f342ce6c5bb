"""Slot accounting that cannot leak: Colmena's resource counter with a corrected ``acquire``.

Colmena 0.7.2's ``ResourceCounter.acquire`` (upstream's current code has the same lines) waits on a task's
semaphore in steps of one second when it is given a ``cancel_if`` event. When the semaphore is obtained in the
same step in which the deadline passes (or the event is set), it leaves the loop *before* counting that slot, and
the give-back releases only the counted ones: the slot is gone for good. The forcefield allocator makes exactly
such calls (``reallocate("sample", "qc", 1, timeout=0.5, cancel_if=done)``) at the moment an MD run frees its
slot, so every unlucky call lost a sampling slot; after three, sampling stopped, the pool never reached the
inference batch, no structure was picked, and the campaign hung with its QC budget unspent (two of four
benchmark campaigns run side by side). ``docs/upstream/colmena-resource-counter.md`` is the upstream
report; ``tests/test_slots.py`` reproduces it.

:class:`SlotCounter` keeps every other behaviour of Colmena's counter (it is a subclass, used wherever a thinker
needs one) and replaces the one method: a slot obtained is always counted before the deadline or the event is
looked at, and a request that ends unfilled gives back exactly what it counted.
"""

from __future__ import annotations

import threading
from math import inf
from time import monotonic

from colmena.thinker.resources import ResourceCounter

CANCEL_CHECK_STEP = 0.1
"""Seconds between looks at ``cancel_if`` while waiting (Colmena waits 1 s; a stop should not take that long)."""


class SlotCounter(ResourceCounter):
    """Colmena's ``ResourceCounter`` whose ``acquire`` never loses a slot it obtained."""

    def acquire(self, task: str | None, n_slots: int, timeout: float = -1.0,
                cancel_if: threading.Event | None = None) -> bool:
        """Take ``n_slots`` of ``task``'s free slots, first come first served.

        Args:
            task: Name of the task type (``None``: the unallocated slots).
            n_slots: How many slots to take.
            timeout: Give up after this many seconds (``<= 0``: wait as long as it takes).
            cancel_if: Give up as soon as this event is set.

        Returns:
            Whether all ``n_slots`` were taken. When not, every slot taken on the way has been given back.
        """
        deadline = monotonic() + timeout if timeout > 0 else inf

        def wait_step() -> float | None:
            """How long the next single wait may block (None: for ever)."""
            step = CANCEL_CHECK_STEP if cancel_if is not None else inf
            step = min(step, max(deadline - monotonic(), 0.0))
            return None if step == inf else step

        def given_up() -> bool:
            return (cancel_if is not None and cancel_if.is_set()) or monotonic() >= deadline

        lock = self._availability_lock[task]
        while True:  # one requester at a time, so two partial requests cannot starve each other
            if given_up():
                return False
            step = wait_step()
            if lock.acquire(timeout=-1 if step is None else step):
                break
        semaphore = self._availability[task]
        taken = 0
        try:
            while taken < n_slots:
                step = wait_step()
                if semaphore.acquire(timeout=step):
                    taken += 1  # counted before anything else is looked at: this is the fix
                    continue
                if given_up():
                    break
            if taken == n_slots:
                return True
            for _ in range(taken):
                semaphore.release()
            return False
        finally:
            lock.release()
