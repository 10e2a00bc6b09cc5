"""Long-format files: the pivot to one panel per patient, units per line, conflicts and accounting line by line."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cli_support import rifml_in_process
from rifml.errors import RifmlInputError
from rifml.io.dialects import ReadOptions
from rifml.io.long_format import CONFLICT, MISSING_ANALYTE, pivot_long
from rifml.io.reader import PanelFile, validated_chunks
from rifml.io.units import UNIT_NOT_ACCEPTED, UNKNOWN_UNIT
from rifml.contract import MISSING_ID, PERCENT_ABOVE_100, UNCLOSED_QUOTE

HEADER = ["patient_id", "analyte", "value", "unit", "lab_id", "age_years"]


def lines(*records):
    frame = pd.DataFrame([list(r) for r in records], columns=HEADER, dtype=object)
    return frame, np.arange(2, len(frame) + 2)


def pivot(catalog, *records):
    frame, rows = lines(*records)
    return pivot_long(frame, rows, catalog)


def test_pivot_makes_one_panel_per_patient_in_first_line_order(catalog):
    chunk = pivot(
        catalog,
        ("P1", "pb_nk_pct", "14", "%", "lab_A", "34"),
        ("P2", "NK cells", "9", "%", "lab_B", ""),
        ("P1", "IL-6", "0.004", "ng/mL", "lab_A", "34"),
        ("P1", "KIR haplotype", "AA", "", "lab_A", ""),  # context repeats, or is left empty on some lines
        ("P2", "IL-6", "<1.0", "pg/mL", "lab_B", "41"),
        ("P1", "CRP", "3", "mg/L", "", ""),  # not a catalog analyte: passes through, named with its unit
    )
    assert chunk.rejects.empty
    panel = chunk.panel
    assert panel.index.tolist() == [2, 3]  # each patient's first line
    assert panel["patient_id"].tolist() == ["P1", "P2"]
    assert panel["pb_nk_pct"].tolist() == [14.0, 9.0]
    assert panel["serum_il6_pg_ml"].tolist() == [4.0, 1.0]
    assert panel["serum_il6_pg_ml__censored"].tolist() == [False, True]
    assert panel["kir_haplotype"].astype(object).tolist()[0] == "AA"
    assert panel["lab_id"].tolist() == ["lab_A", "lab_B"]
    assert panel["age_years"].tolist() == [34.0, 41.0]
    assert panel["CRP (mg/L)"].tolist()[0] == "3"
    assert chunk.lines.tolist() == [4, 2]
    assert chunk.accepted_lines == 6
    assert chunk.accepted_raw.index.tolist() == [2, 3, 4, 5, 6, 7]  # the accepted lines, as read


def test_units_per_line_give_the_same_values(catalog):
    chunk = pivot(
        catalog,
        ("A", "IL-6", "12.3", "pg/mL", "", ""),
        ("B", "IL-6", "12.3", "ng/L", "", ""),
        ("C", "IL-6", "0.0123", "ng/mL", "", ""),
        ("D", "IL-6", "12300", "pg/L", "", ""),
        ("E", "IL-6 (ng/mL)", "0.0123", "", "", ""),  # a unit in the analyte's name counts too
    )
    assert chunk.rejects.empty
    assert chunk.panel["serum_il6_pg_ml"].tolist() == [12.3] * 5


def test_conflicting_duplicates_reject_the_patient_line_by_line(catalog):
    chunk = pivot(
        catalog,
        ("P1", "pb_nk_pct", "14", "%", "", ""),
        ("P2", "pb_nk_pct", "9", "%", "", ""),
        ("P2", "IL-6", "3", "pg/mL", "", ""),
        ("P1", "IL-6", "2", "pg/mL", "", ""),
        ("P2", "NK cells", "10", "%", "", ""),  # same patient and analyte, another value
        ("P3", "pb_nk_pct", "7", "%", "", ""),
        ("P3", "NK cells", "7", "", "", ""),  # the same value twice: no conflict
        ("P3", "IL-6", "12", "pg/mL", "", ""),
        ("P3", "IL-6", "0.012", "ng/mL", "", ""),  # nor in two units
    )
    assert chunk.panel["patient_id"].tolist() == ["P1", "P3"]
    rejects = chunk.rejects.set_index("row")
    assert rejects.index.tolist() == [3, 4, 6]  # every line of P2
    assert set(rejects["reason"]) == {CONFLICT}
    assert rejects.loc[3, "value"] == rejects.loc[6, "value"] == "9 | 10"
    assert rejects.loc[4, "column"] == "pb_nk_pct"  # the IL-6 line repeats the panel's problem
    assert set(rejects["patient_id"]) == {"P2"}
    assert chunk.panel["serum_il6_pg_ml"].tolist() == [2.0, 12.0]
    assert chunk.accepted_lines + len(chunk.rejects) == 9


def test_conflicting_context_values_reject_the_patient(catalog):
    chunk = pivot(
        catalog,
        ("P1", "pb_nk_pct", "14", "%", "lab_A", ""),
        ("P1", "IL-6", "2", "pg/mL", "lab_B", ""),
    )
    assert chunk.panel.empty
    assert chunk.rejects["reason"].tolist() == [CONFLICT, CONFLICT]
    assert chunk.rejects["column"].tolist() == ["lab_id", "lab_id"]
    assert chunk.rejects["value"].tolist() == ["lab_A | lab_B"] * 2


def test_unit_problems_reject_the_patient_and_name_the_line(catalog):
    chunk = pivot(
        catalog,
        ("P1", "pb_nk_pct", "240", "cells/uL", "", ""),
        ("P1", "IL-6", "2", "pg/mL", "", ""),
        ("P2", "uNK", "0.08", "fraction", "", ""),
        ("P3", "IL-6", "", "cells/uL", "", ""),  # no value: the unit does not matter
        ("P3", "pb_nk_pct", "8", "%", "", ""),
    )
    assert chunk.panel["patient_id"].tolist() == ["P3"]
    rejects = chunk.rejects.set_index("row")
    assert rejects.loc[2, ["column", "value", "reason"]].tolist() == ["pb_nk_pct", "cells/uL", UNKNOWN_UNIT]
    assert rejects.loc[3, "reason"] == UNKNOWN_UNIT  # P1's other line shares the fate of the panel
    assert rejects.loc[4, ["column", "value", "reason"]].tolist() == ["em_unk_cd56_pct", "fraction", UNIT_NOT_ACCEPTED]


def test_missing_id_and_missing_analyte(catalog):
    chunk = pivot(
        catalog,
        ("", "pb_nk_pct", "14", "%", "", ""),
        ("P1", "", "3", "", "", ""),
        ("P1", "pb_nk_pct", "14", "%", "", ""),
        ("P2", "pb_nk_pct", "9", "%", "", ""),
    )
    assert chunk.panel["patient_id"].tolist() == ["P2"]
    rejects = chunk.rejects.set_index("row")
    assert rejects.loc[2, "reason"] == MISSING_ID
    assert rejects.loc[3, "reason"] == rejects.loc[4, "reason"] == MISSING_ANALYTE
    assert rejects.loc[4, "all_problems"] == "analyte: missing analyte"


def test_a_panel_failing_validation_rejects_each_of_its_lines(catalog):
    chunk = pivot(
        catalog,
        ("P1", "pb_nk_pct", "140", "%", "", ""),
        ("P2", "pb_nk_pct", "9", "%", "", ""),
        ("P1", "IL-6", "3", "pg/mL", "", ""),
    )
    assert chunk.panel["patient_id"].tolist() == ["P2"]
    assert chunk.rejects["row"].tolist() == [2, 4]
    assert chunk.rejects["reason"].tolist() == [PERCENT_ABOVE_100] * 2
    assert chunk.rejects["value"].tolist() == ["140", "140"]


def _write_long(path, records, header=HEADER):
    path.write_text("\n".join([",".join(header), *(",".join(r) for r in records)]) + "\n", encoding="utf-8")
    return path


def test_layout_is_detected_from_the_header_or_forced(tmp_path, catalog):
    path = _write_long(tmp_path / "long.csv", [("P1", "NK cells", "14", "%"), ("P1", "IL-6", "3", "pg/mL")],
                       header=["Patient ID", "Analyte", "Value", "Unit"])
    panel_file = PanelFile(path, catalog)
    assert panel_file.layout == "long"
    assert panel_file.columns == ["patient_id", "analyte", "value", "unit"]
    (chunk,) = validated_chunks(panel_file)
    assert chunk.panel["pb_nk_pct"].tolist() == [14.0]
    assert panel_file.row_count == 2
    wide = PanelFile(path, catalog, options=ReadOptions(layout="wide"))  # forced: analyte/value/unit are plain extra columns
    assert wide.layout == "wide" and wide.columns == ["patient_id", "Analyte", "Value", "Unit"]


def test_cli_validate_accounts_for_every_line(tmp_path):
    _write_long(tmp_path / "long.csv", [
        ("P1", "NK cells", "14", "%", "lab_A", "30"),
        ("P1", "IL-6", "0.003", "ng/mL", "lab_A", "30"),
        ("P2", "NK cells", "9", "%", "lab_A", "31"),
        ("P2", "NK cells", "10", "%", "lab_A", "31"),
        ("", "IL-6", "1", "pg/mL", "", ""),
    ])
    result = rifml_in_process("validate", "--input", "long.csv", "--rejects", "rejects.csv", "--output", "ok.csv",
                              "--layout", "long", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "rows in 5 = accepted 2 + rejected 3"
    rejects = pd.read_csv(tmp_path / "rejects.csv", dtype=str, keep_default_na=False)
    assert rejects["row"].tolist() == ["4", "5", "6"]
    assert rejects["reason"].tolist() == [CONFLICT, CONFLICT, MISSING_ID]
    accepted = pd.read_csv(tmp_path / "ok.csv", dtype=str, keep_default_na=False)
    assert accepted["value"].tolist() == ["14", "0.003"]  # the accepted lines as read, units and all


# -- the same panels as a plain file, as lab-style headers with units, and as long format with units --

def _in(value: str, divisor: int) -> str:
    """A cell of the plain file written in a unit ``divisor`` times larger (exact decimal text)."""
    from decimal import Decimal

    if divisor == 1 or not value:
        return value
    censor = "<" if value.startswith("<") else ""
    return censor + format(Decimal(value.lstrip("<")) / divisor, "f")


def _forms(work: Path, catalog) -> None:
    plain = pd.read_csv(work / "plain.csv", dtype=str, keep_default_na=False)
    lab = plain.copy()
    lab["serum_il6_pg_ml"] = lab["serum_il6_pg_ml"].map(lambda v: _in(v, 1000))
    lab["pb_treg_pct"] = lab["pb_treg_pct"].map(lambda v: _in(v, 100))
    lab = lab.rename(columns={
        "patient_id": "Patient ID", "pb_nk_pct": "NK cells (%)", "serum_il6_pg_ml": "IL-6 (ng/mL)",
        "serum_ifng_pg_ml": "Serum IFN-g [ng/L]", "em_unk_cd56_pct": "CD56+ uNK %", "pb_treg_pct": "Treg (fraction)",
        "lab_id": "Lab", "pb_th1_th2_ifng_il4": "Th1 Th2 A",
    })
    lab.to_csv(work / "lab.csv", index=False)
    (work / "map.yaml").write_text('"Th1 Th2 A": pb_th1_th2_ifng_il4\n', encoding="utf-8")

    spelled = {"pb_nk_pct": ("NK cells", "%", 1), "serum_il6_pg_ml": ("IL-6", "ng/L", 1),
               "serum_tnfa_pg_ml": ("TNF-a", "ng/mL", 1000), "em_cd68_pct": ("CD68+", "", 1)}
    context = [c for c in plain.columns if c not in catalog.marker_names and c != "patient_id"]
    records = []
    for _, row in plain.iterrows():
        for marker in catalog.marker_names:
            if marker in plain and row[marker] != "":
                analyte, unit, divisor = spelled.get(marker, (marker, "", 1))
                records.append([row["patient_id"], analyte, _in(row[marker], divisor), unit, *row[context]])
    pd.DataFrame(records, columns=["patient_id", "analyte", "value", "unit", *context]).to_csv(work / "long.csv", index=False)


def _comparable(panel: pd.DataFrame, catalog) -> dict:
    out = {}
    for column in sorted(c for c in panel.columns if c != "row"):
        values = panel[column]
        if pd.api.types.is_float_dtype(values.dtype) or pd.api.types.is_bool_dtype(values.dtype):
            out[column] = values.to_numpy(dtype=float)
        else:
            out[column] = values.astype(object).where(values.notna(), None).tolist()
    return out


def test_plain_lab_and_long_forms_give_identical_panels_and_calls(tmp_path, catalog, trained_store):
    from rifml.io.writer import write_table
    from rifml.simulate import simulate_cohort

    def rifml(*args):
        result = rifml_in_process(*args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return result

    write_table(simulate_cohort(100, seed=12, catalog=catalog)[0], tmp_path / "plain.csv")
    _forms(tmp_path, catalog)

    from rifml.io.columns import load_column_map

    reading = {"plain.csv": None, "lab.csv": ReadOptions(column_map=load_column_map(tmp_path / "map.yaml")), "long.csv": None}
    panels = {}
    for name, options in reading.items():
        chunks = list(validated_chunks(PanelFile(tmp_path / name, catalog, options=options)))
        assert all(c.rejects.empty for c in chunks), name
        panels[name] = _comparable(pd.concat([c.panel for c in chunks]), catalog)
    for name in ("lab.csv", "long.csv"):
        assert panels[name].keys() == panels["plain.csv"].keys(), name
        for column, values in panels["plain.csv"].items():
            if isinstance(values, np.ndarray):
                np.testing.assert_array_equal(panels[name][column], values, err_msg=f"{name} {column}")
            else:
                assert panels[name][column] == values, (name, column)

    uri = trained_store.uri  # read only: scoring writes nothing to the store
    calls = {}
    for name, extra in (("plain.csv", []), ("lab.csv", ["--columns", "map.yaml"]), ("long.csv", ["--layout", "long"])):
        result = rifml("score", "--input", name, "--output", f"calls_{name}", "--rejects", f"rejects_{name}",
                       "--tracking-uri", uri, "--quiet", *extra)
        lines = sum(1 for _ in open(tmp_path / name, encoding="utf-8")) - 1
        assert result.stdout.strip().splitlines()[-1] == f"rows in {lines:,} = scored {lines:,} + rejected 0"
        calls[name] = pd.read_csv(tmp_path / f"calls_{name}", dtype=str, keep_default_na=False)
    assert len(calls["plain.csv"]) == 100
    pd.testing.assert_frame_equal(calls["lab.csv"], calls["plain.csv"])
    pd.testing.assert_frame_equal(calls["long.csv"], calls["plain.csv"])


def test_forcing_long_layout_on_a_wide_file_is_one_error(tmp_path, catalog):
    path = _write_long(tmp_path / "wide.csv", [("P1", "14")], header=["patient_id", "pb_nk_pct"])
    with pytest.raises(RifmlInputError, match=r"wide.csv: a long-format file needs columns .* \(missing: analyte, value\)"):
        PanelFile(path, catalog, options=ReadOptions(layout="long"))


def test_spark_engine_refuses_long_files_in_one_line(tmp_path):
    _write_long(tmp_path / "long.csv", [("P1", "NK cells", "14", "%", "", "")])
    result = rifml_in_process("score", "--input", "long.csv", "--output", "calls.csv", "--rejects", "rejects.csv",
                              "--engine", "spark", "--model", "model-folder",  # a path needs no store: the file is judged first
                              cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "rifml: error: long.csv: long layout and units in headers are read by --engine local only"


def test_long_semicolon_decimal_comma_file_with_an_unclosed_quote(tmp_path, catalog):
    """io's dialects and its 'N counted from the file' rule hold for long files: each line ends in one place."""
    text = "\r\n".join([
        "patient_id;analyte;value;unit;lab_id",
        "P1;NK cells;14,5;%;lab_A",
        "P1;IL-6;0,0037;ng/mL;lab_A",
        'P2;NK cells;"9,5;%;lab_A',  # unclosed quote: rejected alone, reading resumes at the next line
        "P3;NK cells;10;%;lab_B",
        "P3;IL-6;<1,5;ng/L;lab_B",
    ]) + "\r\n"
    path = tmp_path / "long.csv"
    path.write_bytes(text.encode("cp1252"))
    panel_file = PanelFile(path, catalog)
    assert panel_file.layout == "long" and panel_file.dialect.sep == ";" and panel_file.decimal == ","
    (chunk,) = validated_chunks(panel_file)
    assert panel_file.row_count == 5
    assert chunk.accepted_lines + len(chunk.rejects) == 5
    assert chunk.panel["patient_id"].tolist() == ["P1", "P3"]
    assert chunk.panel["pb_nk_pct"].tolist() == [14.5, 10.0]
    assert chunk.panel["serum_il6_pg_ml"].tolist() == [3.7, 1.5]
    assert chunk.panel["serum_il6_pg_ml__censored"].tolist() == [False, True]
    assert chunk.rejects["row"].tolist() == [4]
    assert chunk.rejects["reason"].iloc[0] == UNCLOSED_QUOTE
