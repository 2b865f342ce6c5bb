"""Property-based fuzzing of everything a user hands to molsteer: search-space files, qcengine.yml, the CLI.

The contract under test is the same everywhere: bad input ends in one clear line for the user (a SettingsError
message, or ``run.py: error: ...`` with exit status 2), never in a traceback.
"""

import contextlib
import csv
import gzip
import io
import json
import math
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from rdkit import Chem, RDLogger

import campaigns.cli as run
from configs.settings.models import (
    CampaignSettings,
    CommonSettings,
    ForcefieldSettings,
    QCMachineSettings,
    SettingsError,
    load_qc_config,
)
from configs.settings.search_space import SearchSpace, load_search_space

ROOT = Path(__file__).resolve().parents[1]
ELEMENTS = frozenset({"H", "C", "N", "O", "F"})

FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
FUZZ_MORE = settings(FUZZ, max_examples=500)
"""For the properties with the largest input spaces: lines of a search space, CSV layouts, command lines."""


def one_line(text: str) -> bool:
    """True for a single non-empty line (a trailing newline allowed): what a terminal shows as one line."""
    body = text.removesuffix("\n")
    return bool(body.strip()) and "\n" not in body and "\r" not in body


def no_line_breaks(**kwargs) -> st.SearchStrategy[str]:
    """Random text without \\n and \\r (see test_cli_line_breaks_in_arguments_stay_one_line for why)."""
    return st.text(alphabet=st.characters(exclude_characters="\n\r"), **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# a. search-space files

VALID = ["CCO", "OCC", "c1ccccc1", "C1=CC=CC=C1", "N#N", "CC(=O)O", "FC(F)F", "C1CC1", "O", "C", "CC#N", "OC=O"]
TOKENS = ["C", "N", "O", "F", "c", "n", "o", "H", "Si", "Na", "Cl", "Br", "S", "P", "B", "I", "Li",
          "[NH4+]", "[CH3]", "[CH2]", "[C]", "[O-]", "[Na+]", "[Si]", "[2H]", "[H]", "[H+]", "*", "[nH]", "[se]",
          "[Cu+2]", "[N+](=O)[O-]", "[C@@H]", "[13C]", "=", "#", "-", ":", "/", "\\", ".", "(", ")", "1", "2",
          "%10", "@", "+", "[", "]", "~", "$"]
smiles_like = st.one_of(
    st.sampled_from(VALID),
    st.lists(st.sampled_from(TOKENS), min_size=1, max_size=25).map("".join),
    st.integers(25, 5000).map(lambda n: "C" * n),  # huge chains: over the size limit, some over the length limit
    st.integers(1, 40).map(lambda n: "C" * n),
    st.text(max_size=20),  # anything at all, NUL bytes and lone surrogates included
)
name = st.one_of(st.none(), st.text(min_size=1, max_size=12), st.sampled_from(["ethanol", "mol 1", "日本", "é"]))
spaces = st.sampled_from([" ", "\t", "  ", " \t "])


@st.composite
def smi_line(draw) -> str:
    kind = draw(st.sampled_from(["molecule", "molecule", "molecule", "comment", "blank", "header", "raw"]))
    if kind == "comment":
        return "#" + draw(st.text(max_size=20))
    if kind == "blank":
        return draw(st.sampled_from(["", " ", "\t", "  \t"]))
    if kind == "header":
        return draw(st.sampled_from(["smiles", "SMILES name", "Smiles\tid"]))
    if kind == "raw":
        return draw(st.text(max_size=40))
    text = draw(smiles_like)
    label = draw(name)
    return text if label is None else text + draw(spaces) + label


def encode_text(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # lone surrogates become invalid UTF-8, as in a broken file


def write_file(directory: str, suffix: str, data: bytes, compress: bool | None = None) -> Path:
    path = Path(directory) / f"space{suffix}"
    if compress if compress is not None else suffix.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def check_canonical_and_valid(smiles: str, max_heavy_atoms: int = 30) -> None:
    """The rules, checked independently of configs.settings.search_space."""
    mol = Chem.MolFromSmiles(smiles)
    assert mol is not None, smiles
    assert Chem.MolToSmiles(mol) == smiles
    assert len(Chem.GetMolFrags(mol)) == 1, smiles
    assert 1 <= mol.GetNumHeavyAtoms() <= max_heavy_atoms, smiles
    for atom in mol.GetAtoms():
        assert atom.GetSymbol() in ELEMENTS, smiles
        assert atom.GetFormalCharge() == 0 and atom.GetNumRadicalElectrons() == 0, smiles


def check_load(path: Path, n_physical_lines: int | None = None) -> SearchSpace | None:
    """The property: a consistent SearchSpace of valid molecules, or a one-line SettingsError; nothing else."""
    try:
        space = load_search_space(path)
    except SettingsError as exc:
        message = str(exc)
        assert message.startswith(f"--search-space {path}:"), message
        assert one_line(message), message
        return None
    assert isinstance(space, SearchSpace) and space.path == path
    assert len(space.smiles) + len(space.skipped) + space.duplicates == space.n_lines
    assert len(space.names) == len(space.smiles) >= 1
    assert len(set(space.smiles)) == len(space.smiles)
    numbers = [number for number, _ in space.skipped]
    assert numbers == sorted(set(numbers)) and all(number >= 1 for number in numbers)
    if n_physical_lines is not None and numbers:
        assert numbers[-1] <= n_physical_lines
    assert all(isinstance(reason, str) and one_line(reason) for _, reason in space.skipped)
    RDLogger.DisableLog("rdApp.*")  # our own re-parse below must stay as quiet as the loader
    try:
        for smiles in space.smiles:
            check_canonical_and_valid(smiles)
    finally:
        RDLogger.EnableLog("rdApp.error")
        RDLogger.EnableLog("rdApp.warning")
    return space


@FUZZ_MORE
@given(lines=st.lists(smi_line(), max_size=30), ending=st.sampled_from(["\n", "\r\n"]),
       suffix=st.sampled_from([".smi", ".txt", "", ".smi.gz", ".SMI"]), final_newline=st.booleans())
def test_search_space_random_lines(lines, ending, suffix, final_newline):
    data = encode_text(ending.join(lines) + (ending if final_newline and lines else ""))
    with tempfile.TemporaryDirectory() as directory:
        space = check_load(write_file(directory, suffix, data), data.count(b"\n") + 1)
        if space is not None:
            assert space.n_lines <= data.count(b"\n") + 1


@FUZZ
@given(data=st.one_of(st.binary(max_size=3000), st.binary(max_size=200).map(lambda b: b"CCO\nOC x\n" + b)),
       suffix=st.sampled_from([".smi", ".csv", ".txt", ".bin"]))
def test_search_space_random_bytes(data, suffix):
    with tempfile.TemporaryDirectory() as directory:
        check_load(write_file(directory, suffix, data))


@FUZZ
@given(lines=st.lists(st.one_of(st.sampled_from(VALID), smi_line()), min_size=1, max_size=15),
       accents=st.lists(st.sampled_from(["é", "ü", "ß", "ø", "日本", "€", "ï"]), min_size=1, max_size=3),
       encoding=st.sampled_from(["latin-1", "cp1252", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-8-sig"]),
       suffix=st.sampled_from([".smi", ".csv", ".smi.gz"]))
def test_search_space_wrong_encodings(lines, accents, encoding, suffix):
    text = "\n".join(f"{line} {''.join(accents)}" for line in lines) + "\n"
    if suffix == ".csv":
        text = "smiles,name\n" + text.replace(" ", ",", 1)
    with tempfile.TemporaryDirectory() as directory:
        check_load(write_file(directory, suffix, text.encode(encoding, "replace")))


@st.composite
def gzip_payload(draw) -> bytes:
    kind = draw(st.sampled_from(["random content", "garbage", "truncated", "flipped", "members", "empty", "trailing"]))
    text = "\n".join(draw(st.lists(smi_line(), min_size=1, max_size=30))).encode("utf-8", "surrogatepass")
    packed = gzip.compress(text)
    if kind == "random content":
        return gzip.compress(draw(st.binary(max_size=2000)))
    if kind == "garbage":
        return draw(st.binary(max_size=2000))
    if kind == "truncated":
        return packed[:draw(st.integers(0, len(packed) - 1))]
    if kind == "flipped":
        at = draw(st.integers(0, len(packed) - 1))
        return packed[:at] + bytes([packed[at] ^ draw(st.integers(1, 255))]) + packed[at + 1:]
    if kind == "members":
        return packed + gzip.compress(draw(st.binary(max_size=200)))
    if kind == "trailing":
        return packed + draw(st.binary(min_size=1, max_size=50))
    return b""


@FUZZ
@given(data=gzip_payload(), suffix=st.sampled_from([".smi.gz", ".csv.gz", ".gz", ".smi"]))
def test_search_space_broken_gzip(data, suffix):
    with tempfile.TemporaryDirectory() as directory:
        check_load(write_file(directory, suffix, data, compress=False))


cell = st.one_of(smiles_like, st.text(max_size=15), st.sampled_from(['"', '""', ",", "a,b", '"x"y', "\n", ""]))
header_name = st.one_of(st.sampled_from(["smiles", "SMILES", " Smiles ", "name", "id", "ID", "value", "", "smile"]),
                        st.text(max_size=10))


@FUZZ_MORE
@given(header=st.lists(header_name, min_size=1, max_size=5), rows=st.lists(st.lists(cell, max_size=6), max_size=20),
       quoting=st.sampled_from(["writer", "raw"]), suffix=st.sampled_from([".csv", ".csv.gz", ".CSV"]))
def test_search_space_random_csv(header, rows, quoting, suffix):
    if quoting == "writer":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(header)
        writer.writerows(rows)
        text = buffer.getvalue()
    else:
        text = "\n".join(",".join(row) for row in [header, *rows]) + "\n"
    with tempfile.TemporaryDirectory() as directory:
        check_load(write_file(directory, suffix, encode_text(text)), text.count("\n") + 1)


# ---------------------------------------------------------------------------------------------------------------
# b. qcengine.yml

QC_KEYS = list(QCMachineSettings.model_fields)
REAL_QC = yaml.safe_load((ROOT / "qcengine.yml").read_text())
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), no_line_breaks(max_size=20),
                    st.sampled_from([-1, 0, -0.5, 1e300, "1", "two", "", "~", "yes", "null"]))
documents = st.recursive(
    scalars, lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.one_of(no_line_breaks(max_size=10), st.sampled_from(QC_KEYS + ["local"])), children,
                      max_size=4),
    max_leaves=15)


def check_qc_config(path: Path, site: str = "local") -> None:
    """The property: a QCMachineSettings whose constraints hold, or a one-line SettingsError; nothing else."""
    try:
        config = load_qc_config(path, site)
    except SettingsError as exc:
        assert one_line(str(exc)), str(exc)
        assert str(path) in str(exc)
        return
    assert isinstance(config, QCMachineSettings)
    assert isinstance(config.ncores, int) and config.ncores >= 1
    assert config.memory > 0 and not math.isnan(config.memory)
    assert isinstance(config.retries, int) and config.retries >= 0


def dump(document, unicode: bool) -> bytes:
    return yaml.safe_dump(document, allow_unicode=unicode).encode("utf-8", "surrogatepass")


@FUZZ
@given(document=st.one_of(documents, st.fixed_dictionaries({"local": documents}),
                          st.fixed_dictionaries({"local": st.dictionaries(st.sampled_from(QC_KEYS), scalars)})),
       unicode=st.booleans(), site=st.sampled_from(["local", "polaris", ""]))
def test_qc_config_random_yaml_documents(document, unicode, site):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "qcengine.yml"
        path.write_bytes(dump(document, unicode))
        check_qc_config(path, site)


@st.composite
def mutated_real_config(draw) -> dict:
    document = {name: dict(section) for name, section in REAL_QC.items()}
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["set", "negate", "delete", "unknown", "rename", "section", "wrap"]))
        section = document.get("local")
        if action == "set" and isinstance(section, dict):
            section[draw(st.sampled_from(QC_KEYS))] = draw(documents)
        elif action == "negate" and isinstance(section, dict):
            key = draw(st.sampled_from(["ncores", "memory", "retries"]))
            section[key] = draw(st.sampled_from([-1, -0.5, 0, -(10**30), float("-inf"), float("nan"), "-2"]))
        elif action == "delete" and isinstance(section, dict) and section:
            section.pop(draw(st.sampled_from(sorted(section))))
        elif action == "unknown" and isinstance(section, dict):
            section[draw(no_line_breaks(min_size=1, max_size=12))] = draw(scalars)
        elif action == "rename":
            document[draw(no_line_breaks(max_size=8))] = document.pop("local", None)
        elif action == "section":
            document["local"] = draw(documents)
        elif action == "wrap":
            document = {"local": [section]} if draw(st.booleans()) else [document]
            break
    return document


@FUZZ
@given(document=mutated_real_config(), unicode=st.booleans())
def test_qc_config_mutated_repository_file(document, unicode):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "qcengine.yml"
        path.write_bytes(dump(document, unicode))
        check_qc_config(path)



@FUZZ
@given(data=st.one_of(st.binary(max_size=500), st.text(max_size=300).map(encode_text),
                      st.text(alphabet="local:ncores memory{}[]-,'\"#&*!|>\n\t 0123456789.", max_size=200)
                      .map(str.encode)))
def test_qc_config_raw_text_and_bytes(data):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "qcengine.yml"
        path.write_bytes(data)
        check_qc_config(path)


@pytest.mark.parametrize("content", [
    pytest.param(b"\x89PNG\r\n\x1a\n\x00\xff", id="binary"),
    pytest.param("local:\n  scratch_directory: caf\xe9\n".encode("latin-1"), id="latin-1"),
    pytest.param("local:\n  ncores: 2\n".encode("utf-16"), id="utf-16"),
    pytest.param(b"local:\n  ncores: [1,\n", id="yaml-syntax-error"),
    pytest.param(b"local:\n\tncores: 1\n", id="tab-indent"),
    pytest.param(b'local:\n  "a\\nb": 1\n', id="unknown-key-with-line-break"),
    pytest.param(b"local: " + b"[" * 5000 + b"]" * 5000 + b"\n", id="deeply-nested"),
    pytest.param(b"local:\n  ncores: 1" + b"0" * 5000 + b"\n", id="5001-digit-integer"),
    pytest.param(None, id="directory"),
])
def test_qc_config_known_bad_files(tmp_path, content):
    path = tmp_path / "qcengine.yml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    check_qc_config(path)


# ---------------------------------------------------------------------------------------------------------------
# c. the command line


def option_strings(campaign: str) -> list[str]:
    return sorted({option for action in run.build_parser(campaign)._actions for option in action.option_strings
                   if option not in ("-h", "--help")})


OPTIONS = sorted(set(option_strings("design")) | set(option_strings("forcefield")))
CHOICES = sorted({str(choice) for campaign in ("design", "forcefield") for action in run.build_parser(campaign)._actions
                  for choice in (action.choices or ())})
value = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.integers(-5, 100).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", " ", "nan", "inf", "-inf", "-1", "0", "1e3", "1.5", "１２", "0x10", "1_000", "-", "--",
                     "true", "None", "qm9:HOMO_au", "qm9:nope", "GFN1-xTB", "hf", "sto-3g", "CO", "/nonexistent",
                     "1" * 5000]),
    st.sampled_from(CHOICES),
    no_line_breaks(max_size=20),
)


ACTIONS = {option: action for campaign in ("design", "forcefield") for action in run.build_parser(campaign)._actions
           for option in action.option_strings}


def typed_value(option: str) -> st.SearchStrategy[str]:
    """A value of the option's own type, so that many examples get past argparse into the settings' validation."""
    action = ACTIONS[option]
    if action.choices:
        return st.sampled_from([str(choice) for choice in action.choices])
    if action.type is int:
        return st.one_of(st.integers(-3, 3), st.integers(1, 10**6), st.integers(-(2**64), 2**64)).map(str)
    if action.type is float:
        return st.one_of(st.floats(-10, 1e4), st.floats(), st.sampled_from([0.0, -0.0, 1e-300])).map(str)
    return value


@st.composite
def argument(draw) -> list[str]:
    kind = draw(st.sampled_from(["typed value"] * 6 + ["option value", "option value", "option", "option=value",
                                                       "unknown", "bare", "list", "help"]))
    option = draw(st.sampled_from(OPTIONS))
    if kind == "typed value":
        return [option, draw(typed_value(option))] if ACTIONS[option].nargs != 0 else [option]
    if kind == "option value":
        return [option, draw(value)]
    if kind == "option":
        return [option]  # a flag, or an option whose value is missing
    if kind == "option=value":
        return [f"{option}={draw(value)}"]
    if kind == "unknown":
        return ["--" + draw(no_line_breaks(max_size=12)), draw(value)]
    if kind == "bare":
        return [draw(value)]
    if kind == "list":
        return [option, *draw(st.lists(value, min_size=1, max_size=4))]
    return [draw(st.sampled_from(["--help", "-h"]))] if draw(st.integers(0, 9)) == 0 else [option, draw(value)]


@FUZZ_MORE
@given(campaign=st.sampled_from([[], ["design"], ["forcefield"]]),
       arguments=st.lists(argument(), max_size=6).map(lambda parts: [a for part in parts for a in part]),
       repeat=st.booleans())
def test_cli_random_arguments(campaign, arguments, repeat):
    check_cli(campaign + arguments + (arguments[:2] if repeat else []))


def check_cli(argv: list[str]) -> None:
    """The property: settings, or exit 0 with the help, or exit 2 with one ``run.py...error:`` line; nothing else."""
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            result = run.parse_settings(argv)
    except SystemExit as exc:
        if exc.code == 0:
            event("help")
            assert stdout.getvalue().startswith("usage: run.py"), argv
            assert stderr.getvalue() == ""
            return
        assert exc.code == 2, (argv, exc.code)
        message = stderr.getvalue()
        assert one_line(message), (argv, message)
        assert message.startswith("run.py") and "error:" in message, (argv, message)
        assert "Traceback" not in message
        event("exit 2: " + ("value rejected by the settings" if ": error: --" in message or ": error: options:"
                            in message else "rejected by argparse"))
        return
    event("settings returned")
    assert stderr.getvalue() == "", argv
    assert isinstance(result[1], CommonSettings)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), no_line_breaks(max_size=12)),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(no_line_breaks(max_size=6), children, max_size=3),
    max_leaves=6)
FIELDS = sorted(set(CampaignSettings.model_fields) | set(ForcefieldSettings.model_fields))


@st.composite
def saved_run(draw) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))
    params = draw(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=5))
    params["campaign"] = draw(st.one_of(st.sampled_from(["design", "forcefield"]), json_values))
    return json.dumps(params).encode()


@FUZZ
@given(saved=saved_run(), budget=st.sampled_from([[], ["--search-size", "5000"], ["--qc-budget", "5000"]]),
       extra=st.lists(argument(), max_size=2).map(lambda parts: [a for part in parts for a in part]))
def test_cli_resume_with_random_saved_parameters(saved, budget, extra):
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / "run_params.json").write_bytes(saved)
        check_cli(["--resume", directory, *budget, *extra])


@pytest.mark.parametrize("argv", [
    pytest.param(["bogus\nline"], id="unrecognized-argument"),
    pytest.param(["--qc=\nx"], id="ambiguous-option"),
    pytest.param(["forcefield", "--temperature", "300", "x\ry"], id="carriage-return"),
    pytest.param(["--resume", "no\nsuch-run"], id="resume-directory"),
])
def test_cli_line_breaks_in_arguments_stay_one_line(argv):
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as info:
        run.parse_settings(argv)
    assert info.value.code == 2
    assert one_line(stderr.getvalue()), stderr.getvalue()
