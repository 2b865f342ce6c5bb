"""Records survive kills: fsynced lines, torn last lines set aside, attempts stamped, one owner per run."""

import json
import subprocess
import sys

import pytest

from store.names import ATTEMPT_RECORDS
from store.rundir import RunDirectory, RunDirectoryError, read_jsonl, set_aside_torn_tail


def test_a_torn_last_line_is_set_aside_and_never_glued_to_the_next_record(tmp_path):
    path = tmp_path / "simulation_records.jsonl"
    path.write_text(json.dumps({"smiles": "C", "value": 1.0}) + "\n" + '{"smiles": "CC", "val')
    assert [r["smiles"] for r in read_jsonl(path)] == ["C"]  # reading skips it
    run_dir = RunDirectory(tmp_path, attempt=2)
    run_dir.records(path.name).write({"smiles": "CCC", "value": 3.0})  # opening for append sets it aside
    run_dir.close()
    records = read_jsonl(path)
    assert [r["smiles"] for r in records] == ["C", "CCC"] and records[1]["resume"] == 2
    assert (tmp_path / "simulation_records.jsonl.torn").read_text() == '{"smiles": "CC", "val\n'
    assert set_aside_torn_tail(path) is None  # a clean file is left alone


def test_a_corrupt_line_in_the_middle_is_skipped_with_the_rest_kept(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\n\x00\x00garbage\n{"a": 2}\n')
    assert [r["a"] for r in read_jsonl(path)] == [1, 2]


def test_one_process_owns_a_run_directory_and_a_resume_counts_attempts(tmp_path):
    run_dir = RunDirectory.create(tmp_path, {"campaign": "design", "seed": 1})
    run_dir.begin_attempt({"pid": 1})
    # Another process cannot take it while this one holds it (POSIX locks are per process).
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; from store.rundir import RunDirectory as R; R.reopen(sys.argv[1])",
         str(run_dir.path)], capture_output=True, text=True)
    assert probe.returncode != 0 and "in use by a running molsteer process" in probe.stderr
    run_dir.close()
    run_dir._lock_handle.close()  # what the kernel does when the owner dies
    again = RunDirectory.reopen(run_dir.path)
    assert again.attempt == 1
    again.begin_attempt({"pid": 2})
    again.close()
    assert [a["resume"] for a in read_jsonl(run_dir.path / ATTEMPT_RECORDS)] == [0, 1]


@pytest.mark.parametrize("content", [None, "not json", '["a list"]', '{"no": "campaign"}'])
def test_resume_of_something_that_is_not_a_run_directory_says_so(tmp_path, content):
    if content is not None:
        (tmp_path / "run_params.json").write_text(content)
    with pytest.raises(RunDirectoryError):
        RunDirectory.saved_params(tmp_path)
    with pytest.raises(RunDirectoryError, match="is not a directory"):
        RunDirectory.saved_params(tmp_path / "missing")
