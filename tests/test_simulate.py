"""Real QC codes: GFN2-xTB through QCEngine's xtb harness and NWChem through its nwchem harness."""

import math

import pytest

from configs.settings.models import load_qc_config
from methods.simulate import (
    QCSpec,
    compute_atom_energies,
    evaluate_molecule,
    evaluate_molecules,
    traceback_cause,
)
from store.results import count_failure_reasons
from tests.conftest import needs_nwchem

XTB = {"code": "xtb", "method": "GFN2-xTB"}
NWCHEM_HF = {"code": "nwchem", "method": "hf", "basis": "sto-3g"}
CONFIG = {"ncores": 1}


@pytest.fixture(scope="module")
def xtb_atoms():
    return compute_atom_energies(QCSpec(objective="atomization-energy", **XTB), CONFIG)


@pytest.mark.parametrize("ie_type", ["adiabatic", "vertical"])
@pytest.mark.parametrize("smiles", ["O", "C", "N"])
def test_xtb_ionization_energies_are_positive(smiles, ie_type):
    record = evaluate_molecule(smiles, QCSpec(objective="ionization-energy", ie_type=ie_type, **XTB), CONFIG)
    assert record.success, record.failure_reason
    assert math.isfinite(record.energies["neutral"]) and math.isfinite(record.energies["cation"])
    assert 5 < record.value < 25  # eV
    assert record.relax_steps["neutral"] >= 1


def test_adiabatic_ie_is_not_above_vertical():
    adiabatic = evaluate_molecule("N", QCSpec(objective="ionization-energy", **XTB), CONFIG)
    vertical = evaluate_molecule("N", QCSpec(objective="ionization-energy", ie_type="vertical", **XTB), CONFIG)
    assert adiabatic.value <= vertical.value + 1e-6  # relaxing the cation can only lower its energy


@pytest.mark.parametrize("smiles", ["O", "C", "N"])
def test_xtb_atomization_energies_are_negative(smiles, xtb_atoms):
    record = evaluate_molecule(smiles, QCSpec(objective="atomization-energy", **XTB), CONFIG, xtb_atoms)
    assert record.success, record.failure_reason
    assert record.value < -5  # eV: these molecules are strongly bound


def test_bigger_molecules_have_more_negative_atomization_energy(xtb_atoms):
    spec = QCSpec(objective="atomization-energy", **XTB)
    methane, ethane = (evaluate_molecule(s, spec, CONFIG, xtb_atoms).value for s in ("C", "CC"))
    assert ethane < methane


def test_failures_are_recorded_with_their_reason():
    spec = QCSpec(objective="ionization-energy", **XTB)
    records = evaluate_molecules(["C[Si](C)(C)C", "C1CC", "O"], spec, CONFIG)
    assert [r["success"] for r in records] == [False, False, True]
    assert "unsupported elements Si" in records[0]["failure_reason"]
    assert "cannot parse" in records[1]["failure_reason"]
    assert records[0]["value"] is None


def test_a_harness_that_raises_is_recorded_by_its_cause_first():
    """xtb-python's harness raises on this hypofluorite's cation; the reason leads with the exception, not the
    traceback, so the 160 characters that ``summary.json`` and the report show say what went wrong."""
    record = evaluate_molecules(["O=C(OF)C(F)(F)F"], QCSpec(objective="ionization-energy", **XTB), CONFIG)[0]
    assert not record["success"] and record["value"] is None
    cause, details = record["failure_reason"].split(" | ", 1)
    assert cause.startswith("unknown_error: pydantic.v1.error_wrappers.ValidationError: "), cause
    assert "Traceback" not in cause and "File " in details
    [(key, count)] = count_failure_reasons([record, dict(record)]).items()  # one cause, counted together
    assert count == 2 and key[:-1] == cause[:len(key) - 1]


def test_traceback_cause_is_the_last_exception_after_the_source_and_caret_lines():
    text = ('Error: Traceback (most recent call last):\n  File "a.py", line 1, in f\n    g()\n'
            '  File "b.py", line 2, in g\n    raise ValueError(x)\n    ^^^^^^^^^^^^^^^^^^^\n'
            'ValueError: 1 validation error\n  return_result\n    cannot reshape\n')
    assert traceback_cause(text) == "ValueError: 1 validation error return_result cannot reshape"
    assert traceback_cause("SCF did not converge in 100 iterations") is None
    assert count_failure_reasons([{"failure_reason": "x" * 500}, {}]) == {"x" * 159 + "…": 1, "unknown": 1}


@needs_nwchem
def test_nwchem_energies_and_signs():
    ie = evaluate_molecule("O", QCSpec(objective="ionization-energy", ie_type="vertical", **NWCHEM_HF), CONFIG)
    assert ie.success, ie.failure_reason
    assert ie.value > 0
    ae_spec = QCSpec(objective="atomization-energy", **NWCHEM_HF)
    atoms = compute_atom_energies(ae_spec, CONFIG, elements=("C", "H"))
    assert all(math.isfinite(e) and e < 0 for e in atoms.values())
    ae = evaluate_molecule("C", ae_spec, CONFIG, atoms)
    assert ae.success, ae.failure_reason
    assert ae.value < 0


@needs_nwchem
def test_xtb_and_nwchem_agree_on_which_ionization_energy_is_larger():
    values = {}
    for name, level in (("xtb", XTB), ("nwchem", NWCHEM_HF)):
        spec = QCSpec(objective="ionization-energy", ie_type="vertical", **level)
        values[name] = {s: evaluate_molecule(s, spec, CONFIG).value for s in ("O", "N")}
    assert values["xtb"]["O"] > values["xtb"]["N"]
    assert values["nwchem"]["O"] > values["nwchem"]["N"]


@needs_nwchem
def test_nwchem_failure_is_data_not_exception():
    spec = QCSpec(objective="ionization-energy", ie_type="vertical", code="nwchem", method="hf", basis="no-such-basis")
    record = evaluate_molecule("O", spec, CONFIG)
    assert not record.success
    assert "basis" in record.failure_reason.lower()


@needs_nwchem
def test_qcengine_yml_scratch_setting_changes_where_nwchem_runs(tmp_path):
    """A value in qcengine.yml reaches the QC run: NWChem's scratch files land where the file says."""
    scratch = tmp_path / "my-scratch"
    config_file = tmp_path / "qcengine.yml"
    config_file.write_text(f"local:\n  ncores: 1\n  memory: 1\n  scratch_directory: {scratch}\n  scratch_messy: true\n")
    task_config = load_qc_config(config_file, "local").task_config(tmp_path / "run")
    spec = QCSpec(objective="ionization-energy", ie_type="vertical", **NWCHEM_HF)
    record = evaluate_molecule("O", spec, task_config)
    assert record.success, record.failure_reason
    written = list(scratch.rglob("*"))
    assert any(p.is_file() for p in written), "NWChem wrote nothing in the configured scratch directory"
    assert not (tmp_path / "run" / "qc-scratch").exists() or not any((tmp_path / "run" / "qc-scratch").iterdir())


@needs_nwchem
def test_dft_with_mpi_settings_from_qcengine_yml(tmp_path):
    """B3LYP/3-21G through NWChem, launched with the MPI command of qcengine.yml when a task has 2 cores."""
    import re

    from methods.chem import embed
    from methods.simulate import run_qcengine

    config_file = tmp_path / "qcengine.yml"
    config_file.write_text("local:\n  ncores: 2\n  memory: 1\n  use_mpiexec: true\n"
                           '  mpiexec_command: "mpirun --allow-run-as-root --oversubscribe -n {total_ranks}"\n')
    task_config = load_qc_config(config_file, "local").task_config(tmp_path / "run")
    spec = QCSpec(objective="ionization-energy", ie_type="vertical", code="nwchem", method="b3lyp", basis="3-21g")
    result = run_qcengine(embed("O"), 1, 2, "energy", spec, task_config)
    assert re.search(r"nproc\s*=\s*2\b", result.stdout), "NWChem did not run on 2 MPI ranks"
    record = evaluate_molecule("O", spec, task_config)
    assert record.success and record.value > 0, record.failure_reason


def test_time_limit_stops_a_calculation_and_its_programs():
    """--qc-timeout: the calculation ends with QCTimeout, and a program it started is killed with it."""
    import signal
    import subprocess
    import time

    from methods.simulate import QCTimeout, time_limit

    started = time.monotonic()
    with pytest.raises(QCTimeout, match="--qc-timeout"), time_limit(0.3):
        child = subprocess.Popen(["sleep", "30"])
        child.wait()
    assert time.monotonic() - started < 5
    assert child.wait(timeout=5) == -signal.SIGKILL  # killed by the limit, not left running
    with time_limit(5):  # a calculation inside the limit is untouched
        time.sleep(0.01)


def test_the_written_out_hartree_is_qcelementals():
    import qcelemental as qcel

    from methods.simulate import HARTREE_TO_EV

    assert HARTREE_TO_EV == qcel.constants.conversion_factor("hartree", "eV")
