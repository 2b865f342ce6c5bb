"""Surrogate models that rank molecules between QC evaluations, and the ``ml`` tasks that train and apply them.

``train_mpnn`` (one ensemble member per task) and ``score_block`` are re-exported here so every ``ml`` method
has one home.

All surrogates share one small interface — ``fit(smiles, values)`` and ``predict(smiles) -> (mean, std)``, and
the same on precomputed features — so the thinker does not care which one runs. A trained model travels to the
workers once per round, by proxy when it is large; the search space's features never travel, workers read them
from their cache (:mod:`methods.library`).
"""

from __future__ import annotations

import itertools
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.linear_model import BayesianRidge

from methods.features import FINGERPRINT_BYTES, GroupTable, group_table, knn_features
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

    def details(self) -> dict[str, Any]:
        """What the fit decided that the training record should say (empty for most models)."""
        return {}

    def predict_block(self, library: Any, block: int, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation for rows of a cached library block (all of it when ``rows`` is None)."""
        from methods.library import load_block

        features = load_block(library, self.feature_kind, block)
        if rows is not None:
            features = _rows(features, np.asarray(rows, dtype=np.int64))
        return self.predict_features(features)

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
    """An additive composition baseline, corrected by the k most similar evaluated molecules.

    The prediction is a ridge fit of the property on atom counts per element plus the similarity-weighted mean
    of the neighbours' residuals (Tanimoto on Morgan fingerprints); the spread of those residuals is its
    uncertainty. Neighbours alone cannot follow an extensive property: a molecule's 5 most similar ones have
    other sizes, and on QM9's atomization energy their mean is off by 5.5 eV, against 0.58 eV with the
    baseline (``scripts/cv_knn.py``). With few results, on a property composition says little about, the
    baseline's ten parameters only add noise, so :meth:`fit_features` cross-validates the model with and
    without it on the training data and keeps the better (``composition="auto"``); the choice is recorded.

    The neighbours' spread alone is a poor uncertainty: its rank correlation with the actual error is 0.05-0.22
    on QM9, and its rare large values (a molecule whose five neighbours disagree) made expected improvement
    chase them. The same cross-validation therefore also calibrates it: the squared out-of-fold errors are
    fitted (non-negative least squares) on the squared spread, the distance to the neighbours (one minus their
    mean similarity) and a constant, and that variance is the uncertainty. On held-out QM9 molecules at 800
    training molecules (``scripts/cv_knn.py``) its negative log likelihood is 0.49 against the spread's 1.35 on
    the ionization energy (1.12 against 1.37 on the atomization energy), and 72% of the errors fall within one
    sigma, against 58% (68% is calibrated). With fewer than ``CV_MIN_TRAIN`` results the raw spread is used;
    the weights are recorded.

    Similarities are dense matrix products on unpacked bits, in chunks. On a library, a round only compares
    the pool with the molecules evaluated *since the last round*: each cached block keeps its rows' k best
    similarities and neighbour indices on the worker's disk (:meth:`predict_block`), and the new neighbours are
    merged in. The result is exactly the k nearest neighbours among all training molecules (the top k of a
    union is the top k of the two tops), at a cost that grows with the new molecules, not with everything
    evaluated so far. Neighbours depend on the fingerprints only, so the state stays valid whatever the
    baseline. The training set only ever grows at its end in a campaign; a state whose training prefix does
    not match (checked by digest) is rebuilt.
    """

    name = "knn"
    feature_kind = "fingerprints"

    def __init__(self, k: int = 5, chunk: int = 8192, composition: str = "auto", seed: int = 0,
                 penalty: float | None = None, calibrate: bool = True) -> None:
        if composition not in ("auto", "always", "never"):
            raise ValueError(f"composition must be auto, always or never, not {composition!r}")
        self.k = k
        self.chunk = chunk
        self.composition = composition
        self.seed = seed
        self.penalty = BASELINE_RIDGE if penalty is None else penalty
        self.calibrate = calibrate
        self.train_bits: np.ndarray | None = None
        self.values: np.ndarray | None = None  # what the neighbours average: residuals from the baseline
        self.baseline: np.ndarray | None = None  # ridge weights on the composition (and intercept), or None
        self.calibration: np.ndarray | None = None  # variance weights of UNCERTAINTY_TERMS, or None: raw spread

    def featurize(self, smiles: Sequence[str]) -> np.ndarray:  # noqa: D102
        return knn_features(smiles)

    def fit_features(self, features: np.ndarray, values: np.ndarray) -> KNNModel:  # noqa: D102
        features = np.asarray(features, dtype=np.uint8)
        y = np.asarray(values, dtype=float)
        if self.composition == "auto":
            modes: tuple[str, ...] = ("never", "always")
        else:
            modes = (self.composition,) if self.calibrate else ()
        folds = self._out_of_fold(features, y, modes)
        if self.composition == "auto":
            use = bool(folds) and np.abs(folds["always"][0]).mean() < np.abs(folds["never"][0]).mean()
        else:
            use = self.composition == "always"
        self.baseline = _ridge(_design(features), y, self.penalty) if use else None
        self.train_bits = np.ascontiguousarray(features[:, :FINGERPRINT_BYTES])
        self.values = y - self._baseline(features)
        mode = "always" if use else "never"
        self.calibration = _variance_weights(*folds[mode]) if self.calibrate and mode in folds else None
        return self

    def details(self) -> dict[str, Any]:  # noqa: D102
        weights = None
        if self.calibration is not None:
            weights = dict(zip(UNCERTAINTY_TERMS, self.calibration.tolist(), strict=True))
        return {"composition_baseline": self.baseline is not None, "uncertainty_weights": weights}

    def _baseline(self, features: np.ndarray) -> np.ndarray:
        if self.baseline is None:
            return np.zeros(len(features))
        return _design(features) @ self.baseline

    def _out_of_fold(self, features: np.ndarray, y: np.ndarray,
                     modes: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per mode, out-of-fold errors, spreads and similarities on these data (a subsample of large sets).

        Empty below ``CV_MIN_TRAIN`` results. Every mode sees the same folds, so the with/without-baseline
        comparison is paired, and the calibration is fitted on errors of exactly the model that is kept.
        """
        if len(y) < CV_MIN_TRAIN or not modes:
            return {}
        rows = np.random.default_rng(self.seed).permutation(len(y))[:BASELINE_CV_MAX]
        features, y = features[rows], y[rows]
        order = np.random.default_rng(self.seed).permutation(len(y))
        found = {}
        for mode in modes:
            model = KNNModel(self.k, self.chunk, composition=mode, penalty=self.penalty, calibrate=False)
            error, spread, similarity = np.zeros(len(y)), np.zeros(len(y)), np.zeros(len(y))
            for fold in np.array_split(order, CV_FOLDS):
                train = np.setdiff1d(order, fold)
                model.fit_features(features[train], y[train])
                mean, spread[fold], similarity[fold] = model._parts(*model._nearest(features[fold]), features[fold])
                error[fold] = mean - y[fold]
            found[mode] = (error, spread, similarity)
        return found

    def _nearest(self, features: np.ndarray, first: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """K best similarities (-1 where fewer than k training molecules) and indices, vs ``train_bits[first:]``."""
        train = np.unpackbits(self.train_bits[first:], axis=1).astype(np.float32)
        train_counts = train.sum(axis=1)
        k = min(self.k, len(train))
        sims = np.full((len(features), self.k), -1.0, dtype=np.float32)
        index = np.zeros((len(features), self.k), dtype=np.int32)
        if k == 0:
            return sims, index
        for start in range(0, len(features), self.chunk):
            bits = np.asarray(features[start:start + self.chunk, :FINGERPRINT_BYTES])
            block = np.unpackbits(bits, axis=1).astype(np.float32)
            shared = block @ train.T
            union = block.sum(axis=1)[:, None] + train_counts[None, :] - shared
            similarity = np.divide(shared, union, out=np.zeros_like(shared), where=union > 0)
            nearest = np.argpartition(-_tie_break(similarity, first), k - 1, axis=1)[:, :k]
            sims[start:start + len(block), :k] = np.take_along_axis(similarity, nearest, axis=1)
            index[start:start + len(block), :k] = nearest + first
        return sims, index

    def _parts(self, sims: np.ndarray, index: np.ndarray,
               features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mean, the neighbours' spread and their mean similarity, before any calibration.

        The mean is the baseline plus the neighbours' similarity-weighted mean residual; the spread is those
        residuals' weighted standard deviation. Padding (fewer than k training molecules) weighs nothing and
        counts as dissimilar.
        """
        weights = np.where(sims >= 0, sims + 1e-6, 0.0)
        neighbour_values = self.values[index]
        total = weights.sum(axis=1)
        mean = (weights * neighbour_values).sum(axis=1) / total
        variance = (weights * (neighbour_values - mean[:, None]) ** 2).sum(axis=1) / total
        return mean + self._baseline(features), np.sqrt(variance), np.where(sims >= 0, sims, 0.0).mean(axis=1)

    def _combine(self, sims: np.ndarray, index: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and uncertainty: the calibrated one when the fit had enough data, else the raw spread."""
        mean, spread, similarity = self._parts(sims, index, features)
        if self.calibration is None:
            return mean, spread
        return mean, np.sqrt(np.maximum(_uncertainty_terms(spread, similarity) @ self.calibration, 0.0))

    def predict_features(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # noqa: D102
        if self.train_bits is None or self.values is None:
            raise RuntimeError("KNNModel.predict called before fit")
        return self._combine(*self._nearest(features), features)

    def _digest(self, n: int) -> str:
        import hashlib

        return hashlib.sha1(np.ascontiguousarray(self.train_bits[:n]).tobytes()).hexdigest()[:16]

    def predict_block(self, library: Any, block: int, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Scores of a cached library block, updating the block's nearest-neighbour state incrementally.

        Only worth it when most of the block is scored (a campaign on a whole library); a small sample of a
        block is compared with every training molecule directly.
        """
        from methods.data import atomic_save
        from methods.library import BLOCK_STATE_MIN, block_state_path, load_block, prune_block_states

        if self.train_bits is None or self.values is None:
            raise RuntimeError("KNNModel.predict called before fit")
        features = load_block(library, self.feature_kind, block)
        if rows is not None and len(rows) < BLOCK_STATE_MIN * len(features):
            return self.predict_features(_rows(features, np.asarray(rows, dtype=np.int64)))
        n = len(self.train_bits)
        path = block_state_path(library, f"knn{self.k}-{self._digest(1)}", block)  # one file per lineage
        sims = index = None
        seen = 0
        if path.exists():
            try:
                with np.load(path) as state:
                    seen = int(state["seen"])
                    if 0 < seen <= n and str(state["digest"]) == self._digest(seen):
                        sims, index = state["sims"], state["index"]
            except (OSError, ValueError, KeyError):
                sims = None  # a torn or stale state is rebuilt, never trusted
        if sims is None:
            seen = 0
            sims, index = self._nearest(features)
        elif seen < n:
            new_sims, new_index = self._nearest(features, first=seen)
            both_sims = np.concatenate([sims, new_sims], axis=1)
            both_index = np.concatenate([index, new_index], axis=1)
            best = np.argpartition(-_tie_break(both_sims, index=both_index), self.k - 1, axis=1)[:, :self.k]
            sims = np.take_along_axis(both_sims, best, axis=1)
            index = np.take_along_axis(both_index, best, axis=1)
        if seen < n:
            def write(tmp):
                with open(tmp, "wb") as handle:
                    np.savez(handle, sims=sims, index=index, seen=n, digest=self._digest(n))

            atomic_save(path, write)
            prune_block_states(library, block)
        if rows is not None:
            rows = np.asarray(rows, dtype=np.int64)
            return self._combine(sims[rows], index[rows], np.asarray(features[rows]))
        return self._combine(sims, index, np.asarray(features))


BASELINE_RIDGE = 0.1
"""Ridge penalty on the composition weights (atom counts; the intercept is not penalized). 0.01 and 0.1 tie in
``scripts/cv_knn.py``; 1 and more cost accuracy on the atomization energy below a hundred molecules."""

CV_MIN_TRAIN = 20
"""Fewer results than this: no baseline (ten parameters from a handful of molecules only add noise), and the
raw spread as the uncertainty (too few errors to calibrate it on)."""

BASELINE_CV_MAX = 2000
"""knn's own cross-validation (baseline choice, calibration) uses at most this many results (its cost grows with
their square)."""

UNCERTAINTY_TERMS = ("spread2", "distance", "constant")
"""What knn's calibrated variance is a non-negative combination of: the neighbours' squared spread, one minus
their mean similarity, and 1."""


def _uncertainty_terms(spread: np.ndarray, similarity: np.ndarray) -> np.ndarray:
    """Columns of :data:`UNCERTAINTY_TERMS`, one row per molecule."""
    return np.stack([spread ** 2, 1.0 - similarity, np.ones_like(spread)], axis=1)


def _variance_weights(error: np.ndarray, spread: np.ndarray, similarity: np.ndarray) -> np.ndarray:
    """Non-negative weights of :data:`UNCERTAINTY_TERMS` that best fit the squared out-of-fold errors.

    Exact non-negative least squares by trying every support (three terms, seven non-empty subsets): the optimum
    is the unconstrained fit on its own support, so it is the best of the subsets whose fit is non-negative.
    """
    terms, target = _uncertainty_terms(spread, similarity), error ** 2
    best, weights = np.inf, np.zeros(terms.shape[1])
    for mask in itertools.product((False, True), repeat=terms.shape[1]):
        columns = np.flatnonzero(mask)
        if not len(columns):
            continue
        fitted = np.linalg.lstsq(terms[:, columns], target, rcond=None)[0]
        if (fitted < 0).any():
            continue
        candidate = np.zeros(terms.shape[1])
        candidate[columns] = fitted
        residual = float(((terms @ candidate - target) ** 2).sum())
        if residual < best:
            best, weights = residual, candidate
    return weights


def _design(features: np.ndarray) -> np.ndarray:
    """Composition columns of :func:`methods.features.knn_features` as floats, with an intercept column."""
    counts = np.asarray(features[:, FINGERPRINT_BYTES:], dtype=float)
    return np.hstack([counts, np.ones((len(counts), 1))])


def _ridge(design: np.ndarray, y: np.ndarray, penalty: float) -> np.ndarray:
    """Ridge weights; the last column (the intercept) is not penalized."""
    matrix = penalty * np.eye(design.shape[1])
    matrix[-1, -1] = 0.0
    return np.linalg.solve(design.T @ design + matrix, design.T @ y)


def _cv_error(model: Surrogate, features: Any, y: np.ndarray, seed: int = 0, folds: int = 5) -> float:
    """Mean absolute error of ``model`` (refitted per fold) over ``folds``-fold cross-validation."""
    order = np.random.default_rng(seed).permutation(len(y))
    errors = np.zeros(len(y))
    for fold in np.array_split(order, min(folds, len(y))):
        train = np.setdiff1d(order, fold)
        model.fit_features(_rows(features, train), y[train])
        errors[fold] = np.abs(model.predict_features(_rows(features, fold))[0] - y[fold])
    return float(errors.mean())


def _tie_break(similarity: np.ndarray, first: int = 0, index: np.ndarray | None = None) -> np.ndarray:
    """Similarities nudged so that, among equal ones, the earliest training molecule ranks first.

    Small molecules often tie (many share no bit with a given training molecule), and which tied neighbour is
    kept changes the prediction. A fixed rule makes the incremental merge give exactly what one pass over the
    whole training set gives. The nudge (1e-12 per index) stays far below the smallest gap between two
    distinct Tanimoto values of 2048-bit fingerprints (about 1e-5) for any training set under a million.
    """
    if index is None:
        index = np.arange(first, first + similarity.shape[1])[None, :]
    return similarity.astype(np.float64) - index * 1e-12


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


__all__ = ["MODELS", "MPNNEnsemble", "Surrogate", "make_model", "score_block", "select_surrogate", "train_mpnn",
           "train_surrogate"]


def make_model(name: str) -> Surrogate:
    """A fresh, untrained surrogate by name (``gc`` or ``knn``)."""
    try:
        return MODELS[name]()
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}") from None


def _rows(features: Any, rows: np.ndarray) -> Any:
    """Rows of a feature matrix or table (a NumPy array or a :class:`GroupTable`)."""
    return np.asarray(features[rows]) if isinstance(features, np.ndarray) else features.take(rows)


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
    stats.update(model.details())
    stats["train_time"] = time.perf_counter() - start
    return model, stats


AUTO_CANDIDATES = ("gc", "knn")
"""Models ``--model auto`` chooses from: both cross-validate in well under a second per round. An MPNN
ensemble would need an ensemble per fold and round (minutes), so it is chosen by hand."""

CV_FOLDS = 5


def cross_validated_error(name: str, features: Any, y: np.ndarray, seed: int = 0, folds: int = CV_FOLDS) -> float:
    """Mean absolute error of a model over ``folds``-fold cross-validation on precomputed features."""
    return _cv_error(make_model(name), features, y, seed, folds)


def select_surrogate(
    smiles: list[str], values: list[float], seed: int = 0, candidates: Sequence[str] = AUTO_CANDIDATES
) -> tuple[Surrogate, dict[str, Any]]:
    """The ``ml`` training task of ``--model auto``: the candidate with the lowest cross-validated error.

    Every candidate is cross-validated on the same folds of everything evaluated so far, so the choice follows
    the data: group contributions win on nearly additive properties, nearest neighbours where the property
    depends on the whole molecule. The record says which won and by how much, and what predicting the mean
    would have scored, so a model that has learned nothing is visible.
    """
    start = time.perf_counter()
    y = np.asarray(values, dtype=float)
    features = {name: make_model(name).featurize(smiles) for name in candidates}
    stats: dict[str, Any] = {"model": "auto", "n_train": len(y)}
    if len(y) >= 2 * CV_FOLDS:
        errors = {name: cross_validated_error(name, features[name], y, seed) for name in candidates}
        order = np.random.default_rng(seed).permutation(len(y))
        baseline = np.zeros(len(y))
        for fold in np.array_split(order, CV_FOLDS):
            rest = np.setdiff1d(order, fold)
            baseline[fold] = np.abs(y[rest].mean() - y[fold])
        chosen = min(errors, key=errors.get)
        runner_up = min((e for n, e in errors.items() if n != chosen), default=errors[chosen])
        stats.update({"chosen": chosen, "cv_mae": errors, "holdout_mae": errors[chosen],
                      "holdout_baseline_mae": float(baseline.mean()), "margin": runner_up - errors[chosen]})
    else:  # too few results to cross-validate: the default model
        chosen = candidates[0]
        stats["chosen"] = chosen
    model = make_model(chosen).fit_features(features[chosen], y)
    stats.update(model.details())
    stats["train_time"] = time.perf_counter() - start
    return model, stats
