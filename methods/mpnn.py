"""A message-passing neural network on RDKit molecular graphs, in TensorFlow/Keras, used as a bootstrap ensemble.

Each ensemble member is trained as its own ``ml`` task on a bootstrap resample of the evaluated molecules,
so members train in parallel when workers allow. Only weights travel: a trained member comes back as a
:class:`MPNNWeights` (NumPy arrays and a few numbers), never as a live Keras object.

Graphs hold heavy atoms only (hydrogens are an atom feature). A batch of molecules is one disconnected
graph: atoms and directed bonds are concatenated and ``graph_index`` says which molecule each atom is in.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from rdkit import Chem, RDLogger

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
RDLogger.DisableLog("rdApp.*")

ELEMENTS = ("C", "N", "O", "F", "S", "Cl", "Br", "H")
HYBRIDIZATIONS = (Chem.HybridizationType.SP, Chem.HybridizationType.SP2, Chem.HybridizationType.SP3)
BOND_TYPES = (Chem.BondType.SINGLE, Chem.BondType.DOUBLE, Chem.BondType.TRIPLE, Chem.BondType.AROMATIC)
ATOM_FEATURES = len(ELEMENTS) + 1 + 5 + 4 + 1 + len(HYBRIDIZATIONS) + 3 + 1
BOND_FEATURES = len(BOND_TYPES) + 2
# Molecules per inference batch: small enough that a batch's atom states stay in the core's cache (a 4096-molecule
# batch of drug-like graphs was 2-3 times slower per molecule; measured by scripts/cv_mpnn.py --speed).
INFERENCE_BATCH = 512


def _one_hot(value, choices) -> list[float]:
    return [float(value == c) for c in choices]


def atom_features(atom: Chem.Atom) -> list[float]:
    """Element, degree, attached hydrogens, aromaticity, hybridization, charge, ring membership."""
    symbol = atom.GetSymbol()
    return (
        _one_hot(symbol, ELEMENTS) + [float(symbol not in ELEMENTS)]
        + _one_hot(min(atom.GetDegree(), 4), range(5))
        + _one_hot(min(atom.GetTotalNumHs(), 3), range(4))
        + [float(atom.GetIsAromatic())]
        + _one_hot(atom.GetHybridization(), HYBRIDIZATIONS)
        + _one_hot(max(-1, min(1, atom.GetFormalCharge())), (-1, 0, 1))
        + [float(atom.IsInRing())]
    )


def bond_features(bond: Chem.Bond) -> list[float]:
    """Bond order, conjugation, ring membership."""
    return _one_hot(bond.GetBondType(), BOND_TYPES) + [float(bond.GetIsConjugated()), float(bond.IsInRing())]


@dataclass
class GraphBatch:
    """Several molecules as one disconnected graph (NumPy arrays, ready for TensorFlow).

    The offsets say where each molecule's atoms and bonds start, so any subset of molecules can be cut out
    again (:meth:`take`): a library's graphs are built once, cached per block, and batched from the cache.
    """

    atoms: np.ndarray  # (atoms, ATOM_FEATURES)
    bonds: np.ndarray  # (directed bonds, BOND_FEATURES)
    connectivity: np.ndarray  # (directed bonds, 2): source atom, target atom
    graph_index: np.ndarray  # (atoms,): molecule of each atom
    n_graphs: int
    valid: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # molecules that parsed
    atom_offsets: np.ndarray | None = None  # (n_graphs + 1,): first atom of each molecule
    bond_offsets: np.ndarray | None = None  # (n_graphs + 1,): first directed bond of each molecule

    def __len__(self) -> int:
        return self.n_graphs

    def take(self, rows: Sequence[int] | np.ndarray) -> GraphBatch:
        """The molecules ``rows`` (in that order) as a new batch graph, renumbered from zero."""
        rows = np.asarray(rows, dtype=np.int64)
        atom_start, atom_count = self.atom_offsets[rows], np.diff(self.atom_offsets)[rows]
        bond_start, bond_count = self.bond_offsets[rows], np.diff(self.bond_offsets)[rows]
        new_atom_offsets = np.concatenate([[0], np.cumsum(atom_count)])
        bond_index = _ranges(bond_start, bond_count)
        shift = np.repeat(new_atom_offsets[:-1] - atom_start, bond_count)
        return GraphBatch(
            atoms=np.asarray(self.atoms[_ranges(atom_start, atom_count)], dtype=np.float32),
            bonds=np.asarray(self.bonds[bond_index], dtype=np.float32),
            connectivity=(self.connectivity[bond_index] + shift[:, None]).astype(np.int32),
            graph_index=np.repeat(np.arange(len(rows), dtype=np.int32), atom_count),
            n_graphs=len(rows),
            valid=self.valid[rows],
            atom_offsets=new_atom_offsets,
            bond_offsets=np.concatenate([[0], np.cumsum(bond_count)]),
        )

    def save(self, path) -> None:
        """Write as one ``.npz``; the 0/1 features are stored as bytes (a quarter of float32)."""
        with open(path, "wb") as handle:
            np.savez(handle, atoms=self.atoms.astype(np.uint8), bonds=self.bonds.astype(np.uint8),
                     connectivity=self.connectivity, valid=self.valid, atom_offsets=self.atom_offsets,
                     bond_offsets=self.bond_offsets)

    @classmethod
    def load(cls, path) -> GraphBatch:
        """Read what :meth:`save` wrote (features stay bytes until :meth:`take` cuts a batch)."""
        with np.load(path) as data:
            atom_offsets = data["atom_offsets"]
            n = len(atom_offsets) - 1
            return cls(atoms=data["atoms"], bonds=data["bonds"], connectivity=data["connectivity"],
                       graph_index=np.repeat(np.arange(n, dtype=np.int32), np.diff(atom_offsets)), n_graphs=n,
                       valid=data["valid"], atom_offsets=atom_offsets, bond_offsets=data["bond_offsets"])


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(start, start + count)`` for each pair, without a Python loop."""
    total = int(counts.sum())
    before = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return np.repeat(starts - before, counts) + np.arange(total)


def featurize(smiles: Sequence[str]) -> GraphBatch:
    """Build one batch graph; unparsable SMILES become empty graphs (and ``valid`` is False for them)."""
    atoms, bonds, connectivity, graph_index, valid = [], [], [], [], []
    atom_offsets, bond_offsets = [0], [0]
    offset = 0
    for index, text in enumerate(smiles):
        mol = Chem.MolFromSmiles(text)
        valid.append(mol is not None and mol.GetNumAtoms() > 0)
        if not valid[-1]:
            atom_offsets.append(len(atoms))
            bond_offsets.append(len(bonds))
            continue
        atoms.extend(atom_features(a) for a in mol.GetAtoms())
        graph_index.extend([index] * mol.GetNumAtoms())
        for bond in mol.GetBonds():
            i, j = bond.GetBeginAtomIdx() + offset, bond.GetEndAtomIdx() + offset
            features = bond_features(bond)
            bonds.extend([features, features])
            connectivity.extend([(i, j), (j, i)])
        offset += mol.GetNumAtoms()
        atom_offsets.append(len(atoms))
        bond_offsets.append(len(bonds))
    return GraphBatch(
        atoms=np.asarray(atoms, np.float32).reshape(-1, ATOM_FEATURES),
        bonds=np.asarray(bonds, np.float32).reshape(-1, BOND_FEATURES),
        connectivity=np.asarray(connectivity, np.int32).reshape(-1, 2),
        graph_index=np.asarray(graph_index, np.int32),
        n_graphs=len(smiles),
        valid=np.asarray(valid, bool),
        atom_offsets=np.asarray(atom_offsets, np.int64),
        bond_offsets=np.asarray(bond_offsets, np.int64),
    )


@dataclass
class MPNNWeights:
    """A trained ensemble member as plain data: what travels between the thinker and workers."""

    weights: list[np.ndarray]
    hidden: int
    steps: int
    y_mean: float
    y_std: float
    stats: dict = field(default_factory=dict)


def _build(hidden: int, steps: int):
    """The network: embed atoms, ``steps`` rounds of edge-conditioned messages, sum+mean readout, MLP.

    Each message layer is a dense layer on [sender state, bond features] and each update a dense layer on
    [state, incoming messages]. Both are evaluated in factored form: the sender part of the message is
    multiplied once per *atom* and then gathered to the bonds (a molecule has about twice as many directed
    bonds as atoms), and the concatenations are never built. The arithmetic is the same dense layers, with
    the same weights, at about half the cost of the concatenated form.
    """
    import keras
    import tensorflow as tf

    class MPNN(keras.Model):
        def __init__(self):
            super().__init__()
            self.embed = keras.layers.Dense(hidden, activation="relu")
            self.message = [keras.layers.Dense(hidden, activation="relu") for _ in range(steps)]
            self.update_layers = [keras.layers.Dense(hidden, activation="relu") for _ in range(steps)]
            self.readout = keras.layers.Dense(hidden, activation="relu")
            self.out = keras.layers.Dense(1)
            # Built here because call() uses the kernels directly, never the layers' own __call__.
            self.embed.build((None, ATOM_FEATURES))
            for layer in self.message:
                layer.build((None, hidden + BOND_FEATURES))
            for layer in self.update_layers:
                layer.build((None, 2 * hidden))
            self.readout.build((None, 2 * hidden))
            self.out.build((None, hidden))

        def call(self, atoms, bonds, connectivity, graph_index, n_graphs):
            h = self.embed(atoms)
            source, target = connectivity[:, 0], connectivity[:, 1]
            for message, update in zip(self.message, self.update_layers, strict=True):
                sender = tf.matmul(h, message.kernel[:hidden])  # per atom, then gathered to its bonds
                m = tf.nn.relu(tf.gather(sender, source) + tf.matmul(bonds, message.kernel[hidden:]) + message.bias)
                incoming = tf.math.unsorted_segment_sum(m, target, tf.shape(h)[0])
                h = h + tf.nn.relu(tf.matmul(h, update.kernel[:hidden]) + tf.matmul(incoming, update.kernel[hidden:])
                                   + update.bias)
            total = tf.math.unsorted_segment_sum(h, graph_index, n_graphs)
            count = tf.math.unsorted_segment_sum(tf.ones_like(h[:, :1]), graph_index, n_graphs)
            pooled = tf.concat([total, total / tf.maximum(count, 1.0)], axis=1)
            return tf.squeeze(self.out(self.readout(pooled)), axis=1)

    return MPNN()


@lru_cache(maxsize=4)
def _model_for(hidden: int, steps: int):
    """One network and its compiled forward pass per shape and worker process (weights are swapped in)."""
    import tensorflow as tf

    model = _build(hidden, steps)

    @tf.function(reduce_retracing=True)
    def forward(atoms, bonds, connectivity, graph_index, n_graphs):
        return model(atoms, bonds, connectivity, graph_index, n_graphs=n_graphs)

    return model, forward


def _batches(n: int, size: int, rng: np.random.Generator | None = None):
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for start in range(0, n, size):
        yield order[start:start + size]


def train_mpnn(
    smiles: list[str],
    values: list[float],
    seed: int = 0,
    bootstrap: bool = True,
    epochs: int = 64,
    hidden: int = 32,
    steps: int = 2,
    batch_size: int = 32,
    initial: MPNNWeights | None = None,
) -> MPNNWeights:
    """The ``ml`` task that trains one ensemble member (on a bootstrap resample when ``bootstrap``).

    Args:
        smiles: Training molecules.
        values: Their property values.
        seed: Seed of the bootstrap resample, the weight initialization and the batch order.
        bootstrap: Train on a resample with replacement (the ensemble's spread comes from it).
        epochs: Passes over the (resampled) training set.
        hidden: Width of the atom states (ignored when ``initial`` is given).
        steps: Message-passing rounds (ignored when ``initial`` is given).
        batch_size: Molecules per gradient step.
        initial: Start from this member's weights and target scaling instead of random weights. A campaign
            adds a few dozen molecules per round, so a member that continues from last round's weights needs
            a fraction of the epochs of one trained from scratch (``scripts/cv_mpnn.py`` measures both).
    """
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    y = np.asarray(values, dtype=np.float32)
    picked = rng.integers(0, len(y), len(y)) if bootstrap else np.arange(len(y))
    y_train = y[picked]
    if initial is not None:
        hidden, steps, y_mean, y_std = initial.hidden, initial.steps, initial.y_mean, initial.y_std
    else:
        y_mean, y_std = float(y_train.mean()), float(y_train.std() or 1.0)
    graphs = featurize([smiles[i] for i in picked])  # featurized once; each step cuts its batch out
    model = _build(hidden, steps)
    if initial is not None:
        model.set_weights(initial.weights)
    optimizer = keras.optimizers.Adam(learning_rate=1e-3)

    @tf.function(reduce_retracing=True)
    def step(atoms, bonds, connectivity, graph_index, n_graphs, target):
        with tf.GradientTape() as tape:
            prediction = model(atoms, bonds, connectivity, graph_index, n_graphs=n_graphs)
            loss = tf.reduce_mean(tf.square(prediction - target))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return loss

    usable = np.flatnonzero(graphs.valid)
    losses = []
    for _ in range(epochs):
        epoch_loss = []
        for batch in _batches(len(usable), batch_size, rng):
            rows = usable[batch]
            merged = graphs.take(rows)
            target = (y_train[rows] - y_mean) / y_std
            epoch_loss.append(float(step(merged.atoms, merged.bonds, merged.connectivity, merged.graph_index,
                                         tf.constant(merged.n_graphs), target)))
        losses.append(float(np.mean(epoch_loss)))
    member = MPNNWeights(
        weights=[np.asarray(w) for w in model.get_weights()], hidden=hidden, steps=steps, y_mean=y_mean,
        y_std=y_std, stats={"n_train": len(y), "epochs": epochs, "final_loss": losses[-1], "seed": seed,
                            "warm_start": initial is not None},
    )
    # Molecules the bootstrap left out are a free hold-out set for this member.
    out_of_bag = np.setdiff1d(np.arange(len(y)), picked)
    if bootstrap and len(out_of_bag) >= 2:
        predicted = predict_mpnn(member, [smiles[i] for i in out_of_bag])
        member.stats["oob_mae"] = float(np.nanmean(np.abs(predicted - y[out_of_bag])))
        member.stats["oob_baseline_mae"] = float(np.mean(np.abs(y_mean - y[out_of_bag])))
    return member


def predict_mpnn(member: MPNNWeights, smiles: Sequence[str], batch_size: int = INFERENCE_BATCH) -> np.ndarray:
    """Predictions of one ensemble member (NaN for unparsable SMILES)."""
    import tensorflow as tf

    model, forward = _model_for(member.hidden, member.steps)
    model.set_weights(member.weights)
    out = np.full(len(smiles), np.nan, dtype=np.float64)
    for start in range(0, len(smiles), batch_size):
        batch = featurize(smiles[start:start + batch_size])
        if len(batch.atoms) == 0:
            continue
        prediction = forward(batch.atoms, batch.bonds, batch.connectivity, batch.graph_index,
                             tf.constant(batch.n_graphs)).numpy()
        values = prediction * member.y_std + member.y_mean
        out[start:start + batch_size] = np.where(batch.valid, values, np.nan)
    return out


def ensemble_predict(members: Sequence[MPNNWeights], smiles: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation across the ensemble members (molecules are featurized once)."""
    return ensemble_predict_graphs(members, featurize(list(smiles)))


def ensemble_predict_graphs(
    members: Sequence[MPNNWeights], graphs: GraphBatch, batch_size: int = INFERENCE_BATCH
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation across the ensemble for featurized molecules (NaN for invalid ones).

    The batches are cut from the graphs once (as TensorFlow tensors) and each member's weights are loaded
    once: cutting batches and swapping weights are then paid once per block, not once per batch and member.
    """
    import tensorflow as tf

    predictions = np.full((len(members), graphs.n_graphs), np.nan)
    batches = []
    for start in range(0, graphs.n_graphs, batch_size):
        rows = np.arange(start, min(start + batch_size, graphs.n_graphs))
        batch = graphs.take(rows)
        if len(batch.atoms):
            inputs = (tf.constant(batch.atoms), tf.constant(batch.bonds), tf.constant(batch.connectivity),
                      tf.constant(batch.graph_index), tf.constant(batch.n_graphs))
            batches.append((rows, batch.valid, inputs))
    for k, member in enumerate(members):
        model, forward = _model_for(member.hidden, member.steps)
        model.set_weights(member.weights)
        for rows, valid, inputs in batches:
            values = forward(*inputs).numpy() * member.y_std + member.y_mean
            predictions[k, rows] = np.where(valid, values, np.nan)
    return predictions.mean(axis=0), predictions.std(axis=0)
