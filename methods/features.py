"""Molecular features for the surrogates: functional-group counts and Morgan fingerprints.

Features of the whole QM9 pool are computed once and cached next to the QM9 cache, so that scoring 130k
molecules costs one pass of linear algebra on a worker instead of 130k RDKit parses per round.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdFingerprintGenerator

from methods.data import CACHE_VERSION, atomic_save, cache_dir, load_qm9

logger = logging.getLogger(__name__)

FINGERPRINT_BITS = 2048
FINGERPRINT_RADIUS = 2


def atom_groups(mol: Chem.Mol) -> Counter[str]:
    """Count the molecule's groups: heavy atoms in their bonding environment, and bond types.

    An atom group is the element with its hydrogen count, heavy-atom degree, aromaticity, ring membership
    and charge (``C:H3:D1`` is a methyl carbon); a bond group is the pair of elements with the bond order.
    These are the classic additive "group contribution" terms: the property is modelled as a weighted sum.
    """
    groups: Counter[str] = Counter()
    for atom in mol.GetAtoms():
        label = f"{atom.GetSymbol()}:H{atom.GetTotalNumHs()}:D{atom.GetDegree()}"
        if atom.GetIsAromatic():
            label += ":ar"
        elif atom.IsInRing():
            label += ":ring"
        if atom.GetFormalCharge():
            label += f":q{atom.GetFormalCharge():+d}"
        groups[label] += 1
    for bond in mol.GetBonds():
        ends = sorted((bond.GetBeginAtom().GetSymbol(), bond.GetEndAtom().GetSymbol()))
        groups[f"{ends[0]}{bond.GetBondTypeAsDouble():g}{ends[1]}" + (":ring" if bond.IsInRing() else "")] += 1
    return groups


def _mols(smiles: Iterable[str]) -> list[Chem.Mol | None]:
    return [Chem.MolFromSmiles(s) for s in smiles]


def _build_qm9_groups() -> None:
    """One pass over QM9 yields both the group vocabulary and the pool's group-count matrix."""
    per_molecule = [atom_groups(m) if m is not None else Counter() for m in _mols(load_qm9().smiles)]
    vocabulary = sorted(set().union(*per_molecule))
    column = {g: i for i, g in enumerate(vocabulary)}
    matrix = np.zeros((len(per_molecule), len(vocabulary) + 1), dtype=np.uint8)
    for row, groups in enumerate(per_molecule):
        for group, n in groups.items():
            matrix[row, column[group]] = n
    _save_matrix("groups", matrix)
    atomic_save(_vocabulary_path(), lambda tmp: tmp.write_text(json.dumps(vocabulary)))


def _vocabulary_path():
    return cache_dir() / f"qm9-groups-v{CACHE_VERSION}.json"


def _matrix_path(kind: str):
    return cache_dir() / f"qm9-{kind}-v{CACHE_VERSION}.npy"


def _save_matrix(kind: str, matrix: np.ndarray) -> None:
    def write(tmp):
        with open(tmp, "wb") as handle:
            np.save(handle, matrix)

    atomic_save(_matrix_path(kind), write)


@lru_cache(maxsize=1)
def group_vocabulary() -> tuple[str, ...]:
    """The groups that occur in QM9, in a fixed order: the columns of the group-count matrix."""
    if not _vocabulary_path().exists():
        _build_qm9_groups()
    return tuple(json.loads(_vocabulary_path().read_text()))


def group_counts(smiles: Iterable[str], vocabulary: tuple[str, ...] | None = None) -> np.ndarray:
    """Group-count matrix (molecules × groups); a last column counts groups unknown to the vocabulary."""
    vocabulary = vocabulary or group_vocabulary()
    column = {g: i for i, g in enumerate(vocabulary)}
    mols = _mols(smiles)
    out = np.zeros((len(mols), len(vocabulary) + 1), dtype=np.uint8)
    for row, mol in enumerate(mols):
        if mol is None:
            continue
        for group, n in atom_groups(mol).items():
            out[row, column.get(group, len(vocabulary))] += n
    return out


def fingerprints(smiles: Iterable[str]) -> np.ndarray:
    """Morgan fingerprints (radius 2, 2048 bits), bit-packed: (molecules × 256) uint8."""
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=FINGERPRINT_RADIUS, fpSize=FINGERPRINT_BITS)
    mols = _mols(smiles)
    out = np.zeros((len(mols), FINGERPRINT_BITS), dtype=np.uint8)
    for row, mol in enumerate(mols):
        if mol is not None:
            out[row] = generator.GetFingerprintAsNumPy(mol)
    return np.packbits(out, axis=1)


FEATURIZERS = {"groups": group_counts, "fingerprints": fingerprints}


@lru_cache(maxsize=2)
def qm9_features(kind: str) -> np.ndarray:
    """Features of every QM9 molecule (row order of :func:`methods.data.load_qm9`), cached on disk."""
    path = _matrix_path(kind)
    if not path.exists() or (kind == "groups" and not _vocabulary_path().exists()):
        logger.info("Computing %s for all of QM9 (once)", kind)
        if kind == "groups":
            _build_qm9_groups()
        else:
            _save_matrix(kind, FEATURIZERS[kind](load_qm9().smiles))
    return np.load(path, mmap_mode="r")
