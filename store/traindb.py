"""``train.db``: the forcefield campaign's training structures with their QC energies and forces (ASE database)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def open_train_db(path: Path) -> Any:
    """The run's ASE database of labelled structures, without ASE's lock file.

    ASE locks a database by creating ``<name>.lock`` and deleting it afterwards, so a process killed during a
    write leaves the file behind and every later writer waits for it for ever. Only one process runs a run
    directory at a time (the run directory's own lock) and one thread writes, so that lock adds nothing;
    SQLite's own locking still guards each transaction, and the kernel releases it when a process dies.
    """
    import ase.db

    return ase.db.connect(path, use_lock_file=False)
