"""Molecules from SMILES: validation and 3-D structures with RDKit."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rdkit import Chem, RDLogger
from rdkit.Chem import AllChem

RDLogger.DisableLog("rdApp.*")  # RDKit's own warnings would flood worker logs; failures are reported below

SUPPORTED_ELEMENTS = frozenset({"H", "C", "N", "O", "F", "S", "Cl", "Br"})
"""Elements of QM9 and of drug-like libraries (MOSES); the campaign computes their isolated-atom references.

Every one is parametrized in GFN2-xTB and has standard basis sets in NWChem (6-31G* covers H to Br).
"""


class MoleculeError(ValueError):
    """A molecule that cannot be evaluated (unparsable, unsupported element, no 3-D embedding)."""


@dataclass(frozen=True)
class Structure:
    """A 3-D structure: element symbols and Cartesian coordinates in Å."""

    symbols: tuple[str, ...]
    positions: np.ndarray


def parse_smiles(smiles: str) -> Chem.Mol:
    """Parse and sanitize a SMILES string, rejecting elements the campaign has no reference energies for.

    Raises:
        MoleculeError: the SMILES does not parse or holds an unsupported element.
    """
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise MoleculeError(f"RDKit cannot parse SMILES {smiles!r}")
    unsupported = sorted({a.GetSymbol() for a in mol.GetAtoms()} - SUPPORTED_ELEMENTS)
    if unsupported:
        raise MoleculeError(f"unsupported elements {', '.join(unsupported)} "
                            f"(supported: {', '.join(sorted(SUPPORTED_ELEMENTS))})")
    return mol


def canonicalize(smiles: str) -> str:
    """RDKit's canonical SMILES, so the same molecule is never evaluated twice under two spellings."""
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise MoleculeError(f"RDKit cannot parse SMILES {smiles!r}")
    return Chem.MolToSmiles(mol)


def embed(smiles: str, seed: int = 0) -> Structure:
    """A 3-D structure for a SMILES: ETKDG embedding followed by an MMFF94 (or UFF) clean-up.

    The force-field pre-relaxation is cheap and hands the QC relaxation a reasonable start, which keeps the
    number of (much more expensive) QC gradient steps low.

    Raises:
        MoleculeError: the SMILES is invalid, or RDKit cannot embed it in 3-D.
    """
    mol = Chem.AddHs(parse_smiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    if AllChem.EmbedMolecule(mol, params) != 0:
        params.useRandomCoords = True  # strained cages sometimes only embed from random coordinates
        if AllChem.EmbedMolecule(mol, params) != 0:
            raise MoleculeError(f"RDKit could not embed {smiles!r} in 3-D")
    if AllChem.MMFFHasAllMoleculeParams(mol):
        AllChem.MMFFOptimizeMolecule(mol, maxIters=500)
    else:
        AllChem.UFFOptimizeMolecule(mol, maxIters=500)
    symbols = tuple(atom.GetSymbol() for atom in mol.GetAtoms())
    return Structure(symbols=symbols, positions=np.array(mol.GetConformer().GetPositions()))


def element_counts(smiles: str) -> dict[str, int]:
    """Number of atoms of each element, hydrogens included (needed for atomization energies)."""
    mol = Chem.AddHs(parse_smiles(smiles))
    counts: dict[str, int] = {}
    for atom in mol.GetAtoms():
        counts[atom.GetSymbol()] = counts.get(atom.GetSymbol(), 0) + 1
    return counts
