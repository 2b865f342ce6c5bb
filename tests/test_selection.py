"""The selection rules on hand-made ensemble predictions, where the right answer is known."""

import numpy as np
import pytest

from methods.selection import max_force_spread, select_by_disagreement, select_random


def _predictions(deviations: np.ndarray, offset: float = -5.0) -> np.ndarray:
    """(n_models, n_structures) predictions whose deviations from the ensemble mean are the given columns."""
    deviations = np.asarray(deviations, dtype=float)
    return offset + deviations - deviations.mean(axis=0)


def _patterns(n_models: int, n_structures: int, seed: int) -> np.ndarray:
    """Independent random error patterns, columns scaled so structure i has variance decreasing with i."""
    rng = np.random.default_rng(seed)
    columns = rng.normal(size=(n_models, n_structures))
    columns -= columns.mean(axis=0)
    columns /= columns.std(axis=0)
    return columns * np.linspace(2.0, 1.0, n_structures)


def test_highest_variance_first_and_n_select_respected():
    predictions = _predictions(_patterns(8, 40, seed=0))
    rng = np.random.default_rng(1)
    shuffled = rng.permutation(40)
    picks = select_by_disagreement(predictions[:, shuffled], n_select=3)
    assert len(picks) == 3
    variance = predictions[:, shuffled].var(axis=0)
    assert picks[0] == int(np.argmax(variance))
    assert len(set(picks)) == 3


def test_structure_correlated_with_a_pick_is_removed():
    deviations = _patterns(8, 40, seed=2)
    # Structure 1 is the second-largest variance but errs exactly like structure 0 (scaled copy): no new information.
    deviations[:, 1] = 0.99 * deviations[:, 0]
    # Structure 2 errs the opposite way: anti-correlated is the least correlated, so it survives and comes next.
    deviations[:, 2] = -0.98 * deviations[:, 0]
    predictions = _predictions(deviations)
    variance = predictions.var(axis=0)
    assert np.argsort(-variance)[:3].tolist() == [0, 1, 2]
    picks = select_by_disagreement(predictions, n_select=5)
    assert picks[0] == 0
    assert 1 not in picks
    assert picks[1] == 2


def test_five_percent_removed_per_pick_rounded_up_and_at_least_one():
    predictions = _predictions(_patterns(8, 100, seed=3))
    # 100 structures: pick 1, 99 remain, ceil(0.05 * 99) = 5 removed -> 94; pick, 93 remain, 5 removed -> 88 ...
    # With n_select large the rule stops when fewer than 5 remain: count picks by simulating the arithmetic.
    remaining, expected = 100, 0
    while remaining >= 5:
        expected += 1
        remaining -= 1
        remaining -= max(1, int(np.ceil(0.05 * remaining)))
    picks = select_by_disagreement(predictions, n_select=1000)
    assert len(picks) == expected
    assert len(set(picks)) == len(picks)
    # remove_fraction=0 still removes one per pick: 10 structures -> pick, drop 1, ... while at least 5 remain.
    assert len(select_by_disagreement(_predictions(_patterns(4, 10, seed=4)), 100, remove_fraction=0.0)) == 3


def test_stops_when_fewer_than_min_remaining():
    predictions = _predictions(_patterns(6, 4, seed=5))
    assert select_by_disagreement(predictions, n_select=3) == []  # 4 < 5 candidates: nothing to choose between
    # min_remaining 1: pick (3 left), remove 1 (2 left), pick (1 left), remove 1 (0 left): 2 picks.
    picks = select_by_disagreement(predictions, n_select=3, min_remaining=1)
    assert len(picks) == 2 and picks[0] == 0
    assert select_by_disagreement(predictions, n_select=1, min_remaining=1) == [0]


def test_non_finite_predictions_are_never_picked():
    predictions = _predictions(_patterns(5, 12, seed=6))
    predictions[2, 0] = np.nan
    picks = select_by_disagreement(predictions, n_select=3)
    assert 0 not in picks and len(picks) == 3


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_models, n_structures"):
        select_by_disagreement(np.zeros(5), 1)
    with pytest.raises(ValueError):
        select_by_disagreement(np.zeros((3, 5)), 1, remove_fraction=1.0)


def test_random_baseline_is_distinct_and_reproducible():
    picks = select_random(50, 10, seed=7)
    assert len(picks) == 10 and len(set(picks)) == 10 and all(0 <= i < 50 for i in picks)
    assert picks == select_random(50, 10, seed=7)
    assert picks != select_random(50, 10, seed=8)
    assert sorted(select_random(4, 10, seed=0)) == [0, 1, 2, 3]


def test_max_force_spread():
    agree = np.ones((4, 3, 3))
    disagree = agree.copy()
    disagree[:, 1, 0] = [0.0, 2.0, 0.0, 2.0]  # atom 1, x: deviations ±1 -> spread 1 eV/Å
    spreads = max_force_spread([agree, disagree, np.ones((4, 5, 3))])
    np.testing.assert_allclose(spreads, [0.0, 1.0, 0.0])
