import copy

import numpy as np
import pytest

from methods.features import composition, fingerprints, group_table, knn_features
from methods.library import Library, featurize_block, score_block
from methods.surrogates import make_model, train_surrogate


@pytest.fixture(scope="module")
def split(qm9):
    rng = np.random.default_rng(3)
    rows = rng.choice(len(qm9), 700, replace=False)
    values = -qm9.columns["HOMO_au"][rows] * 27.2114
    return rows[:500], values[:500], rows[500:], values[500:]


@pytest.mark.parametrize("name", ["gc", "knn"])
def test_surrogates_beat_the_mean_on_held_out_molecules(qm9, split, name):
    train_rows, train_values, test_rows, test_values = split
    model, stats = train_surrogate(name, qm9.smiles[train_rows].tolist(), train_values.tolist())
    mean, std = model.predict(qm9.smiles[test_rows].tolist())
    model_mae = np.abs(mean - test_values).mean()
    baseline_mae = np.abs(train_values.mean() - test_values).mean()
    assert model_mae < 0.9 * baseline_mae
    assert np.all(std >= 0)
    assert stats["n_train"] == 500 and stats["holdout_mae"] < stats["holdout_baseline_mae"]


@pytest.mark.parametrize("name", ["gc", "knn"])
def test_cached_block_features_match_fresh_ones(qm9, split, name, tmp_path, monkeypatch):
    """Scoring from a library's cached block (as the workers do) must give what scoring from SMILES gives."""
    monkeypatch.setenv("MOLSTEER_CACHE", str(tmp_path))
    train_rows, train_values, test_rows, _ = split
    model, _ = train_surrogate(name, qm9.smiles[train_rows].tolist(), train_values.tolist())
    smiles = qm9.smiles[test_rows].tolist()
    library = Library("test-block", len(smiles))
    featurize_block(library, model.feature_kind, 0, smiles)
    some = np.array([5, 0, 17, 199])
    from_cache, _ = score_block(model, library, 0, some)
    from_smiles, _ = model.predict([smiles[i] for i in some])
    np.testing.assert_allclose(from_cache, from_smiles, rtol=1e-5, atol=1e-5)
    whole, _ = score_block(model, library, 0)
    assert len(whole) == len(smiles)


def test_feature_shapes():
    table = group_table(["CS", "c1ccc(Cl)cc1Br", "C1CC"])
    assert len(table) == 3 and table.counts[2].nnz == 0  # unparsable: no groups, not a crash
    assert any(name.startswith("S:") for name in table.names) and any("Br" in name for name in table.names)
    dense = table.dense(["C:H3:D1"])
    assert dense.shape == (3, 2) and dense[0, 0] == 1 and dense[0, 1] == table.counts[0].sum() - 1
    assert fingerprints(["C1CC"]).sum() == 0  # unparsable: empty fingerprint, not a crash
    # H C N O F S Cl Br other: methanethiol, bromochlorobenzene, tetramethylsilane (Si counts as other)
    assert composition(["CS", "c1ccc(Cl)cc1Br", "C[Si](C)(C)C"]).tolist() == [
        [4, 1, 0, 0, 0, 1, 0, 0, 0], [4, 6, 0, 0, 0, 0, 1, 1, 0], [12, 4, 0, 0, 0, 0, 0, 0, 1]]
    both = knn_features(["CS", "C1CC"])
    assert both.shape == (2, 265) and (both[:, :256] == fingerprints(["CS", "C1CC"])).all() and both[1].sum() == 0


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model"):
        make_model("mpnn-xl")


def test_auto_follows_the_data(qm9):
    """Cross-validation picks group contributions for an additive property and neighbours for a similarity one."""
    from rdkit import DataStructs
    from rdkit.Chem import MolFromSmiles, rdFingerprintGenerator

    from methods.surrogates import select_surrogate

    rows = np.random.default_rng(11).choice(len(qm9), 300, replace=False)
    smiles = qm9.smiles[rows].tolist()
    additive = [float(s.upper().count("C") * 1.5 + s.upper().count("O") * -0.7 + s.count("N") * 0.3) for s in smiles]
    model, stats = select_surrogate(smiles, additive)
    assert stats["chosen"] == "gc" and model.name == "gc" and stats["margin"] > 0
    assert stats["holdout_mae"] == stats["cv_mae"]["gc"] < stats["holdout_baseline_mae"]

    # A landscape in fingerprint space: each molecule takes the value of the most similar of 20 reference
    # molecules. Neighbours share it; group counts, summed linearly, cannot draw its borders.
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    prints = [generator.GetFingerprint(MolFromSmiles(s)) for s in smiles]
    levels = np.random.default_rng(5).normal(size=20)
    landscape = [float(levels[int(np.argmax(DataStructs.BulkTanimotoSimilarity(p, prints[:20])))]) for p in prints]
    model, stats = select_surrogate(smiles, landscape)
    assert stats["chosen"] == "knn" and model.name == "knn", stats["cv_mae"]
    assert stats["margin"] > 0.05 and stats["composition_baseline"] is False  # composition says nothing here


def test_knn_adds_a_composition_baseline_where_it_helps_and_only_there(qm9):
    """Neighbours alone cannot follow an extensive property; the composition baseline can, and is then chosen."""
    from methods.simulate import qm9_objective_values

    rows = np.random.default_rng(7).choice(len(qm9), 600, replace=False)
    smiles = qm9.smiles[rows].tolist()
    energy = qm9_objective_values("atomization-energy")[rows]
    train, test = slice(0, 400), slice(400, 600)
    errors = {}
    for mode in ("never", "auto"):
        model = make_model("knn")
        model.composition = mode
        model.fit(smiles[train], energy[train])
        errors[mode] = np.abs(model.predict(smiles[test])[0] - energy[test]).mean()
        assert model.details()["composition_baseline"] is (mode == "auto")
    assert errors["auto"] < 0.25 * errors["never"], errors  # measured: about 0.6 against 5.5 eV
    few, stats = train_surrogate("knn", smiles[:12], energy[:12].tolist())
    assert stats["composition_baseline"] is False  # 12 results: too few for ten more parameters


def test_knn_uncertainty_is_calibrated_on_its_own_errors(qm9):
    """The calibrated uncertainty predicts held-out errors better than the neighbours' raw spread does.

    Measured with the Gaussian log likelihood on molecules the model never saw; the weights are recorded, and
    with too few results to cross-validate the raw spread is kept.
    """
    from methods.simulate import qm9_objective_values

    rows = np.random.default_rng(11).choice(len(qm9), 1400, replace=False)
    smiles = qm9.smiles[rows].tolist()
    energy = qm9_objective_values("ionization-energy")[rows]
    model = make_model("knn").fit(smiles[:800], energy[:800])
    weights = model.details()["uncertainty_weights"]
    assert set(weights) == {"spread2", "distance", "constant"} and min(weights.values()) >= 0
    mean, sigma = model.predict(smiles[800:])
    raw = copy.copy(model)
    raw.calibration = None
    raw_mean, spread = raw.predict(smiles[800:])
    np.testing.assert_allclose(mean, raw_mean)  # calibration changes the uncertainty only

    def nll(sd):
        sd = np.maximum(sd, 1e-3)
        return float(np.mean(np.log(sd) + 0.5 * ((mean - energy[800:]) / sd) ** 2))

    assert nll(sigma) < nll(spread) - 0.1, (nll(sigma), nll(spread))  # measured: -0.36 against -0.04
    few = make_model("knn").fit(smiles[:12], energy[:12])
    assert few.details()["uncertainty_weights"] is None
    np.testing.assert_allclose(few.predict(smiles[800:810])[1], few._parts(
        *few._nearest(few.featurize(smiles[800:810])), few.featurize(smiles[800:810]))[1])


def test_a_model_no_better_than_the_mean_is_said_plainly(caplog):
    from types import SimpleNamespace

    from thinkers.design import DesignThinker

    fake = SimpleNamespace(logger=__import__("logging").getLogger("test"), plan=SimpleNamespace(units="eV"))
    record = {"model": "gc", "n_train": 50, "holdout_mae": 1.0, "holdout_baseline_mae": 1.01}
    with caplog.at_level("WARNING"):
        DesignThinker._judge(fake, record)
    assert record["no_better_than_mean"] is True and "close to random" in caplog.text
    good = {"model": "gc", "n_train": 50, "holdout_mae": 0.2, "holdout_baseline_mae": 1.0}
    DesignThinker._judge(fake, good)
    assert good["no_better_than_mean"] is False
