"""A MolDQN-style reinforcement-learning generator: an agent edits molecules to please the surrogate.

The environment's state is a molecule. Its actions are valence-valid edits made with RDKit: add a C, N, O or F
atom (hydrogens are implicit, so "adding H" is what lowering a bond order does), add or raise a bond, remove
or lower a bond, or keep the molecule. Every action's result is sanitized, connected, and within the
heavy-atom limit, so the agent can only ever propose valid molecules.

The Q-network (Keras) scores the molecule an action leads to, from its Morgan fingerprint and the number of
steps left. Exploration is epsilon-greedy with decay; learning replays past transitions. The whole agent —
network weights, epsilon and replay memory — is plain data (:class:`AgentState`), so the ``ml`` task returns
it with the molecules and the next round continues from it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rdkit import Chem, RDLogger
from rdkit.Chem import rdFingerprintGenerator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
RDLogger.DisableLog("rdApp.*")

ADDABLE_ELEMENTS = ("C", "N", "O", "F")
VALENCE = {"C": 4, "N": 3, "O": 2, "F": 1}
BOND_ORDERS = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}
FINGERPRINT_BITS = 1024
MAX_RING_SIZE = 8
MAX_RINGS_PER_ATOM = 2
"""Atoms shared by three or more rings make cages that RDKit cannot embed in 3-D (and QM9 rarely has)."""


def canonical(mol: Chem.Mol) -> str | None:
    """Canonical SMILES of a sanitizable molecule, else None."""
    try:
        copy = Chem.Mol(mol)
        Chem.SanitizeMol(copy)
        return Chem.MolToSmiles(copy)
    except Exception:  # noqa: BLE001 - RDKit raises several kinds of sanitization errors
        return None


def _free_valence(atom: Chem.Atom) -> int:
    return VALENCE.get(atom.GetSymbol(), 0) - sum(int(b.GetBondTypeAsDouble()) for b in atom.GetBonds())


def _kekulized(smiles: str) -> Chem.RWMol | None:
    mol = Chem.MolFromSmiles(smiles)
    if mol is None or any(a.GetSymbol() not in VALENCE or a.GetFormalCharge() for a in mol.GetAtoms()):
        return None
    Chem.Kekulize(mol, clearAromaticFlags=True)
    return Chem.RWMol(mol)


def valid_actions(smiles: str, max_heavy_atoms: int) -> set[str]:
    """Every molecule one edit away from ``smiles`` (canonical SMILES), the molecule itself included."""
    mol = _kekulized(smiles)
    if mol is None:
        return set()
    results = {smiles}
    n_atoms = mol.GetNumAtoms()
    free = [_free_valence(a) for a in mol.GetAtoms()]

    def keep(candidate: Chem.RWMol) -> None:
        if len(Chem.GetMolFrags(candidate)) != 1:
            return
        text = canonical(candidate)
        if text is None:
            return
        parsed = Chem.MolFromSmiles(text)  # keep a reference: RingInfo does not own the molecule
        rings = parsed.GetRingInfo()
        if all(rings.NumAtomRings(i) <= MAX_RINGS_PER_ATOM for i in range(parsed.GetNumAtoms())):
            results.add(text)

    if n_atoms < max_heavy_atoms:  # add an atom, bonded to an existing one
        for i in range(n_atoms):
            for element in ADDABLE_ELEMENTS:
                for order in range(1, min(free[i], VALENCE[element], 3) + 1):
                    candidate = Chem.RWMol(mol)
                    j = candidate.AddAtom(Chem.Atom(element))
                    candidate.AddBond(i, j, BOND_ORDERS[order])
                    keep(candidate)
    for i in range(n_atoms):  # add a bond, or raise its order
        for j in range(i + 1, n_atoms):
            if free[i] < 1 or free[j] < 1:
                continue
            bond = mol.GetBondBetweenAtoms(i, j)
            candidate = Chem.RWMol(mol)
            if bond is None:
                if len(Chem.GetShortestPath(mol, i, j)) > MAX_RING_SIZE:
                    continue
                candidate.AddBond(i, j, Chem.BondType.SINGLE)
            elif bond.GetBondTypeAsDouble() < 3:
                candidate.GetBondBetweenAtoms(i, j).SetBondType(BOND_ORDERS[int(bond.GetBondTypeAsDouble()) + 1])
            else:
                continue
            keep(candidate)
    for bond in mol.GetBonds():  # lower a bond's order, or remove it (dropping an atom left alone)
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        candidate = Chem.RWMol(mol)
        order = int(bond.GetBondTypeAsDouble())
        if order > 1:
            candidate.GetBondBetweenAtoms(i, j).SetBondType(BOND_ORDERS[order - 1])
        else:
            candidate.RemoveBond(i, j)
            lonely = [k for k in (i, j) if candidate.GetAtomWithIdx(k).GetDegree() == 0]
            if len(lonely) == 1 and candidate.GetNumAtoms() > 1:
                candidate.RemoveAtom(lonely[0])
        keep(candidate)
    return results


_FINGERPRINTER = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=FINGERPRINT_BITS)


def fingerprint(smiles: str) -> np.ndarray:
    """Morgan fingerprint as 0/1 float32 (the Q-network's view of a molecule)."""
    mol = Chem.MolFromSmiles(smiles)
    return _FINGERPRINTER.GetFingerprintAsNumPy(mol).astype(np.float32)


@dataclass
class AgentState:
    """Everything the agent has learned, as plain data that survives a trip through the task queues."""

    weights: list[np.ndarray] | None = None
    epsilon: float = 1.0
    episodes: int = 0
    replay: list[tuple[np.ndarray, float, float, np.ndarray, bool]] = field(default_factory=list)


@dataclass(frozen=True)
class RLSettings:
    """How the agent explores and learns."""

    max_heavy_atoms: int = 9
    max_steps: int = 10
    gamma: float = 0.9
    epsilon_decay: float = 0.95
    epsilon_min: float = 0.05
    replay_size: int = 3000
    replay_carried: int = 50  # transitions returned with the agent: enough to warm-start, under 1 MB to send
    batch_size: int = 64
    updates_per_step: int = 2
    learning_rate: float = 1e-3
    target_update: int = 25  # gradient steps between copies of the network into the (frozen) target network
    start_smiles: tuple[str, ...] = ("C",)


def _q_network(learning_rate: float = 1e-3):
    import keras

    model = keras.Sequential([
        keras.Input(shape=(FINGERPRINT_BITS + 1,)),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(1),
    ])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="huber")
    return model


def _inputs(fps: np.ndarray, steps_left: float, max_steps: int) -> np.ndarray:
    column = np.full((len(fps), 1), steps_left / max_steps, dtype=np.float32)
    return np.hstack([fps, column])


def run_episodes(
    agent: AgentState,
    reward: Callable[[Sequence[str]], np.ndarray],
    episodes: int,
    settings: RLSettings = RLSettings(),
    seed: int = 0,
) -> tuple[AgentState, dict[str, float], list[float]]:
    """Run and learn from ``episodes`` episodes.

    ``reward`` maps SMILES to rewards (higher is better); it is called in batches and cached.

    Returns:
        The agent, every molecule visited with its reward, and each episode's final reward.
    """
    import keras

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    network = _q_network(settings.learning_rate)
    if agent.weights is not None:
        network.set_weights(agent.weights)
    # Bootstrapped targets come from a frozen copy: with the live network, the max over ~100 candidate
    # molecules feeds on its own overestimates and the Q-values diverge (seen here: Q ~ 1e3 for rewards ~ 1).
    target = _q_network()
    target.set_weights(network.get_weights())
    updates = 0
    cache: dict[str, float] = {}
    fp_cache: dict[str, np.ndarray] = {}
    action_cache: dict[str, list[str]] = {}

    def actions_of(smiles: str) -> list[str]:
        if smiles not in action_cache:
            action_cache[smiles] = sorted(valid_actions(smiles, settings.max_heavy_atoms))
        return action_cache[smiles]

    def rewards_of(smiles: Sequence[str]) -> np.ndarray:
        missing = [s for s in smiles if s not in cache]
        if missing:
            cache.update(zip(missing, np.asarray(reward(missing), dtype=float).tolist(), strict=True))
        return np.array([cache[s] for s in smiles])

    def fps_of(smiles: Sequence[str]) -> np.ndarray:
        for s in smiles:
            if s not in fp_cache:
                fp_cache[s] = fingerprint(s)
        return np.stack([fp_cache[s] for s in smiles])

    final_rewards = []
    for _ in range(episodes):
        state = settings.start_smiles[rng.integers(len(settings.start_smiles))]
        for step in range(settings.max_steps):
            steps_left = settings.max_steps - step - 1
            candidates = actions_of(state)
            if not candidates:
                break
            fps = fps_of(candidates)
            if rng.random() < agent.epsilon:
                choice = int(rng.integers(len(candidates)))
            else:
                q = network(_inputs(fps, steps_left, settings.max_steps), training=False).numpy().ravel()
                choice = int(np.argmax(q))
            next_state = candidates[choice]
            value = float(rewards_of([next_state])[0])
            # The reward counts fully at the end of the episode and is discounted before it (as in MolDQN).
            step_reward = value * settings.gamma ** steps_left
            done = steps_left == 0
            next_fps = np.packbits(fps_of(actions_of(next_state)).astype(np.uint8), axis=1) if not done \
                else np.zeros((0, FINGERPRINT_BITS // 8), np.uint8)
            agent.replay.append((np.packbits(fps[choice].astype(np.uint8)), float(steps_left), step_reward,
                                 next_fps, done))
            state = next_state
            for _ in range(settings.updates_per_step):
                if _learn(network, target, agent, settings, rng):
                    updates += 1
                    if updates % settings.target_update == 0:
                        target.set_weights(network.get_weights())
        final_rewards.append(float(rewards_of([state])[0]))
        agent.replay = agent.replay[-settings.replay_size:]
        agent.epsilon = max(settings.epsilon_min, agent.epsilon * settings.epsilon_decay)
        agent.episodes += 1
    agent.weights = [np.asarray(w) for w in network.get_weights()]
    agent.replay = agent.replay[-settings.replay_carried:]
    return agent, dict(cache), final_rewards


def _learn(network, target, agent: AgentState, settings: RLSettings, rng: np.random.Generator) -> bool:
    """One gradient step of Q-learning on a random replay batch: target = r + γ max Q_target(next molecules).

    The next molecules of the whole batch go through the network in one call; a segment maximum then
    picks each transition's best.
    """
    if len(agent.replay) < settings.batch_size:
        return False
    picks = rng.choice(len(agent.replay), settings.batch_size, replace=False)
    batch = [agent.replay[i] for i in picks]
    inputs = np.stack([np.append(np.unpackbits(fp)[:FINGERPRINT_BITS].astype(np.float32), left / settings.max_steps)
                       for fp, left, _, _, _ in batch])
    targets = np.array([r for _, _, r, _, _ in batch], dtype=np.float32)
    owners = [k for k, (_, _, _, nxt, done) in enumerate(batch) if not done and len(nxt)]
    if owners:
        next_inputs = np.concatenate([
            _inputs(np.unpackbits(batch[k][3], axis=1)[:, :FINGERPRINT_BITS].astype(np.float32),
                    batch[k][1] - 1, settings.max_steps) for k in owners])
        q = target(next_inputs, training=False).numpy().ravel()
        sizes = [len(batch[k][3]) for k in owners]
        best = np.maximum.reduceat(q, np.cumsum([0] + sizes[:-1]))
        targets[owners] += settings.gamma * best
    network.train_on_batch(inputs, targets)
    return True


def generate_molecules(
    agent: AgentState | None,
    model: Any,
    episodes: int,
    maximize: bool,
    exclude: Sequence[str] = (),
    n_propose: int = 64,
    max_heavy_atoms: int = 9,
    start_smiles: Sequence[str] = ("C",),
    seed: int = 0,
    result_store: Any | None = None,
) -> tuple[list[dict[str, Any]], AgentState, dict[str, Any]]:
    """The ``ml`` task of ``--generator rl``: train the agent on the surrogate's reward, propose molecules.

    The reward is the surrogate's predicted objective (negated when minimizing), standardized over the
    molecules visited so the Q-network sees values of order one. Proposals are the best-rewarded distinct
    molecules the agent visited that have not been evaluated, with the model's mean and std.

    Args:
        agent: The agent from the previous round (or its proxy); None starts a new one.
        model: The round's surrogate (its ``predict`` is the reward).
        episodes: Episodes to run this round.
        maximize: Whether a larger prediction is better.
        exclude: Molecules already evaluated, never proposed again.
        n_propose: Proposals to return.
        max_heavy_atoms: Largest molecule the agent may build.
        start_smiles: Molecules the episodes start from (grown or edited).
        seed: Seed of the episodes' random choices.
        result_store: Configuration of the run's ProxyStore store. When given, the updated agent (about
            1.2 MB of Q-network weights) goes back as a proxy that is evicted once the thinker resolves it,
            so no result message carries it.

    Returns:
        proposals (``smiles``, ``mean``, ``std``), the updated agent (or its proxy), and statistics for
        ``rl_records.jsonl``.
    """
    start = time.perf_counter()
    from proxystore.proxy import Proxy, extract

    if isinstance(agent, Proxy):  # sent by proxy: work on (and return) the object, not a reference to evict
        agent = extract(agent)
    agent = agent or AgentState()
    sign = 1.0 if maximize else -1.0
    scale: dict[str, float] = {}

    def reward(smiles: Sequence[str]) -> np.ndarray:
        mean, _ = model.predict(list(smiles))
        values = sign * np.nan_to_num(np.asarray(mean, dtype=float), nan=-1e3 * sign)
        if not scale:  # fixed for the round: the first molecules set the scale
            scale["center"], scale["spread"] = float(np.mean(values)), float(np.std(values) or 1.0)
        return (values - scale["center"]) / scale["spread"]

    settings = RLSettings(max_heavy_atoms=max_heavy_atoms, start_smiles=tuple(start_smiles) or ("C",))
    agent, visited, finals = run_episodes(agent, reward, episodes, settings, seed=seed)
    excluded = set(exclude)
    fresh = [s for s in visited if s not in excluded and Chem.MolFromSmiles(s) is not None]
    fresh.sort(key=lambda s: visited[s], reverse=True)
    chosen = fresh[:n_propose]
    mean, std = model.predict(chosen) if chosen else (np.zeros(0), np.zeros(0))
    proposals = [{"smiles": s, "mean": float(m), "std": float(d) if d is not None else None}
                 for s, m, d in zip(chosen, mean, std if std is not None else [None] * len(chosen), strict=True)]
    def is_valid(text: str) -> bool:
        mol = Chem.MolFromSmiles(text)
        return mol is not None and mol.GetNumAtoms() <= max_heavy_atoms and Chem.MolToSmiles(mol) == text

    half = max(1, len(finals) // 2)
    stats = {
        "episodes": len(finals), "episodes_total": agent.episodes, "epsilon": agent.epsilon,
        "mean_final_reward_first_half": float(np.mean(finals[:half])) if finals else None,
        "mean_final_reward_second_half": float(np.mean(finals[half:])) if len(finals) > 1 else None,
        "molecules_visited": len(visited), "molecules_new": len(fresh), "molecules_proposed": len(chosen),
        "valid_fraction": float(np.mean([is_valid(p["smiles"]) for p in proposals])) if proposals else None,
        "time": time.perf_counter() - start,
    }
    if result_store is not None:
        from proxystore.store import get_or_create_store

        return proposals, get_or_create_store(result_store).proxy(agent, evict=True), stats
    return proposals, agent, stats
