"""Units stated in headers: exact conversion to the catalog unit, refusal of what is unknown or not accepted."""

from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from rifml.io.reader import PanelFile, validated_chunks
from rifml.io.units import (
    UNIT_NOT_ACCEPTED,
    UNKNOWN_UNIT,
    conversion,
    scale_column,
    split_header_unit,
)
from rifml.validate import parse_numeric


@pytest.mark.parametrize(
    "header, expected",
    [
        ("IL-6 (ng/L)", ("IL-6", "ng/L")),
        ("Serum IL-6 [ng/mL]", ("Serum IL-6", "ng/mL")),
        ("  NK cells ( % ) ", ("NK cells", "%")),
        ("IL-6", ("IL-6", None)),
        ("IL-6 ()", ("IL-6 ()", None)),
        ("(ng/mL)", ("(ng/mL)", None)),
    ],
)
def test_split_header_unit(header, expected):
    assert split_header_unit(header) == expected


@pytest.mark.parametrize(
    "column, stated, expected",
    [
        ("serum_il6_pg_ml", "pg/mL", Fraction(1)),
        ("serum_il6_pg_ml", "pg/ml", Fraction(1)),
        ("serum_il6_pg_ml", "ng/L", Fraction(1)),
        ("serum_il6_pg_ml", "ng/mL", Fraction(1000)),
        ("serum_il6_pg_ml", "pg/L", Fraction(1, 1000)),
        ("serum_il6_pg_ml", None, Fraction(1)),
        ("serum_il6_pg_ml", "mg", UNIT_NOT_ACCEPTED),  # a mass, not a concentration
        ("serum_il6_pg_ml", "ug/mL", UNIT_NOT_ACCEPTED),  # convertible, but not declared: not guessed
        ("serum_il6_pg_ml", "pg/mLx", UNKNOWN_UNIT),
        ("pb_nk_pct", "%", Fraction(1)),
        ("pb_nk_pct", "percent", Fraction(1)),
        ("pb_nk_pct", "fraction", Fraction(100)),  # declared for this marker
        ("em_unk_cd56_pct", "fraction", UNIT_NOT_ACCEPTED),  # not declared: a fraction is refused
        ("pb_nk_pct", "cells/uL", UNKNOWN_UNIT),  # an absolute count is no percentage
        ("pb_nk_cytotox_pct", "% lysis", Fraction(1)),
        ("pb_nk_cytotox_pct", "%", Fraction(1)),
        ("em_cd138_per_10hpf", "cells/10 HPF", Fraction(1)),
        ("em_cd138_per_10hpf", "cells/HPF", UNKNOWN_UNIT),
        ("em_cd138_per_10hpf", "per 10 HPF", Fraction(1)),  # a listed spelling of the catalog unit
        ("em_il15_fn14_ratio", "Relative", Fraction(1)),
        ("em_il15_fn14_ratio", "%", UNIT_NOT_ACCEPTED),
    ],
)
def test_conversion_factors_are_exact_and_refusals_named(catalog, column, stated, expected):
    assert conversion(catalog, column, stated) == expected


def test_every_unit_the_catalog_declares_converts(catalog):
    for definition in (*catalog.markers, *catalog.context):
        for unit in definition.units:
            factor = conversion(catalog, definition.name, unit)
            assert isinstance(factor, Fraction) and factor > 0, (definition.name, unit, factor)


def test_scaled_text_parses_to_the_number_written_in_the_catalog_unit():
    cells = pd.Series(["0.0123", "<0.5", "", None, "abc", "1.2e-3", " 7 ", "-0.25"], dtype=object)
    scaled = scale_column(cells, Fraction(1000))
    assert scaled.tolist()[:5] == ["0.0123e3", "<0.5e3", "", None, "abc"]
    parsed = parse_numeric(scaled, censorable=True)
    direct = parse_numeric(pd.Series(["12.3", "<500", "", None, "abc", "1.2", "7000", "-250"], dtype=object), censorable=True)
    np.testing.assert_array_equal(parsed.values, direct.values)  # exactly, not approximately
    np.testing.assert_array_equal(parsed.censored, direct.censored)
    assert list(parsed.reasons) == list(direct.reasons)


def test_scaling_by_a_thousandth_and_by_other_factors():
    assert scale_column(pd.Series(["12", "<4"]), Fraction(1, 1000)).tolist() == ["12e-3", "<4e-3"]
    assert scale_column(pd.Series(["1.5", "<3"]), Fraction(3, 2)).tolist() == ["2.25", "<4.5"]
    typed = scale_column(pd.Series([0.5, np.nan]), Fraction(1000))
    assert typed.iloc[0] == 500.0 and np.isnan(typed.iloc[1])


def _write(tmp_path, name, header, rows):
    path = tmp_path / name
    path.write_text("\n".join([",".join(header), *(",".join(r) for r in rows)]) + "\n", encoding="utf-8")
    return path


def _validated(path, catalog):
    chunks = list(validated_chunks(PanelFile(path, catalog)))
    panel = pd.concat([c.panel for c in chunks])
    rejects = pd.concat([c.rejects for c in chunks])
    return panel, rejects


def test_header_units_give_the_same_validated_values(tmp_path, catalog):
    ids = ["P1", "P2", "P3", "P4"]
    pg_ml = ["3.7", "<1.0", "", "12.34"]
    forms = {
        "pg/mL": pg_ml,
        "ng/L": pg_ml,
        "ng/mL": ["0.0037", "<0.001", "", "0.01234"],
    }
    panels = []
    for unit, values in forms.items():
        path = _write(tmp_path, f"{unit.replace('/', '_')}.csv", ["patient_id", f"IL-6 ({unit})", "NK cells (fraction)"],
                      [[i, v, nk] for i, v, nk in zip(ids, values, ["0.12", "0.085", "0.2", "0.1"])])
        panel, rejects = _validated(path, catalog)
        assert rejects.empty
        panels.append(panel)
    for other in panels[1:]:
        pd.testing.assert_frame_equal(panels[0], other)
    assert panels[0]["serum_il6_pg_ml"].tolist()[:2] == [3.7, 1.0]
    assert panels[0]["serum_il6_pg_ml__censored"].tolist()[:2] == [False, True]
    assert panels[0]["pb_nk_pct"].tolist() == [12.0, 8.5, 20.0, 10.0]


@pytest.mark.parametrize("unit, reason", [("cells/uL", UNKNOWN_UNIT), ("fraction", UNIT_NOT_ACCEPTED)])
def test_a_refused_header_unit_rejects_each_row_with_a_value_there(tmp_path, catalog, unit, reason):
    path = _write(tmp_path, "bad.csv", ["patient_id", f"uNK ({unit})", "IL-6"],
                  [["P1", "0.1", "3"], ["P2", "", "4"], ["P3", "12", ""]])
    panel, rejects = _validated(path, catalog)
    assert panel["patient_id"].tolist() == ["P2"]  # its cell is empty: no unit needed
    assert rejects["row"].tolist() == [2, 4]
    assert set(rejects["reason"]) == {reason}
    assert set(rejects["column"]) == {"em_unk_cd56_pct"}


@pytest.mark.parametrize("form", ["latin1_semicolon_decimal_comma_crlf", "xlsx", "gzip"])
def test_aliases_and_header_units_in_every_file_format(form, tmp_path, catalog):
    """What io reads (dialects, encodings, Excel, gzip) gets the same column mapping and unit conversion."""
    import gzip

    from lab_exports import decimal_comma, excel_numbers

    ids = ["Jos\u00e9-1", "P2", "P3"]
    plain = pd.DataFrame({"patient_id": ids, "serum_il6_pg_ml": ["3.7", "<1.5", "12.34"], "pb_nk_pct": ["12", "8.5", "20"]})
    lab = pd.DataFrame({"Patient ID": ids, "IL-6 (ng/mL)": ["0.0037", "<0.0015", "0.01234"],
                        "NK cells (fraction)": ["0.12", "0.085", "0.2"]})
    plain.to_csv(tmp_path / "plain.csv", index=False)
    if form == "xlsx":
        path = tmp_path / "lab.xlsx"
        excel_numbers(lab).to_excel(path, index=False)
    elif form == "gzip":
        path = tmp_path / "lab.csv.gz"
        with gzip.open(path, "wt", encoding="utf-8", newline="") as handle:
            lab.to_csv(handle, index=False)
    else:
        path = tmp_path / "lab.csv"
        decimal_comma(lab).to_csv(path, index=False, sep=";", encoding="latin-1", lineterminator="\r\n")
    expected, _ = _validated(tmp_path / "plain.csv", catalog)
    panel_file = PanelFile(path, catalog)
    chunks = list(validated_chunks(panel_file))
    assert all(c.rejects.empty for c in chunks)
    assert panel_file.row_count == 3
    assert [m.describe() for m in panel_file.header.renamed] == [
        "'Patient ID' -> patient_id", "'IL-6 (ng/mL)' -> serum_il6_pg_ml [ng/mL]", "'NK cells (fraction)' -> pb_nk_pct [fraction]"
    ]
    pd.testing.assert_frame_equal(pd.concat([c.panel for c in chunks]), expected, check_dtype=False)


def test_decimal_comma_cells_scale_in_their_own_mark():
    cells = pd.Series(["0,0037", "<0,0015", "1,5", "1.5", ""], dtype=object)
    assert scale_column(cells, Fraction(1000), ",").tolist() == ["0,0037e3", "<0,0015e3", "1,5e3", "1.5", ""]
    assert scale_column(cells, Fraction(3, 2), ",").tolist() == ["0,00555", "<0,00225", "2,25", "1.5", ""]
    parsed = parse_numeric(scale_column(cells, Fraction(1000), ","), censorable=True, decimal=",")
    np.testing.assert_array_equal(parsed.values[:3], [3.7, 1.5, 1500.0])
    assert parsed.reasons[3] is not None  # a point in a decimal-comma file stays refused, never scaled
