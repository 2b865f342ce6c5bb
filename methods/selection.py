"""Which sampled structures deserve a QC calculation: rules over an ensemble's predictions (pure NumPy).

The thinker holds the ensemble's predictions for every candidate structure and asks these functions for the few
worth labelling. The disagreement rule spends QC where the ensemble is unsure *and* avoids spending it twice on
structures the ensemble gets wrong in the same way; the random rule is the baseline a benchmark compares it with.
"""

from __future__ import annotations

import logging
import math

import numpy as np

logger = logging.getLogger(__name__)


def select_by_disagreement(
    predictions: np.ndarray, n_select: int, remove_fraction: float = 0.05, min_remaining: int = 5
) -> list[int]:
    """Pick structures with the largest ensemble spread, skipping ones whose errors look like a previous pick's.

    Repeatedly: take the remaining structure with the largest variance across models; then remove from the
    remaining ones the ``remove_fraction`` (at least one, rounded up) whose predictions are most correlated with the
    chosen one — Pearson correlation across models of the deviations from the ensemble mean. Structures the ensemble
    gets wrong in the same way carry the same information, so labelling one of them is enough. Stop when
    ``n_select`` are chosen or fewer than ``min_remaining`` remain.

    Structures with a non-finite prediction from any model are never picked (and logged): their variance and
    correlations are undefined; a thinker that wants them labelled should add them itself.

    Args:
        predictions: ``(n_models, n_structures)``, e.g. energy per atom (eV/atom), so molecules of different sizes
            compare fairly.
        n_select: at most this many are returned.
        remove_fraction: fraction of the remaining structures (after the pick) removed after each pick.
        min_remaining: stop once fewer than this many candidates remain.

    Returns:
        Indices into the structures, in pick order (largest variance first).

    Raises:
        ValueError: ``predictions`` is not 2-D, or an argument is out of range.
    """
    predictions = np.asarray(predictions, dtype=float)
    if predictions.ndim != 2:
        raise ValueError(f"predictions must be (n_models, n_structures), got shape {predictions.shape}")
    if n_select < 0 or min_remaining < 0 or not 0 <= remove_fraction < 1:
        raise ValueError("need n_select >= 0, min_remaining >= 0 and 0 <= remove_fraction < 1")

    finite = np.isfinite(predictions).all(axis=0)
    if not finite.all():
        logger.warning("%d structures have non-finite predictions and are not considered", int((~finite).sum()))
    deviations = np.where(finite, predictions - predictions.mean(axis=0), 0.0)
    variance = (deviations**2).mean(axis=0)
    norms = np.linalg.norm(deviations, axis=0)
    # Unit deviation vectors: the Pearson correlation of two structures is then a dot product (the deviations are
    # already centred over the models). A structure all models agree on exactly has no direction: correlation 0.
    unit = np.divide(deviations, norms, out=np.zeros_like(deviations), where=norms > 0)

    remaining = np.flatnonzero(finite)
    chosen: list[int] = []
    while len(chosen) < n_select and len(remaining) >= max(min_remaining, 1):
        position = int(np.argmax(variance[remaining]))  # first of ties: deterministic
        pick = int(remaining[position])
        chosen.append(pick)
        remaining = np.delete(remaining, position)
        if len(remaining) == 0:
            break
        n_remove = max(1, math.ceil(remove_fraction * len(remaining)))
        correlation = unit[:, pick] @ unit[:, remaining]
        # Stable sort on the negated correlation: the most correlated first, ties in index order.
        most_correlated = np.argsort(-correlation, kind="stable")[:n_remove]
        remaining = np.delete(remaining, most_correlated)
    return chosen


def select_random(n_structures: int, n_select: int, seed: int) -> list[int]:
    """Distinct random indices (all of them, shuffled, when ``n_select >= n_structures``): the baseline rule."""
    if n_structures < 0 or n_select < 0:
        raise ValueError("need n_structures >= 0 and n_select >= 0")
    rng = np.random.default_rng(seed)
    return [int(i) for i in rng.choice(n_structures, size=min(n_select, n_structures), replace=False)]


def max_force_spread(forces: list[np.ndarray]) -> np.ndarray:
    """DP-GEN's model deviation: per structure, the largest per-atom spread of the models' forces (eV/Å).

    For atom ``i`` the spread is ``sqrt(mean_models |F_i - <F_i>|²)``; a structure's value is the maximum over its
    atoms, so one badly described atom is enough to flag it (an energy spread averages it away).

    Args:
        forces: one array per structure, shaped ``(n_models, n_atoms, 3)``; structures may differ in size.

    Returns:
        ``(n_structures,)`` array.
    """
    spreads = np.empty(len(forces))
    for index, structure in enumerate(forces):
        structure = np.asarray(structure, dtype=float)
        if structure.ndim != 3 or structure.shape[2] != 3:
            raise ValueError(f"forces[{index}] must be (n_models, n_atoms, 3), got shape {structure.shape}")
        deviation = structure - structure.mean(axis=0)
        spreads[index] = np.sqrt((deviation**2).sum(axis=2).mean(axis=0)).max() if structure.shape[1] else 0.0
    return spreads
