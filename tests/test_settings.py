import subprocess
import sys
from pathlib import Path

import pytest

from configs.settings.models import CampaignSettings, SettingsError, load_qc_config

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args, fragment", [
    (["--search-size", "0"], "--search-size"),
    (["--qc-code", "gaussian"], "--qc-code"),
    (["--parallel-guesses", "many"], "--parallel-guesses"),
    (["--basis", "6-31g"], "--basis is only used by --qc-code nwchem"),
    (["--redis-port", "70000"], "--redis-port"),
    (["--qc-config", "does-not-exist.yml"], "does not exist"),
])
def test_bad_options_exit_2_with_one_line(args, fragment):
    result = run_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0]


def test_help_documents_every_option():
    result = run_cli("--help")
    assert result.returncode == 0
    for name in CampaignSettings.model_fields:
        assert "--" + name.replace("_", "-") in result.stdout


def test_method_defaults_follow_the_code():
    assert CampaignSettings().method == "GFN2-xTB"
    nwchem = CampaignSettings(qc_code="nwchem")
    assert (nwchem.method, nwchem.basis) == ("hf", "sto-3g")
    assert CampaignSettings(initial_count=3, search_size=5).total_evaluations == 8


def test_repository_qcengine_yml_is_valid():
    settings = load_qc_config(ROOT / "qcengine.yml", "local")
    assert settings.ncores >= 1 and settings.memory > 0


def test_qc_config_rejects_unknown_keys_and_sites(tmp_path):
    path = tmp_path / "qc.yml"
    path.write_text("local:\n  ncores: 2\n  cores: 3\n")
    with pytest.raises(SettingsError, match="cores"):
        load_qc_config(path, "local")
    with pytest.raises(SettingsError, match="no section for site 'polaris'"):
        load_qc_config(path, "polaris")


def test_task_config_puts_scratch_in_the_run_directory(tmp_path):
    path = tmp_path / "qc.yml"
    path.write_text("local:\n  ncores: 1\n  memory: 1.5\n")
    config = load_qc_config(path, "local").task_config(tmp_path / "run")
    assert config["memory"] == 1.5
    assert config["scratch_directory"] == str((tmp_path / "run" / "qc-scratch").resolve())
    assert Path(config["scratch_directory"]).is_dir()


def test_forcefield_help_documents_every_option():
    from configs.settings.models import ForcefieldSettings

    result = run_cli("forcefield", "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: run.py forcefield")
    for name in ForcefieldSettings.model_fields:
        assert "--" + name.replace("_", "-") in result.stdout, name
    assert run_cli("design", "--help").stdout == run_cli("--help").stdout  # design is the default campaign


@pytest.mark.parametrize("args, fragment", [
    (["--min-run-length", "50", "--max-run-length", "10"], "exceeds --max-run-length"),
    (["--qc-budget", "20"], "leaves nothing after the 48 initial"),
    (["--qc-code", "qm9"], "--qc-code"),
    (["--molecules"], "--molecules"),
    (["--temperature", "-5"], "--temperature"),
    (["--selector", "greedy"], "--selector"),
    (["--search-size", "10"], "unrecognized arguments"),  # a design option
])
def test_forcefield_bad_options_exit_2_with_one_line(args, fragment):
    result = run_cli("forcefield", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr


def test_forcefield_defaults():
    from configs.settings.models import ForcefieldSettings

    settings = ForcefieldSettings()
    assert settings.method == "GFN2-xTB" and settings.initial_count == 48 < settings.qc_budget
    assert ForcefieldSettings(molecules=["O"], initial_displacements=3).initial_count == 4
