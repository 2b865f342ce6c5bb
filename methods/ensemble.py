"""Ensemble inference for the forcefield campaign's selector: what every member predicts for pooled structures.

Only energies per atom come back (a members × structures matrix of floats); forces stay on the worker, so an
inference result is a few kilobytes whatever the structures' size.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms


def infer_energies(potentials: list[Any], frames: list[Atoms]) -> np.ndarray:
    """The ``ml`` inference task: energy per atom (eV) of each frame by each member, shape (members, frames)."""
    from methods.mlip import predict

    energies, _ = predict(list(potentials), list(frames))
    atoms_per_frame = np.array([len(frame) for frame in frames], dtype=float)
    return np.asarray(energies, dtype=float) / atoms_per_frame[None, :]
