"""The QM9 search space, loaded from the ``qm9pack`` package and cached compactly on first use.

``qm9pack.get_data`` parses a 100 MB CSV (≈2.5 s) into text-heavy columns; the campaign needs the canonical
SMILES and a few numeric columns, so they are written once to ``$MOLSTEER_CACHE`` (default
``~/.cache/molsteer``) as a NumPy archive that loads in a fraction of a second. Workers and the thinker read
the same files, so large arrays never travel through the task queues.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
"""Version of the derived pool features (bump when their definition changes)."""
TABLE_VERSION = 3
"""Version of the cached QM9 table (2: atom counts per element; 3: B3LYP geometries)."""
ELEMENT_ORDER = ("H", "C", "N", "O", "F")
"""Order of qm9pack's ``Stoichiometry`` counts."""
_ATOMIC_NUMBERS = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
_SYMBOLS = {z: s for s, z in _ATOMIC_NUMBERS.items()}
QM9_ATOM_REFERENCE_U0 = {"H": -0.500273, "C": -37.846772, "N": -54.583861, "O": -75.064579, "F": -99.718730}
"""QM9's B3LYP/6-31G(2df,p) U0 of the isolated atoms (Hartree), for QM9's own atomization energies."""

NUMERIC_COLUMNS = (
    "HOMO_au", "LUMO_au", "HOMO_LUMO_gap_au", "Dipole_debye", "Polarizability_bohr3", "R2_bohr2", "ZPVE_au",
    "InternalEnergy_0K_au", "InternalEnergy_298K_au", "Enthalphy_298K_au", "GibbsFreeEnergy_298K_au",
    "Heatcapacity_Cv_cal_mol_K", "N_atoms",
)


def cache_dir() -> Path:
    """Where derived data lives; override with ``MOLSTEER_CACHE`` (e.g. a shared file system on a cluster)."""
    path = Path(os.environ.get("MOLSTEER_CACHE", Path.home() / ".cache" / "molsteer"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_save(path: Path, writer: Callable[[Path], None]) -> None:
    """Write through a temporary file, sync it to disk, rename, and sync the directory.

    Concurrent workers never read a half-written cache, and a kill (or a power cut) leaves either the old file
    or the new one, never a torn one: run-directory state relies on that to be resumable. The rename itself is
    an entry in the directory; syncing the directory makes it survive a power cut too.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=path.suffix)
    os.close(fd)
    try:
        writer(Path(tmp))
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@dataclass(frozen=True)
class QM9:
    """QM9 as arrays: row ``i`` is the molecule with QM9 index ``index[i]``."""

    index: np.ndarray
    smiles: np.ndarray
    atom_counts: np.ndarray  # molecules × ELEMENT_ORDER, hydrogens included
    columns: dict[str, np.ndarray]
    geometry_offsets: np.ndarray  # molecule i's atoms: rows geometry_offsets[i]:geometry_offsets[i + 1]
    positions: np.ndarray  # Å, B3LYP/6-31G(2df,p)-relaxed
    numbers: np.ndarray  # atomic numbers

    def geometry(self, row: int) -> tuple[list[str], np.ndarray]:
        """Element symbols and B3LYP positions (Å) of one molecule."""
        lo, hi = self.geometry_offsets[row], self.geometry_offsets[row + 1]
        return [_SYMBOLS[z] for z in self.numbers[lo:hi]], self.positions[lo:hi].astype(float)

    def __len__(self) -> int:
        return len(self.smiles)


def _parse_xyz(text: str) -> np.ndarray:
    """qm9pack's ``[[x,y,z],…]`` strings (numbers such as ``0.`` are not JSON)."""
    return np.array(text.replace("[", "").replace("]", "").split(","), dtype=np.float32).reshape(-1, 3)


def _build_qm9_cache(path: Path) -> None:
    import qm9pack
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    logger.info("Building the QM9 cache at %s (once; takes about half a minute)", path)
    frame = qm9pack.get_data("qm9")
    smiles = []
    for raw in frame["SMILES"]:
        mol = Chem.MolFromSmiles(raw)
        smiles.append(Chem.MolToSmiles(mol) if mol is not None else raw)
    counts = np.array([json.loads(text) for text in frame["Stoichiometry"]], dtype=np.int16)
    # Geometries, flattened: molecule i's atoms are rows geometry_offsets[i]:geometry_offsets[i + 1].
    positions = [_parse_xyz(text) for text in frame["XYZ_Ang"]]
    numbers = [[_ATOMIC_NUMBERS[e.strip(" '\"")] for e in text.strip("[]").split(",")] for text in frame["Elements"]]
    arrays = {"index": frame["Index"].to_numpy(np.int64), "smiles": np.array(smiles, dtype=str),
              "atom_counts": counts,
              "geometry_offsets": np.cumsum([0] + [len(p) for p in positions]).astype(np.int64),
              "positions": np.concatenate(positions), "numbers": np.concatenate(numbers).astype(np.uint8)}
    arrays.update({f"col_{name}": frame[name].to_numpy(np.float64) for name in NUMERIC_COLUMNS})

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    atomic_save(path, write)
    for old in range(1, TABLE_VERSION):  # superseded tables only waste the user's disk
        (path.parent / f"qm9-v{old}.npz").unlink(missing_ok=True)


@lru_cache(maxsize=1)
def load_qm9() -> QM9:
    """All 130,831 QM9 molecules with canonical SMILES and numeric properties (cached per process)."""
    path = cache_dir() / f"qm9-v{TABLE_VERSION}.npz"
    if not path.exists():
        _build_qm9_cache(path)
    with np.load(path, allow_pickle=False) as data:
        columns = {key[4:]: data[key] for key in data.files if key.startswith("col_")}
        return QM9(index=data["index"], smiles=data["smiles"], atom_counts=data["atom_counts"], columns=columns,
                   geometry_offsets=data["geometry_offsets"], positions=data["positions"], numbers=data["numbers"])


@lru_cache(maxsize=1)
def _rows_by_smiles() -> dict[str, int]:
    return {smiles: row for row, smiles in enumerate(load_qm9().smiles.tolist())}


def qm9_row(smiles: str) -> int | None:
    """Row of a molecule in :func:`load_qm9`, by canonical SMILES; None when it is not in QM9."""
    from rdkit import Chem

    row = _rows_by_smiles().get(smiles)
    if row is None:
        mol = Chem.MolFromSmiles(smiles)
        row = _rows_by_smiles().get(Chem.MolToSmiles(mol)) if mol is not None else None
    return row


def sample_pool(n_total: int, pool_size: int | None, seed: int) -> np.ndarray:
    """Rows forming a campaign's search space: all of them, or a seeded random subset (sorted)."""
    rows = np.arange(n_total)
    if pool_size is None or pool_size >= n_total:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, pool_size, replace=False))
