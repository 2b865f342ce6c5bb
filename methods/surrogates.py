"""Surrogate models that rank molecules between QC evaluations, and the ``ml`` tasks that train and apply them.

``train_mpnn`` (one ensemble member per task) and ``score_block`` are re-exported here so every ``ml`` method
has one home.

All surrogates share one small interface — ``fit(smiles, values)`` and ``predict(smiles) -> (mean, std)``, and
the same on precomputed features — so the thinker does not care which one runs. A trained model travels to the
workers once per round, by proxy when it is large; the search space's features never travel, workers read them
from their cache (:mod:`methods.library`).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.linear_model import BayesianRidge

from methods.features import GroupTable, fingerprints, group_table
from methods.library import score_block
from methods.mpnn import train_mpnn


class Surrogate(ABC):
    """A regression model from molecules to the objective, with an uncertainty where the model has one."""

    name: str = "base"
    feature_kind: str = ""

    @abstractmethod
    def featurize(self, smiles: Sequence[str]) -> np.ndarray:
        """Feature matrix for molecules given as SMILES (same layout as the cached QM9 features)."""

    @abstractmethod
    def fit_features(self, features: np.ndarray, values: np.ndarray) -> Surrogate:
        """Train on a feature matrix; returns ``self``."""

    @abstractmethod
    def predict_features(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation of the prediction for each row."""

    def fit(self, smiles: Sequence[str], values: Sequence[float]) -> Surrogate:
        """Train on (SMILES, value) pairs."""
        return self.fit_features(self.featurize(smiles), np.asarray(values, dtype=float))

    def predict(self, smiles: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation for molecules given as SMILES."""
        return self.predict_features(self.featurize(smiles))


class GroupContributionModel(Surrogate):
    """Property = Σ (group count × group contribution), fitted by Bayesian ridge regression.

    The groups are those of the molecules it is trained on, whatever elements they hold, plus one column that
    counts groups never seen in training: its contribution is unknown, so such molecules get the prior's
    uncertainty, which is what an exploring acquisition (``ucb``, ``ei``) should see. Bayesian ridge picks its
    own regularization from the data, which matters early in a campaign when there are fewer molecules than
    groups, and it gives a predictive standard deviation.
    """

    name = "gc"
    feature_kind = "groups"

    def __init__(self, chunk: int = 65_536) -> None:
        self.vocabulary: tuple[str, ...] = ()
        self.regressor = BayesianRidge()
        self.chunk = chunk

    def featurize(self, smiles: Sequence[str]) -> GroupTable:  # noqa: D102
        return group_table(smiles)

    def fit_features(self, features: GroupTable, values: np.ndarray) -> GroupContributionModel:  # noqa: D102
        present = np.asarray(features.counts.sum(axis=0)).ravel() > 0
        self.vocabulary = tuple(name for name, used in zip(features.names, present, strict=True) if used)
        self.regressor.fit(features.dense(self.vocabulary), values)
        return self

    def predict_features(self, features: GroupTable) -> tuple[np.ndarray, np.ndarray]:  # noqa: D102
        means, stds = [], []
        for start in range(0, len(features), self.chunk):  # dense in chunks: a library is millions of rows
            block = features.take(np.arange(start, min(start + self.chunk, len(features))))
            mean, std = self.regressor.predict(block.dense(self.vocabulary), return_std=True)
            means.append(mean)
            stds.append(std)
        if not means:
            return np.zeros(0), np.zeros(0)
        return np.concatenate(means), np.concatenate(stds)


class KNNModel(Surrogate):
    """Similarity-weighted mean of the k most similar evaluated molecules (Tanimoto on Morgan fingerprints).

    The spread of the neighbours' values is its uncertainty. Similarities are computed as dense matrix
    products in chunks, so scoring all of QM9 against a thousand training molecules takes seconds.
    """

    name = "knn"
    feature_kind = "fingerprints"

    def __init__(self, k: int = 5, chunk: int = 8192) -> None:
        self.k = k
        self.chunk = chunk
        self.train_bits: np.ndarray | None = None
        self.values: np.ndarray | None = None

    def featurize(self, smiles: Sequence[str]) -> np.ndarray:  # noqa: D102
        return fingerprints(smiles)

    def fit_features(self, features: np.ndarray, values: np.ndarray) -> KNNModel:  # noqa: D102
        self.train_bits = np.asarray(features, dtype=np.uint8)
        self.values = np.asarray(values, dtype=float)
        return self

    def predict_features(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # noqa: D102
        if self.train_bits is None or self.values is None:
            raise RuntimeError("KNNModel.predict called before fit")
        train = np.unpackbits(self.train_bits, axis=1).astype(np.float32)
        train_counts = train.sum(axis=1)
        k = min(self.k, len(train))
        means, stds = [], []
        for start in range(0, len(features), self.chunk):
            block = np.unpackbits(np.asarray(features[start:start + self.chunk]), axis=1).astype(np.float32)
            shared = block @ train.T
            union = block.sum(axis=1)[:, None] + train_counts[None, :] - shared
            similarity = np.divide(shared, union, out=np.zeros_like(shared), where=union > 0)
            nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
            weights = np.take_along_axis(similarity, nearest, axis=1) + 1e-6
            neighbour_values = self.values[nearest]
            mean = (weights * neighbour_values).sum(axis=1) / weights.sum(axis=1)
            variance = (weights * (neighbour_values - mean[:, None]) ** 2).sum(axis=1) / weights.sum(axis=1)
            means.append(mean)
            stds.append(np.sqrt(variance))
        return np.concatenate(means), np.concatenate(stds)


class MPNNEnsemble(Surrogate):
    """A bootstrap ensemble of message-passing networks (:mod:`methods.mpnn`); the spread is its uncertainty.

    In a campaign, members are trained by separate ``train_mpnn`` tasks and assembled here from their
    weights; :meth:`fit_features` trains them one after the other for use outside a campaign.
    """

    name = "mpnn"
    feature_kind = "graphs"

    def __init__(self, members: list | None = None, ensemble_size: int = 4, epochs: int = 64, seed: int = 0):
        self.members = list(members or [])
        self.ensemble_size = ensemble_size
        self.epochs = epochs
        self.seed = seed

    def featurize(self, smiles: Sequence[str]) -> Any:  # noqa: D102
        from methods.mpnn import featurize

        return featurize(list(smiles))

    def fit(self, smiles: Sequence[str], values: Sequence[float]) -> MPNNEnsemble:
        """Train every member, one after the other (outside a campaign; a campaign trains them as tasks)."""
        self.members = [train_mpnn(list(smiles), list(values), seed=self.seed + k, epochs=self.epochs)
                        for k in range(self.ensemble_size)]
        return self

    def fit_features(self, features: Any, values: np.ndarray) -> MPNNEnsemble:  # noqa: D102
        raise NotImplementedError("MPNN members train from SMILES (train_mpnn); use fit")

    def predict_features(self, features: Any) -> tuple[np.ndarray, np.ndarray]:  # noqa: D102
        from methods.mpnn import ensemble_predict_graphs

        if not self.members:
            raise RuntimeError("MPNNEnsemble.predict called before training")
        return ensemble_predict_graphs(self.members, features)


MODELS: dict[str, type[Surrogate]] = {"gc": GroupContributionModel, "knn": KNNModel, "mpnn": MPNNEnsemble}


__all__ = ["MODELS", "MPNNEnsemble", "Surrogate", "make_model", "score_block", "train_mpnn", "train_surrogate"]


def make_model(name: str) -> Surrogate:
    """A fresh, untrained surrogate by name (``gc`` or ``knn``)."""
    try:
        return MODELS[name]()
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}") from None


def _rows(features: Any, rows: np.ndarray) -> Any:
    """Rows of a feature matrix or table (a NumPy array or a :class:`GroupTable`)."""
    return features[rows] if isinstance(features, np.ndarray) else features.take(rows)


def train_surrogate(
    name: str, smiles: list[str], values: list[float], seed: int = 0
) -> tuple[Surrogate, dict[str, Any]]:
    """The ``ml`` training task: fit a surrogate on all evaluated molecules and report how good it is.

    Quality is measured on a random 20% hold-out before the final fit on everything, so the training
    records show whether the model is learning as the campaign goes.
    """
    start = time.perf_counter()
    y = np.asarray(values, dtype=float)
    model = make_model(name)
    features = model.featurize(smiles)
    stats: dict[str, Any] = {"model": name, "n_train": len(y)}
    if len(y) >= 10:
        order = np.random.default_rng(seed).permutation(len(y))
        cut = max(2, len(y) // 5)
        test, train = order[:cut], order[cut:]
        held_out = make_model(name).fit_features(_rows(features, train), y[train])
        prediction, _ = held_out.predict_features(_rows(features, test))
        stats["holdout_mae"] = float(np.abs(prediction - y[test]).mean())
        stats["holdout_baseline_mae"] = float(np.abs(y[train].mean() - y[test]).mean())
    model.fit_features(features, y)
    stats["train_time"] = time.perf_counter() - start
    return model, stats
