"""The MPNN ensemble (TensorFlow/Keras) on real QM9 molecules and their QM9 property."""

import numpy as np
import pytest

from methods.mpnn import ATOM_FEATURES, BOND_FEATURES, ensemble_predict, featurize, train_mpnn
from methods.surrogates import MPNNEnsemble


def test_featurize_builds_one_disconnected_graph():
    batch = featurize(["CCO", "C1CC", "c1ccccc1"])
    assert batch.atoms.shape == (3 + 6, ATOM_FEATURES)
    assert batch.bonds.shape == (2 * (2 + 6), BOND_FEATURES)  # directed: both ways
    assert list(batch.valid) == [True, False, True]
    assert set(batch.graph_index.tolist()) == {0, 2}
    assert batch.connectivity.max() < len(batch.atoms)


@pytest.mark.timeout(400)
def test_ensemble_beats_the_mean_and_knows_what_it_has_not_seen(qm9):
    rng = np.random.default_rng(7)
    homo_ie = -qm9.columns["HOMO_au"] * 27.2114
    fluorine = qm9.atom_counts[:, 4]
    plain = np.flatnonzero(fluorine == 0)
    rich = np.flatnonzero(fluorine >= 3)
    rows = rng.choice(plain, 460, replace=False)
    train, test = rows[:400], rows[400:]
    members = [train_mpnn(qm9.smiles[train].tolist(), homo_ie[train].tolist(), seed=s, epochs=40) for s in range(3)]
    mean, std = ensemble_predict(members, qm9.smiles[test].tolist())
    model_mae = np.abs(mean - homo_ie[test]).mean()
    baseline_mae = np.abs(homo_ie[train].mean() - homo_ie[test]).mean()
    print(f"MPNN ensemble hold-out MAE {model_mae:.3f} eV vs {baseline_mae:.3f} eV for the training mean")
    assert model_mae < 0.85 * baseline_mae
    assert np.all(std > 0)
    assert all("oob_mae" in m.stats for m in members)
    # Molecules with several fluorines were never seen: the members disagree more on them.
    _, std_unseen = ensemble_predict(members, qm9.smiles[rng.choice(rich, 60, replace=False)].tolist())
    assert std_unseen.mean() > std.mean()


def test_ensemble_as_a_surrogate_handles_bad_smiles(qm9):
    model = MPNNEnsemble(ensemble_size=2, epochs=3).fit(qm9.smiles[:40].tolist(), np.arange(40.0))
    mean, std = model.predict(["CCO", "C1CC"])
    assert np.isfinite(mean[0]) and np.isnan(mean[1])
