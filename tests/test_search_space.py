import gzip
import logging
from pathlib import Path

import pytest
from rdkit import rdBase

from configs.settings import search_space
from configs.settings.models import SettingsError
from configs.settings.search_space import MAX_LINE_BYTES, SearchSpace, load_search_space, skipped_summary

SMI = """\
# a library with every kind of line
CCO ethanol
c1ccccc1 benzene ring

OCC ethanol again
C1CC
[Si](C)(C)C
[NH4+]
[CH3]
CCO.Cl
CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC
[H][H]
C(C)(C)(C)(C)C
N#N
"""
"""Line numbers: 2 ethanol, 3 benzene, 5 duplicate, 6 unparsable, 7 Si, 8 charge, 9 radical, 10 salt, 11 too big,
12 no heavy atom, 13 valence, 14 nitrogen."""


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(gzip.compress(text) if path.name.lower().endswith(".gz") else text)
    return path


def error_of(path, **kwargs) -> str:
    with pytest.raises(SettingsError) as info:
        load_search_space(path, **kwargs)
    message = str(info.value)
    assert message.startswith(f"--search-space {path}:"), message
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", ["lib.smi", "lib.txt", "lib", "lib.smi.gz", "LIB.SMI.GZ"])
def test_smi_file_every_rule(tmp_path, name):
    space = load_search_space(write(tmp_path / name, SMI))
    assert isinstance(space, SearchSpace) and space.path == tmp_path / name
    assert space.smiles == ["CCO", "c1ccccc1", "N#N"]
    assert space.names == ["ethanol", "benzene ring", None]
    assert space.n_lines == 12 and space.duplicates == 1
    reasons = dict(space.skipped)
    assert sorted(reasons) == [6, 7, 8, 9, 10, 11, 12, 13]
    assert reasons[6] == "unparsable SMILES 'C1CC'"
    assert reasons[7] == "element Si is not supported (H, C, N, O, F)"
    assert reasons[8].startswith("formal charge +1 on N")
    assert reasons[9].startswith("radical electrons on C")
    assert reasons[10].startswith("2 fragments")
    assert reasons[11] == "31 heavy atoms (at most 30)"
    assert reasons[12] == "no heavy atoms"
    assert reasons[13].startswith("unparsable SMILES 'C(C)(C)(C)(C)C'") and "valence" in reasons[13]
    assert len(space.smiles) + len(space.skipped) + space.duplicates == space.n_lines


@pytest.mark.parametrize("name", ["lib.csv", "lib.csv.gz"])
def test_csv_file(tmp_path, name):
    text = ('ID,Name, SMILES ,value\n1,water,O,0.5\n\n# a comment row\n2,"ethanol, dry",CCO,1\n3,,C1CC,2\n'
            '4,methanol,OC,3\n')
    space = load_search_space(write(tmp_path / name, text))
    assert space.smiles == ["O", "CCO", "CO"]
    assert space.names == ["water", "ethanol, dry", "methanol"]  # 'name' wins over 'id'
    assert space.skipped == [(6, "unparsable SMILES 'C1CC'")]
    assert space.n_lines == 4 and space.duplicates == 0


def test_csv_id_column_quoted_newlines_and_crlf(tmp_path):
    text = 'smiles,id,note\r\nCCO,e1,"two\r\nlines"\r\nC1CC,bad,x\r\nOCC,e2,x\r\n'
    space = load_search_space(write(tmp_path / "lib.csv", text))
    assert space.smiles == ["CCO"] and space.names == ["e1"]
    assert space.skipped == [(4, "unparsable SMILES 'C1CC'")]  # the row after the two-line row starts on line 4
    assert space.duplicates == 1 and space.n_lines == 3


def test_csv_empty_smiles_cell_and_whitespace_inside(tmp_path):
    space = load_search_space(write(tmp_path / "lib.csv", 'smiles,name\nCCO,\n,b\n"C CO",c\n'))
    assert space.smiles == ["CCO"] and space.names == [None]
    assert space.skipped[0] == (3, "empty SMILES")
    assert space.skipped[1][0] == 4 and "cannot be in a SMILES" in space.skipped[1][1]


def test_smi_header_bom_crlf_and_tabs(tmp_path):
    space = load_search_space(write(tmp_path / "lib.smi", "\ufeffSMILES\tName\r\nCCO\tethanol\r\nC=O\r\n"))
    assert space.smiles == ["CCO", "C=O"] and space.names == ["ethanol", None] and space.n_lines == 2


def test_elements_and_size_are_parameters(tmp_path):
    path = write(tmp_path / "lib.smi", "CCS\nCCCC\nCC\n")
    space = load_search_space(path, elements=frozenset({"C", "H", "S"}), max_heavy_atoms=3)
    assert space.smiles == ["CCS", "CC"]
    assert space.skipped == [(2, "4 heavy atoms (at most 3)")]
    space = load_search_space(write(tmp_path / "cs.smi", "CCS\nS=C=S\n"), elements=frozenset({"S", "C"}))
    assert space.smiles == ["S=C=S"]
    assert space.skipped == [(1, "element H is not supported (C, S)")]  # implicit hydrogens count too
    space = load_search_space(write(tmp_path / "co.smi", "S=C=S\nO=C=O\n"), elements=frozenset({"O", "C"}))
    assert space.skipped == [(1, "element S is not supported (C, O)")]


def test_overlong_line_is_skipped_not_read_whole(tmp_path):
    path = write(tmp_path / "lib.smi", "CCO\n" + "C" * (MAX_LINE_BYTES + 10) + "\nOC\n" + "C" * 5000 + "\n")
    space = load_search_space(path)
    assert space.smiles == ["CCO", "CO"]
    assert space.skipped[0] == (2, f"line longer than {MAX_LINE_BYTES} bytes")
    assert space.skipped[1][0] == 4 and "5000 characters is too long" in space.skipped[1][1]


def test_skipped_lines_are_logged_and_rdkit_stays_quiet(tmp_path, caplog, capfd):
    before = rdBase.LogStatus()
    with caplog.at_level(logging.WARNING, logger="configs.settings.search_space"):
        space = load_search_space(write(tmp_path / "lib.smi", SMI))
    assert rdBase.LogStatus() == before
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""  # RDKit writes straight to the C++ stderr
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"--search-space {tmp_path / 'lib.smi'}: {skipped_summary(space)}"]


def test_skipped_summary_format():
    space = SearchSpace(Path("x.smi"), ["C"], [None], 9, [(i, f"reason {i}") for i in range(2, 9)], 1)
    assert skipped_summary(space, first=2) == "7 of 9 lines skipped (line 2: reason 2; line 3: reason 3; ...)"
    assert skipped_summary(space, first=7).endswith("line 8: reason 8)")
    assert skipped_summary(SearchSpace(Path("x"), ["C"], [None], 1, [], 0)) == "0 of 1 line skipped"


@pytest.mark.parametrize("name", ["lib.smi", "lib.csv"])
def test_empty_file(tmp_path, name):
    assert error_of(write(tmp_path / name, "")).endswith("the file is empty")


def test_only_blank_and_comment_lines(tmp_path):
    assert "only blank or comment lines" in error_of(write(tmp_path / "lib.smi", "\n# nothing\n   \n"))
    assert "only blank or comment lines" in error_of(write(tmp_path / "lib.csv", "# nothing\n\n"))
    assert "a CSV header but no data rows" in error_of(write(tmp_path / "h.csv", "smiles,name\n"))


def test_no_valid_molecule_names_the_first_lines(tmp_path):
    message = error_of(write(tmp_path / "lib.smi", "# header comment\nC1CC\n[Na+].[Cl-]\nxyz\nC[Si]\n"))
    assert "no valid molecule" in message
    assert "4 of 4 lines skipped" in message
    assert "line 2: unparsable SMILES 'C1CC'" in message and "line 3: 2 fragments" in message
    assert "line 4: unparsable SMILES 'xyz'" in message and "line 5" not in message  # three reasons at most


def test_binary_junk(tmp_path):
    message = error_of(write(tmp_path / "lib.smi", b"CCO\n\x89PNG\r\n\x1a\n\x00\x00"))
    assert "line 2 is not UTF-8" in message and "byte 0x89 at byte offset 4" in message
    message = error_of(write(tmp_path / "nul.smi", b"CCO\nCC\x00O\n"))
    assert "NUL byte" in message and "line 2" in message and "byte offset 6" in message


def test_latin1_and_utf16(tmp_path):
    message = error_of(write(tmp_path / "lib.smi", "CCO éthanol\n".encode("latin-1")))
    assert "line 1 is not UTF-8 text" in message and "byte 0xe9 at byte offset 4" in message
    assert "UTF-16" in error_of(write(tmp_path / "u.smi", "CCO\n".encode("utf-16")))
    message = error_of(write(tmp_path / "lib.smi.gz", "CCO\nOC é\n".encode("latin-1")))
    assert "line 2" in message and "offset 7 of the uncompressed data" in message


def test_directory_and_missing_file(tmp_path):
    assert error_of(tmp_path).endswith("is a directory, not a file of molecules")
    assert error_of(tmp_path / "nope.smi").endswith("the file does not exist")
    assert error_of(str(tmp_path / "nope.smi.gz")).endswith("the file does not exist")


def test_unreadable_file_any_user(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    path = write(tmp_path / "lib.smi", "CCO\n")
    monkeypatch.setattr(search_space, "open", refuse, raising=False)
    assert error_of(path).endswith("cannot be read: permission denied")


def test_csv_without_smiles_column(tmp_path):
    message = error_of(write(tmp_path / "lib.csv", "# made by hand\nname,smile\nwater,O\n"))
    assert "header (line 2) has no 'smiles' column" in message and "'name', 'smile'" in message


def test_malformed_csv_rows(tmp_path):
    message = error_of(write(tmp_path / "lib.csv", "smiles,name\nCCO,a\nOC,b,extra\n"))
    assert "malformed CSV row at line 3: 3 fields, the header has 2" in message
    message = error_of(write(tmp_path / "q.csv", 'smiles,name\nCCO,a\nOC,"b\n'))
    assert "malformed CSV row at line 3" in message
    message = error_of(write(tmp_path / "x.csv", 'smiles\n"CC"O\n'))
    assert "malformed CSV row at line 2" in message


def test_broken_gzip(tmp_path):
    data = gzip.compress(("CCO\n" * 5000).encode())
    truncated = tmp_path / "lib.smi.gz"
    truncated.write_bytes(data[: len(data) // 2])
    assert "the gzip file is truncated" in error_of(truncated)
    garbage = tmp_path / "junk.csv.gz"
    garbage.write_bytes(b"this is not gzip at all\n")
    assert "not a valid gzip file" in error_of(garbage)
    corrupt = tmp_path / "corrupt.smi.gz"
    corrupt.write_bytes(data[:20] + bytes(b ^ 0xFF for b in data[20:40]) + data[40:])
    assert "gzip" in error_of(corrupt)
    disguised = tmp_path / "lib.smi"
    disguised.write_bytes(data)
    assert "gzip-compressed; give it a name ending in .gz" in error_of(disguised)
