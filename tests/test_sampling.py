"""Forcefield-campaign workers: structure checks, MD with ASE calculators, QC energies and forces, test sets."""

import time

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT

from methods.sampling import (
    MDResult,
    StabilityLimits,
    check_structure,
    displaced,
    reference_trajectory,
    run_md,
    run_sampling,
    starting_structures,
)
from methods.simulate import QCFailure, QCSpec, compute_energy_forces

XTB = QCSpec(code="xtb", method="GFN2-xTB")
CONFIG = {"ncores": 1}
LIMITS = StabilityLimits()


# --- check_structure ------------------------------------------------------------------------------------------


def test_normal_structure_passes():
    water = molecule("H2O")
    assert check_structure(water, water, -10.0, LIMITS) is None
    assert check_structure(water, water, None, LIMITS) is None


def test_too_close_atoms_are_caught():
    water = molecule("H2O")
    fused = water.copy()
    fused.positions[1] = fused.positions[0] + [0.0, 0.0, 0.5]
    reason = check_structure(fused, water, -10.0, LIMITS)
    assert reason == "atoms too close: 0.50 Å (atoms 0, 1)"


def test_broken_bond_is_caught():
    water = molecule("H2O")  # O0, H1, H2
    torn = water.copy()
    torn.positions[2] = torn.positions[0] + 2.5 * (water.positions[2] - water.positions[0])
    reason = check_structure(torn, water, -10.0, LIMITS)
    assert reason is not None and reason.startswith("bond broken: O0-H2 ")
    assert check_structure(torn, water, -10.0, StabilityLimits(bond_stretch=3.0)) is None


def test_non_finite_energy_is_caught():
    water = molecule("H2O")
    assert check_structure(water, water, float("nan"), LIMITS) == "energy not finite"
    assert check_structure(water, water, float("inf"), LIMITS) == "energy not finite"


def test_reference_with_other_atoms_is_a_caller_error():
    with pytest.raises(ValueError, match="other atoms"):
        check_structure(molecule("H2O"), molecule("CH4"), 0.0, LIMITS)
    with pytest.raises(ValueError, match="other atoms"):
        run_md(EMT(), molecule("H2O"), molecule("CH4"), steps=1, temperature=300, timestep=0.5, sample_every=1, seed=0)


# --- run_md ----------------------------------------------------------------------------------------------------


def _md(start, seed=0, calculator=None, **kwargs):
    settings = {"steps": 40, "temperature": 300.0, "timestep": 0.5, "sample_every": 10, "seed": seed}
    settings.update(kwargs)
    return run_md(calculator or EMT(), start, start, **settings)


def test_md_runs_all_steps_and_samples_frames():
    start = molecule("CH4")
    result = _md(start)
    assert isinstance(result, MDResult)
    assert result.failure is None and result.steps_done == 40
    assert len(result.frames) == 40 // 10
    assert np.allclose(result.frames[0].positions, start.positions)  # step 0 is the first frame
    assert all(frame.calc is None for frame in result.frames)
    assert not np.allclose(result.final.positions, start.positions)
    assert np.any(result.final.get_momenta()) and result.final.calc is None
    assert np.isfinite(result.final_energy) and result.time > 0
    assert start.calc is None and not np.any(start.get_momenta())  # the caller's structure is untouched
    # the centre of mass does not drift under the thermostat's kicks
    assert np.allclose(result.final.get_center_of_mass(), start.get_center_of_mass(), atol=1e-8)


def test_md_is_reproducible_with_a_seed():
    start = molecule("H2O")
    first, again, other = _md(start, seed=3), _md(start, seed=3), _md(start, seed=4)
    assert np.array_equal(first.final.positions, again.final.positions)
    assert all(np.array_equal(a.positions, b.positions) for a, b in zip(first.frames, again.frames, strict=True))
    assert not np.allclose(first.final.positions, other.final.positions)


def test_md_keeps_velocities_of_a_continued_segment():
    start = molecule("H2O")
    fresh = _md(start, steps=0)  # no steps: just the initial Maxwell-Boltzmann velocities
    assert np.any(fresh.final.get_momenta())
    assert fresh.frames == [] and fresh.steps_done == 0
    continued = _md(fresh.final, seed=99, steps=0)
    assert np.array_equal(continued.final.get_momenta(), fresh.final.get_momenta())


class Attraction(Calculator):
    """Pulls atoms 0 and 1 together with a stiff spring of zero rest length: a potential that collapses."""

    implemented_properties = ["energy", "forces"]

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        vector = self.atoms.positions[1] - self.atoms.positions[0]
        forces = np.zeros((len(self.atoms), 3))
        forces[0], forces[1] = 50.0 * vector, -50.0 * vector
        self.results = {"energy": 25.0 * vector @ vector, "forces": forces}


class BreaksAfter(Calculator):
    """EMT until its n-th call, then NaN energies (or an exception): a model leaving its data."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, calls, exception=False):
        super().__init__()
        self.calls, self.exception, self.emt = calls, exception, EMT()

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.calls -= 1
        if self.calls < 0:
            if self.exception:
                raise RuntimeError("model exploded")
            self.results = {"energy": float("nan"), "forces": np.zeros((len(self.atoms), 3))}
            return
        self.results = {"energy": self.emt.get_potential_energy(self.atoms), "forces": self.emt.get_forces(self.atoms)}


def test_blow_up_stops_with_a_reason():
    start = molecule("H2O")
    result = _md(start, calculator=Attraction(), steps=200)
    assert result.failure is not None and result.failure.startswith("atoms too close")
    assert 0 < result.steps_done < 200
    # what came back is the last physical structure, and frames only from before it
    assert check_structure(result.final, start, result.final_energy, LIMITS) is None
    assert len(result.frames) == (result.steps_done - 1) // 10 + 1


def test_non_finite_energy_and_calculator_errors_are_data():
    start = molecule("H2O")
    nan = _md(start, calculator=BreaksAfter(calls=16), steps=40)
    assert nan.failure == "energy not finite" and nan.steps_done == 15
    assert np.isfinite(nan.final_energy) and len(nan.frames) == 2  # steps 0 and 10
    crash = _md(start, calculator=BreaksAfter(calls=21, exception=True), steps=40)
    assert crash.failure == "calculator failed: RuntimeError: model exploded" and crash.steps_done == 20
    assert len(crash.frames) == 2  # steps 0 and 10; step 20 is `final`, not repeated
    at_start = _md(start, calculator=BreaksAfter(calls=0, exception=True))
    assert at_start.steps_done == 0 and at_start.frames == [] and at_start.failure.startswith("calculator failed")


class MeanOf(Calculator):
    """The mean energy and forces of some calculators, each evaluated on its own: the ensemble contract, by hand."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, *calculators):
        super().__init__()
        self.calculators = calculators

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        energies, forces = [], []
        for calculator in self.calculators:
            copy = Atoms(numbers=self.atoms.numbers, positions=self.atoms.positions)
            copy.calc = calculator
            energies.append(copy.get_potential_energy())
            forces.append(copy.get_forces())
        self.results = {"energy": float(np.mean(energies)), "forces": np.mean(forces, axis=0)}


def _tiny_potential(seed):
    """A real, untrained potential small enough for a test; its readout is scaled up so that its forces (about
    1 eV/Å on water) move the atoms measurably within a few steps and two seeds drive visibly different MD."""
    from methods.mlip import PotentialConfig, _weight_shapes, create_potential

    config = PotentialConfig(max_atoms=3, n_features=8, n_interactions=1, n_rbf=8, n_radial=2)
    potential = create_potential(config, seed=seed)
    names = [name for name, _ in _weight_shapes(config)]
    potential.weights[names.index("readout_kernel2")] *= 100.0
    return potential


def test_run_sampling_takes_a_model_or_a_list():
    """One model drives the MD by itself; a list is one ensemble whose members' MEAN energy and forces drive it
    (``run_sampling``'s contract), not its first member, with real ``methods.mlip`` potentials."""
    first, second = _tiny_potential(0), _tiny_potential(1)
    start = molecule("H2O")
    md = {"steps": 12, "temperature": 300.0, "timestep": 0.5, "sample_every": 4, "seed": 1}

    alone = run_sampling(first, start, start, **md)
    as_list = run_sampling([first], start, start, **md)
    ensemble = run_sampling([first, second], start, start, **md)
    second_alone = run_sampling(second, start, start, **md)
    by_hand = run_md(MeanOf(first.calculator(), second.calculator()), start, start, **md)

    for result in (alone, as_list, ensemble, second_alone, by_hand):
        assert result.failure is None and result.steps_done == 12 and len(result.frames) == 3
    # a one-member list is that model
    assert np.array_equal(as_list.final.positions, alone.final.positions)
    assert as_list.final_energy == alone.final_energy
    # two members: the MD follows their mean, which is neither member alone
    assert np.allclose(ensemble.final.positions, by_hand.final.positions, atol=1e-5, rtol=0)
    assert ensemble.final_energy == pytest.approx(by_hand.final_energy, abs=1e-4)
    for member in (alone, second_alone):
        assert np.abs(ensemble.final.positions - member.final.positions).max() > 1e-3
        assert abs(ensemble.final_energy - member.final_energy) > 0.1
    # and the reported energy is the members' mean at the structure the ensemble reached
    members = []
    for potential in (first, second):
        final = ensemble.final.copy()
        final.calc = potential.calculator()
        members.append(final.get_potential_energy())
    assert abs(members[0] - members[1]) > 0.1
    assert ensemble.final_energy == pytest.approx(np.mean(members), abs=1e-4)


def test_displaced_copies():
    start = molecule("CH4")
    copies = displaced(start, 50, 0.05, seed=1)
    assert len(copies) == 50 and all(c.calc is None for c in copies)
    shifts = np.stack([c.positions - start.positions for c in copies])
    assert 0.04 < shifts.std() < 0.06 and abs(shifts.mean()) < 0.01
    again = displaced(start, 50, 0.05, seed=1)
    assert all(np.array_equal(a.positions, b.positions) for a, b in zip(copies, again, strict=True))


# --- QC energies and forces (real GFN2-xTB) -------------------------------------------------------------------


def test_xtb_forces_are_minus_the_energy_gradient():
    water = molecule("H2O")
    water.positions += np.random.default_rng(0).normal(0, 0.05, water.positions.shape)  # off the minimum
    h = 1e-3
    components = [(0, 2), (1, 0), (2, 1)]
    frames = [water]
    for atom, axis in components:
        for sign in (1, -1):
            moved = water.copy()
            moved.positions[atom, axis] += sign * h
            frames.append(moved)
    records = compute_energy_forces(frames, XTB, CONFIG)
    assert all(r["success"] and r["failure_reason"] is None for r in records), records
    forces = np.array(records[0]["forces"])
    assert forces.shape == (3, 3) and np.abs(forces).max() > 0.1  # eV/Å: far enough from the minimum to matter
    for k, (atom, axis) in enumerate(components):
        gradient = (records[1 + 2 * k]["energy"] - records[2 + 2 * k]["energy"]) / (2 * h)
        assert forces[atom, axis] == pytest.approx(-gradient, abs=2e-3)
    assert -200 < records[0]["energy"] < -100  # eV: GFN2-xTB water is about -5.07 Hartree
    assert all(r["time"] > 0 for r in records)


def test_qc_failures_come_back_as_data():
    water = molecule("H2O")
    fused = water.copy()
    fused.positions[1] = fused.positions[0]
    records = compute_energy_forces([fused, water], XTB, CONFIG)
    assert not records[0]["success"] and "too close" in records[0]["failure_reason"]
    assert records[0]["energy"] is None and records[0]["forces"] is None
    assert records[1]["success"]  # one bad structure does not spoil the batch
    unknown = compute_energy_forces([water], QCSpec(code="xtb", method="GFN9-xTB"), CONFIG)[0]
    # xtb-python's harness reports an unknown method with a garbled error; what matters is that it is data
    assert not unknown["success"] and unknown["failure_reason"] and unknown["energy"] is None


def test_spec_without_objective_is_in_ev():
    assert XTB.objective is None and XTB.units == "eV"
    assert QCSpec(code="xtb", method="GFN2-xTB", objective="ionization-energy").units == "eV"


# --- the reference trajectory ---------------------------------------------------------------------------------


def test_reference_trajectory_is_labelled_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MOLSTEER_CACHE", str(tmp_path))
    water = molecule("H2O")
    settings = {"temperature": 300.0, "steps": 20, "sample_every": 5}
    started = time.perf_counter()
    frames = reference_trajectory("O", water, XTB, CONFIG, **settings)
    first_time = time.perf_counter() - started
    assert len(frames) == 4
    assert not np.allclose(frames[0].positions, water.positions)  # step 5, not the start
    assert len(list((tmp_path / "forcefield").glob("*.npz"))) == 1
    # labels are the QC method's energies and forces at those positions
    check = compute_energy_forces(frames[-1:], XTB, CONFIG)[0]
    assert frames[-1].get_potential_energy() == pytest.approx(check["energy"], abs=1e-6)
    assert np.allclose(frames[-1].get_forces(), check["forces"], atol=1e-5)

    started = time.perf_counter()
    again = reference_trajectory("O", water, XTB, CONFIG, **settings)
    assert time.perf_counter() - started < first_time / 2
    for a, b in zip(frames, again, strict=True):
        assert np.array_equal(a.positions, b.positions) and np.array_equal(a.numbers, b.numbers)
        assert a.get_potential_energy() == b.get_potential_energy()
        assert np.array_equal(a.get_forces(), b.get_forces())
    # other settings are another trajectory
    other = reference_trajectory("O", water, XTB, CONFIG, **{**settings, "seed": 1})
    assert not np.allclose(other[-1].positions, frames[-1].positions)
    assert len(list((tmp_path / "forcefield").glob("*.npz"))) == 2


def test_reference_trajectory_failure_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("MOLSTEER_CACHE", str(tmp_path))
    with pytest.raises(QCFailure, match="reference MD of O with GFN9-xTB stopped after 0 of 10 steps"):
        reference_trajectory("O", molecule("H2O"), QCSpec(code="xtb", method="GFN9-xTB"), CONFIG,
                             temperature=300.0, steps=10, sample_every=5)
    assert not list((tmp_path / "forcefield").glob("*.npz"))


# --- starting structures from QM9 (uses the shared QM9 cache) -------------------------------------------------


def test_starting_structures_by_smiles_and_index(qm9):
    starts = starting_structures(["O", "[CH4]"])  # any spelling RDKit canonicalizes
    assert [name for name, _ in starts] == ["O", "C"]
    water, methane = starts[0][1], starts[1][1]
    assert water.get_chemical_formula() == "H2O" and methane.get_chemical_formula() == "CH4"
    assert 0.9 < water.get_distance(0, 1) < 1.0  # B3LYP O-H, Å
    (name, by_index), = starting_structures(["1"])  # QM9's molecule 1 is methane
    assert name == "C" and np.array_equal(by_index.positions, methane.positions)
    (name, ethanol), = starting_structures(["OCC"])
    assert name == "CCO" and len(ethanol) == 9


@pytest.mark.parametrize(("molecule_name", "message"), [
    ("CS", "contains S: the potential knows H, C, N, O, F"),
    ("[CH3]", "odd number of electrons"),
    ("C1CC", "neither a valid SMILES, a QM9 index nor a structure file"),
    ("0", "does not exist"),
    ("999999", "does not exist"),
    ("58", "uncharacterized"),
    ("missing/water.xyz", "no such structure file"),
])
def test_bad_molecules_raise_a_clear_value_error(qm9, molecule_name, message):
    with pytest.raises(ValueError, match=message):
        starting_structures(["O", molecule_name])


def test_a_molecule_given_twice_is_an_error(qm9):
    with pytest.raises(ValueError, match="already"):
        starting_structures(["C", "1"])


def test_every_bad_entry_is_named_in_one_message(qm9):
    with pytest.raises(ValueError) as error:
        starting_structures(["C1CC", "O", "nope.xyz", "[CH3]"])
    message = str(error.value)
    assert "\n" not in message
    for entry in ("'C1CC'", "'nope.xyz'", "'[CH3]'"):
        assert entry in message
    assert "'O'" not in message  # the good entry is not blamed


def test_a_smiles_outside_qm9_is_embedded_for_relaxation(qm9):
    """The issue's example: n-hexylbenzene (15 heavy atoms, so not in QM9) starts from an RDKit embedding."""
    (name, atoms), = starting_structures(["C1=CC=CC=C1CCCCCC"], seed=3)
    assert name == "CCCCCCc1ccccc1" and atoms.get_chemical_formula() == "C12H18"
    assert atoms.info["origin"] == "smiles"  # the campaign relaxes it at its level of theory first
    distances = atoms.get_all_distances()[np.triu_indices(len(atoms), 1)]
    assert distances.min() > 0.9  # a real 3-D structure, not atoms on top of each other
    (_, again), = starting_structures(["CCCCCCc1ccccc1"], seed=3)
    assert np.allclose(again.positions, atoms.positions)  # seeded: the same embedding every time
    (_, qm9_start), = starting_structures(["CCO"])
    assert qm9_start.info["origin"] == "qm9"  # QM9 molecules keep QM9's geometry


def test_a_structure_file_is_read_as_given(qm9, tmp_path):
    import ase.io

    water = molecule("H2O")
    water.positions += 1.5
    path = tmp_path / "my water.xyz"
    ase.io.write(path, water)
    (name, atoms), = starting_structures([str(path)])
    assert name == "my water" and atoms.info["origin"] == "file"
    assert atoms.get_chemical_symbols() == water.get_chemical_symbols()
    assert np.allclose(atoms.positions, water.positions, atol=1e-6)
    garbage = tmp_path / "garbage.xyz"
    garbage.write_text("this is not\nan xyz file\n")
    with pytest.raises(ValueError, match="ASE cannot read it"):
        starting_structures([str(garbage)])


def test_frames_are_plain_atoms():
    start = molecule("H2O")
    result = _md(start, steps=10, sample_every=5)
    assert all(isinstance(f, Atoms) and not f.constraints for f in result.frames + [result.final])


def test_an_embedding_is_relaxed_at_the_campaigns_level_of_theory(qm9):
    """Real GFN2-xTB: the relaxed start has (nearly) no forces at that level, unlike the RDKit embedding."""
    from methods.sampling import relax_starting_structure
    from methods.simulate import QCSpec, compute_energy_forces

    spec = QCSpec(code="xtb", method="GFN2-xTB")
    (_, embedded), = starting_structures(["CCCCCCCCCC"], seed=1)  # decane: ten heavy atoms, not in QM9
    relaxed = relax_starting_structure(embedded, spec, {})
    before, after = compute_energy_forces([embedded, relaxed], spec, {})
    assert before["success"] and after["success"]
    largest = [float(np.abs(np.asarray(r["forces"])).max()) for r in (before, after)]
    assert largest[1] < spec.fmax * 1.5 < largest[0]
    assert after["energy"] < before["energy"]
    assert relaxed.info["origin"] == "smiles" and relaxed.info["relaxed_steps"] > 0
