"""Calibration of xTB ionization energies to experiment (``--ie-correction``): real xTB on small molecules."""

import contextlib
import io
import math

import pytest
from pydantic import ValidationError

import campaigns.cli as run
from configs.settings.models import CampaignSettings
from methods import simulate
from methods.simulate import (
    HARTREE_TO_EV,
    XTB_IP_SHIFT_HARTREE,
    QCSpec,
    evaluate_molecule,
    ipea_xtb_parameters,
)

XTB_IE = {"code": "xtb", "method": "GFN2-xTB", "objective": "ionization-energy"}
CONFIG = {"ncores": 1}
EXPERIMENT = {"C": 12.61, "c1ccccc1": 9.24}  # NIST WebBook evaluated IEs, eV (data/experimental_ie.csv)


def needs_ipea_parameters() -> None:
    """`make setup` installs Debian's xtb, which ships the parameter file: its absence is a failure, not a skip."""
    ipea_xtb_parameters()


def test_shift_is_the_xtb_authors_constant():
    assert XTB_IP_SHIFT_HARTREE * HARTREE_TO_EV == pytest.approx(4.8455, abs=1e-4)  # xtb --vip prints 4.8455


def test_shift_lowers_the_ie_by_exactly_the_shift():
    raw = evaluate_molecule("O", QCSpec(ie_type="vertical", **XTB_IE), CONFIG)
    shifted = evaluate_molecule("O", QCSpec(ie_type="vertical", ie_correction="shift", **XTB_IE), CONFIG)
    assert raw.success and shifted.success, (raw.failure_reason, shifted.failure_reason)
    assert raw.value - shifted.value == pytest.approx(XTB_IP_SHIFT_HARTREE * HARTREE_TO_EV, abs=1e-9)
    assert shifted.energies == raw.energies  # same structures, same energies: only the read-out moves


@pytest.mark.parametrize("smiles", sorted(EXPERIMENT))
def test_ipea_xtb_ie_is_close_to_experiment(smiles):
    needs_ipea_parameters()
    record = evaluate_molecule(smiles, QCSpec(ie_correction="ipea-xtb", **XTB_IE), CONFIG)
    assert record.success, record.failure_reason
    assert math.isfinite(record.value)
    assert abs(record.value - EXPERIMENT[smiles]) < 1.0  # raw GFN2 is ~4-5 eV off for both
    ipea = (record.energies["cation_ipea-xtb"] - record.energies["neutral_ipea-xtb"]) * HARTREE_TO_EV
    assert record.value == pytest.approx(ipea - XTB_IP_SHIFT_HARTREE * HARTREE_TO_EV)
    assert record.relax_steps["cation"] >= 1  # adiabatic: the GFN2 relaxations still ran


def test_ipea_xtb_without_its_parameter_file_fails_before_any_relaxation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("XTBPATH", "XTBHOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(simulate, "IPEA_XTB_SHARED_DIRS", ())
    record = evaluate_molecule("C", QCSpec(ie_correction="ipea-xtb", **XTB_IE), CONFIG)
    assert not record.success
    assert "param_ipea-xtb.txt" in record.failure_reason and "$XTBPATH" in record.failure_reason
    assert record.relax_steps == {}


@pytest.mark.parametrize("options, rejected", [
    ({"qc_code": "nwchem"}, "--qc-code nwchem"),
    ({"qc_code": "qm9"}, "--qc-code qm9"),
    ({"objective": "atomization-energy"}, "--objective atomization-energy"),
])
@pytest.mark.parametrize("correction", ["shift", "ipea-xtb"])
def test_settings_reject_the_option_outside_xtb_ionization_energies(options, rejected, correction):
    with pytest.raises(ValidationError) as info:
        CampaignSettings(ie_correction=correction, **options)
    message = str(info.value)
    assert f"--ie-correction {correction} calibrates xTB ionization energies" in message and rejected in message


def test_cli_rejects_the_option_with_one_line():
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as info:
        run.parse_settings(["--qc-code", "nwchem", "--ie-correction", "shift"])
    assert info.value.code == 2
    lines = stderr.getvalue().strip().splitlines()
    assert len(lines) == 1 and "needs --qc-code xtb and --objective ionization-energy" in lines[0]


def test_qc_spec_rejects_the_option_outside_xtb_ionization_energies():
    with pytest.raises(ValidationError, match="calibrates xTB ionization energies"):
        QCSpec(code="nwchem", method="hf", basis="sto-3g", objective="ionization-energy", ie_correction="shift")
    with pytest.raises(ValidationError, match="calibrates xTB ionization energies"):
        QCSpec(code="xtb", method="GFN2-xTB", objective="atomization-energy", ie_correction="ipea-xtb")


def test_default_is_uncorrected():
    assert CampaignSettings().ie_correction == "none"
    assert QCSpec(**XTB_IE).model_dump()["ie_correction"] == "none"


class Written(Exception):
    """Stops the assembly once qc_spec.json is written: nothing after it matters here."""


class CapturingRunDirectory:
    def __init__(self):
        self.files = {}

    def write_json(self, name, data):
        self.files[name] = data
        raise Written


def test_design_campaign_records_the_option_in_qc_spec_json():
    from campaigns.design import assemble

    run_dir = CapturingRunDirectory()
    with pytest.raises(Written):
        assemble(CampaignSettings(ie_correction="shift"), run_dir, CONFIG, None)
    assert run_dir.files["qc_spec.json"]["ie_correction"] == "shift"
    assert run_dir.files["qc_spec.json"]["units"] == "eV"
