"""Molecular features for the surrogates: functional-group counts and Morgan fingerprints.

Both are computed once per search space, in blocks on the ``ml`` workers, and cached on disk
(:mod:`methods.library`); a model round then costs linear algebra on cached arrays, not an RDKit parse of every
molecule. The group vocabulary is not fixed: it is whatever groups the molecules hold, so a library with sulfur
and halogens gets its own groups instead of being squeezed into QM9's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdFingerprintGenerator
from scipy import sparse

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


@dataclass(frozen=True)
class GroupTable:
    """Group counts of many molecules: a sparse matrix (molecules × groups) and the groups' names.

    Sparse because the vocabulary is open-ended while each molecule holds a few dozen groups: a library with
    unusual chemistry can have far more groups than QM9's 79, and the storage should not grow with them (all of
    MOSES, 84 groups, takes 138 MB on disk this way). Each block of a library has its own names; :meth:`dense`
    maps them onto a model's vocabulary.
    """

    names: tuple[str, ...]
    counts: sparse.csr_matrix  # uint8 counts, shape (molecules, len(names))

    def __len__(self) -> int:
        return self.counts.shape[0]

    def take(self, rows: np.ndarray) -> GroupTable:
        """The same table restricted to ``rows`` (in that order)."""
        return GroupTable(self.names, self.counts[np.asarray(rows, dtype=np.int64)])

    def dense(self, vocabulary: Sequence[str]) -> np.ndarray:
        """Float matrix (molecules × (vocabulary + 1)); the last column counts groups outside ``vocabulary``."""
        column = {g: i for i, g in enumerate(vocabulary)}
        mapping = np.array([column.get(name, len(vocabulary)) for name in self.names], dtype=np.int64)
        # A sparse (names × columns) 0/1 matrix does the renaming as one sparse product.
        rename = sparse.csr_matrix((np.ones(len(mapping)), (np.arange(len(mapping)), mapping)),
                                   shape=(len(self.names), len(vocabulary) + 1))
        return (self.counts.astype(np.float64) @ rename).toarray()

    def save(self, path: Path) -> None:
        """Write as one ``.npz`` (names and the CSR arrays)."""
        with open(path, "wb") as handle:
            np.savez(handle, names=np.array(self.names, dtype=str), data=self.counts.data,
                     indices=self.counts.indices, indptr=self.counts.indptr,
                     shape=np.array(self.counts.shape, dtype=np.int64))

    @classmethod
    def load(cls, path: Path) -> GroupTable:
        """Read what :meth:`save` wrote."""
        with np.load(path) as data:
            counts = sparse.csr_matrix((data["data"], data["indices"], data["indptr"]), shape=tuple(data["shape"]))
            return cls(tuple(str(n) for n in data["names"]), counts)


def group_table(smiles: Iterable[str]) -> GroupTable:
    """Group counts of molecules given as SMILES (an unparsable one has no groups)."""
    per_molecule = [atom_groups(m) if m is not None else Counter() for m in _mols(smiles)]
    names = sorted(set().union(*per_molecule)) if per_molecule else []
    column = {g: i for i, g in enumerate(names)}
    indptr = np.zeros(len(per_molecule) + 1, dtype=np.int64)
    indices: list[int] = []
    data: list[int] = []
    for row, groups in enumerate(per_molecule):
        for group, n in groups.items():
            indices.append(column[group])
            data.append(min(n, 255))
        indptr[row + 1] = len(indices)
    counts = sparse.csr_matrix((np.asarray(data, dtype=np.uint8), np.asarray(indices, dtype=np.int32), indptr),
                               shape=(len(per_molecule), len(names)))
    return GroupTable(tuple(names), counts)


COMPOSITION_ELEMENTS = ("H", "C", "N", "O", "F", "S", "Cl", "Br")
"""Elements counted by :func:`composition`; any other element is counted in one extra column."""

FINGERPRINT_BYTES = FINGERPRINT_BITS // 8
"""Columns of :func:`knn_features` that hold the packed fingerprint; the composition follows them."""


def composition(smiles: Iterable[str]) -> np.ndarray:
    """Atom counts per element, hydrogens included: (molecules × 9) uint8.

    One column per :data:`COMPOSITION_ELEMENTS`, then every other element. An unparsable molecule counts
    nothing.
    """
    return _composition(_mols(smiles))


def _composition(mols: list[Chem.Mol | None]) -> np.ndarray:
    column = {element: i for i, element in enumerate(COMPOSITION_ELEMENTS)}
    out = np.zeros((len(mols), len(COMPOSITION_ELEMENTS) + 1), dtype=np.int64)
    for row, mol in enumerate(mols):
        if mol is None:
            continue
        for atom in mol.GetAtoms():
            out[row, column.get(atom.GetSymbol(), len(COMPOSITION_ELEMENTS))] += 1
            out[row, 0] += atom.GetTotalNumHs()
    return np.minimum(out, 255).astype(np.uint8)


def knn_features(smiles: Iterable[str]) -> np.ndarray:
    """What the ``knn`` surrogate reads: packed fingerprint, then composition, (molecules × 265) uint8.

    One array, so a cached block stays one memory-mappable file. The first :data:`FINGERPRINT_BYTES` columns
    find the neighbours; the composition gives the additive baseline the neighbours correct
    (:class:`methods.surrogates.KNNModel`).
    """
    mols = _mols(smiles)  # parsed once for both parts: parsing is most of the cost
    return np.hstack([_fingerprints(mols), _composition(mols)])


def fingerprints(smiles: Iterable[str]) -> np.ndarray:
    """Morgan fingerprints (radius 2, 2048 bits), bit-packed: (molecules × 256) uint8."""
    return _fingerprints(_mols(smiles))


def _fingerprints(mols: list[Chem.Mol | None]) -> np.ndarray:
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=FINGERPRINT_RADIUS, fpSize=FINGERPRINT_BITS)
    out = np.zeros((len(mols), FINGERPRINT_BITS), dtype=np.uint8)
    for row, mol in enumerate(mols):
        if mol is not None:
            out[row] = generator.GetFingerprintAsNumPy(mol)
    return np.packbits(out, axis=1)
