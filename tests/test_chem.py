import numpy as np
import pytest

from methods.chem import MoleculeError, canonicalize, element_counts, embed


def test_embed_gives_3d_structure_with_hydrogens():
    structure = embed("CCO")
    assert structure.symbols.count("H") == 6
    assert structure.positions.shape == (9, 3)
    assert np.ptp(structure.positions, axis=0).max() > 1.0


@pytest.mark.parametrize("smiles, message", [
    ("C1CC", "cannot parse"),
    ("C[Si](C)(C)C", "unsupported elements Si"),
    ("[Na+].[I-]", "unsupported elements I, Na"),
])
def test_bad_molecules_raise_clear_errors(smiles, message):
    with pytest.raises(MoleculeError, match=message):
        embed(smiles)


def test_canonical_and_counts():
    assert canonicalize("OCC") == canonicalize("CCO")
    assert element_counts("CC=O") == {"C": 2, "O": 1, "H": 4}
