import numpy as np
import pytest

from methods.acquisition import acquire, expected_improvement


def ranking(scores):
    return list(np.argsort(-scores))


MEAN = np.array([1.0, 2.0, 1.5, 0.0])
STD = np.array([0.1, 0.1, 2.0, 0.0])


def test_greedy_follows_the_mean_in_both_directions():
    assert ranking(acquire("greedy", MEAN, None, maximize=True)) == [1, 2, 0, 3]
    assert ranking(acquire("greedy", MEAN, None, maximize=False)) == [3, 0, 2, 1]


def test_ucb_rewards_uncertainty_by_beta():
    assert ranking(acquire("ucb", MEAN, STD, maximize=True, beta=0.0))[0] == 1
    assert ranking(acquire("ucb", MEAN, STD, maximize=True, beta=1.0))[0] == 2  # 1.5 + 2.0 > 2.0 + 0.1
    # Minimizing: optimism means a low mean minus beta*std.
    assert ranking(acquire("ucb", MEAN, STD, maximize=False, beta=1.0))[0] == 2  # 1.5 - 2.0 < 0.0


def test_expected_improvement_definition():
    best = 2.0
    scores = expected_improvement(MEAN, STD, best=best)
    # No uncertainty and no improvement: zero; large uncertainty below the best: positive.
    assert scores[3] == 0.0 and scores[2] > scores[1] > scores[0] > 0
    # Against a Monte-Carlo estimate of E[max(y - best, 0)].
    rng = np.random.default_rng(0)
    samples = rng.normal(MEAN[2], STD[2], 200_000)
    assert scores[2] == pytest.approx(np.maximum(samples - best, 0).mean(), rel=0.02)
    minimized = acquire("ei", MEAN, STD, maximize=False, best=0.5)
    assert ranking(minimized)[0] in (2, 3)
    assert minimized[3] == pytest.approx(0.5)  # certain improvement of 0.5 below the best


def test_unknown_and_missing_uncertainty():
    with pytest.raises(ValueError, match="unknown acquisition"):
        acquire("thompson", MEAN, STD, maximize=True)
    with pytest.raises(ValueError, match="needs a model with an uncertainty"):
        acquire("ei", MEAN, None, maximize=True)
