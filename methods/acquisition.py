"""Acquisition functions: turn a surrogate's mean and uncertainty into a ranking score (higher is better).

All of them work in "maximize" form: for a minimization campaign the means (and the best value) are
negated first, so the same formulas serve both directions.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

ACQUISITIONS = ("greedy", "ucb", "ei")


def greedy(mean: np.ndarray, std: np.ndarray | None = None, **_) -> np.ndarray:
    """The predicted value itself: exploit the model."""
    return np.asarray(mean, dtype=float)


def upper_confidence_bound(mean: np.ndarray, std: np.ndarray, beta: float = 1.0, **_) -> np.ndarray:
    """Mean + β·std: optimism in the face of uncertainty, β sets how much."""
    return np.asarray(mean, dtype=float) + beta * np.asarray(std, dtype=float)


def expected_improvement(mean: np.ndarray, std: np.ndarray, best: float, **_) -> np.ndarray:
    """E[max(y − best, 0)] under a normal predictive distribution (zero where std is zero and mean ≤ best)."""
    mean = np.asarray(mean, dtype=float)
    std = np.asarray(std, dtype=float)
    improvement = mean - best
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(std > 0, improvement / std, 0.0)
    value = improvement * norm.cdf(z) + std * norm.pdf(z)
    return np.where(std > 0, value, np.maximum(improvement, 0.0))


def acquire(
    name: str,
    mean: np.ndarray,
    std: np.ndarray | None,
    maximize: bool,
    best: float | None = None,
    beta: float = 1.0,
) -> np.ndarray:
    """Score candidates with the named acquisition function; higher scores are evaluated first.

    Raises:
        ValueError: an unknown name, or ``ucb``/``ei`` without a standard deviation (callers fall back to
            greedy with a warning before getting here).
    """
    sign = 1.0 if maximize else -1.0
    mean = sign * np.asarray(mean, dtype=float)
    if name == "greedy":
        return greedy(mean)
    if std is None:
        raise ValueError(f"acquisition {name!r} needs a model with an uncertainty")
    if name == "ucb":
        return upper_confidence_bound(mean, std, beta=beta)
    if name == "ei":
        reference = sign * best if best is not None else float(np.max(mean))
        return expected_improvement(mean, std, best=reference)
    raise ValueError(f"unknown acquisition {name!r}; choose from {', '.join(ACQUISITIONS)}")
