"""A task that does nothing, for measuring what the steering stack itself costs per task."""

from __future__ import annotations

from typing import Any


def noop(payload: Any = None) -> Any:
    """Return the input unchanged: the round trip then measures queues, serialization and scheduling only."""
    return payload
