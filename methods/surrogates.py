"""Surrogate models that rank molecules between QC evaluations, and the ``ml`` tasks that train and apply them.

``train_mpnn`` (one ensemble member per task) is re-exported here so every ``ml`` method has one home.

All surrogates share one small interface — ``fit(smiles, values)`` and ``predict(smiles) -> (mean, std)`` —
so the thinker does not care which one runs. Models are small (a few kB of weights, or the fingerprints of
the training set), so they travel to workers by value; the large pool features never travel, workers read
them from the shared cache (:func:`methods.features.qm9_features`).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.linear_model import BayesianRidge

from methods.features import fingerprints, group_counts, group_vocabulary, qm9_features
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

    Bayesian ridge picks its own regularization from the data, which matters early in a campaign when there
    are fewer molecules than groups, and it gives a predictive standard deviation.
    """

    name = "gc"
    feature_kind = "groups"

    def __init__(self) -> None:
        self.vocabulary = group_vocabulary()
        self.regressor = BayesianRidge()

    def featurize(self, smiles: Sequence[str]) -> np.ndarray:  # noqa: D102
        return group_counts(smiles, self.vocabulary)

    def fit_features(self, features: np.ndarray, values: np.ndarray) -> GroupContributionModel:  # noqa: D102
        self.regressor.fit(np.asarray(features, dtype=float), values)
        return self

    def predict_features(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # noqa: D102
        mean, std = self.regressor.predict(np.asarray(features, dtype=float), return_std=True)
        return mean, std


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
    feature_kind = "smiles"

    def __init__(self, members: list | None = None, ensemble_size: int = 4, epochs: int = 64, seed: int = 0):
        self.members = list(members or [])
        self.ensemble_size = ensemble_size
        self.epochs = epochs
        self.seed = seed

    def featurize(self, smiles: Sequence[str]) -> np.ndarray:  # noqa: D102
        return np.asarray(list(smiles), dtype=str)

    def fit_features(self, features: np.ndarray, values: np.ndarray) -> MPNNEnsemble:  # noqa: D102
        from methods.mpnn import train_mpnn

        self.members = [train_mpnn(list(features), list(values), seed=self.seed + k, epochs=self.epochs)
                        for k in range(self.ensemble_size)]
        return self

    def predict_features(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # noqa: D102
        from methods.mpnn import ensemble_predict

        if not self.members:
            raise RuntimeError("MPNNEnsemble.predict called before training")
        return ensemble_predict(self.members, list(features))


MODELS: dict[str, type[Surrogate]] = {"gc": GroupContributionModel, "knn": KNNModel, "mpnn": MPNNEnsemble}


__all__ = ["MODELS", "MPNNEnsemble", "Surrogate", "make_model", "score_qm9", "score_smiles", "train_mpnn",
           "train_surrogate"]


def make_model(name: str) -> Surrogate:
    """A fresh, untrained surrogate by name (``gc`` or ``knn``)."""
    try:
        return MODELS[name]()
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}") from None


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
        held_out = make_model(name).fit_features(features[train], y[train])
        prediction, _ = held_out.predict_features(features[test])
        stats["holdout_mae"] = float(np.abs(prediction - y[test]).mean())
        stats["holdout_baseline_mae"] = float(np.abs(y[train].mean() - y[test]).mean())
    model.fit_features(features, y)
    stats["train_time"] = time.perf_counter() - start
    return model, stats


def score_qm9(model: Surrogate, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``ml`` scoring task: predictions for QM9 rows, from the features cached on the worker's disk."""
    from methods.data import load_qm9

    features = load_qm9().smiles if model.feature_kind == "smiles" else qm9_features(model.feature_kind)
    mean, std = model.predict_features(features[np.asarray(rows, dtype=np.int64)])
    return mean.astype(np.float32), std.astype(np.float32)  # halves the result message; ranks are unchanged


def score_smiles(model: Surrogate, smiles: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """The ``ml`` scoring task for a user-supplied search space: predictions for molecules given as SMILES.

    A user's library has no cached features on the workers, so each chunk is featurized here through the
    model's own :meth:`Surrogate.predict`; the thinker sends chunks small enough for that to stay cheap. The
    result has the layout of :func:`score_qm9` (float32 mean and standard deviation per molecule), with None
    for the deviation of a model that gives none.
    """
    smiles = list(smiles)
    if not smiles:  # scikit-learn rejects an empty feature matrix; an empty chunk simply scores nothing
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.float32)
    mean, std = model.predict(smiles)
    return (np.asarray(mean, dtype=np.float32),
            None if std is None else np.asarray(std, dtype=np.float32))  # float32 halves the result message
