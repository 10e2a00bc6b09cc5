"""Pure pieces of the output guarantees: path clashes, leftover sweeping, formula-safe cells, catalog diffs."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rifml.catalog import catalog_differences
from rifml.errors import RifmlInputError
from rifml.io.paths import Role, check_paths, prepare_outputs, sweep_stale_parts
from rifml.io.writer import _SIGNED_NUMBER, FORMULA_START, AtomicCsvWriter, neutralize_formulas, restore_cells
from rifml.tracking import check_experiment_name, require_store, store_lock


def dead_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_an_output_on_an_input_is_refused_by_name_link_and_inode(tmp_path):
    panel = tmp_path / "panels.csv"
    panel.write_text("patient_id\nA\n")
    (tmp_path / "link.csv").symlink_to(panel)
    os.link(panel, tmp_path / "hard.csv")
    for output in [panel, tmp_path / "link.csv", tmp_path / "hard.csv", tmp_path / "sub" / ".." / "panels.csv"]:
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(RifmlInputError, match="same file as --input"):
            check_paths([Role("--input", panel)], [Role("--output", output)])
    assert panel.read_text() == "patient_id\nA\n"


def test_two_outputs_on_one_name_are_refused_even_before_either_exists(tmp_path):
    (tmp_path / "a.csv").symlink_to(tmp_path / "target.csv")  # dangling: resolves to target.csv
    with pytest.raises(RifmlInputError, match="name the same place"):
        check_paths([], [Role("--output", tmp_path / "target.csv"), Role("--rejects", tmp_path / "a.csv")])
    with pytest.raises(RifmlInputError, match="name the same place"):
        check_paths([], [Role("--output", tmp_path / "x.csv"), Role("--rejects", tmp_path / "x.csv")])
    assert not (tmp_path / "target.csv").exists() and not (tmp_path / "x.csv").exists()


def test_a_folder_output_may_not_hold_an_input(tmp_path):
    (tmp_path / "data").mkdir()
    calls = tmp_path / "data" / "calls.csv"
    calls.write_text("x\n")
    with pytest.raises(RifmlInputError, match="holds --calls"):
        check_paths([Role("--calls", calls)], [Role("--output", tmp_path / "data", folder=True)])
    with pytest.raises(RifmlInputError, match="holds --calls"):
        check_paths([Role("--calls", calls)], [Role("--output", tmp_path, folder=True)])
    check_paths([Role("--calls", calls)], [Role("--output", tmp_path / "report", folder=True)])


@pytest.mark.parametrize(
    "make, output, message",
    [
        (lambda t: (t / "dir.csv").mkdir(), "dir.csv", "is a folder: give a file name"),
        (lambda t: None, "missing/calls.csv", "does not exist"),
        (lambda t: (t / "afile").write_text(""), "afile/calls.csv", "is a file, not a folder"),
    ],
)
def test_unusable_output_locations_are_one_clear_error(tmp_path, make, output, message):
    make(tmp_path)
    with pytest.raises(RifmlInputError, match=message):
        check_paths([], [Role("--output", tmp_path / output)])


def test_a_folder_that_refuses_writes_is_an_input_error_even_for_root():
    # /sys refuses new files for every user, root included (chmod would not stop root)
    with pytest.raises(RifmlInputError, match="cannot write in folder /sys"):
        check_paths([], [Role("--output", Path("/sys/calls.csv"))])


def test_prepare_outputs_ignores_options_not_given(tmp_path):
    prepare_outputs([("--input", tmp_path / "in.csv"), ("--catalog", None)], [("--output", tmp_path / "o.csv"), ("--x", None)])


def test_sweep_removes_only_old_leftovers_of_ended_runs_for_that_name(tmp_path):
    started = time.time()
    gone = dead_pid()
    old = started - 60
    stale = tmp_path / f".calls.csv.{gone}.abc123.part"
    stale_report = tmp_path / f".calls.csv.old-{gone}"
    live = tmp_path / f".calls.csv.{os.getppid()}.def456.part"  # a running process (our parent)
    fresh = tmp_path / f".calls.csv.{gone}.new999.part"  # written after this run started
    other_name = tmp_path / f".rejects.csv.{gone}.abc123.part"
    for path in (stale, live, other_name, fresh):
        path.write_text("half a file")
    stale_report.mkdir()
    (stale_report / "index.html").write_text("old")
    for path in (stale, stale_report, live, other_name):
        os.utime(path, (old, old))
    os.utime(fresh, (started + 5, started + 5))
    removed = sweep_stale_parts(tmp_path / "calls.csv", started=started)
    assert sorted(removed) == sorted([stale, stale_report])
    assert not stale.exists() and not stale_report.exists()
    assert live.exists() and fresh.exists() and other_name.exists()


SPREADSHEET_TRIGGERS = ["=HYPERLINK(\"http://x\",\"y\")", "+1+2", "@SUM(A1)", "-cmd|' /C calc'!A0", "\tA", "\rA",
                        "＝1+1", "'=already"]
PLAIN = ["-3", "-3.5", "+4", "-1e5", "-2,5", "P-001", "O'Brien", "", "12", "'quoted", "x=y", "'-3"]


def test_cells_a_spreadsheet_would_run_get_a_leading_apostrophe_and_nothing_else_changes():
    cells = pa.array(SPREADSHEET_TRIGGERS + PLAIN + [None], type=pa.string())
    out = neutralize_formulas(cells).to_pylist()
    assert out[: len(SPREADSHEET_TRIGGERS)] == ["'" + c for c in SPREADSHEET_TRIGGERS]
    assert out[len(SPREADSHEET_TRIGGERS):] == PLAIN + [None]


@given(st.lists(st.text(alphabet="'=+-@\t\r0123456789.,eAx ", max_size=8), max_size=20))
def test_neutralizing_is_reversed_exactly_by_restore(cells):
    array = pa.array(cells, type=pa.string())
    safe = neutralize_formulas(array)
    assert restore_cells(safe).to_pylist() == cells
    for cell in safe.to_pylist():  # nothing written starts a formula, except a plain signed number
        assert not cell or cell[0] not in FORMULA_START or re.fullmatch(_SIGNED_NUMBER, cell)


def test_writer_neutralizes_text_and_header_but_not_numbers(tmp_path):
    frame = pd.DataFrame({"patient_id": ["=1+1", "P2"], "value": ["-3", "@x"], "prob": [-0.5, 0.25], "=col": ["a", "b"]})
    with AtomicCsvWriter(tmp_path / "calls.csv") as writer:
        writer.write(frame)
    assert (tmp_path / "calls.csv").read_text() == "patient_id,value,prob,'=col\n'=1+1,-3,-0.5,a\nP2,'@x,0.25,b\n"
    with AtomicCsvWriter(tmp_path / "raw.csv", safe_cells=False) as writer:
        writer.write(frame)
    assert (tmp_path / "raw.csv").read_text().splitlines()[1] == "=1+1,-3,-0.5,a"


def test_catalog_differences_name_the_marker_and_field(catalog):
    import yaml

    from rifml.config import config_dir

    data = yaml.safe_load((config_dir() / "markers.yaml").read_text())
    next(m for m in data["markers"] if m["name"] == "pb_nk_pct")["valid_range"] = [0, 20]
    edited = type(catalog).model_validate(data)
    assert catalog_differences(catalog, edited) == ["pb_nk_pct valid_range [0.0, 100.0] vs [0.0, 20.0]"]
    assert catalog_differences(catalog, catalog) == []


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "a\\b", "..", ".", "", "  ", "tab\there"])
def test_experiment_names_that_would_become_paths_are_refused(name):
    with pytest.raises(RifmlInputError):
        check_experiment_name(name)


@pytest.mark.parametrize("name", ["trial #2", "été 2026?", "rifml-demo", "a.b"])
def test_experiment_names_with_odd_characters_are_kept(name):
    assert check_experiment_name(name) == name


def test_reading_commands_refuse_a_store_that_does_not_exist(tmp_path):
    with pytest.raises(RifmlInputError, match=f"no store at {tmp_path / 'mlflow.db'}"):
        require_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(RifmlInputError, match="folder .* does not exist"):
        require_store(f"sqlite:///{tmp_path / 'no' / 'mlflow.db'}", create=True)
    require_store(f"sqlite:///{tmp_path / 'mlflow.db'}", create=True)  # train may create it
    assert not (tmp_path / "mlflow.db").exists()


def test_the_store_lock_is_exclusive_between_processes(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    script = (
        "import sys, time\nfrom rifml.tracking import store_lock\n"
        f"with store_lock({uri!r}):\n    print('in', flush=True)\n    time.sleep(1.5)\n"
    )
    first = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert first.stdout.readline().strip() == "in"
    started = time.perf_counter()
    with store_lock(uri):
        waited = time.perf_counter() - started
    first.wait()
    assert waited > 0.5  # we could only enter after the other process left
