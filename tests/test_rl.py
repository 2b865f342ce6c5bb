"""The RL generator: a valid-only environment, and an agent that learns a simple known reward."""

import numpy as np
import pytest
from rdkit import Chem

from methods.rl import AgentState, RLSettings, generate_molecules, run_episodes, valid_actions


def n_nitrogen(smiles):
    return np.array([sum(a.GetSymbol() == "N" for a in Chem.MolFromSmiles(s).GetAtoms()) for s in smiles], float)


def test_environment_only_produces_valid_molecules_within_the_atom_limit():
    rng = np.random.default_rng(0)
    state, seen = "C", 0
    for _ in range(60):
        actions = valid_actions(state, max_heavy_atoms=6)
        assert state in actions  # "keep the molecule" is always possible
        for smiles in actions:
            mol = Chem.MolFromSmiles(smiles)
            assert mol is not None, smiles
            assert Chem.MolToSmiles(mol) == smiles  # canonical
            assert mol.GetNumAtoms() <= 6
            assert len(Chem.GetMolFrags(mol)) == 1
            assert {a.GetSymbol() for a in mol.GetAtoms()} <= {"C", "N", "O", "F"}
            seen += 1
        state = sorted(actions)[rng.integers(len(actions))]
    assert seen > 500
    assert valid_actions("C1CC", 9) == set()  # an invalid start gives no actions, not a crash


def test_edits_include_growing_ring_closing_and_shrinking():
    actions = valid_actions("CCCC", max_heavy_atoms=9)
    assert {"CCCCC", "CCCCN", "C1CCC1", "C=CCC", "CCC"} <= actions


@pytest.mark.timeout(300)
def test_agent_learns_a_known_reward():
    settings = RLSettings(max_steps=8, batch_size=32)
    agent, visited, finals = run_episodes(AgentState(), n_nitrogen, 60, settings, seed=3)
    early, late = np.mean(finals[:20]), np.mean(finals[-20:])
    print(f"mean nitrogen count: first 20 episodes {early:.2f}, last 20 {late:.2f}")
    assert late > early
    assert agent.episodes == 60 and agent.epsilon < 0.1
    assert len(agent.replay) <= settings.replay_carried and agent.weights is not None


class CountModel:
    """A surrogate-shaped reward: predict() gives a mean and a std per molecule."""

    def predict(self, smiles):
        values = n_nitrogen(smiles)
        return values, np.full(len(values), 0.5)


def test_proposals_are_new_unique_and_valid():
    exclude = ["CN", "NN", "C"]
    proposals, agent, stats = generate_molecules(None, CountModel(), episodes=6, maximize=True, exclude=exclude,
                                                 n_propose=20, max_heavy_atoms=7, seed=1)
    smiles = [p["smiles"] for p in proposals]
    assert 0 < len(smiles) <= 20 and len(set(smiles)) == len(smiles)
    assert not set(smiles) & set(exclude)
    assert stats["valid_fraction"] == 1.0 and stats["episodes"] == 6
    assert all(Chem.MolFromSmiles(s).GetNumAtoms() <= 7 for s in smiles)
    assert [p["mean"] for p in proposals] == sorted((p["mean"] for p in proposals), reverse=True)
    # The agent comes back and keeps counting episodes in the next round.
    _, agent, stats = generate_molecules(agent, CountModel(), episodes=2, maximize=True, seed=2)
    assert stats["episodes_total"] == 8
