"""The same panels written as labs write them: same accepted panels, same rejects, in every form."""

import gzip
import re
from dataclasses import fields

import pandas as pd
import pytest

from lab_exports import decimal_comma, excel_numbers

from rifml.errors import RifmlInputError
from rifml.io.dialects import ReadOptions
from rifml.io.reader import PanelFile, validated_chunks

ACCENTED = "Jos\u00e9-001"  # NFC


@pytest.fixture(scope="module")
def cohort(catalog):
    from rifml.simulate import simulate_cohort

    frame, _ = simulate_cohort(300, seed=5, bad_share=0.1, catalog=catalog)
    frame = frame.copy()
    frame.loc[0, "patient_id"] = ACCENTED
    return frame


def write_form(frame: pd.DataFrame, form: str, folder) -> tuple:
    path = folder / f"panels_{form}.csv"
    options = ReadOptions()
    if form == "comma_lf":
        frame.to_csv(path, index=False, lineterminator="\n")
    elif form == "crlf":
        frame.to_csv(path, index=False, lineterminator="\r\n")
    elif form == "semicolon_decimal_comma":
        decimal_comma(frame).to_csv(path, index=False, sep=";", lineterminator="\r\n")
    elif form == "tab":
        path = path.with_suffix(".tsv")
        frame.to_csv(path, index=False, sep="\t", lineterminator="\n")
    elif form == "latin1":
        decimal_comma(frame).to_csv(path, index=False, sep=";", encoding="latin-1", lineterminator="\r\n")
    elif form == "utf16":
        path = path.with_suffix(".txt")
        frame.to_csv(path, index=False, sep="\t", encoding="utf-16", lineterminator="\r\n")
    elif form == "bom":
        frame.to_csv(path, index=False, encoding="utf-8-sig")
    elif form == "xlsx":
        path = path.with_suffix(".xlsx")
        excel_numbers(frame).to_excel(path, index=False, sheet_name="panels")
    elif form == "gzip":
        path = path.with_suffix(".csv.gz")
        with gzip.open(path, "wt", encoding="utf-8", newline="") as handle:
            frame.to_csv(handle, index=False, lineterminator="\n")
    return path, options


FORMS = ["comma_lf", "crlf", "semicolon_decimal_comma", "tab", "latin1", "utf16", "bom", "xlsx", "gzip"]


def read(path, catalog, options=ReadOptions()):
    panel_file = PanelFile(path, catalog, chunk_rows=64, options=options)
    chunks = list(validated_chunks(panel_file))
    panel = pd.concat([c.panel for c in chunks])
    rejects = pd.concat([c.rejects for c in chunks], ignore_index=True)
    return panel_file, panel, rejects


@pytest.fixture(scope="module")
def reference(cohort, catalog, tmp_path_factory):
    path, _ = write_form(cohort, "comma_lf", tmp_path_factory.mktemp("ref"))
    return read(path, catalog)


def comparable(panel: pd.DataFrame) -> pd.DataFrame:
    return panel.astype(object).where(panel.notna(), None)


@pytest.mark.parametrize("form", FORMS)
def test_every_form_gives_the_same_panels_and_rejects(form, cohort, catalog, reference, tmp_path):
    ref_file, ref_panel, ref_rejects = reference
    path, options = write_form(cohort, form, tmp_path)
    panel_file, panel, rejects = read(path, catalog, options)
    assert panel_file.row_count == ref_file.row_count == len(cohort)
    assert panel[catalog.id_column].astype(str).tolist() == ref_panel[catalog.id_column].astype(str).tolist()
    assert ACCENTED in set(panel[catalog.id_column].astype(str))
    columns = [c for c in ref_panel.columns if c != catalog.id_column]
    pd.testing.assert_frame_equal(comparable(panel[columns]), comparable(ref_panel[columns]))
    same = ["row", "patient_id", "column", "reason"]
    pd.testing.assert_frame_equal(rejects[same].astype(str), ref_rejects[same].astype(str))


EXPECTED_DIALECT = {
    "comma_lf": "UTF-8, ',' separated, decimal '.', LF",
    "crlf": "UTF-8, ',' separated, decimal '.', CRLF",
    "semicolon_decimal_comma": "UTF-8, ';' separated, decimal ',', CRLF",
    "tab": "UTF-8, tab separated, decimal '.', LF",
    "latin1": "';' separated, decimal ',', CRLF",  # Latin-1 or Windows-1252: the same bytes here
    "utf16": "UTF-16, tab separated, decimal '.', CRLF",
    "bom": "UTF-8 with BOM, ',' separated, decimal '.', LF",
    "gzip": "UTF-8, gzip, ',' separated, decimal '.', LF",
    "xlsx": "Excel sheet 'panels'",
}


@pytest.mark.parametrize("form", FORMS)
def test_what_was_detected_is_said(form, cohort, catalog, tmp_path):
    path, options = write_form(cohort, form, tmp_path)
    panel_file = PanelFile(path, catalog, options=options)
    said = panel_file.describe()
    assert said.startswith(f"read {path.name}: ") and said.endswith(EXPECTED_DIALECT[form])
    if form == "latin1":
        assert re.search(r"(Windows-1252|Latin-1|Latin-9|Windows-1250), ", said)
    # Windows line ends, semicolons, tabs, other encodings: still the fast Arrow path
    assert panel_file.simple is (form != "xlsx")


def test_latin1_ids_are_not_corrupted_or_merged(tmp_path, catalog):
    """Issue 11: `José-001` became `Jos\\ufffd-001`; `José-001` / `Josè-001` were duplicates."""
    path = tmp_path / "latin.csv"
    path.write_bytes("patient_id;pb_nk_pct\r\nJosé-001;12,5\r\nJosè-001;3\r\nAna;<1,0\r\n".encode("cp1252"))
    _, panel, rejects = read(path, catalog)
    assert rejects.empty
    assert panel["patient_id"].astype(str).tolist() == ["José-001", "Josè-001", "Ana"]
    assert panel["pb_nk_pct"].tolist() == [12.5, 3.0, 1.0]


def test_latin1_late_in_a_file_that_starts_as_ascii(tmp_path, catalog):
    lines = ["patient_id,pb_nk_pct"] + [f"P{i},1" for i in range(5000)] + ["Zoë,2"]
    path = tmp_path / "late.csv"
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    panel_file, panel, rejects = read(path, catalog)
    assert rejects.empty and panel["patient_id"].astype(str).iloc[-1] == "Zoë"
    assert "UTF-8" not in panel_file.describe()


def test_nfc_and_nfd_spellings_are_one_patient(tmp_path, catalog):
    import unicodedata

    nfc, nfd = unicodedata.normalize("NFC", "José"), unicodedata.normalize("NFD", "José")
    assert nfc != nfd
    path = tmp_path / "nf.csv"
    path.write_text(f"patient_id,pb_nk_pct\n{nfc},1\n{nfd},2\nAna,3\n", encoding="utf-8")
    _, panel, rejects = read(path, catalog)
    assert rejects["reason"].tolist() == ["duplicate patient_id"] * 2
    assert rejects["patient_id"].tolist() == [nfc, nfc]


def test_semicolon_file_is_no_longer_refused_as_missing_patient_id(tmp_path, catalog):
    """Issue 11: `no patient_id column (found: patient_id;lab_id;...)`."""
    path = tmp_path / "eu.csv"
    path.write_text("patient_id;lab_id;pb_nk_pct;serum_il6_pg_ml\nA;lab_A;12,5;<1,0\nB;lab_A;1.234;2\nC;lab_B;-0,5;1\n")
    _, panel, rejects = read(path, catalog)
    assert panel.loc[2, "pb_nk_pct"] == 12.5 and panel.loc[2, "serum_il6_pg_ml__censored"]
    # with a decimal comma, a point is not a decimal mark: 1.234 could mean 1234
    assert rejects.set_index("row")["reason"].to_dict() == {3: "not a number", 4: "negative value"}
    assert rejects.set_index("row").loc[3, "value"] == "1.234"


def test_overrides_win_over_detection(tmp_path, catalog):
    path = tmp_path / "eu.txt"
    path.write_text("patient_id;pb_nk_pct\nA;1\n")
    with pytest.raises(RifmlInputError, match="no patient_id column"):
        PanelFile(path, catalog, options=ReadOptions(sep=","))  # told ',', it does not second-guess
    path.write_text('patient_id,pb_nk_pct\nA,"2,5"\n')
    _, panel, rejects = read(path, catalog, ReadOptions(decimal=","))
    assert panel.loc[2, "pb_nk_pct"] == 2.5 and rejects.empty
    path.write_bytes("patient_id,pb_nk_pct\nJosé,1\n".encode("utf-8"))
    _, panel, _ = read(path, catalog, ReadOptions(encoding="latin-1"))
    assert panel["patient_id"].astype(str).tolist() == ["JosÃ©"]  # what the user asked for


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(sep="|"), "--sep"),
        (dict(decimal=";"), "--decimal"),
        (dict(encoding="klingon"), "--encoding"),
    ],
)
def test_bad_overrides_are_one_line_errors(options, message):
    with pytest.raises(RifmlInputError, match=message):
        ReadOptions(**options)


# design.md: every command that reads a panel file takes all six reading options
READING_COMMANDS = ("validate", "train", "score", "report", "outcomes")
READING_FLAGS = {"--sep", "--decimal", "--encoding", "--sheet", "--columns", "--layout"}


def test_the_command_line_reading_options_are_the_read_options_fields(tmp_path):
    """One home: the CLI declares a flag per ReadOptions field (no field of its own) and builds a ReadOptions."""
    import typer

    from rifml.cli import _READING_OPTIONS, Reading, app
    from rifml.io.columns import load_column_map

    assert list(_READING_OPTIONS) == [f.name for f in fields(ReadOptions)]
    commands = typer.main.get_command(app).commands
    for name in READING_COMMANDS:
        flags = {flag for parameter in commands[name].params for flag in parameter.opts}
        assert READING_FLAGS <= flags, (name, READING_FLAGS - flags)
    (tmp_path / "map.yaml").write_text('"NK (%)": pb_nk_pct\n', encoding="utf-8")
    given = {"sep": "tab", "decimal": ",", "encoding": "latin-1", "sheet": "panels", "column_map": tmp_path / "map.yaml",
             "layout": "long"}
    reading = Reading(given)
    assert reading.columns == tmp_path / "map.yaml"
    assert reading.options() == ReadOptions(sep="\t", decimal=",", encoding="latin-1", sheet="panels",
                                            column_map=load_column_map(tmp_path / "map.yaml"), layout="long")
    assert Reading().options() == ReadOptions() and Reading().columns is None
    with pytest.raises(RifmlInputError, match="--sep"):
        Reading({"sep": "|"}).options()


def test_excel_sheet_choice_and_row_numbers(tmp_path, catalog):
    path = tmp_path / "book.xlsx"
    with pd.ExcelWriter(path) as writer:
        pd.DataFrame({"a": [1]}).to_excel(writer, sheet_name="notes", index=False)
        frame = pd.DataFrame({"patient_id": [1001, "B", None, "C"], "pb_nk_pct": [12.5, -1, None, "<1"]})
        frame.to_excel(writer, sheet_name="panels", index=False, startrow=2)  # header on sheet row 3
    with pytest.raises(RifmlInputError, match="no patient_id column"):
        PanelFile(path, catalog)  # the first sheet is "notes"
    with pytest.raises(RifmlInputError, match="no sheet 'nope'"):
        PanelFile(path, catalog, options=ReadOptions(sheet="nope"))
    panel_file, panel, rejects = read(path, catalog, ReadOptions(sheet="panels"))
    assert panel["patient_id"].astype(str).tolist() == ["1001", "C"]  # a number id reads as typed
    assert panel.index.tolist() == [4, 7]  # sheet row numbers; row 6 is blank
    assert rejects.set_index("row")["reason"].to_dict() == {5: "negative value"}
    assert panel_file.row_count == 3


def test_excel_cells_validate_like_their_text(tmp_path, catalog):
    from rifml.io.excel import cell_text

    assert [cell_text(v) for v in (12.5, 12.0, 1001, 0.1, -3.0, True, None, "<1.0")] == [
        "12.5", "12", "1001", "0.1", "-3", "TRUE", "", "<1.0"
    ]


def test_gzip_by_content_and_damaged_gzip(tmp_path, catalog):
    path = tmp_path / "p.csv"  # gzip content under a .csv name
    path.write_bytes(gzip.compress(b"patient_id,pb_nk_pct\nA,1\n"))
    _, panel, _ = read(path, catalog)
    assert panel["pb_nk_pct"].tolist() == [1.0]
    path.write_bytes(gzip.compress(b"patient_id,pb_nk_pct\nA,1\n")[:15])
    with pytest.raises(RifmlInputError):
        PanelFile(path, catalog)


def test_bare_cr_line_ends_are_lines(tmp_path, catalog):
    path = tmp_path / "mac.csv"
    path.write_bytes(b"patient_id,pb_nk_pct\rA,1\rB,-2\r")
    panel_file, panel, rejects = read(path, catalog)
    assert panel_file.row_count == 2 and rejects["row"].tolist() == [3]
    assert panel_file.describe().endswith("CR")


def test_spark_refuses_what_it_would_read_otherwise(tmp_path, catalog, cohort):
    from rifml.spark_engine import spark_can_read

    unclosed = tmp_path / "unclosed.csv"
    unclosed.write_text('patient_id,lab_id,pb_nk_pct\nA,"lab_C,1\nB,lab_C,2\n')
    for form in ("semicolon_decimal_comma", "xlsx"):
        path, options = write_form(cohort, form, tmp_path)
        with pytest.raises(RifmlInputError, match="--engine local"):
            spark_can_read(PanelFile(path, catalog, options=options))
    with pytest.raises(RifmlInputError, match="line 2"):
        spark_can_read(PanelFile(unclosed, catalog))
    for form in ("crlf", "tab", "latin1_point"):
        path = tmp_path / f"{form}.csv"
        sep = "\t" if form == "tab" else ","
        cohort.to_csv(path, index=False, sep=sep, encoding="latin-1" if form == "latin1_point" else "utf-8")
        spark_can_read(PanelFile(path, catalog))  # these Spark reads like the local engine
