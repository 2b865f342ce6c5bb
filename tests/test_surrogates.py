import numpy as np
import pytest

from methods.features import fingerprints, group_counts, group_vocabulary, qm9_features
from methods.surrogates import make_model, score_qm9, train_surrogate


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
def test_cached_pool_features_match_fresh_ones(qm9, split, name):
    """Scoring from the on-disk cache must give what scoring from SMILES gives."""
    train_rows, train_values, test_rows, _ = split
    model, _ = train_surrogate(name, qm9.smiles[train_rows].tolist(), train_values.tolist())
    from_cache, _ = score_qm9(model, test_rows)
    from_smiles, _ = model.predict(qm9.smiles[test_rows].tolist())
    np.testing.assert_allclose(from_cache, from_smiles, rtol=1e-5, atol=1e-5)


def test_feature_shapes(qm9):
    assert qm9_features("groups").shape == (len(qm9), len(group_vocabulary()) + 1)
    assert qm9_features("fingerprints").shape == (len(qm9), 256)
    assert group_counts(["CS"])[0, -1] > 0  # sulfur groups are unknown to QM9: counted as "other"
    assert fingerprints(["C1CC"]).sum() == 0  # unparsable: empty fingerprint, not a crash


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model"):
        make_model("mpnn-xl")
