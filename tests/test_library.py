"""A search space's cached feature blocks: what workers score must be what the model predicts from SMILES."""

import numpy as np
import pytest

from configs.settings.search_space import load_search_space
from methods.chem import SUPPORTED_ELEMENTS
from methods.library import BLOCK, Library, featurize_block, missing_blocks, score_block
from methods.mpnn import featurize
from methods.surrogates import MPNNEnsemble, make_model, train_surrogate

HALOGEN_SULFUR = ["CS", "CSC", "CCS", "ClCCl", "CCl", "CBr", "BrCCBr", "c1ccsc1", "Clc1ccccc1", "Brc1ccccc1",
                  "CC(=O)S", "ClC(Cl)Cl", "FC(F)(F)Br", "OCCS", "NCCCl", "CC(Br)C", "c1ccc(S)cc1", "CCSCC",
                  "ClCCBr", "O=C(Cl)C"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MOLSTEER_CACHE", str(tmp_path))
    return tmp_path


def test_graph_batch_take_is_the_featurization_of_the_subset():
    smiles = HALOGEN_SULFUR[:8]
    rows = [6, 1, 3]
    taken = featurize(smiles).take(rows)
    direct = featurize([smiles[i] for i in rows])
    for name in ("atoms", "bonds", "connectivity", "graph_index", "valid", "atom_offsets", "bond_offsets"):
        np.testing.assert_array_equal(getattr(taken, name), getattr(direct, name), err_msg=name)


def test_mpnn_scores_from_cached_graphs_match_scores_from_smiles(cache):
    values = np.arange(len(HALOGEN_SULFUR), dtype=float)
    model = MPNNEnsemble(ensemble_size=2, epochs=2).fit(HALOGEN_SULFUR, values)
    library = Library("mpnn-test", len(HALOGEN_SULFUR))
    assert missing_blocks(library, ["graphs"]) == {"graphs": [0]}
    featurize_block(library, "graphs", 0, HALOGEN_SULFUR)
    assert missing_blocks(library, ["graphs"]) == {"graphs": []}
    rows = np.array([3, 0, 9])
    mean, std = score_block(model, library, 0, rows)
    expected_mean, expected_std = model.predict([HALOGEN_SULFUR[i] for i in rows])
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(std, expected_std, rtol=1e-3, atol=1e-4)


def test_group_contribution_is_unsure_about_groups_it_never_saw():
    train = ["C", "CC", "CCC", "CCO", "CO", "CCCO", "OCCO", "CC(C)O", "CCCC", "CC(C)C", "OCC(O)CO", "CCOC"]
    values = [len(s) * 0.5 for s in train]
    model, _ = train_surrogate("gc", train, values)
    _, std = model.predict(["CCCCO", "CCCCBr"])
    assert std[1] > 2 * std[0]  # bromine's groups are unknown: its prediction must say so


def test_featurize_block_refuses_a_block_of_the_wrong_size(cache):
    library = Library("size-test", BLOCK + 5)
    with pytest.raises(ValueError, match="block 1 .* has 5 molecules, 3 given"):
        featurize_block(library, "groups", 1, ["C", "CC", "CCC"])


def test_a_checked_search_space_is_cached_by_content(cache, tmp_path, monkeypatch):
    # The caching rule is for big files; test it on a small one.
    monkeypatch.setattr("configs.settings.search_space.CACHE_MIN_BYTES", 0)
    path = tmp_path / "lib.smi"
    path.write_text("\n".join(HALOGEN_SULFUR + ["[Si](C)(C)C", "C[N+](C)(C)C"]) + "\n")
    first = load_search_space(path, elements=SUPPORTED_ELEMENTS)
    assert len(first.smiles) == len(HALOGEN_SULFUR) and len(first.skipped) == 2 and first.key
    again = load_search_space(path, elements=SUPPORTED_ELEMENTS)
    assert (again.smiles, again.skipped, again.key) == (first.smiles, first.skipped, first.key)
    assert (cache / "libraries" / first.key / "molecules.txt").exists()
    path.write_text("\n".join(HALOGEN_SULFUR[:5]) + "\n")  # a changed file is a different library
    changed = load_search_space(path, elements=SUPPORTED_ELEMENTS)
    assert changed.key != first.key and len(changed.smiles) == 5


def test_knn_scores_a_growing_training_set_incrementally_and_exactly(qm9, cache):
    rng = np.random.default_rng(0)
    smiles = qm9.smiles[rng.choice(len(qm9), 3000, replace=False)].tolist()
    library = Library("knn-state", len(smiles))
    featurize_block(library, "fingerprints", 0, smiles)
    train = smiles[:60]
    values = rng.normal(size=60)
    for n in (3, 20, 60):  # rounds: each adds molecules at the end of the training set
        model = make_model("knn").fit(train[:n], values[:n])
        mean, std = score_block(model, library, 0)
        full_mean, full_std = model.predict(smiles)
        np.testing.assert_allclose(mean, full_mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(std, full_std, rtol=1e-4, atol=1e-5)
    states = list((cache / "libraries" / "knn-state" / "state").glob("*.npz"))
    assert len(states) == 1 and int(np.load(states[0])["seen"]) == 60
    reordered = make_model("knn").fit(train[::-1], values[::-1])  # not a continuation: rebuilt, still exact
    mean, _ = score_block(reordered, library, 0, np.arange(2000))
    np.testing.assert_allclose(mean, reordered.predict(smiles[:2000])[0], rtol=1e-4, atol=1e-5)
