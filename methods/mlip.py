"""A compact machine-learned interatomic potential (SchNet-like, Keras 3 on TensorFlow) and its ensemble.

Why it is built this way (measurements in ``../shared/FACTS.md`` and ``scripts/bench_mlip.py``):

* **Only NumPy travels.** A :class:`Potential` is a config, a list of float32 arrays and a few numbers, so the
  thinker can unpickle, store and forward it without importing TensorFlow. TensorFlow is imported inside the
  functions that need it, on the workers.
* **Nothing is rebuilt per call.** Each worker process keeps its Keras networks, optimizer and compiled
  (``tf.function``) functions in a small cache keyed by the config. Training always feeds full batches padded
  to one of a few fixed sizes (at most ``max_atoms``; a dense step costs the square of the padding, so small
  molecules go in a smaller bucket), so each step is traced once per process, never once per round. Inference
  accepts any batch and molecule size in one trace, so an MD step costs one graph call (~2-3 ms).
* **Fine-tuning, not retraining.** :func:`train_potential` warm-starts from the weights it is given; a round of
  30 epochs (about 27 s per member on 500 QM9-sized structures, one core) then improves on the previous round
  instead of paying for training from scratch every time.
* **Members share one graph.** Every weight carries a leading "member" axis, so an ensemble of K potentials is
  evaluated in one call (K copies of the structure, K sets of weights) instead of K calls.
* **One thread per worker.** On a 2-core machine shared by several workers, TensorFlow's default thread pools
  would oversubscribe the cores; the first TensorFlow use in a process limits both pools to one thread.

The network: per-element embeddings; all-pairs distances over the padded atoms (masked, with a safe norm so
padding and self-pairs give no NaN gradients); a Gaussian radial basis turned into a few learned radial
functions, times a smooth cosine cutoff; per block, linear filters over those functions and a continuous-filter
convolution (one batched matmul, never a pairs-by-features tensor) with a residual update; a per-atom readout
summed into the energy. Energies are fitted per atom after subtracting per-element reference energies (least
squares on the training set); forces are the exact negative gradient of the energy.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

logger = logging.getLogger(__name__)

ELEMENTS = ("H", "C", "N", "O", "F")
_NUMBER_INDEX = {1: 0, 6: 1, 7: 2, 8: 3, 9: 4}  # atomic number -> position in ELEMENTS

INFERENCE_CHUNK = 64
"""Structures evaluated per graph call in :func:`predict` (any size works; this bounds the memory)."""

SCRATCH_LEARNING_RATE = 1e-2
"""Peak learning rate from random weights: lower ones leave a 30-epoch round far from converged."""

FINE_TUNE_LEARNING_RATE = 3e-3
"""Peak learning rate from trained weights: measured better than 1e-2 (which throws away part of the previous
round) and than 1e-3 for forces, when a round adds new data."""

TRACE_COUNTS: dict[str, int] = {"train_step": 0, "energy_forces": 0}
"""How often this process traced each compiled function: a steady campaign must not grow these."""


@dataclass(frozen=True)
class PotentialConfig:
    """The architecture; identical for every model of a campaign (it keys the per-process cache)."""

    max_atoms: int  # padding size for every structure of a campaign (largest molecule)
    cutoff: float = 5.0  # Å
    n_features: int = 64
    n_interactions: int = 3
    n_rbf: int = 32
    rbf_width: float = 0.25  # Å, width of each Gaussian of the radial basis
    n_radial: int = 8  # learned radial functions (from the Gaussians) that all filters are combinations of
    aggregation_norm: float = 10.0  # messages are summed over neighbours, then divided by this (~ neighbours)

    def __post_init__(self):
        sizes = (self.max_atoms, self.n_features, self.n_interactions, self.n_rbf, self.n_radial)
        if min(sizes) < 1 or self.cutoff <= 0 or self.rbf_width <= 0:
            raise ValueError(f"invalid potential configuration: {self}")


@dataclass
class Potential:
    """One model: only NumPy arrays and numbers, so it pickles small and travels by proxy. Never a live Keras object."""

    config: PotentialConfig
    weights: list[np.ndarray]
    reference_energies: np.ndarray  # eV per element, in ELEMENTS order (fitted by least squares on the training set)
    stats: dict = field(default_factory=dict)  # last training's statistics

    @property
    def n_parameters(self) -> int:
        """Number of trainable numbers."""
        return int(sum(w.size for w in self.weights))

    def calculator(self) -> EnsembleCalculator:
        """A single-model ASE calculator (energy, forces; its ``energy_std`` is zero)."""
        return EnsembleCalculator([self])


def _weight_shapes(config: PotentialConfig) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of the weights, in the order :attr:`Potential.weights` stores them."""
    f, r, t = config.n_features, config.n_rbf, config.n_interactions
    c = config.n_radial
    shapes = [("embedding", (len(ELEMENTS), f)), ("radial_kernel", (r, c)), ("radial_bias", (c,)),
              ("filter_kernel", (c, t * f)), ("filter_bias", (t * f,))]
    for i in range(t):
        shapes += [
            (f"interaction{i}_in", (f, f)),
            (f"interaction{i}_kernel1", (f, f)), (f"interaction{i}_bias1", (f,)),
            (f"interaction{i}_kernel2", (f, f)), (f"interaction{i}_bias2", (f,)),
        ]
    shapes += [("readout_kernel1", (f, f // 2)), ("readout_bias1", (f // 2,)),
               ("readout_kernel2", (f // 2, 1)), ("readout_bias2", (1,))]
    return shapes


def create_potential(config: PotentialConfig, seed: int = 0) -> Potential:
    """Fresh random weights (the campaign's "starting model"), drawn with NumPy so no TensorFlow is needed.

    Kernels are LeCun-normal (variance 1/fan-in) so activations stay O(1) through the blocks; biases start at
    zero; the embedding is standard normal so elements start distinguishable.
    """
    rng = np.random.default_rng(seed)
    weights = []
    for name, shape in _weight_shapes(config):
        if name == "embedding":
            w = rng.standard_normal(shape)
        elif "bias" in name:
            w = np.zeros(shape)
        else:
            w = rng.standard_normal(shape) / math.sqrt(shape[0])
        weights.append(w.astype(np.float32))
    return Potential(config=config, weights=weights, reference_energies=np.zeros(len(ELEMENTS)),
                     stats={"seed": seed, "trained": False})


# --- structures as padded arrays ------------------------------------------------------------------------------


def _species(atoms: Atoms) -> np.ndarray:
    try:
        return np.array([_NUMBER_INDEX[int(z)] for z in atoms.numbers], dtype=np.int32)
    except KeyError as error:
        raise ValueError(f"element Z={error.args[0]} is not supported (supported: {', '.join(ELEMENTS)})") from None


def _pad(frames: Sequence[Atoms], n_atoms: int) -> tuple[np.ndarray, np.ndarray]:
    """Species (-1 marks padding) and positions of ``frames``, padded to ``n_atoms`` atoms."""
    species = np.full((len(frames), n_atoms), -1, dtype=np.int32)
    positions = np.zeros((len(frames), n_atoms, 3), dtype=np.float32)
    for i, atoms in enumerate(frames):
        n = len(atoms)
        if n > n_atoms:
            raise ValueError(f"a structure with {n} atoms does not fit max_atoms={n_atoms}")
        species[i, :n] = _species(atoms)
        positions[i, :n] = atoms.positions
    return species, positions


def _element_counts(species: np.ndarray) -> np.ndarray:
    """Atoms of each element per structure, (n_structures, len(ELEMENTS))."""
    return np.stack([(species == i).sum(axis=1) for i in range(len(ELEMENTS))], axis=1).astype(np.float64)


def _labels(frames: Sequence[Atoms], n_atoms: int) -> tuple[np.ndarray, np.ndarray]:
    """Total energies (eV, float64) and forces (eV/Å, padded) attached to ``frames`` the standard ASE way."""
    energies = np.array([atoms.get_potential_energy() for atoms in frames], dtype=np.float64)
    forces = np.zeros((len(frames), n_atoms, 3), dtype=np.float32)
    for i, atoms in enumerate(frames):
        forces[i, :len(atoms)] = atoms.get_forces()
    return energies, forces


def fit_reference_energies(frames: Sequence[Atoms]) -> np.ndarray:
    """Per-element energies (eV) that best explain the labelled total energies (least squares).

    Elements absent from ``frames`` get zero (the minimum-norm solution), so a later round that brings them in
    fits them then.
    """
    species, _ = _pad(frames, max(len(a) for a in frames))
    energies = np.array([atoms.get_potential_energy() for atoms in frames], dtype=np.float64)
    return _least_squares_references(_element_counts(species), energies)


def _least_squares_references(counts: np.ndarray, energies: np.ndarray) -> np.ndarray:
    solution, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return solution


# --- the network (TensorFlow is imported only from here on, inside functions) --------------------------------

_TF_CONFIGURED = False


def _tensorflow():
    """TensorFlow, limited to one intra-op and one inter-op thread the first time this process uses it.

    If something else in the process already ran TensorFlow, the thread pools exist and cannot change: that is
    logged and tolerated, the work still runs (with TensorFlow's thread settings).
    """
    global _TF_CONFIGURED
    import tensorflow as tf

    if not _TF_CONFIGURED:
        _TF_CONFIGURED = True
        try:
            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            logger.info("TensorFlow was initialized before methods.mlip; keeping its threads (intra-op %d)",
                        tf.config.threading.get_intra_op_parallelism_threads())
    return tf


def _shifted_softplus(tf, x):
    """SchNet's activation: smooth (so forces and their gradients are smooth) and zero at zero."""
    return tf.nn.softplus(x) - math.log(2.0)


def _dense(tf, x, kernel, bias=None, fold: bool = False):
    """``x @ kernel + bias`` per member: ``x`` is (K, ..., in), ``kernel`` (K, in, out), ``bias`` (K, out).

    With ``fold``, the axes between the member axis and the features are folded into one large matmul, the
    fastest layout for training batches (measured: 20% faster steps). Without, the kernel's member axis is
    broadcast against ``x``: fewer graph ops, which is what a single structure per MD step pays for (33% faster).
    """
    if fold:
        shape = tf.shape(x)
        flat = tf.matmul(tf.reshape(x, [shape[0], -1, kernel.shape[1]]), kernel)
        if bias is not None:
            flat = flat + bias[:, None, :]
        return tf.reshape(flat, tf.concat([shape[:-1], [kernel.shape[2]]], axis=0))
    extra = (slice(None),) + (None,) * (len(x.shape) - 3)
    out = tf.matmul(x, kernel[extra])
    if bias is not None:
        out = out + bias[extra + (None,)]
    return out


def _energies(tf, config: PotentialConfig, weights: list, species, positions, fold: bool = False):
    """Network energies (K, B) in eV for species (B, N) (-1 = padding) and positions (K, B, N, 3) in Å.

    Each member k sees its own copy of the positions, so the gradient of the summed energies with respect to
    ``positions`` is every member's own forces. ``fold`` picks the dense-layer layout (see :func:`_dense`).
    """
    def dense(x, kernel, bias=None):
        return _dense(tf, x, kernel, bias, fold=fold)

    w = {name: value for (name, _), value in zip(_weight_shapes(config), weights, strict=True)}
    features, cutoff = config.n_features, config.cutoff
    onehot = tf.one_hot(species, len(ELEMENTS), dtype=tf.float32)  # padding (-1) is all zeros
    mask = tf.reduce_sum(onehot, axis=-1)  # (B, N)
    n_atoms = tf.shape(species)[1]
    pair_mask = mask[:, :, None] * mask[:, None, :] * (1.0 - tf.eye(n_atoms))  # no padding, no self-pairs

    diff = positions[:, :, :, None, :] - positions[:, :, None, :, :]  # (K, B, N, N, 3)
    squared = tf.reduce_sum(tf.square(diff), axis=-1)
    real = tf.broadcast_to(pair_mask > 0, tf.shape(squared))
    # Safe norm: sqrt(0) has an infinite gradient, so masked pairs see a constant 1 instead of their distance.
    distance = tf.sqrt(tf.where(real, squared, tf.ones_like(squared)))
    smooth_cut = 0.5 * (tf.cos(math.pi * tf.minimum(distance, cutoff) / cutoff) + 1.0) * pair_mask
    centers = tf.linspace(0.0, cutoff, config.n_rbf)
    rbf = tf.exp(-0.5 * tf.square((distance[..., None] - centers) / config.rbf_width))  # (K, B, N, N, R)
    # A few learned radial functions (shared by all blocks) times the cutoff, and the cutoff itself as the channel
    # that carries the filter bias: every filter of every block is a linear combination of these channels.
    radial = _shifted_softplus(tf, dense(rbf, w["radial_kernel"], w["radial_bias"]))
    basis = tf.concat([radial, tf.ones_like(radial[..., :1])], axis=-1) * smooth_cut[..., None]  # (K, B, N, N, C)
    shape = tf.shape(basis)
    members, batch, n, channels = shape[0], shape[1], shape[2], config.n_radial + 1
    basis = tf.reshape(basis, [members * batch, n, n * channels])  # row i, columns (j, c)

    h = tf.einsum("bne,kef->kbnf", onehot, w["embedding"])  # (K, B, N, F)
    for i in range(config.n_interactions):
        x = dense(h, w[f"interaction{i}_in"])
        columns = slice(i * features, (i + 1) * features)
        filters = tf.concat([w["filter_kernel"][:, :, columns], w["filter_bias"][:, None, columns]], axis=1)
        # sum_j filter_ij * x_j = sum_(j, c) basis_ijc * (filters_c * x_j): one batched matmul per block, never a
        # (pairs x features) tensor.
        weighted = x[:, :, :, None, :] * filters[:, None, None]  # (K, B, N, C, F)
        message = tf.matmul(basis, tf.reshape(weighted, [members * batch, n * channels, features]))
        message = tf.reshape(message, [members, batch, n, features]) / config.aggregation_norm
        update = _shifted_softplus(tf, dense(message, w[f"interaction{i}_kernel1"], w[f"interaction{i}_bias1"]))
        h = h + dense(update, w[f"interaction{i}_kernel2"], w[f"interaction{i}_bias2"])
    hidden = _shifted_softplus(tf, dense(h, w["readout_kernel1"], w["readout_bias1"]))
    atomic = dense(hidden, w["readout_kernel2"], w["readout_bias2"])[..., 0] * mask  # (K, B, N)
    return tf.reduce_sum(atomic, axis=-1)


def _network(config: PotentialConfig, n_members: int):
    """A Keras model holding ``n_members`` stacked sets of weights (leading axis) for one config."""
    import keras

    tf = _tensorflow()

    class StackedSchNet(keras.Model):
        def __init__(self):
            super().__init__(name="stacked_schnet")
            self.stacked = [self.add_weight(shape=(n_members, *shape), initializer="zeros", name=name)
                            for name, shape in _weight_shapes(config)]
            self.built = True

        def call(self, species, positions, fold=False):
            return _energies(tf, config, [w.value for w in self.stacked], species, positions, fold=fold)

    return StackedSchNet()


def _set_members(model, potentials: Sequence[Potential]) -> None:
    model.set_weights([np.stack(arrays) for arrays in zip(*(p.weights for p in potentials), strict=True)])


class _Runner:
    """Compiled energies and forces for K members of one config, traced once for any batch and molecule size."""

    def __init__(self, config: PotentialConfig, n_members: int):
        tf = _tensorflow()
        self.n_members = n_members
        self.model = _network(config, n_members)
        self._loaded: tuple[Potential, ...] = ()
        self.lock = threading.Lock()  # one set of variables: threads of one process take turns
        model = self.model

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32),
                                      tf.TensorSpec([n_members, None, None, 3], tf.float32)])
        def energy_forces(species, positions):
            TRACE_COUNTS["energy_forces"] += 1
            with tf.GradientTape() as tape:
                tape.watch(positions)
                energies = model(species, positions)
            return energies, -tape.gradient(energies, positions)

        # The concrete function skips tf.function's argument binding: a third of the cost of a one-atom-batch call.
        self.energy_forces = energy_forces.get_concrete_function()
        self._tf = tf

    def __call__(self, potentials: Sequence[Potential], species: np.ndarray, positions: np.ndarray):
        """Energies (K, B) and forces (K, B, N, 3) of the networks (reference energies not included)."""
        tf = self._tf
        tiled = np.broadcast_to(positions, (self.n_members, *positions.shape))
        with self.lock:
            # Weights are loaded only when other potentials were used last (an MD run reuses them every step).
            # Identity is the test, so a Potential's arrays must not be modified in place.
            if len(self._loaded) != len(potentials) or any(a is not b for a, b in zip(self._loaded, potentials,
                                                                                          strict=True)):
                _set_members(self.model, potentials)
                self._loaded = tuple(potentials)  # references keep the identities valid
            energies, forces = self.energy_forces(tf.constant(species), tf.constant(tiled))
            return energies.numpy(), forces.numpy()


@lru_cache(maxsize=4)
def _runner(config: PotentialConfig, n_members: int) -> _Runner:
    return _Runner(config, n_members)


def _network_predictions(potentials: Sequence[Potential], species: np.ndarray, positions: np.ndarray):
    """Network energies (K, B) and forces (K, B, N, 3) of every potential; members are grouped by config."""
    energies = np.zeros((len(potentials), len(species)), dtype=np.float64)
    forces = np.zeros((len(potentials), *positions.shape), dtype=np.float32)
    groups: dict[PotentialConfig, list[int]] = {}
    for k, potential in enumerate(potentials):
        groups.setdefault(potential.config, []).append(k)
    for config, members in groups.items():
        e, f = _runner(config, len(members))([potentials[k] for k in members], species, positions)
        energies[members], forces[members] = e, f
    return energies, forces


def predict(potentials: list[Potential], frames: list[Atoms]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Energies (n_models, n_frames) in eV (total energy), and forces: one (n_models, n_atoms, 3) array per frame.

    Frames are evaluated in chunks of similar size, each padded only to its largest molecule (inference has no
    fixed shape), so mixing small and large molecules wastes little.
    """
    if not potentials:
        raise ValueError("predict needs at least one potential")
    energies = np.zeros((len(potentials), len(frames)))
    forces: list[np.ndarray] = [np.zeros((len(potentials), 0, 3))] * len(frames)
    references = np.stack([p.reference_energies for p in potentials])  # (K, elements)
    chunk = max(1, INFERENCE_CHUNK // len(potentials))
    order = np.argsort([len(a) for a in frames], kind="stable")
    for start in range(0, len(frames), chunk):
        rows = order[start:start + chunk]
        batch = [frames[i] for i in rows]
        species, positions = _pad(batch, max(len(a) for a in batch))
        e, f = _network_predictions(potentials, species, positions)
        energies[:, rows] = e + references @ _element_counts(species).T
        for j, i in enumerate(rows):
            forces[i] = f[:, j, :len(frames[i])].astype(np.float64)
    return energies, forces


def infer_energies(potentials: list[Potential], frames: list[Atoms]) -> np.ndarray:
    """The ``ml`` inference task of the selector: energy per atom (eV) of each frame by each member.

    Only energies come back, shape (members, frames); forces stay on the worker, so an inference result is a
    few kilobytes whatever the structures' size.
    """
    energies, _ = predict(list(potentials), list(frames))
    atoms_per_frame = np.array([len(frame) for frame in frames], dtype=float)
    return np.asarray(energies, dtype=float) / atoms_per_frame[None, :]


def evaluate(potentials: list[Potential], frames: list[Atoms]) -> dict:
    """Ensemble-mean predictions against the labels in ``frames`` (the ``ml`` evaluation task).

    Returns:
        ``energy_mae`` and ``energy_rmse`` (eV/atom), ``force_mae`` and ``force_rmse`` (eV/Å, per Cartesian
        component), ``n_frames``, and ``forces_true``/``forces_pred`` as flat float32 lists for a parity plot.
    """
    if not frames:
        return {"n_frames": 0, "energy_mae": float("nan"), "energy_rmse": float("nan"), "force_mae": float("nan"),
                "force_rmse": float("nan"), "forces_true": [], "forces_pred": []}
    energies, forces = predict(potentials, frames)
    n_atoms = np.array([len(a) for a in frames], dtype=np.float64)
    energy_error = (energies.mean(axis=0) - [a.get_potential_energy() for a in frames]) / n_atoms
    forces_true = np.concatenate([a.get_forces().ravel() for a in frames]).astype(np.float32)
    forces_pred = np.concatenate([f.mean(axis=0).ravel() for f in forces]).astype(np.float32)
    force_error = forces_pred.astype(np.float64) - forces_true
    return {
        "n_frames": len(frames),
        "energy_mae": float(np.abs(energy_error).mean()),
        "energy_rmse": float(np.sqrt(np.square(energy_error).mean())),
        "force_mae": float(np.abs(force_error).mean()),
        "force_rmse": float(np.sqrt(np.square(force_error).mean())),
        "forces_true": forces_true.tolist(),
        "forces_pred": forces_pred.tolist(),
    }


# --- training ---------------------------------------------------------------------------------------------------


class _Trainer:
    """One network, one Adam optimizer and compiled training steps per config and batch size, kept per process.

    Each step has fixed input shapes (a full batch padded to one of a few bucket sizes), so it is traced once per
    process and bucket, never per round; each call of :func:`train_potential` loads new weights and resets the
    optimizer instead of rebuilding anything.
    """

    def __init__(self, config: PotentialConfig, batch_size: int):
        import keras

        self.batch_size = batch_size
        self.model = _network(config, 1)
        # Clipping the gradient norm tames the rare batch with a very distorted structure (forces of tens of eV/Å),
        # which is what lets the high learning rate below train fast without diverging.
        self.optimizer = keras.optimizers.Adam(learning_rate=1e-3, global_clipnorm=1.0)
        self.optimizer.build(self.model.trainable_variables)
        self._steps: dict[int, Any] = {}
        self.lock = threading.Lock()  # held for a whole training: one network, one optimizer

    def step(self, n_atoms: int):
        """The compiled step for batches padded to ``n_atoms`` atoms (traced on first use)."""
        if n_atoms not in self._steps:
            self._steps[n_atoms] = self._compile(n_atoms)
        return self._steps[n_atoms]

    def _compile(self, n: int):
        tf = _tensorflow()
        model, optimizer, size = self.model, self.optimizer, self.batch_size

        @tf.function(input_signature=[
            tf.TensorSpec([size, n], tf.int32), tf.TensorSpec([size, n, 3], tf.float32),
            tf.TensorSpec([size], tf.float32), tf.TensorSpec([size, n, 3], tf.float32),
            tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.float32),
        ])
        def step(species, positions, energies, forces, force_weight, learning_rate):
            TRACE_COUNTS["train_step"] += 1
            mask = tf.cast(species >= 0, tf.float32)
            n_atoms = tf.reduce_sum(mask, axis=1)
            positions = positions[None]
            with tf.GradientTape() as outer:
                with tf.GradientTape() as inner:
                    inner.watch(positions)
                    predicted = model(species, positions, fold=True)
                predicted_forces = -inner.gradient(predicted, positions)[0]
                energy_mse = tf.reduce_mean(tf.square((predicted[0] - energies) / n_atoms))
                force_mse = (tf.reduce_sum(tf.square(predicted_forces - forces) * mask[..., None])
                             / (3.0 * tf.reduce_sum(mask)))
                loss = energy_mse + force_weight * force_mse
            gradients = outer.gradient(loss, model.trainable_variables)
            optimizer.learning_rate.assign(learning_rate)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
            return loss, energy_mse, force_mse

        return step

    def start(self, potential: Potential) -> None:
        """Load ``potential``'s weights (warm start) and forget the previous round's optimizer state."""
        _set_members(self.model, [potential])
        for variable in self.optimizer.variables:
            if "learning_rate" not in variable.path:
                variable.assign(np.zeros(variable.shape, variable.dtype))


@lru_cache(maxsize=2)
def _trainer(config: PotentialConfig, batch_size: int) -> _Trainer:
    return _Trainer(config, batch_size)


def _buckets(n_atoms: np.ndarray, max_atoms: int, n_buckets: int, batch_size: int) -> dict[int, np.ndarray]:
    """Positions in ``n_atoms`` grouped by padding size: the smallest of ``n_buckets`` sizes up to ``max_atoms``.

    The cost of a step grows with the square of the padding, so small molecules padded to the largest one waste
    most of it; a few fixed sizes keep the shapes fixed (one trace each) and the waste small. A bucket with less
    than a batch of frames joins the next larger one, so no batch is mostly duplicates.
    """
    sizes = sorted({math.ceil(max_atoms * k / n_buckets) for k in range(1, n_buckets + 1)})
    groups: dict[int, np.ndarray] = {}
    carried = np.zeros(0, dtype=np.int64)
    for lower, size in zip([0, *sizes[:-1]], sizes, strict=True):
        members = np.concatenate([carried, np.flatnonzero((n_atoms > lower) & (n_atoms <= size))])
        if len(members) >= batch_size or (size == sizes[-1] and len(members) > 0):
            groups[size], carried = members, np.zeros(0, dtype=np.int64)
        else:
            carried = members
    return groups


def train_potential(
    potential: Potential,
    frames: list[Atoms],
    *,
    seed: int,
    epochs: int = 30,
    batch_size: int = 16,
    learning_rate: float | None = None,
    force_weight: float = 0.1,
    bootstrap: bool = True,
    max_time: float | None = None,
    size_buckets: int = 3,
) -> Potential:
    """The ``ml`` training task: fine-tune one ensemble member on a bootstrap resample of ``frames``.

    Warm-starts from ``potential.weights``, trains on a bootstrap resample (by ``seed``) of ``frames`` and returns a
    NEW Potential (stats filled: n_train, epochs, train_time, final loss, out-of-bag energy MAE per atom and force
    MAE when a bootstrap leaves frames out).

    The loss is ``MSE(energy per atom) + force_weight * MSE(force component)`` in eV² and (eV/Å)². The learning
    rate follows a cosine from ``learning_rate`` to a twentieth of it over the planned steps, so every round ends
    settled whatever it started from. Batches are always full (the last one is topped up with random training
    frames of the same size bucket) so the compiled steps never retrace.

    Args:
        potential: the starting model (``create_potential`` for the first round, then the previous round's).
        frames: labelled structures (``atoms.calc`` holds energy and forces), each with at most ``max_atoms`` atoms.
        seed: draws the bootstrap resample and the batch order; use one per ensemble member.
        epochs: passes over the (resampled) training set.
        batch_size: structures per step.
        learning_rate: Adam's peak learning rate; by default ``SCRATCH_LEARNING_RATE`` for a fresh potential and
            ``FINE_TUNE_LEARNING_RATE`` for a trained one (a high restart would undo part of what it knows).
        force_weight: weight of the force term relative to the per-atom energy term.
        bootstrap: train on a resample with replacement (members differ, out-of-bag frames give a free test).
        max_time: stop after this many seconds (checked after every step) even if epochs remain.
        size_buckets: padding sizes (fractions of ``max_atoms``) that batches are grouped by; 1 pads everything to
            ``max_atoms``. Each size in use costs one trace per process.
    """
    if not frames or epochs < 1:
        raise ValueError(f"train_potential needs labelled frames and epochs >= 1 (got {len(frames)}, {epochs})")
    started = time.perf_counter()
    if learning_rate is None:
        learning_rate = FINE_TUNE_LEARNING_RATE if potential.stats.get("trained") else SCRATCH_LEARNING_RATE
    config = potential.config
    rng = np.random.default_rng(seed)
    species, positions = _pad(frames, config.max_atoms)
    energies, forces = _labels(frames, config.max_atoms)
    counts = _element_counts(species)
    picked = rng.integers(0, len(frames), len(frames)) if bootstrap else np.arange(len(frames))
    references = _least_squares_references(counts[picked], energies[picked])
    residual = (energies - counts @ references).astype(np.float32)  # what the network has to learn

    trainer = _trainer(config, batch_size)
    with trainer.lock:
        trainer.start(potential)
        buckets = {size: picked[rows] for size, rows in _buckets(counts[picked].sum(axis=1), config.max_atoms,
                                                                  size_buckets, batch_size).items()}
        steps_per_epoch = sum(math.ceil(len(rows) / batch_size) for rows in buckets.values())
        planned = max(1, epochs * steps_per_epoch)
        weight = np.float32(force_weight)
        history: list[tuple[float, float, float]] = []  # per epoch: loss, energy MSE, force MSE
        step = 0
        stopped_early = False
        first_step_time = 0.0
        for _ in range(epochs):
            batches = []
            for size, rows in buckets.items():
                order = rng.permutation(rows)
                order = np.concatenate([order, rng.choice(rows, -len(order) % batch_size)])  # full batches only
                batches += [(size, batch) for batch in order.reshape(-1, batch_size)]
            losses = []
            for k in rng.permutation(len(batches)):
                size, batch = batches[k]
                rate = learning_rate * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * step / planned)))
                tick = time.perf_counter()
                values = trainer.step(size)(species[batch, :size], positions[batch, :size], residual[batch],
                                            forces[batch, :size], weight, np.float32(rate))
                losses.append([float(v) for v in values])
                if step == 0:
                    first_step_time = time.perf_counter() - tick
                step += 1
                if max_time is not None and time.perf_counter() - started > max_time:
                    stopped_early = True
                    break
            history.append(tuple(float(v) for v in np.mean(losses, axis=0)))
            if stopped_early:
                logger.info("Training stopped by max_time=%.1f s after %d of %d steps", max_time, step, planned)
                break
        weights = [w[0].astype(np.float32) for w in trainer.model.get_weights()]
    train_time = time.perf_counter() - started

    trained = Potential(
        config=config,
        weights=weights,
        reference_energies=references,
        stats={
            "trained": True, "seed": seed, "n_train": len(picked), "n_unique": int(len(np.unique(picked))),
            "epochs": step / steps_per_epoch, "steps": step, "batch_size": batch_size, "learning_rate": learning_rate,
            "force_weight": force_weight, "stopped_early": stopped_early, "train_time": train_time,
            "first_step_time": first_step_time, "initial_loss": history[0][0], "final_loss": history[-1][0],
            "final_energy_rmse": math.sqrt(history[-1][1]), "final_force_rmse": math.sqrt(history[-1][2]),
            "loss_history": [h[0] for h in history],
            "bucket_sizes": {size: len(rows) for size, rows in buckets.items()},
        },
    )
    out_of_bag = np.setdiff1d(np.arange(len(frames)), picked)
    if bootstrap and len(out_of_bag) > 0:
        report = evaluate([trained], [frames[i] for i in out_of_bag])
        trained.stats.update(n_oob=len(out_of_bag), oob_energy_mae=report["energy_mae"],
                             oob_force_mae=report["force_mae"])
    logger.info("Trained a potential on %d frames: %.1f epochs in %.1f s, loss %.4g -> %.4g",
                len(picked), trained.stats["epochs"], train_time, history[0][0], history[-1][0])
    return trained


# --- ASE ----------------------------------------------------------------------------------------------------------


class EnsembleCalculator(Calculator):
    """ASE calculator from one or more potentials: the members' mean energy and forces, and their spread.

    ``energy_std`` (eV) and ``forces_std`` (eV/Å, per atom and component) are the members' standard deviations,
    the uncertainty an active-learning loop selects on. All members are evaluated in one compiled call.
    """

    implemented_properties = ["energy", "forces", "energy_std", "forces_std"]

    def __init__(self, potentials: list[Potential], **kwargs: Any):
        super().__init__(**kwargs)
        if not potentials:
            raise ValueError("EnsembleCalculator needs at least one potential")
        self.potentials = list(potentials)
        self._references = np.stack([p.reference_energies for p in self.potentials])

    def check_state(self, atoms: Atoms, tol: float = 1e-15) -> list[str]:
        """What changed since the last calculation: exact comparison of what the potential depends on.

        ASE's generic check compares every array with ``np.isclose`` and costs about as much as the network does
        for a small molecule; an MD step only needs to know whether positions or elements moved.
        """
        if self.atoms is None:
            return list(all_changes)
        if len(atoms) != len(self.atoms) or not np.array_equal(atoms.numbers, self.atoms.numbers):
            return list(all_changes)
        return [] if np.array_equal(atoms.positions, self.atoms.positions) else ["positions"]

    def calculate(self, atoms: Atoms | None = None, properties=None, system_changes=all_changes) -> None:
        """Fill ``results`` with the ensemble mean and spread (and ``energies``: each member's energy)."""
        super().calculate(atoms, properties, system_changes)
        species = _species(self.atoms)[None]
        positions = self.atoms.positions.astype(np.float32)[None]
        network, forces = _network_predictions(self.potentials, species, positions)
        energies = network[:, 0] + self._references @ np.bincount(species[0], minlength=len(ELEMENTS))
        forces = forces[:, 0].astype(np.float64)
        self.results = {
            "energy": float(energies.mean()),
            "forces": forces.mean(axis=0),
            "energy_std": float(energies.std()),
            "forces_std": forces.std(axis=0),
            "energies": energies,
        }
