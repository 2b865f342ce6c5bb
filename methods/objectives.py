"""What a campaign optimizes: the built-in objectives and any numeric QM9 column, with their direction and units.

Shared by the settings (validation), the QC methods (what to compute) and the QM9 lookup (what to read).
"""

from __future__ import annotations

from dataclasses import dataclass

from methods.data import NUMERIC_COLUMNS

BUILTIN_OBJECTIVES = ("ionization-energy", "atomization-energy")


@dataclass(frozen=True)
class Objective:
    """A parsed objective: a built-in one (``column`` is None) or ``qm9:<column>``."""

    name: str
    column: str | None
    maximize: bool | None
    units: str


def _column_units(column: str) -> str:
    suffix = column.rsplit("_", 1)[-1]
    return {"au": "Hartree", "debye": "Debye", "bohr3": "bohr^3", "bohr2": "bohr^2"}.get(suffix, suffix)


def parse_objective(name: str) -> Objective:
    """Parse an objective name.

    Raises:
        ValueError: unknown objective or QM9 column, with the valid choices.
    """
    if name == "ionization-energy":
        return Objective(name, None, True, "eV")
    if name == "atomization-energy":
        return Objective(name, None, False, "eV")
    if name.startswith("qm9:"):
        column = name[4:]
        if column not in NUMERIC_COLUMNS:
            raise ValueError(f"unknown QM9 column {column!r}; choose from {', '.join(NUMERIC_COLUMNS)}")
        return Objective(name, column, None, _column_units(column))
    raise ValueError(f"unknown objective {name!r}; choose {', '.join(BUILTIN_OBJECTIVES)} or qm9:<column>")
