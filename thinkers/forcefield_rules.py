"""The forcefield campaign's rules and plain data: what the thinker decides by, small enough to test on its own.

Audits (:func:`audit_error`, :func:`next_run_length`), the sampling/QC slot rule (:func:`rebalance`), and the
data the agents share: trajectories, QC jobs and the plan (settings the thinker needs, no settings class).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from ase import Atoms
from colmena.thinker import ResourceCounter

MAX_POOL = 2000
"""Most structures kept waiting for selection; older ones are dropped first (a newer model samples better)."""


# --- the rules, as small pure functions (tested on their own) --------------------------------------------------


def rebalance(counter: ResourceCounter, backlog: int, sampling_open: bool, cancel: threading.Event) -> str | None:
    """Move one slot between sampling and QC when the QC backlog says so; returns the move made, if any.

    A backlog of more than twice the QC slots takes a slot from sampling (never its last); an empty backlog gives
    one back to sampling (QC keeps at least one). The move waits at most 0.5 s for the slot to come free, so the
    allocator keeps looking at the backlog; with :class:`~thinkers.slots.SlotCounter` a wait that runs out loses
    nothing.

    Args:
        counter: The thinker's resource counter, with task types ``sample`` and ``qc``.
        backlog: QC jobs waiting to be sent (initial, audit and active-learning lists).
        sampling_open: Whether sampling still runs (a model exists and the final round has not begun).
        cancel: Set when the campaign ends; a waiting move gives up.
    """
    if not sampling_open:
        return None
    sample, qc = counter.allocated_slots("sample"), counter.allocated_slots("qc")
    if backlog > 2 * max(qc, 1) and sample > 1:
        return "sample→qc" if counter.reallocate("sample", "qc", 1, timeout=0.5, cancel_if=cancel) else None
    if backlog == 0 and qc > 1:
        return "qc→sample" if counter.reallocate("qc", "sample", 1, timeout=0.5, cancel_if=cancel) else None
    return None


def audit_error(model_energy: float, qc_energy: float, n_atoms: int) -> float:
    """Absolute model error at an audited structure, eV/atom."""
    return abs(float(model_energy) - float(qc_energy)) / n_atoms


def next_run_length(length: int, error: float | None, tolerance: float, shortest: int, longest: int) -> int:
    """Adapt a trajectory's run length to its audit.

    A failed audit (or a blow-up, ``error=None``) halves it: the model is not yet trusted that far. An audit well
    inside the tolerance (under half) lengthens it by half: fewer audits per step where the model is good.
    Otherwise it stays. Always within ``[shortest, longest]``.
    """
    if error is None or error > tolerance:
        length = length // 2
    elif error < tolerance / 2:
        length = int(round(length * 1.5))
    return int(min(longest, max(shortest, length)))


@dataclass
class Trajectory:
    """One MD trajectory the sampler continues run after run, from its molecule's starting structure."""

    id: int
    molecule: str
    start: Atoms
    run_length: int
    current: Atoms | None = None
    busy: bool = False  # a sampling run or its audit is out
    runs: int = 0
    restarts: int = 0
    blowups: int = 0

    def restart(self) -> None:
        """Back to the starting structure (new velocities are drawn by the next run)."""
        self.current = None
        self.restarts += 1


@dataclass
class QCJob:
    """A structure waiting for QC energies and forces, and why it was chosen."""

    atoms: Atoms
    source: str  # initial, audit or active
    molecule: str
    trajectory: int | None = None
    model_energy: float | None = None  # the sampling model's energy (eV) at this structure, for audits
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ForcefieldPlan:
    """What the thinker needs from the settings."""

    qc_budget: int
    ensemble_size: int
    retrain_after: int
    first_epochs: int
    train_epochs: int
    learning_rate: float
    parallel_samplers: int
    qc_slots: int
    temperature: float
    timestep: float
    sample_every: int
    min_run_length: int
    max_run_length: int
    energy_tolerance: float
    inference_batch: int
    n_to_select: int
    selector: str
    test_steps: int
    test_every: int
    stability_runs: int
    stability_steps: int
    seed: int


