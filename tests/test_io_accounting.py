"""Every physical record accounted for: rows in N comes from the file, broken quotes reject one line."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_support import rifml_in_process
from rifml.errors import RifmlInputError
from rifml.io.accounting import AccountingError, Survey
from rifml.io.reader import PanelFile, validated_chunks


def read_all(path, catalog, chunk_rows=50, **options):
    from rifml.io.dialects import ReadOptions

    panel_file = PanelFile(path, catalog, chunk_rows=chunk_rows, options=ReadOptions(**options))
    chunks = list(validated_chunks(panel_file))
    panel = pd.concat([c.panel for c in chunks])
    rejects = pd.concat([c.rejects for c in chunks], ignore_index=True)
    return panel_file, panel, rejects


def lab_file(n=1000):
    lines = ["patient_id,lab_id,pb_nk_pct,em_cd68_pct"] + [f"P{i:04d},lab_C,{5 + i % 7},{2 + i % 3}" for i in range(n)]
    return lines


def test_an_unclosed_quote_rejects_its_own_line_and_nothing_else(tmp_path, catalog):
    """Issue 11: one `"lab_C` in 1,000 rows gave `rows in 2 = accepted 1 + rejected 1`."""
    lines = lab_file(1000)
    lines[501] = lines[501].replace("lab_C", '"lab_C')  # data line 502
    path = tmp_path / "broken.csv"
    path.write_text("\n".join(lines) + "\n")
    panel_file, panel, rejects = read_all(path, catalog)
    assert panel_file.row_count == 1000
    assert len(panel) == 999 and len(rejects) == 1
    assert rejects.loc[0, ["row", "patient_id", "reason"]].tolist() == [502, "P0500", "unclosed quote"]
    assert panel.index.min() == 2 and panel.index.max() == 1001


def test_unclosed_quote_in_the_last_line_and_many_of_them(tmp_path, catalog):
    lines = lab_file(30)
    for i in (3, 4, 17, 30):
        lines[i] = lines[i].replace("lab_C", 'lab_C"' if i == 17 else '"lab_C')
    path = tmp_path / "many.csv"
    path.write_text("\r\n".join(lines))  # CRLF, no final line end
    panel_file, panel, rejects = read_all(path, catalog, chunk_rows=7)
    assert panel_file.row_count == 30
    assert len(panel) + len(rejects) == 30
    assert rejects["row"].tolist() == [4, 5, 18, 31]
    assert set(rejects["reason"]) == {"unclosed quote"}


def test_a_quoted_cell_over_two_lines_stays_one_record(tmp_path, catalog):
    path = tmp_path / "note.csv"
    path.write_text('patient_id,pb_nk_pct,note\nA,1,"first\nsecond"\nB,2,x\n\nC,3,"a ""quoted"" word"\n')
    panel_file, panel, rejects = read_all(path, catalog)
    assert rejects.empty
    assert panel.index.tolist() == [2, 4, 6]
    assert panel_file.row_count == 3
    assert panel.loc[2, "note"] == "first\nsecond"


def test_a_wrong_field_count_is_rejected_alone(tmp_path, catalog):
    path = tmp_path / "ragged.csv"
    path.write_text("patient_id,pb_nk_pct\nA,1\nB,2,3,4\nC\nD,4\n")
    panel_file, panel, rejects = read_all(path, catalog)
    assert rejects.set_index("row")["reason"].to_dict() == {3: "wrong number of fields", 4: "wrong number of fields"}
    assert panel.index.tolist() == [2, 5]


def test_the_check_catches_a_parse_that_loses_or_invents_lines():
    survey = Survey(lines=10, header_line=1, blank=np.array([5]), odd=np.array([7, 9]), narrow=np.array([5, 8, 9]))
    assert survey.check(np.array([2, 3, 4, 6, 7, 10]), np.array([2, 3, 4, 6, 9, 10])) == 6
    with pytest.raises(AccountingError):  # line 6 lost
        survey.check(np.array([2, 3, 4, 7, 10]), np.array([2, 3, 4, 9, 10]))
    with pytest.raises(AccountingError):  # line 8 read twice
        survey.check(np.array([2, 3, 4, 6, 7, 8, 10]), np.array([2, 3, 4, 6, 9, 8, 10]))
    with pytest.raises(AccountingError):  # the blank line counted as a record
        survey.check(np.array([2, 3, 4, 5, 6, 7, 10]), np.array([2, 3, 4, 5, 6, 9, 10]))
    with pytest.raises(AccountingError):  # lines 2-4 swallowed into one record without odd quotes
        survey.check(np.array([2, 6, 7, 10]), np.array([4, 6, 9, 10]))
    wide = Survey(lines=10, header_line=1, blank=np.array([5]), odd=np.array([7, 9]), narrow=np.array([5, 9]))
    with pytest.raises(AccountingError):  # line 8 is a full record: no quoted cell may take it in
        wide.check(np.array([2, 3, 4, 6, 7, 10]), np.array([2, 3, 4, 6, 9, 10]))


def test_cli_never_prints_a_wrong_sum(tmp_path, catalog):
    lines = lab_file(200)
    lines[50] = lines[50].replace("lab_C", '"lab_C')
    path = tmp_path / "panels.csv"
    path.write_text("\n".join(lines) + "\n")
    done = rifml_in_process("validate", "--input", path, "--rejects", tmp_path / "r.csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()
    assert last[-1] == "rows in 200 = accepted 199 + rejected 1"
    assert last[-2] == "read panels.csv: UTF-8, ',' separated, decimal '.', LF"


def test_print_accounting_refuses_a_sum_short_of_the_file():
    from collections import Counter

    from rifml.cli import print_accounting

    with pytest.raises(AccountingError):
        print_accounting(5, Counter({"not a number": 1}), verb="scored", rows_in=7)


# -- fuzz: random quotes, separators and line endings in a valid file never lose a row ----------

INSERTS = st.sampled_from(['"', '"', ",", ";", "\t", "\n", "\r\n", "\r", '""', ' "x', '"\n'])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), INSERTS), min_size=1, max_size=6),
    crlf=st.booleans(),
    sep=st.sampled_from([",", ";", "\t"]),
)
def test_fuzzed_quotes_separators_and_line_ends_never_lose_a_row(tmp_path, catalog, edits, crlf, sep):
    header = sep.join(["patient_id", "lab_id", "pb_nk_pct", "em_cd68_pct", "note"])
    rows = [sep.join([f"P{i}", "lab_A", f"{i + 1}", "2", f"n{i}"]) for i in range(12)]
    end = "\r\n" if crlf else "\n"
    body = end.join(rows) + end
    for where, text in sorted(edits, reverse=True):  # from the back, so earlier offsets hold
        at = int(where * len(body))
        body = body[:at] + text + body[at:]
    path = tmp_path / "fuzz.csv"
    path.write_bytes((header + end + body).encode())
    physical = len((header + end + body).splitlines())  # str.splitlines also splits \r, like the rule
    try:
        panel_file, panel, rejects = read_all(path, catalog, chunk_rows=5, sep=sep)
    except RifmlInputError:
        return  # e.g. every data line blank: a clear file-level refusal
    lines = np.r_[panel.index.to_numpy(), rejects["row"].to_numpy()]
    assert len(lines) == panel_file.row_count  # N counted from the file == accepted + rejected
    assert len(np.unique(lines)) == len(lines)
    assert lines.min() >= 2 and lines.max() <= physical
    nonblank = sum(1 for line in (header + end + body).splitlines()[1:] if line)
    assert panel_file.row_count <= nonblank
    # a record only spans lines through a quoted cell: without one, every non-blank line is a record
    if '"' not in body:
        assert panel_file.row_count == nonblank


PIECES = st.sampled_from(["a", "1", ",", ";", '"', "\n", "\r\n", "\r", "\u00e9", ""])


@settings(max_examples=200, deadline=None)
@given(pieces=st.lists(PIECES, max_size=80), sep=st.sampled_from([",", ";"]), width=st.integers(1, 4))
def test_the_compiled_line_scan_marks_what_the_numpy_one_does(pieces, sep, width):
    """Large blocks are scanned compiled, small ones with numpy: the same marks for any bytes."""
    from rifml.io.accounting import _compiled_line_marks, _line_marks_numpy

    block = ("".join(pieces) + "\n").encode()  # a block always ends with a line end
    data = np.frombuffer(block, dtype=np.uint8)
    for column in range(-1, width):
        numpy_marks = _line_marks_numpy(data, ord(sep), column, width)
        compiled_marks = _compiled_line_marks(data, ord(sep), column, width)
        for ours, theirs in zip(compiled_marks, numpy_marks):
            assert np.array_equal(np.asarray(ours), np.asarray([] if theirs is None else theirs))


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("crlf", [False, True])
@pytest.mark.parametrize("position", [0, 2, 4])
@pytest.mark.parametrize("final_end", [False, True])
def test_the_survey_gathers_a_column_as_arrow_parses_it(tmp_path, position, crlf, final_end, compiled, monkeypatch):
    """The id column is read from the line scan (no second parse): the same cells Arrow reads."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from rifml.io import accounting
    from rifml.io.accounting import SCAN_BLOCK, survey

    monkeypatch.setattr(accounting, "COMPILED_SCAN_FROM", 0 if compiled else SCAN_BLOCK + 1)

    end = "\r\n" if crlf else "\n"
    rows = [",".join([f"P{i}", "lab_A", f" {i} ", "", "Jos\u00e9" if i % 5 == 0 else f"x{i % 7}"]) for i in range(3000)]
    text = "patient_id,lab_id,pb_nk_pct,em_cd68_pct,note" + end + end.join(rows) + (end if final_end else "")
    path = tmp_path / "plain.csv"
    path.write_bytes(text.encode())
    with path.open("rb") as handle:
        found = survey(handle, "utf-8", ",", 5, column=position)
    expected = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
        column_types={c: pa.string() for c in ["patient_id", "lab_id", "pb_nk_pct", "em_cd68_pct", "note"]},
        strings_can_be_null=False)).column(position).combine_chunks()
    assert found.plain
    assert pa.chunked_array(found.column_cells, type=pa.string()).combine_chunks().equals(expected)
    assert len(text) < SCAN_BLOCK or len(found.column_cells) > 1


def test_duplicate_ids_from_the_survey_equal_those_of_the_id_pass(tmp_path, catalog):
    path = file_with_duplicates(tmp_path)
    panel_file = PanelFile(path, catalog)
    assert panel_file.simple and panel_file.survey.column_cells is not None
    from_survey = panel_file.duplicate_ids()
    assert from_survey == frozenset({"P0100", "Jos\u00e9"})
    assert repeated_ids_of(panel_file) == from_survey


def file_with_duplicates(tmp_path):
    """A CRLF file where P0100 and José (once NFD, once NFC) are on two rows each: data lines 8/102 and 10/12."""
    lines = lab_file(400)
    lines[7] = lines[7].replace("P0006", "P0100")  # P0100 twice
    lines[9] = lines[9].replace("P0008", "Jose\u0301")  # NFD, and NFC below: one patient
    lines[11] = lines[11].replace("P0010", "Jos\u00e9")
    path = tmp_path / "dups.csv"
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return path


def repeated_ids_of(panel_file):
    from rifml.validate import repeated_ids

    return repeated_ids(*panel_file.patient_ids())


def test_the_line_scan_keeps_8_bytes_per_id_and_a_collision_rejects_no_one(tmp_path, catalog, monkeypatch):
    """Issue 13: the duplicate rule held every id's text (1.5 GiB at 10M ids); it keeps uint64 hashes now."""
    import rifml.validate as v

    path = file_with_duplicates(tmp_path)
    cells = PanelFile(path, catalog).survey.column_cells
    assert all(c.dtype == np.uint64 for c in cells) and sum(len(c) for c in cells) == 400
    monkeypatch.setattr(v, "_hash64", lambda text: np.zeros(len(text), dtype=np.uint64))  # every id collides
    panel_file = PanelFile(path, catalog)
    assert panel_file.duplicate_ids() == frozenset({"P0100", "Jos\u00e9"})
    rejects = pd.concat([c.rejects for c in validated_chunks(panel_file)])
    assert sorted(rejects["row"]) == [8, 10, 12, 102]


def test_a_file_that_is_not_utf8_keeps_no_cells_from_the_line_scan(tmp_path, catalog):
    lines = lab_file(50)
    lines[30] = lines[30].replace("P0029", "Jos\u00e9")
    lines[40] = lines[40].replace("P0039", "Jos\u00e9")
    path = tmp_path / "latin.csv"
    path.write_bytes(("\r\n".join(lines)).encode("latin-1"))  # and the last line ends in a Latin-1 byte
    path.write_bytes(path.read_bytes() + "\u00e9".encode("latin-1"))
    panel_file = PanelFile(path, catalog)
    assert panel_file.survey.column_cells is None
    assert panel_file.duplicate_ids() == frozenset({"Jos\u00e9"})


def test_a_file_cut_inside_a_character_keeps_no_cells_from_the_line_scan(tmp_path, catalog):
    path = tmp_path / "cut.csv"
    path.write_bytes(("\n".join(lab_file(20)) + "\n").encode() + "Jos\u00e9".encode()[:-1])  # the last id's é half written
    found = PanelFile(path, catalog).survey
    assert found.column_cells is None
