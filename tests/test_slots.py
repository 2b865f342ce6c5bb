"""Slot accounting: Colmena's counter leaks a slot in a timed, cancellable acquire; ours never does.

The leak hung two of four forcefield benchmark campaigns (sampling stopped for want of slots, the QC budget was
never spent). The first tests make the losing interleaving happen on purpose, with no timing luck involved: the
semaphore hands over the slot in the same wait step in which the deadline passes. The last one runs the real
allocator rule against busy submitters and checks that no slot is ever lost or invented.
"""

from __future__ import annotations

import random
import threading
import time

import pytest
from colmena.thinker.resources import ResourceCounter

import thinkers.slots
from thinkers.forcefield_rules import rebalance
from thinkers.slots import SlotCounter


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class LateSemaphore:
    """A semaphore whose next successful wait ends just after the caller's deadline (the unlucky step)."""

    def __init__(self, inner: threading.Semaphore, clock: Clock, jump: float):
        self.inner, self.clock, self.jump = inner, clock, jump

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        got = self.inner.acquire(blocking=False)
        if got:
            self.clock.now += self.jump
        return got

    def release(self, n: int = 1) -> None:
        self.inner.release(n)

    @property
    def _value(self) -> int:
        return self.inner._value


def _three_of_three_held_one_freed(counter_class: type[ResourceCounter]) -> ResourceCounter:
    """Three MD runs hold all three sample slots; one ends; the allocator then moves one slot to QC."""
    counter = counter_class(4, ["sample", "qc"])
    counter.reallocate(None, "sample", 3)
    counter.reallocate(None, "qc", 1)
    for _ in range(3):
        assert counter.acquire("sample", 1)
    counter.release("sample", 1)
    return counter


def _free(counter: ResourceCounter, task: str) -> int:
    return counter._availability[task]._value


def test_colmenas_counter_loses_the_slot_it_obtains_as_its_deadline_passes(monkeypatch):
    """The upstream bug, reproduced deterministically. When this fails, Colmena fixed it: drop our subclass."""
    import colmena.thinker.resources as resources

    clock = Clock()
    monkeypatch.setattr(resources, "monotonic", clock)
    counter = _three_of_three_held_one_freed(ResourceCounter)
    counter._availability["sample"] = LateSemaphore(counter._availability["sample"], clock, jump=0.6)

    moved = counter.reallocate("sample", "qc", 1, timeout=0.5, cancel_if=threading.Event())

    assert not moved
    assert counter.allocated_slots("sample") == 3  # still counted as sample's ...
    held = 2
    assert _free(counter, "sample") == 0  # ... but neither free nor held: lost (1 expected)
    assert _free(counter, "sample") + held < counter.allocated_slots("sample")


def test_slot_counter_keeps_the_slot_it_obtains_as_its_deadline_passes(monkeypatch):
    """The same interleaving with the corrected acquire: the move succeeds, nothing is lost."""
    clock = Clock()
    monkeypatch.setattr(thinkers.slots, "monotonic", clock)
    counter = _three_of_three_held_one_freed(SlotCounter)
    counter._availability["sample"] = LateSemaphore(counter._availability["sample"], clock, jump=0.6)

    moved = counter.reallocate("sample", "qc", 1, timeout=0.5, cancel_if=threading.Event())

    assert moved
    assert counter.allocated_slots("sample") == 2 and counter.allocated_slots("qc") == 2
    held_sample, held_qc = 2, 0
    assert _free(counter, "sample") + held_sample == counter.allocated_slots("sample")
    assert _free(counter, "qc") + held_qc == counter.allocated_slots("qc")


def test_slot_counter_gives_back_a_partial_request_when_cancelled(monkeypatch):
    """Two of three slots come free, then the campaign ends: the two are given back, none kept or lost."""
    clock = Clock()
    monkeypatch.setattr(thinkers.slots, "monotonic", clock)
    counter = SlotCounter(3, ["sample"])
    counter.reallocate(None, "sample", 3)
    for _ in range(3):
        assert counter.acquire("sample", 1)
    counter.release("sample", 2)
    done = threading.Event()
    semaphore = counter._availability["sample"]

    class CancelAfterTwo(LateSemaphore):
        def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
            got = self.inner.acquire(blocking=False)
            if not got:
                done.set()
            return got

    counter._availability["sample"] = CancelAfterTwo(semaphore, clock, jump=0)
    assert not counter.acquire("sample", 3, cancel_if=done)
    assert semaphore._value == 2


def test_slot_counter_times_out_and_honours_cancel_quickly():
    counter = SlotCounter(1, ["qc"])
    counter.reallocate(None, "qc", 1)
    assert counter.acquire("qc", 1)
    started = time.monotonic()
    assert not counter.acquire("qc", 1, timeout=0.3)
    assert 0.25 <= time.monotonic() - started < 1.0
    done = threading.Event()
    threading.Timer(0.2, done.set).start()
    started = time.monotonic()
    assert not counter.acquire("qc", 1, cancel_if=done)
    assert time.monotonic() - started < 0.2 + 2 * thinkers.slots.CANCEL_CHECK_STEP + 0.2
    assert _free(counter, "qc") == 0


@pytest.mark.timeout(60)
def test_allocator_against_busy_submitters_never_loses_or_invents_a_slot():
    """The forcefield allocator's rule moves slots while submitters take and give them back as fast as they can.

    Each submitter plays Colmena's ``task_submitter``: wait for a slot (cancellable), hold it for a short task,
    release it. At the end, with every task back, each task type's free slots must equal its allocation, and the
    allocations must add up to the total: a leaked slot shows as one missing.
    """
    total = 6
    counter = SlotCounter(total, ["sample", "qc"])
    counter.reallocate(None, "sample", 3)
    counter.reallocate(None, "qc", 3)
    done = threading.Event()
    held = {"sample": 0, "qc": 0}
    lock = threading.Lock()
    backlog = [0]
    moves = {"sample→qc": 0, "qc→sample": 0}
    rng = random.Random(7)

    def submitter(task: str) -> None:
        local = random.Random(hash(task) + threading.get_ident())
        while not done.is_set():
            if not counter.acquire(task, 1, cancel_if=done):
                continue
            with lock:
                held[task] += 1
            time.sleep(local.uniform(0.0, 0.02))
            with lock:
                held[task] -= 1
            counter.release(task, 1)

    def allocator() -> None:
        while not done.is_set():
            backlog[0] = rng.choice([0, 0, 20])  # swings between an idle and a flooded QC queue
            moved = rebalance(counter, backlog[0], True, done)
            if moved:
                moves[moved] += 1

    threads = [threading.Thread(target=submitter, args=(task,)) for task in ["sample"] * 3 + ["qc"] * 3]
    threads.append(threading.Thread(target=allocator))
    for thread in threads:
        thread.start()
    time.sleep(3)
    done.set()
    for thread in threads:
        thread.join(timeout=10)
        assert not thread.is_alive()

    assert moves["sample→qc"] > 5 and moves["qc→sample"] > 5, moves  # the race was exercised
    assert held == {"sample": 0, "qc": 0}
    for task in ("sample", "qc"):
        assert _free(counter, task) == counter.allocated_slots(task), (task, moves)
    assert counter.allocated_slots("sample") + counter.allocated_slots("qc") == total
