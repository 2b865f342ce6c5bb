"""Worker-side sampling for the forcefield campaign: molecular dynamics with any ASE calculator.

The campaign's loop is: MD with the current ML potential (or ensemble) samples structures; the thinker picks the
ones the ensemble disagrees on; QC labels them (:func:`methods.simulate.compute_energy_forces`); the ensemble is
retrained. Three design choices shape this module:

* An ML potential outside its training data can drive MD into unphysical places (atoms fused, molecules torn
  apart) where it predicts nonsense energies. Every step is therefore checked against the starting structure's
  bonds (a few tens of µs for QM9-size molecules) and the run stops at the first blow-up, returning everything
  it sampled before with the reason: a blow-up is data for the thinker, not an error.
* The held-out test set comes from MD with the QC method itself at the sampling temperature, so the model is
  scored on the distribution it is asked to sample. It is made once per molecule and level of theory and cached on
  disk, because every campaign (and every benchmark repetition) with the same settings needs exactly the same one.
* Langevin dynamics keeps the temperature controlled even when the model's forces are poor, and it is seeded, so
  a run is reproducible.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixCom
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta
from ase.neighborlist import natural_cutoffs

from methods.chem import MoleculeError, canonicalize, embed
from methods.data import atomic_save, cache_dir, load_qm9, qm9_row
from methods.simulate import QCEngineCalculator, QCFailure, QCSpec

logger = logging.getLogger(__name__)

REFERENCE_VERSION = 1
"""Version of the cached reference trajectories (bump when how they are made changes)."""


@dataclass(frozen=True)
class StabilityLimits:
    """When a structure stops being a molecule worth sampling.

    Bonds are those of the *reference* (starting) structure, from ``ase.neighborlist.natural_cutoffs`` (covalent
    radii): a molecule at a sampling temperature of a few hundred K stretches its bonds by well under 30%, so a bond
    beyond ``bond_stretch`` times its starting length has broken.
    """

    min_distance: float = 0.7
    """Å: any two atoms closer than this are fused (the shortest real bond, H–H, is 0.74 Å)."""
    bond_stretch: float = 1.8
    """A bond of the starting structure longer than this times its starting length is broken."""


DEFAULT_LIMITS = StabilityLimits()


class _StabilityCheck:
    """:func:`check_structure` with the reference's bond list computed once, for a check at every MD step."""

    def __init__(self, reference: Atoms, limits: StabilityLimits):
        self.symbols = reference.get_chemical_symbols()
        self.numbers = reference.get_atomic_numbers()
        self.limits = limits
        positions = reference.get_positions()
        radii = np.asarray(natural_cutoffs(reference))
        self.first, self.second = np.triu_indices(len(reference), k=1)
        lengths = np.linalg.norm(positions[self.first] - positions[self.second], axis=1)
        self.bonds = np.flatnonzero(lengths < radii[self.first] + radii[self.second])  # indices into the pairs
        self.bond_limit = limits.bond_stretch * lengths[self.bonds]

    def require_same_atoms(self, atoms: Atoms) -> None:
        if not np.array_equal(atoms.numbers, self.numbers):
            raise ValueError(f"structure {atoms.get_chemical_formula()} has other atoms than its reference "
                             f"{''.join(self.symbols)}")

    def __call__(self, atoms: Atoms, energy: float | None) -> str | None:
        self.require_same_atoms(atoms)
        if energy is not None and not np.isfinite(energy):
            return "energy not finite"
        positions = atoms.get_positions()
        if not np.isfinite(positions).all():
            return "positions not finite"
        if len(self.first) == 0:
            return None
        distances = np.linalg.norm(positions[self.first] - positions[self.second], axis=1)
        closest = int(np.argmin(distances))
        if distances[closest] < self.limits.min_distance:
            return f"atoms too close: {distances[closest]:.2f} Å (atoms {self.first[closest]}, {self.second[closest]})"
        if len(self.bonds):
            stretch = distances[self.bonds] / self.bond_limit
            worst = int(np.argmax(stretch))
            if stretch[worst] > 1:
                pair = self.bonds[worst]
                i, j = self.first[pair], self.second[pair]
                return f"bond broken: {self.symbols[i]}{i}-{self.symbols[j]}{j} {distances[pair]:.2f} Å"
        return None


def check_structure(atoms: Atoms, reference: Atoms, energy: float | None, limits: StabilityLimits) -> str | None:
    """Whether a sampled structure is still physical, judged against its starting structure.

    Molecules are treated as isolated: periodic images are ignored.

    Args:
        atoms: the structure to check.
        reference: the starting structure whose bonds must survive (same atoms in the same order).
        energy: the model's energy (eV), or None when not known.
        limits: the thresholds.

    Returns:
        None when physical; otherwise the reason, e.g. ``"atoms too close: 0.52 Å (atoms 1, 4)"``,
        ``"bond broken: C0-H3 2.41 Å"`` (0-based atom indices) or ``"energy not finite"``.

    Raises:
        ValueError: ``atoms`` and ``reference`` hold different atoms — a caller's mistake, not a structure's.
    """
    return _StabilityCheck(reference, limits)(atoms, energy)


@dataclass
class MDResult:
    """What an MD run produced, including how far it got when it blew up."""

    final: Atoms
    """Last physical structure, with positions and velocities (no calculator): where the next segment starts."""
    frames: list[Atoms] = field(default_factory=list)
    """Structures at steps 0, ``sample_every``, 2·``sample_every`` … before ``steps_done`` (positions only, no
    calculators); ``final`` is never repeated here, so segments chained through ``final`` sample each step once."""
    steps_done: int = 0
    """Steps completed with a physical structure (``final`` is the structure after this many)."""
    failure: str | None = None
    """Why the run stopped early (see :func:`check_structure`, or ``"calculator failed: …"``); None if it did not."""
    final_energy: float | None = None
    """The calculator's energy of ``final`` (eV)."""
    time: float = 0.0
    """Wall time, seconds."""


def _bare(atoms: Atoms, momenta: np.ndarray | None = None) -> Atoms:
    """A copy with only what the next step needs: no calculator, constraints or info to drag through queues."""
    copy = Atoms(numbers=atoms.get_atomic_numbers(), positions=atoms.get_positions(), cell=atoms.get_cell(),
                 pbc=atoms.get_pbc())
    if momenta is not None:
        copy.set_momenta(momenta, apply_constraint=False)
    return copy


def _labelled(atoms: Atoms, energy: float, forces: np.ndarray) -> Atoms:
    frame = _bare(atoms)
    frame.calc = SinglePointCalculator(frame, energy=float(energy), forces=np.array(forces, dtype=float))
    return frame


def _describe(exc: Exception) -> str:
    return f"calculator failed: {type(exc).__name__}: {' '.join(str(exc).split())[:500]}"


def _langevin(
    calculator: Calculator,
    start: Atoms,
    reference: Atoms,
    *,
    steps: int,
    temperature: float,
    timestep: float,
    friction: float,
    seed: int,
    limits: StabilityLimits,
    sample_at: Callable[[int], bool],
    label: bool,
) -> MDResult:
    """Langevin MD checked at every step; frames at the steps ``sample_at`` accepts, labelled if ``label``."""
    clock = time.perf_counter()
    check = _StabilityCheck(reference, limits)
    check.require_same_atoms(start)  # a caller's mistake, raised before any failure can be recorded as data
    rng = np.random.default_rng(seed)
    atoms = _bare(start, momenta=start.get_momenta())
    # FixCom keeps the molecule from drifting under the random kicks (ASE's own ``fixcm`` is deprecated).
    atoms.set_constraint(FixCom())
    if not np.any(atoms.get_momenta()):
        thermalize_momenta(atoms, temperature, rng=rng)  # removes the centre-of-mass momentum through FixCom
    atoms.calc = calculator
    dynamics = Langevin(atoms, timestep * units.fs, temperature_K=temperature, friction=friction / units.fs,
                        fixcm=False, rng=rng)

    frames: list[Atoms] = []
    positions, momenta = atoms.get_positions(), atoms.get_momenta()
    energy: float | None = None
    failure = None
    steps_done = 0
    try:
        forces = atoms.get_forces(md=True)
        energy = float(atoms.get_potential_energy())
        failure = check(atoms, energy) or (None if np.isfinite(forces).all() else "forces not finite")
    except Exception as exc:  # noqa: BLE001 - any calculator (ML model, QC code) may fail: that is data
        failure = _describe(exc)
    if failure is None and sample_at(0):
        frames.append(_labelled(atoms, energy, atoms.get_forces(apply_constraint=False)) if label else _bare(atoms))

    for step in range(1, steps + 1):
        if failure is not None:
            break
        try:
            forces = dynamics.step(forces)
            step_energy = float(atoms.get_potential_energy())
            failure = check(atoms, step_energy) or (None if np.isfinite(forces).all() else "forces not finite")
        except Exception as exc:  # noqa: BLE001
            failure = _describe(exc)
        if failure is not None:
            break
        steps_done, energy = step, step_energy
        positions, momenta = atoms.get_positions(), atoms.get_momenta()
        if sample_at(step):
            frames.append(_labelled(atoms, energy, atoms.get_forces(apply_constraint=False)) if label
                          else _bare(atoms))

    if failure is not None:
        logger.info("MD of %s stopped after %d of %d steps: %s", atoms.get_chemical_formula(), steps_done, steps,
                    failure)
    final = _bare(atoms, momenta=momenta)
    final.set_positions(positions, apply_constraint=False)
    return MDResult(final=final, frames=frames, steps_done=steps_done, failure=failure, final_energy=energy,
                    time=time.perf_counter() - clock)


def run_md(
    calculator: Calculator,
    start: Atoms,
    reference: Atoms,
    *,
    steps: int,
    temperature: float,
    timestep: float,
    sample_every: int,
    seed: int,
    limits: StabilityLimits = DEFAULT_LIMITS,
    friction: float = 0.01,
) -> MDResult:
    """Langevin MD with any ASE calculator, stopped at the first unphysical structure.

    Velocities are kept from ``start`` when it has non-zero momenta (a segment continuing from a previous
    :attr:`MDResult.final`), else drawn from Maxwell-Boltzmann at ``temperature`` (seeded). The structure is
    checked with :func:`check_structure` after every step; a blow-up, or a calculator that raises, ends the run
    with the reason in :attr:`MDResult.failure` and everything sampled before it. Never raises for those.

    Args:
        calculator: any ASE calculator giving energy and forces (attached to a copy; ``start`` is not modified).
        start: where to start.
        reference: the structure whose bonds define "physical" (usually the molecule's equilibrium geometry).
        steps: number of MD steps.
        temperature: K.
        timestep: fs.
        sample_every: a frame every this many steps, from step 0; ``steps // sample_every`` frames when the run
            completes and ``steps`` is a multiple of it.
        seed: seeds the initial velocities and the Langevin noise.
        limits: what counts as a blow-up.
        friction: Langevin friction, 1/fs (0.01: the thermostat acts over ~100 fs).

    Raises:
        ValueError: an impossible setting (``sample_every`` < 1, negative ``steps`` or ``temperature``,
            non-positive ``timestep``), or ``reference`` with other atoms than ``start``.
    """
    if sample_every < 1 or steps < 0 or timestep <= 0 or temperature < 0:
        raise ValueError(f"need sample_every >= 1, steps >= 0, timestep > 0 and temperature >= 0; got "
                         f"{sample_every}, {steps}, {timestep} and {temperature}")
    result = _langevin(calculator, start, reference, steps=steps, temperature=temperature, timestep=timestep,
                       friction=friction, seed=seed, limits=limits, label=False,
                       sample_at=lambda step: step % sample_every == 0 and step < steps)
    if result.failure is not None and result.steps_done % sample_every == 0 and result.frames:
        result.frames.pop()  # the last physical structure is `final`: do not hand it out twice
    return result


def run_sampling(
    model: Any,
    start: Atoms,
    reference: Atoms,
    steps: int,
    temperature: float,
    timestep: float,
    sample_every: int,
    seed: int,
    limits: StabilityLimits = DEFAULT_LIMITS,
    friction: float = 0.01,
) -> MDResult:
    """The ``ml`` sampling task: :func:`run_md` with an ML potential or an ensemble of them.

    ``model`` is anything with ``.calculator()`` returning an ASE calculator (a ``methods.mlip.Potential``), or a
    list of them, run as one ``methods.mlip.EnsembleCalculator`` (the members' mean drives the MD). The other
    arguments are those of :func:`run_md`. A model that fails inside the MD is a blow-up like any other
    (``"calculator failed: …"``); a model that cannot even build its calculator raises.
    """
    if isinstance(model, list | tuple):
        from methods.mlip import EnsembleCalculator  # only ML workers import the ML stack

        calculator = EnsembleCalculator(list(model))
    else:
        calculator = model.calculator()
    return run_md(calculator, start, reference, steps=steps, temperature=temperature, timestep=timestep,
                  sample_every=sample_every, seed=seed, limits=limits, friction=friction)


def _reference_key(start: Atoms, spec: QCSpec, **settings: Any) -> str:
    geometry = {"symbols": start.get_chemical_symbols(), "positions": np.round(start.get_positions(), 5).tolist()}
    key = {"version": REFERENCE_VERSION, "geometry": geometry, "code": spec.code, "method": spec.method.lower(),
           "basis": spec.basis.lower() if spec.basis else None, **settings}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def _save_frames(path: Path, name: str, frames: list[Atoms]) -> None:
    arrays = {
        "numbers": frames[0].get_atomic_numbers(),
        "positions": np.stack([f.get_positions() for f in frames]),
        "energies": np.array([f.get_potential_energy() for f in frames]),
        "forces": np.stack([f.get_forces() for f in frames]),
        "name": np.array(name),
    }

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    atomic_save(path, write)


def _load_frames(path: Path) -> list[Atoms]:
    with np.load(path, allow_pickle=False) as data:
        numbers, positions, energies, forces = (data[k] for k in ("numbers", "positions", "energies", "forces"))
    frames = []
    for frame_positions, energy, frame_forces in zip(positions, energies, forces, strict=True):
        frames.append(_labelled(Atoms(numbers=numbers, positions=frame_positions), float(energy), frame_forces))
    return frames


def reference_trajectory(
    name: str,
    start: Atoms,
    spec: QCSpec,
    task_config: dict[str, Any],
    *,
    temperature: float,
    steps: int,
    sample_every: int,
    timestep: float = 0.5,
    seed: int = 0,
) -> list[Atoms]:
    """The held-out test set: MD with the QC method itself at the sampling temperature, labelled frames.

    Frames are taken at steps ``sample_every``, 2·``sample_every`` … ``steps`` (the starting geometry, which the
    training set surrounds, is not a test frame), each with its QC energy and forces as a
    ``SinglePointCalculator``. Velocities always start from Maxwell-Boltzmann (seeded), whatever ``start`` carries.

    The trajectory is cached under ``cache_dir()/forcefield/`` keyed by the starting geometry, the level of theory
    (code, method, basis) and the MD settings, so it is made once per molecule and level of theory and read back
    afterwards (written atomically, so concurrent workers never read half a file). ``name`` and ``task_config``
    do not change the trajectory and are not part of the key.

    Raises:
        QCFailure: the QC MD blew up or a QC calculation failed: the campaign cannot proceed without a test set.
        ValueError: ``sample_every`` is not between 1 and ``steps``.
    """
    if sample_every < 1 or steps < sample_every:
        raise ValueError(f"need 1 <= sample_every <= steps, got sample_every={sample_every}, steps={steps}")
    friction = 0.01
    key = _reference_key(start, spec, temperature=float(temperature), steps=int(steps),
                         sample_every=int(sample_every), timestep=float(timestep), seed=int(seed), friction=friction)
    path = cache_dir() / "forcefield" / f"reference-{key}.npz"
    if path.exists():
        try:
            frames = _load_frames(path)
            logger.info("Reference trajectory of %s read from %s", name, path)
            return frames
        except (OSError, ValueError, KeyError) as exc:  # a damaged file is remade, not fatal
            logger.warning("Cannot read the reference trajectory %s (%s); computing it again", path, exc)
    if spec.code not in ("xtb", "nwchem"):
        raise QCFailure(f"a reference trajectory needs a QC code (xtb or nwchem), not {spec.code!r}")

    logger.info("Computing the reference trajectory of %s: %d steps of %s MD at %g K", name, steps, spec.method,
                temperature)
    result = _langevin(QCEngineCalculator(spec, 0, 1, task_config), _bare(start), start, steps=steps,
                       temperature=temperature, timestep=timestep, friction=friction, seed=seed,
                       limits=DEFAULT_LIMITS, label=True,
                       sample_at=lambda step: step > 0 and step % sample_every == 0)
    if result.failure is not None:
        raise QCFailure(f"reference MD of {name} with {spec.method} stopped after {result.steps_done} of {steps} "
                        f"steps: {result.failure}")
    _save_frames(path, name, result.frames)
    logger.info("Reference trajectory of %s: %d frames in %.1f s", name, len(result.frames), result.time)
    return result.frames


def _qm9_geometry(row: int) -> Atoms:
    symbols, positions = load_qm9().geometry(row)
    return Atoms(symbols=symbols, positions=positions)


STRUCTURE_SUFFIXES = frozenset({".xyz", ".extxyz", ".pdb", ".cif", ".traj", ".sdf", ".mol", ".json", ".vasp",
                                 ".gen", ".in", ".db"})
"""File name endings taken as a structure file (read by ASE) even when the file is missing, so a typo in a path
is reported as a missing file rather than as an invalid SMILES."""

ORIGIN = "origin"
"""Key in ``atoms.info`` saying where a starting structure came from: ``qm9``, ``smiles`` (an RDKit embedding,
to be relaxed at the campaign's level of theory before anything else) or ``file``."""


def _check_start(text: str, atoms: Atoms) -> None:
    """A starting structure the potential can learn and the QC codes can compute as a closed-shell neutral."""
    from methods.mlip import ELEMENTS  # the elements the potential has embeddings for

    unknown = sorted(set(atoms.get_chemical_symbols()) - set(ELEMENTS))
    if unknown:
        raise ValueError(f"{text!r} contains {', '.join(unknown)}: the potential knows {', '.join(ELEMENTS)}")
    if int(atoms.get_atomic_numbers().sum()) % 2:
        raise ValueError(f"{text!r} has an odd number of electrons: the campaign computes closed-shell neutral "
                         "molecules")


def _read_structure(text: str) -> tuple[str, Atoms]:
    """A structure file ASE reads (the first structure in it); its name is the file's stem."""
    import ase.io

    path = Path(text).expanduser()
    if not path.is_file():
        raise ValueError(f"{text!r}: no such structure file")
    try:
        atoms = ase.io.read(path, index=0)
    except Exception as exc:  # noqa: BLE001 - ASE raises many kinds; the message says which file and why
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise ValueError(f"{text!r}: ASE cannot read it as a structure ({reason})") from None
    if len(atoms) == 0:
        raise ValueError(f"{text!r}: the file holds no atoms")
    structure = Atoms(numbers=atoms.get_atomic_numbers(), positions=atoms.get_positions())
    structure.info[ORIGIN] = "file"
    return path.stem, structure


def _qm9_start(text: str, seed: int) -> tuple[str, Atoms] | None:
    """A QM9 index or a SMILES that is in QM9: QM9's B3LYP geometry. None for a valid SMILES outside QM9."""
    qm9 = load_qm9()
    if text.isdigit():
        index = int(text)
        row = int(np.searchsorted(qm9.index, index))
        if not 1 <= index <= int(qm9.index[-1]):
            raise ValueError(f"QM9 index {index} does not exist: QM9 indices run from 1 to {qm9.index[-1]}")
        if row >= len(qm9) or qm9.index[row] != index:
            raise ValueError(f"QM9 index {index} is one of the molecules QM9 marks as uncharacterized, which "
                             "qm9pack leaves out; choose another")
    else:
        row = qm9_row(text)
        if row is None:
            return None
    atoms = _qm9_geometry(row)
    atoms.info[ORIGIN] = "qm9"
    return str(qm9.smiles[row]), atoms


def _one_start(text: str, seed: int) -> tuple[str, Atoms]:
    """Name and structure of one ``--molecules`` entry: QM9 index or SMILES, structure file, or any SMILES."""
    if not text:
        raise ValueError("an empty entry is not a molecule")
    if text.isdigit():
        return _qm9_start(text, seed)
    if "/" in text or Path(text).suffix.lower() in STRUCTURE_SUFFIXES or Path(text).expanduser().is_file():
        return _read_structure(text)
    try:
        canonical = canonicalize(text)
    except MoleculeError:
        raise ValueError(f"{text!r} is neither a valid SMILES, a QM9 index nor a structure file") from None
    found = _qm9_start(text, seed)
    if found is not None:
        return found
    try:
        structure = embed(canonical, seed=seed)
    except MoleculeError as exc:
        raise ValueError(f"{text!r}: {exc}") from None
    atoms = Atoms(symbols=list(structure.symbols), positions=structure.positions)
    atoms.info[ORIGIN] = "smiles"
    return canonical, atoms


def starting_structures(molecules: Sequence[str], seed: int = 0) -> list[tuple[str, Atoms]]:
    """The campaign's starting molecules, each from a QM9 index, a SMILES, or a structure file.

    * A QM9 index (all digits, QM9's own 1-based numbering: ``dsgdb9nsd_000001`` is ``"1"``) or a SMILES of a QM9
      molecule: QM9's B3LYP/6-31G(2df,p) geometry, named by QM9's SMILES. This is the shortcut the default uses.
    * Any other SMILES: embedded in 3-D by RDKit (ETKDG, then a force-field clean-up, seeded); ``atoms.info``
      says ``origin: smiles``, and the campaign relaxes it at its own level of theory before anything else
      (:func:`relax_starting_structure`). Named by its canonical SMILES.
    * A structure file that ASE reads (xyz, extxyz, pdb, …; a path, or a name ending as one): its first
      structure, as given. Named by the file's stem.

    Every entry must be a closed-shell neutral molecule of the elements the potential knows.

    Args:
        molecules: The entries of ``--molecules``.
        seed: Seed of the RDKit embeddings.

    Returns:
        ``(name, atoms)`` per molecule, in order.

    Raises:
        ValueError: one or more entries cannot be used; the message names each of them and why, in one line.
    """
    starts: list[tuple[str, Atoms]] = []
    problems: list[str] = []
    for given in molecules:
        text = str(given).strip()
        try:
            name, atoms = _one_start(text, seed)
            _check_start(text, atoms)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if any(name == seen for seen, _ in starts):
            problems.append(f"{text!r} is {name}, which is already in the list of molecules")
            continue
        starts.append((name, atoms))
    if problems:
        raise ValueError("; ".join(problems))
    return starts


def relax_starting_structure(atoms: Atoms, spec: QCSpec, task_config: dict[str, Any]) -> Atoms:
    """The ``qc`` task that relaxes a starting structure embedded by RDKit at the campaign's level of theory.

    MD, the initial displacements and the reference trajectories all start from this minimum, as they start
    from QM9's B3LYP geometry for QM9 molecules.

    Raises:
        QCFailure: a step failed or the relaxation did not converge.
    """
    from methods.chem import Structure
    from methods.simulate import relax

    structure = Structure(tuple(atoms.get_chemical_symbols()), atoms.get_positions())
    relaxed = relax(structure, 0, 1, spec, task_config)
    result = Atoms(symbols=list(relaxed.structure.symbols), positions=relaxed.structure.positions)
    result.info.update({ORIGIN: "smiles", "relaxed_steps": relaxed.steps, "relaxed_energy_hartree": relaxed.energy})
    return result


def displaced(atoms: Atoms, n: int, scale: float, seed: int) -> list[Atoms]:
    """``n`` copies with independent Gaussian displacements of every coordinate (standard deviation ``scale`` Å).

    The initial training set around each starting structure: a potential trained on the minimum alone knows
    nothing about forces, and the first MD would leave its data at once.
    """
    rng = np.random.default_rng(seed)
    positions = atoms.get_positions()
    copies = []
    for _ in range(n):
        copy = _bare(atoms)
        copy.set_positions(positions + rng.normal(0.0, scale, positions.shape))
        copies.append(copy)
    return copies
