"""The interatomic potential: exact forces, symmetries, padding, training, ensembles in ASE, and what travels.

Labels come from ASE's EMT calculator (cheap, H/C/N/O) on randomly displaced small molecules; the real xTB path
is exercised by ``scripts/bench_mlip.py``.
"""

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixCom
from ase.md.langevin import Langevin

from methods import mlip

ROOT = Path(__file__).resolve().parents[1]
CONFIG = mlip.PotentialConfig(max_atoms=6, n_features=32, n_interactions=2)


def labelled(atoms: Atoms) -> Atoms:
    """``atoms`` with EMT energy and forces attached the way ``ase.db`` returns them."""
    atoms = atoms.copy()
    atoms.calc = EMT()
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    return atoms


def displaced(names, count: int, sigma: float, seed: int) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(count):
        atoms = molecule(names[i % len(names)])
        atoms.positions += rng.normal(0.0, sigma, atoms.positions.shape)
        frames.append(labelled(atoms))
    return frames


@pytest.fixture(scope="module")
def frames():
    return displaced(["CH4", "H2O", "NH3", "CH3OH"], 96, 0.05, seed=0)


@pytest.fixture(scope="module")
def test_frames():
    return displaced(["CH4", "H2O", "NH3", "CH3OH"], 32, 0.05, seed=1)


@pytest.fixture(scope="module")
def rounds(frames):
    """A fresh potential, one round from it, and a warm-started second round."""
    fresh = mlip.create_potential(CONFIG, seed=0)
    first = mlip.train_potential(fresh, frames, seed=0, epochs=30, batch_size=8)
    traces = dict(mlip.TRACE_COUNTS)
    second = mlip.train_potential(first, frames, seed=1, epochs=30, batch_size=8)
    return fresh, first, second, traces


def test_forces_are_the_negative_gradient_of_the_energy(rounds):
    fresh, first, _, _ = rounds
    atoms = displaced(["CH3OH"], 1, 0.05, seed=3)[0]
    step = 2e-3  # Å: central-difference truncation and float32 round-off both stay near 1e-4 eV/Å
    shifted = []
    for i in range(len(atoms)):
        for j in range(3):
            for sign in (1, -1):
                copy = atoms.copy()
                copy.positions[i, j] += sign * step
                shifted.append(copy)
    for potential in (fresh, first):
        _, (forces,) = mlip.predict([potential], [atoms])
        energies, _ = mlip.predict([potential], shifted)
        numeric = -(energies[0, 0::2] - energies[0, 1::2]).reshape(len(atoms), 3) / (2 * step)
        scale = np.abs(forces[0]).max()
        assert scale > 1e-3  # not trivially zero
        np.testing.assert_allclose(forces[0], numeric, atol=1e-2 * scale)


def test_padding_does_not_change_predictions(rounds):
    _, potential, _, _ = rounds
    small, large = displaced(["H2O"], 1, 0.05, seed=4)[0], displaced(["CH3OH"], 1, 0.05, seed=5)[0]
    alone_e, alone_f = mlip.predict([potential], [small])
    batch_e, batch_f = mlip.predict([potential], [large, small, large])  # padded to 6 atoms with the others
    np.testing.assert_allclose(batch_e[0, 1], alone_e[0, 0], rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(batch_f[1], alone_f[0], atol=1e-5)
    # The same weights under another campaign's padding size, and explicitly padded to 40 atoms.
    wider = mlip.Potential(mlip.PotentialConfig(**{**CONFIG.__dict__, "max_atoms": 40}), potential.weights,
                           potential.reference_energies, {})
    wide_e, _ = mlip.predict([wider], [small])
    np.testing.assert_allclose(wide_e, alone_e, rtol=1e-6, atol=1e-5)
    species, positions = mlip._pad([small], 40)
    network, forces = mlip._network_predictions([potential], species, positions)
    np.testing.assert_allclose(forces[0, 0, :3], alone_f[0][0], atol=1e-5)
    assert np.all(forces[0, 0, 3:] == 0) and np.isfinite(network).all()
    # The training step's layout (batch padded to max_atoms, folded matmuls) computes the same energies.
    tf = mlip._tensorflow()
    species, positions = mlip._pad([large, small], CONFIG.max_atoms)
    weights = [tf.constant(w[None]) for w in potential.weights]
    folded = mlip._energies(tf, CONFIG, weights, species, positions[None], fold=True).numpy()
    network, _ = mlip._network_predictions([potential], species[1:, :3], positions[1:, :3])
    np.testing.assert_allclose(folded[0, 1], network[0, 0], rtol=1e-6, atol=1e-5)


def test_energy_is_invariant_and_forces_rotate_with_the_molecule(rounds):
    _, potential, _, _ = rounds
    atoms = displaced(["CH3OH"], 1, 0.05, seed=6)[0]
    rotation, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    moved = atoms.copy()
    moved.positions = atoms.positions @ rotation.T + np.array([3.0, -7.0, 11.0])
    energies, (forces, moved_forces) = mlip.predict([potential], [atoms, moved])
    assert energies[0, 1] == pytest.approx(energies[0, 0], abs=2e-5)
    np.testing.assert_allclose(moved_forces[0], forces[0] @ rotation.T, atol=1e-4)


def test_training_learns_warm_starts_and_never_retraces(rounds, test_frames):
    fresh, first, second, traces_after_first = rounds
    before = mlip.evaluate([fresh], test_frames)
    after_first, after_second = mlip.evaluate([first], test_frames), mlip.evaluate([second], test_frames)
    print(f"force MAE {before['force_mae']:.3f} -> {after_first['force_mae']:.3f} -> {after_second['force_mae']:.3f}"
          f" eV/Å; energy MAE {before['energy_mae']:.3f} -> {after_second['energy_mae']:.3f} eV/atom")
    assert after_first["force_mae"] < 0.5 * before["force_mae"]
    assert after_first["energy_mae"] < 0.5 * before["energy_mae"]
    assert after_second["force_mae"] < after_first["force_mae"]
    # Warm start: the second round begins where the first ended, far below a fresh model's start.
    assert second.stats["initial_loss"] < 0.5 * first.stats["initial_loss"]
    assert first.stats["final_loss"] < first.stats["initial_loss"]
    # Training returns new potentials and leaves its input alone.
    assert first is not fresh and not fresh.stats["trained"]
    assert all(np.array_equal(a, b) for a, b in zip(fresh.weights, mlip.create_potential(CONFIG, 0).weights,
                                                     strict=True))
    # The compiled steps were traced in the first round only (one per size bucket in use).
    assert mlip.TRACE_COUNTS["train_step"] == traces_after_first["train_step"]
    stats = second.stats
    assert stats["n_train"] == 96 and stats["epochs"] == 30 and stats["train_time"] > 0
    assert 0 < stats["n_oob"] < 96 and stats["oob_energy_mae"] > 0 and stats["oob_force_mae"] > 0
    # Per-element reference energies: fitted for the elements present, zero for fluorine (absent).
    assert second.reference_energies.shape == (len(mlip.ELEMENTS),) and abs(second.reference_energies[4]) < 1e-9


def test_max_time_stops_training(frames):
    potential = mlip.train_potential(mlip.create_potential(CONFIG), frames, seed=2, epochs=50, batch_size=8,
                                   max_time=0.0)
    assert potential.stats["stopped_early"] and potential.stats["steps"] == 1


def test_evaluate_reports_parity_data(rounds, test_frames):
    _, first, second, _ = rounds
    report = mlip.evaluate([first, second], test_frames)
    n_components = 3 * sum(len(a) for a in test_frames)
    assert report["n_frames"] == len(test_frames)
    assert len(report["forces_true"]) == len(report["forces_pred"]) == n_components
    assert 0 < report["force_mae"] <= report["force_rmse"]
    energies, forces = mlip.predict([first, second], test_frames)
    assert energies.shape == (2, len(test_frames)) and forces[0].shape == (2, len(test_frames[0]), 3)


def test_ensemble_calculator_gives_spread_and_drives_md(rounds):
    _, first, second, _ = rounds
    atoms = molecule("CH3OH")
    atoms.calc = mlip.EnsembleCalculator([first, second])
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    assert atoms.calc.get_property("energy_std") > 0
    spread = atoms.calc.get_property("forces_std")
    assert spread.shape == (len(atoms), 3) and np.all(spread >= 0) and spread.max() > 0
    members = atoms.calc.results["energies"]
    assert energy == pytest.approx(members.mean()) and members.std() == pytest.approx(
        atoms.calc.get_property("energy_std"))
    _, (single,) = mlip.predict([first], [atoms])
    np.testing.assert_allclose(first.calculator().get_forces(atoms), single[0], atol=1e-6)
    assert forces.shape == (len(atoms), 3)

    atoms.set_constraint(FixCom())
    dynamics = Langevin(atoms, 0.5 * units.fs, temperature_K=300, friction=0.01 / units.fs, fixcm=False,
                        rng=np.random.default_rng(0))
    dynamics.run(5)
    assert dynamics.nsteps == 5 and np.isfinite(atoms.get_potential_energy())


def test_unsupported_elements_are_refused(rounds):
    with pytest.raises(ValueError, match="not supported"):
        mlip.predict([rounds[1]], [Atoms("ClH", positions=[[0, 0, 0], [0, 0, 1.3]])])


def test_buckets_keep_every_batch_mostly_real():
    sizes = np.array([3] * 5 + [15] * 40 + [25] * 3)
    buckets = mlip._buckets(sizes, max_atoms=29, n_buckets=3, batch_size=16)  # sizes 10, 20 and 29
    assert sorted(buckets) == [20, 29]  # the 5 tiny ones join the next bucket, the 3 largest stay on their own
    assert sorted(buckets[20]) == list(range(45)) and sorted(buckets[29]) == [45, 46, 47]
    assert list(mlip._buckets(sizes, 29, 1, 16)) == [29]


def test_pickle_is_small_and_a_fresh_process_predicts_on_one_thread(rounds, tmp_path):
    _, potential, _, _ = rounds
    data = pickle.dumps(potential)
    assert len(data) < 200_000
    atoms = molecule("NH3")
    energies, forces = mlip.predict([potential], [atoms])
    (tmp_path / "potential.pkl").write_bytes(data)
    script = f"""
import pickle, sys
import numpy as np
from ase.build import molecule
with open({str(tmp_path / 'potential.pkl')!r}, 'rb') as handle:
    potential = pickle.load(handle)
assert 'tensorflow' not in sys.modules, 'unpickling a Potential imported TensorFlow'
from methods import mlip
energies, forces = mlip.predict([potential], [molecule('NH3')])
import tensorflow as tf
threads = tf.config.threading
assert (threads.get_intra_op_parallelism_threads(), threads.get_inter_op_parallelism_threads()) == (1, 1)
print(repr(float(energies[0, 0])), repr(float(np.abs(forces[0]).sum())))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    energy, force_sum = map(float, result.stdout.split())
    assert energy == pytest.approx(energies[0, 0], abs=1e-5)
    assert force_sum == pytest.approx(np.abs(forces[0]).sum(), rel=1e-5)
