"""Quantum chemistry through QCEngine: relaxations, energies, and the campaign objectives.

Design notes (see ``../shared/FACTS.md`` for the measurements behind them):

* xTB relaxations use an ASE BFGS optimizer whose calculator asks QCEngine for one gradient per step. A GFN2-xTB
  gradient of a QM9 molecule costs ~20 ms through QCEngine, so a relaxation costs what its physics costs,
  not the ~16 s of per-step process overhead of a geomeTRIC procedure.
* NWChem relaxations use NWChem's own optimizer (QCEngine's ``nwchemdriver`` procedure): one NWChem process
  per relaxation instead of one per step.
* Failures are data: every molecule comes back as a :class:`MoleculeResult`, with the reason when it failed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import psutil
import qcelemental as qcel
import qcengine as qcng
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from pydantic import BaseModel, ConfigDict, Field, model_validator
from qcelemental.models import v2 as qcv2

from methods.chem import SUPPORTED_ELEMENTS, MoleculeError, Structure, element_counts, embed
from methods.data import QM9_ATOM_REFERENCE_U0, qm9_row
from methods.failures import CAUSE_SEPARATOR
from methods.objectives import parse_objective

logger = logging.getLogger(__name__)

HARTREE_TO_EV = 27.21138601949571
"""qcelemental's ``constants.conversion_factor("hartree", "eV")`` (CODATA 2014), written out: asking pint for it
costs 0.3 s of every process's start-up (tests/test_simulate.py checks the two agree)."""
BOHR_TO_ANGSTROM = qcel.constants.bohr2angstroms

ATOM_MULTIPLICITIES = {"H": 2, "C": 3, "N": 4, "O": 3, "F": 2, "S": 3, "Cl": 2, "Br": 2}
"""Ground-state spin multiplicities of the isolated atoms used as atomization references."""

XTB_IP_SHIFT_HARTREE = 0.178069
"""The xTB authors' empirical IP/EA shift, 4.8455 eV, subtracted from ΔSCC ionization energies by ``xtb --vip``.

GFN1-, GFN2- and IPEA-xTB all carry ``ipeashift = 1.78069`` (in units of 0.1 Hartree) in their global parameters,
and ``xtb --vip`` prints it as "empirical IP shift (eV)" after subtracting it (grimme-lab/xtb v6.5.1, the libxtb
bundled with xtb-python 22.1: ``src/xtb/gfn2.f90:56`` and ``:740``, ``src/xtb/gfn1.f90:55`` and ``:572``,
``param_ipea-xtb.txt:12``, ``src/prog/main.F90:674-677``). The constant is empirical (fit by the xTB authors, not
derived); being one number for every molecule it changes what an IE reads, never how molecules rank.
"""

IPEA_XTB_METHOD = "IPEA-xTB"
IPEA_XTB_PARAMETERS = "param_ipea-xtb.txt"
"""IPEA-xTB is GFN1-xTB with a file of parameters that libxtb reads at run time; xtb-python's wheel does not ship it
(the xtb program does, e.g. conda-forge's ``share/xtb``), so it must be in a directory on ``$XTBPATH``."""


class QCFailure(RuntimeError):
    """A QC calculation that did not produce a usable result; the message says why."""


@lru_cache(maxsize=1)
def _settle_qcengine() -> None:
    """Let QCEngine detect the host (cores, memory, CPU brand) once, outside any time limit.

    QCEngine fills a process-wide cache of host facts on first use; a time limit that interrupted that would
    leave the cache half-filled, and every later calculation in the worker would fail on a missing key.
    """
    qcng.config.get_global()


class QCTimeout(QCFailure):
    """A calculation stopped because it exceeded ``--qc-timeout``."""


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Stop the enclosed calculation after ``seconds`` of wall time, with :class:`QCTimeout`.

    Implemented with ``SIGALRM``, which interrupts Python code (ASE's optimizer loop, QCEngine waiting for
    NWChem) between two operations; any program the calculation started (NWChem, its MPI launcher) is killed,
    so nothing keeps running after the limit. Parsl runs each task in its worker's main thread, where signals
    can be used; elsewhere (a thread of a test) the limit cannot be enforced and is ignored with a debug note.
    """
    if seconds:
        _settle_qcengine()
    if not seconds or threading.current_thread() is not threading.main_thread():
        if seconds:
            logger.debug("--qc-timeout cannot be enforced outside a main thread; ignored")
        yield
        return
    message = f"stopped after the QC time limit of {seconds:g} s (--qc-timeout)"
    fired = threading.Event()

    def expire(signum: int, frame: Any) -> None:
        fired.set()
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.kill()
        raise QCTimeout(message)

    previous = signal.signal(signal.SIGALRM, expire)
    outer_timer, armed_at = signal.getitimer(signal.ITIMER_REAL), time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except QCTimeout:
        raise
    except Exception as exc:  # a library caught our exception and raised its own: it is still the time limit
        if fired.is_set():
            raise QCTimeout(message) from exc
        raise
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_timer[0] > 0:  # someone else's alarm was running: give it back what is left of it
            left = outer_timer[0] - (time.monotonic() - armed_at)
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001), outer_timer[1])
    if fired.is_set():  # a library swallowed the exception and returned normally
        raise QCTimeout(message)


class QCSpec(BaseModel):
    """The level of theory and the objective, identical for every molecule of a campaign (``qc_spec.json``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: Literal["xtb", "nwchem", "qm9"] = Field(description="QCEngine program, or qm9 for a lookup")
    method: str = Field(description="QC method, e.g. GFN2-xTB, hf or b3lyp")
    basis: str | None = Field(None, description="Basis set (NWChem only)")
    objective: str | None = Field(
        None,
        description="Property computed: ionization-energy, atomization-energy or qm9:<column>; None when the "
        "campaign only needs energies and forces (the forcefield campaign)",
    )
    ie_type: Literal["adiabatic", "vertical"] = Field("adiabatic", description="Relax the cation or not")
    ie_correction: Literal["none", "shift", "ipea-xtb"] = Field(
        "none",
        description="Calibration of xTB ionization energies to experiment: none (raw ΔSCF), shift (minus the xTB "
        "authors' empirical 4.85 eV IP shift), or ipea-xtb (IPEA-xTB single points at the relaxed geometries, "
        "minus the same shift)",
    )
    fmax: float = Field(
        0.05, gt=0, description="Force convergence of ASE relaxations, eV/Å (0.05 moves xTB IEs by ~5 meV vs 0.02)"
    )
    max_steps: int = Field(300, gt=0, description="Relaxation step limit; beyond it the molecule fails")
    seed: int = Field(0, description="Seed for the RDKit embedding")
    timeout: float | None = Field(
        None, gt=0, description="Wall-time limit per molecule (per structure), seconds; None for no limit"
    )

    @model_validator(mode="after")
    def _check_ie_correction(self) -> QCSpec:
        """Refuse a calibration where it means nothing: it is fit to xTB ionization energies only."""
        if self.ie_correction != "none" and (self.code != "xtb" or self.objective != "ionization-energy"):
            raise ValueError(f"ie_correction={self.ie_correction!r} calibrates xTB ionization energies: it needs "
                             f"code='xtb' and objective='ionization-energy' (not {self.code!r}, {self.objective!r})")
        return self

    @property
    def units(self) -> str:
        """Unit of the objective value (eV, the unit of energies, when there is no objective)."""
        if self.objective is None:
            return "eV"
        return parse_objective(self.objective).units


@dataclass
class Relaxed:
    """Outcome of a relaxation: final structure and energy (Hartree) and how many gradient steps it took.

    ``hessian`` is the optimizer's final Hessian estimate (eV/Å², when the optimizer has one): the cation
    relaxation starts from it instead of a unit guess, which saves about a quarter of its steps.
    """

    structure: Structure
    energy: float
    steps: int
    hessian: np.ndarray | None = None


@dataclass
class MoleculeResult:
    """What one molecule's evaluation produced, successful or not; one line of ``simulation_records.jsonl``."""

    smiles: str
    success: bool = False
    value: float | None = None
    failure_reason: str | None = None
    energies: dict[str, float] = field(default_factory=dict)
    relax_steps: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    task_config: dict[str, Any] = field(default_factory=dict)
    start_geometry: str | None = None  # "rdkit" embedding, or "qm9" when RDKit could not embed

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary for JSON records."""
        return asdict(self)


def _keywords(spec: QCSpec, multiplicity: int) -> dict[str, Any]:
    """Program keywords: quiet xTB, and what open-shell species (cations, isolated atoms) need in NWChem."""
    if spec.code == "xtb":
        return {"verbosity": "muted"}  # xtb-python otherwise prints its full output into the worker logs
    if multiplicity == 1:
        return {}
    if spec.method.lower() in ("hf", "scf"):
        return {"scf__uhf": True, "scf__nopen": multiplicity - 1}
    return {"dft__mult": multiplicity, "dft__odft": True}


def _model(spec: QCSpec) -> dict[str, str]:
    model = {"method": spec.method}
    if spec.basis is not None:
        model["basis"] = spec.basis
    return model


def _molecule(structure: Structure, charge: int, multiplicity: int, schema=qcel.models) -> Any:
    return schema.Molecule(
        symbols=list(structure.symbols),
        geometry=np.asarray(structure.positions) / BOHR_TO_ANGSTROM,
        molecular_charge=charge,
        molecular_multiplicity=multiplicity,
        fix_com=True,
        fix_orientation=True,
        fix_symmetry="c1",
    )


def _failure_reason(result: Any) -> str:
    """One line saying why QCEngine failed: its error category, the cause, then the tail of the message.

    A harness that raised inside QCEngine leaves a Python traceback as the message; its last exception
    (what a user needs) is put first, since only the first words are shown in ``summary.json``. The tail
    is kept because NWChem puts its cause near the end of a long output.
    """
    error = getattr(result, "error", None)
    if error is None:
        return "QCEngine returned no result and no error"
    text = str(error.error_message)
    message = " ".join(text.split())
    tail = message if len(message) <= 1000 else "…" + message[-1000:]
    cause = traceback_cause(text)
    if cause is None:
        return f"{spec_error_type(error)}: {tail}"
    return f"{spec_error_type(error)}: {cause}{CAUSE_SEPARATOR}{tail}"


def traceback_cause(text: str) -> str | None:
    """The final exception of a Python traceback in ``text`` (``"ValueError: …"``), or None if it has none.

    In a traceback the exception is what follows the last ``File "…", line N`` entry, after that entry's
    indented source and caret lines.
    """
    lines = text.splitlines()
    if not any("Traceback (most recent call last)" in line for line in lines):
        return None
    last_frame = max((i for i, line in enumerate(lines) if line.lstrip().startswith('File "')), default=-1)
    rest = lines[last_frame + 1:]
    while rest and (not rest[0].strip() or rest[0][:1].isspace()):
        rest = rest[1:]  # the frame's source line and its ^^^^ markers
    cause = " ".join(" ".join(rest).split())
    return cause or None


def spec_error_type(error: Any) -> str:
    """QCEngine's error category (``convergence_error``, ``random_error``, ``input_error`` …)."""
    return str(getattr(error, "error_type", "unknown_error"))


def _atomic_input(structure: Structure, charge: int, multiplicity: int, driver: str, spec: QCSpec) -> Any:
    """A QCSchema v2 input: QCEngine's native schema, so no conversion is paid on every call."""
    return qcv2.AtomicInput(
        molecule=_molecule(structure, charge, multiplicity, schema=qcv2),
        specification={"driver": driver, "model": _model(spec), "keywords": _keywords(spec, multiplicity)},
    )


def mpi_task_config(task_config: dict[str, Any], environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The task's QCEngine settings with this task's MPI nodes filled into ``mpiexec_command``.

    QCEngine's template knows rank counts but not hosts. Parsl's MPI executor gives each task its nodes in
    ``$PARSL_MPI_NODELIST`` (and their count in ``$PARSL_NUM_NODES``); without it the task has this node only.
    ``{hosts}`` becomes ``node1,node2`` (MPICH, PALS: ``--hosts``) and ``{host_slots}`` becomes
    ``node1:R,node2:R`` with R ranks per node (Open MPI: ``-H``).
    """
    command = task_config.get("mpiexec_command")
    if not task_config.get("use_mpiexec") or not command or ("{hosts}" not in command
                                                             and "{host_slots}" not in command):
        return task_config
    environ = os.environ if environ is None else environ
    nodes = [n for n in environ.get("PARSL_MPI_NODELIST", "").split(",") if n] or [platform.node()]
    ranks = max(1, int(task_config.get("ncores", 1)) // int(task_config.get("cores_per_rank", 1)))
    command = command.replace("{hosts}", ",".join(nodes)).replace(
        "{host_slots}", ",".join(f"{node}:{ranks}" for node in nodes))
    return {**task_config, "mpiexec_command": command, "nnodes": len(nodes)}


def _compute(atomic_input: Any, spec: QCSpec, task_config: dict[str, Any]) -> Any:
    result = qcng.compute(atomic_input, spec.code, raise_error=False, task_config=mpi_task_config(task_config))
    if not getattr(result, "success", False):
        raise QCFailure(_failure_reason(result))
    return result


def run_qcengine(
    structure: Structure,
    charge: int,
    multiplicity: int,
    driver: Literal["energy", "gradient"],
    spec: QCSpec,
    task_config: dict[str, Any],
) -> Any:
    """One QCEngine single point; returns QCEngine's ``AtomicResult``.

    Raises:
        QCFailure: QCEngine reports a failure (SCF not converged, program crashed …), with its reason.
    """
    return _compute(_atomic_input(structure, charge, multiplicity, driver, spec), spec, task_config)


class QCEngineCalculator(Calculator):
    """ASE calculator whose energies and forces come from QCEngine, so any ASE optimizer can use any code."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, spec: QCSpec, charge: int, multiplicity: int, task_config: dict[str, Any]):
        super().__init__()
        self.spec = spec
        self.charge = charge
        self.multiplicity = multiplicity
        self.task_config = task_config
        self._template: Any = None  # validated once; each step copies it with new coordinates

    def calculate(self, atoms: Atoms | None = None, properties=None, system_changes=all_changes) -> None:
        """Fill ``results`` with energy (eV) and forces (eV/Å) from one QCEngine gradient."""
        super().calculate(atoms, properties, system_changes)
        if self._template is None:
            structure = Structure(tuple(self.atoms.get_chemical_symbols()), self.atoms.get_positions())
            self._template = _atomic_input(structure, self.charge, self.multiplicity, "gradient", self.spec)
        # Re-validating the molecule costs a fifth of an xTB step; only the coordinates change.
        molecule = self._template.molecule.model_copy(
            update={"geometry": self.atoms.get_positions() / BOHR_TO_ANGSTROM})
        result = _compute(self._template.model_copy(update={"molecule": molecule}), self.spec, self.task_config)
        gradient = np.asarray(result.return_result).reshape(-1, 3)
        self.results["energy"] = float(result.properties.return_energy) * HARTREE_TO_EV
        self.results["forces"] = -gradient * HARTREE_TO_EV / BOHR_TO_ANGSTROM


def _relax_with_ase(
    structure: Structure,
    charge: int,
    multiplicity: int,
    spec: QCSpec,
    task_config: dict[str, Any],
    hessian: np.ndarray | None = None,
) -> Relaxed:
    atoms = Atoms(symbols=list(structure.symbols), positions=structure.positions)
    atoms.calc = QCEngineCalculator(spec, charge, multiplicity, task_config)
    from ase.optimize import BFGS  # here, not at the top: it imports SciPy's optimizers (0.4 s at start-up)

    optimizer = BFGS(atoms, logfile=None)
    if hessian is not None and hessian.shape == optimizer.H0.shape:
        optimizer.H0 = hessian.copy()
    converged = optimizer.run(fmax=spec.fmax, steps=spec.max_steps)
    if not converged:
        raise QCFailure(f"relaxation did not reach fmax={spec.fmax} eV/Å in {spec.max_steps} steps")
    energy = atoms.get_potential_energy() / HARTREE_TO_EV
    final = Structure(structure.symbols, atoms.get_positions())
    return Relaxed(structure=final, energy=float(energy), steps=int(optimizer.nsteps),
                   hessian=optimizer.H.copy() if optimizer.state is not None else None)


def _relax_with_nwchem(
    structure: Structure, charge: int, multiplicity: int, spec: QCSpec, task_config: dict[str, Any]
) -> Relaxed:
    optimization = qcel.models.OptimizationInput(
        initial_molecule=_molecule(structure, charge, multiplicity),
        input_specification={
            "driver": "gradient",
            "model": _model(spec),
            # NWChem's driver gives up after 20 steps by default, too few for flexible QM9 molecules.
            "keywords": {**_keywords(spec, multiplicity), "driver__maxiter": spec.max_steps},
        },
        keywords={"program": "nwchem"},
    )
    result = qcng.compute(optimization, "nwchemdriver", raise_error=False,
                          task_config=mpi_task_config(task_config))
    if not getattr(result, "success", False):
        raise QCFailure(_failure_reason(result))
    final = result.final_molecule
    positions = np.asarray(final.geometry).reshape(-1, 3) * BOHR_TO_ANGSTROM
    return Relaxed(
        structure=Structure(structure.symbols, positions),
        energy=float(result.energies[-1]),
        steps=len(result.energies),
    )


def relax(
    structure: Structure,
    charge: int,
    multiplicity: int,
    spec: QCSpec,
    task_config: dict[str, Any],
    hessian: np.ndarray | None = None,
) -> Relaxed:
    """Relax a structure at the campaign's level of theory, optionally from a previous Hessian estimate.

    Raises:
        QCFailure: a step failed or the relaxation did not converge.
    """
    if spec.code == "nwchem":
        return _relax_with_nwchem(structure, charge, multiplicity, spec, task_config)
    return _relax_with_ase(structure, charge, multiplicity, spec, task_config, hessian)


def single_point_energy(
    structure: Structure, charge: int, multiplicity: int, spec: QCSpec, task_config: dict[str, Any]
) -> float:
    """Energy (Hartree) at a fixed geometry."""
    result = run_qcengine(structure, charge, multiplicity, "energy", spec, task_config)
    return float(result.return_result)


def warm_up(code: str, method: str | None, task_config: dict[str, Any]) -> dict[str, Any]:
    """The QC task each worker runs before the campaign's first molecule: pays the start-up costs up front.

    Importing the QC stack (QCEngine, RDKit, ASE) takes seconds, and xTB's first calculation in a process
    another second or so. ``run.py`` sends one of these per QC worker as soon as the workers are started, while
    the thinker side is still loading its data, so the first real molecule finds a warm worker.

    Returns:
        Where it ran and how long it took, for the run's records.
    """
    start = time.perf_counter()
    import ase  # noqa: F401 - imported for its start-up cost
    import qcengine  # noqa: F401
    from rdkit import Chem

    Chem.MolFromSmiles("CO")
    if code == "xtb":  # a two-atom single point loads libxtb and its parameters
        hydrogen = Structure(("H", "H"), np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.74]]))
        single_point_energy(hydrogen, 0, 1, QCSpec(code="xtb", method=method or "GFN2-xTB"), task_config)
    return {"host": platform.node(), "pid": os.getpid(), "seconds": time.perf_counter() - start}


def compute_atom_energies(
    spec: QCSpec, task_config: dict[str, Any], elements: tuple[str, ...] = tuple(sorted(SUPPORTED_ELEMENTS))
) -> dict[str, float]:
    """Energies (Hartree) of isolated atoms in their ground-state multiplicity, for atomization energies.

    Computed once per campaign at the campaign's level of theory, so that errors of the method cancel.

    Raises:
        QCFailure: an atom's calculation failed; the campaign cannot compute atomization energies without it.
    """
    energies = {}
    for element in elements:
        atom = Structure((element,), np.zeros((1, 3)))
        energies[element] = single_point_energy(atom, 0, ATOM_MULTIPLICITIES[element], spec, task_config)
    return energies


@lru_cache(maxsize=4)
def qm9_objective_values(objective: str) -> np.ndarray:
    """QM9's own B3LYP/6-31G(2df,p) value of the objective for every QM9 molecule (QM9 row order).

    Cached per objective: a lookup-mode campaign asks for one value per molecule, thousands of times.
    The array is shared, so callers must not modify it.

    Ionization energy is Koopmans' −HOMO (eV); atomization energy is U0 minus QM9's atomic U0 (eV); a
    ``qm9:<column>`` objective is the column as stored.
    """
    from methods.data import ELEMENT_ORDER, load_qm9

    qm9 = load_qm9()
    parsed = parse_objective(objective)
    if parsed.column is not None:
        return qm9.columns[parsed.column]
    if parsed.name == "ionization-energy":
        return -qm9.columns["HOMO_au"] * HARTREE_TO_EV
    references = np.array([QM9_ATOM_REFERENCE_U0[element] for element in ELEMENT_ORDER])
    return (qm9.columns["InternalEnergy_0K_au"] - qm9.atom_counts @ references) * HARTREE_TO_EV


def lookup_qm9(smiles: str, objective: str) -> float:
    """QM9's value of the objective for one molecule, in place of a calculation.

    Raises:
        QCFailure: the molecule is not in QM9 (a generated molecule, say): the lookup has nothing to give.
    """
    row = qm9_row(smiles)
    if row is None:
        raise QCFailure("not in QM9: lookup mode can only evaluate QM9 molecules")
    return float(qm9_objective_values(objective)[row])


def initial_structure(smiles: str, seed: int, record: MoleculeResult) -> Structure:
    """RDKit's 3-D embedding; for QM9 molecules RDKit cannot embed (strained cages), QM9's own geometry.

    Raises:
        MoleculeError: the molecule is invalid, or neither RDKit nor QM9 provides a structure.
    """
    try:
        structure = embed(smiles, seed=seed)
        record.start_geometry = "rdkit"
        return structure
    except MoleculeError as exc:
        if "could not embed" not in str(exc):
            raise
        row = qm9_row(smiles)
        if row is None:
            raise
        from methods.data import load_qm9

        symbols, positions = load_qm9().geometry(row)
        record.start_geometry = "qm9"
        return Structure(tuple(symbols), positions)


def evaluate_molecule(
    smiles: str,
    spec: QCSpec,
    task_config: dict[str, Any],
    atom_energies: dict[str, float] | None = None,
) -> MoleculeResult:
    """Compute the campaign objective for one molecule; never raises, failures come back with their reason."""
    record = MoleculeResult(smiles=smiles)
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        record.timings[name] = record.timings.get(name, 0.0) + now - clock
        clock = now

    try:
        if spec.code == "qm9":
            record.value = lookup_qm9(smiles, spec.objective)
            record.success = True
            lap("lookup")
            record.timings["total"] = record.timings["lookup"]
            return record
        with time_limit(spec.timeout):
            _evaluate(smiles, spec, task_config, atom_energies, record, lap)
        record.success = True
    except (MoleculeError, QCFailure) as exc:
        record.failure_reason = str(exc)
    except Exception as exc:  # noqa: BLE001 - a crash on one molecule must not lose the others in the task
        logger.exception("Unexpected failure for %s", smiles)
        record.failure_reason = f"{type(exc).__name__}: {exc}"
    lap("other")
    record.timings.pop("other", None)
    record.timings["total"] = sum(record.timings.values())
    record.task_config = {k: task_config.get(k) for k in ("ncores", "memory", "scratch_directory")}
    return record


IPEA_XTB_SHARED_DIRS = (Path("/usr/share/xtb"), Path(sys.prefix) / "share" / "xtb")
"""Where the xtb program's packages (Debian, conda-forge) put their parameter files."""


def ipea_xtb_parameters() -> Path:
    """The IPEA-xTB parameter file libxtb will read, found the way libxtb looks for it.

    libxtb tries the working directory, then each directory of ``$XTBPATH``, which defaults to ``$XTBHOME``, which
    defaults to ``$HOME`` (xtb v6.5.1 ``src/api/calculator.f90:249``, ``src/type/environment.f90:140-149``).
    Looking first turns libxtb's bare "Parameter file param_ipea-xtb.txt not found" (which xtb-python 22.1 hides
    behind an unrelated validation error for gradients) into a message that says what to install where.

    Raises:
        QCFailure: the file is in none of those places.
    """
    home = os.environ.get("XTBHOME") or os.environ.get("HOME", "")
    directories = (os.environ.get("XTBPATH") or home).split(":")
    for candidate in [Path(IPEA_XTB_PARAMETERS)] + [Path(d) / IPEA_XTB_PARAMETERS for d in directories if d]:
        if candidate.is_file():
            return candidate
    # The xtb program's own package (Debian's xtb, which `make setup` installs) ships the file: point libxtb
    # at it for this worker process, keeping whatever else $XTBPATH held.
    for shared in IPEA_XTB_SHARED_DIRS:
        if (shared / IPEA_XTB_PARAMETERS).is_file():
            os.environ["XTBPATH"] = ":".join(d for d in [os.environ.get("XTBPATH", ""), str(shared)] if d)
            return shared / IPEA_XTB_PARAMETERS
    raise QCFailure(f"ie_correction='ipea-xtb' needs {IPEA_XTB_PARAMETERS}, which xtb-python does not ship: install "
                    "the xtb program (Debian: apt-get install xtb; conda-forge: xtb), or copy the file from it into a "
                    "directory on $XTBPATH on every QC worker")


def ipea_xtb_ionization_energy(
    neutral: Structure, cation: Structure, spec: QCSpec, task_config: dict[str, Any], record: MoleculeResult
) -> float:
    """ΔSCC ionization energy (eV, before the empirical shift) from IPEA-xTB single points at the given geometries.

    The geometries are the campaign method's (GFN2-xTB by default): IPEA-xTB re-fits GFN1-xTB's parameters to
    ionization potentials and electron affinities (Ásgeirsson, Bauer & Grimme, Chem. Sci. 2017, 8, 4879, the
    reference in its parameter file, made for the IPs of fragments in mass-spectra simulations) and was not fit
    to structures, so it is used for energy differences only. Relaxing with the campaign method also keeps every
    ``ie_correction`` on the same structures, so the options differ only in how the energies are read. For an
    adiabatic IE the two IPEA-xTB energies are then not at IPEA-xTB's own minima; being near them, the error is
    second order in the geometry difference.

    The IPEA-xTB energies go into ``record.energies`` as ``neutral_ipea-xtb`` and ``cation_ipea-xtb``.
    """
    ipea = spec.model_copy(update={"method": IPEA_XTB_METHOD})
    record.energies["neutral_ipea-xtb"] = single_point_energy(neutral, 0, 1, ipea, task_config)
    record.energies["cation_ipea-xtb"] = single_point_energy(cation, 1, 2, ipea, task_config)
    return (record.energies["cation_ipea-xtb"] - record.energies["neutral_ipea-xtb"]) * HARTREE_TO_EV


def _evaluate(smiles: str, spec: QCSpec, task_config: dict[str, Any], atom_energies: dict[str, float] | None,
              record: MoleculeResult, lap: Any) -> None:
    """The QC of :func:`evaluate_molecule`: embed, relax, energies, objective value (raises on failure)."""
    if spec.ie_correction == "ipea-xtb":
        ipea_xtb_parameters()  # before any relaxation: without the file every molecule would fail at its end
    structure = initial_structure(smiles, spec.seed, record)
    lap("embed")
    neutral = relax(structure, 0, 1, spec, task_config)
    record.energies["neutral"] = neutral.energy
    record.relax_steps["neutral"] = neutral.steps
    lap("relax")
    if spec.objective == "ionization-energy":
        if spec.ie_type == "vertical":
            cation_structure = neutral.structure
            cation_energy = single_point_energy(neutral.structure, 1, 2, spec, task_config)
            lap("energy")
        else:
            cation = relax(neutral.structure, 1, 2, spec, task_config, hessian=neutral.hessian)
            cation_structure, cation_energy = cation.structure, cation.energy
            record.relax_steps["cation"] = cation.steps
            lap("relax")
        record.energies["cation"] = cation_energy
        record.value = (cation_energy - neutral.energy) * HARTREE_TO_EV
        if spec.ie_correction == "ipea-xtb":
            record.value = ipea_xtb_ionization_energy(neutral.structure, cation_structure, spec, task_config, record)
            lap("energy")
        if spec.ie_correction != "none":
            record.value -= XTB_IP_SHIFT_HARTREE * HARTREE_TO_EV
    else:
        if atom_energies is None:
            raise QCFailure("atomization energy requested without reference atom energies")
        reference = sum(n * atom_energies[el] for el, n in element_counts(smiles).items())
        record.value = (neutral.energy - reference) * HARTREE_TO_EV
    if not np.isfinite(record.value):
        raise QCFailure(f"non-finite objective value {record.value}")


def evaluate_molecules(
    smiles: list[str],
    spec: QCSpec,
    task_config: dict[str, Any],
    atom_energies: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """The ``qc`` task: evaluate a batch of molecules and return one record per molecule, in order.

    Batching lets short xTB evaluations amortize the per-task cost of the queues.
    """
    return [evaluate_molecule(s, spec, task_config, atom_energies).to_dict() for s in smiles]


def ran_on(result: Any) -> dict[str, Any]:
    """Where a calculation ran: its host, its MPI nodes (from Parsl's MPI executor) and NWChem's rank count.

    The rank count is NWChem's own (``nproc`` in its output), so a record shows how the code really ran, not
    what was asked of the launcher.
    """
    provenance = getattr(result, "provenance", None)
    ranks = re.search(r"^\s*nproc\s*=\s*(\d+)", getattr(result, "stdout", None) or "", re.MULTILINE)
    nodes = [n for n in os.environ.get("PARSL_MPI_NODELIST", "").split(",") if n]
    return {"host": getattr(provenance, "hostname", None) or platform.node(), "mpi_nodes": nodes or None,
            "mpi_ranks": int(ranks.group(1)) if ranks else None}


def _energy_forces(atoms: Atoms, spec: QCSpec, task_config: dict[str, Any]) -> dict[str, Any]:
    """One frame of :func:`compute_energy_forces`; never raises."""
    record: dict[str, Any] = {"success": False, "energy": None, "forces": None, "failure_reason": None}
    start = time.perf_counter()
    try:
        structure = Structure(tuple(atoms.get_chemical_symbols()), atoms.get_positions())
        with time_limit(spec.timeout):
            result = run_qcengine(structure, 0, 1, "gradient", spec, task_config)
        energy = float(result.properties.return_energy) * HARTREE_TO_EV
        forces = -np.asarray(result.return_result, dtype=float).reshape(-1, 3) * HARTREE_TO_EV / BOHR_TO_ANGSTROM
        if forces.shape != (len(atoms), 3):
            raise QCFailure(f"gradient has shape {forces.shape}, expected ({len(atoms)}, 3)")
        if not (np.isfinite(energy) and np.isfinite(forces).all()):
            raise QCFailure("energy or forces not finite")
        record.update(success=True, energy=energy, forces=forces.tolist(), ran_on=ran_on(result))
    except QCFailure as exc:
        record["failure_reason"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - e.g. QCElemental rejecting overlapping nuclei; one frame, not the batch
        logger.debug("QC failed for a %s frame", atoms.get_chemical_formula(), exc_info=True)
        record["failure_reason"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:1000]}"
    record["time"] = time.perf_counter() - start
    return record


def compute_energy_forces(frames: list[Atoms], spec: QCSpec, task_config: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``qc`` task of the forcefield campaign: one QCEngine gradient per structure (neutral singlet).

    Batching frames amortizes the per-task cost of the queues, as :func:`evaluate_molecules` does for molecules.
    Only the symbols and positions of each frame are read; calculators attached to them are ignored.

    Returns:
        One record per frame, in order: ``{"success": bool, "energy": eV | None, "forces": list (n, 3) eV/Å | None,
        "failure_reason": str | None, "time": seconds}``. A failed structure (SCF not converged, nuclei on top of
        each other, unknown method …) comes back with its reason; non-finite energies or forces are failures.
    """
    return [_energy_forces(atoms, spec, task_config) for atoms in frames]
