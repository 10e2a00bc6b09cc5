"""Header mapping: catalog aliases, the user's --columns map, ambiguity errors, the summary of renamed columns."""

import pandas as pd
import pytest
from pydantic import ValidationError

from cli_support import rifml_in_process
from rifml.catalog import Catalog, spelling_key
from rifml.errors import RifmlInputError
from rifml.io.columns import ColumnMap, load_column_map, match_header
from rifml.io.reader import PanelFile


def names(header, catalog, column_map=None):
    return match_header(header, catalog, column_map).names


def test_aliases_match_lab_spellings(catalog):
    header = ["Patient ID", "NK cells (%)", "CD56+ uNK %", "IL-6", "Lab", "Age", "Immune profile"]
    assert names(header, catalog) == [
        "patient_id", "pb_nk_pct", "em_unk_cd56_pct", "serum_il6_pg_ml", "lab_id", "age_years", "immune_profile",
    ]


@pytest.mark.parametrize("spelling", ["patient_id", "PATIENT_ID", "Patient-ID", " patient  id ", "Patient.Id"])
def test_case_space_and_punctuation_do_not_count(catalog, spelling):
    assert names([spelling, "pb_nk_pct"], catalog)[0] == "patient_id"


def test_plus_and_percent_do_count(catalog):
    # NKT cells (CD3+CD56+) are not NK cells (CD3-CD56+): no silent match
    assert names(["patient_id", "CD3+CD56+"], catalog) == ["patient_id", "CD3+CD56+"]
    assert spelling_key("CD3-CD56+") != spelling_key("CD3+CD56+")


def test_unmatched_columns_pass_through_untouched(catalog):
    header = ["patient_id", "CRP (mg/L)", "Value", "notes"]
    assert names(header, catalog) == header


def test_user_map_applies_before_the_aliases(catalog):
    column_map = ColumnMap((("Sample", "patient_id"), ("NK cells", "em_unk_cd56_pct"), ("Zentrum", "lab_id")))
    assert names(["Sample", "NK cells", "zentrum"], catalog, column_map) == ["patient_id", "em_unk_cd56_pct", "lab_id"]


def test_user_map_naming_an_unknown_column_is_an_error(catalog):
    with pytest.raises(RifmlInputError, match=r"'NK' is mapped to 'pb_nk_percent', which is not a catalog column"):
        names(["patient_id", "NK"], catalog, ColumnMap((("NK", "pb_nk_pct"), ("NK", "pb_nk_percent"))))


@pytest.mark.parametrize(
    "header, message",
    [
        (["patient_id", "NK cells", "pb_nk_pct"], r"columns 'NK cells' and 'pb_nk_pct' both name pb_nk_pct"),
        (["Patient ID", "patient_id", "IL-6"], r"columns 'Patient ID' and 'patient_id' both name patient_id"),
        (["patient_id", "IL-6 (pg/mL)", "Serum IL-6 [ng/mL]"], r"'IL-6 \(pg/mL\)' and 'Serum IL-6 \[ng/mL\]' both name serum_il6"),
        (["patient_id", "IL-6", "IL-6"], r"column 'serum_il6_pg_ml' appears twice|'IL-6' and 'IL-6' both name"),
    ],
)
def test_two_columns_for_one_catalog_column_is_an_error_naming_both(catalog, header, message):
    with pytest.raises(RifmlInputError, match=message):
        names(header, catalog)


def test_a_mapped_column_colliding_with_a_catalog_name_is_an_error(catalog):
    with pytest.raises(RifmlInputError, match=r"'NK' and 'pb_nk_pct' both name pb_nk_pct"):
        names(["patient_id", "NK", "pb_nk_pct"], catalog, ColumnMap((("NK", "pb_nk_pct"),)))


def test_catalog_refuses_an_alias_shared_by_two_columns(catalog):
    data = catalog.model_dump()
    data["markers"][1]["aliases"] = ["NK cells"]  # pb_nk_pct already uses it
    with pytest.raises(ValidationError, match="would name both pb_nk_pct and pb_nk_cytotox_pct"):
        Catalog(**data)


def test_load_column_map(tmp_path):
    good = tmp_path / "map.yaml"
    good.write_text('"NK cells CD3-CD56+ (%)": pb_nk_pct\n"Patient ID": patient_id\n', encoding="utf-8")
    assert load_column_map(good).entries == (("NK cells CD3-CD56+ (%)", "pb_nk_pct"), ("Patient ID", "patient_id"))
    for text, message in [
        ("- a\n- b\n", "expected a mapping"),
        ("a: [b\n", "not valid YAML"),
        ("a: 3\n", "is not 'input column name: catalog column'"),
        ("'Lab Nr': lab_id\n'lab nr': patient_id\n", "'Lab Nr' and 'lab nr' are the same column name"),
    ]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(RifmlInputError, match=message):
            load_column_map(bad)
    with pytest.raises(RifmlInputError, match="cannot be read"):
        load_column_map(tmp_path / "missing.yaml")


def test_panel_file_reads_renamed_columns_and_reports_them(tmp_path, catalog):
    path = tmp_path / "lab.csv"
    path.write_text("Patient ID,NK cells (%),IL-6 (ng/mL),CRP\nA,12,0.004,1\n", encoding="utf-8")
    panel_file = PanelFile(path, catalog)
    assert panel_file.columns == ["patient_id", "pb_nk_pct", "serum_il6_pg_ml", "CRP"]
    assert [m.describe() for m in panel_file.header.renamed] == [
        "'Patient ID' -> patient_id", "'NK cells (%)' -> pb_nk_pct [%]", "'IL-6 (ng/mL)' -> serum_il6_pg_ml [ng/mL]",
    ]


def test_cli_validate_with_a_column_map_lists_what_fed_what(tmp_path):
    (tmp_path / "lab.csv").write_text("Sample,Th1/Th2 (IFN-g/IL-4),IL-6 [ng/mL],CRP\nA,12,0.004,1\nB,,x,2\n", encoding="utf-8")
    (tmp_path / "map.yaml").write_text("Sample: patient_id\n", encoding="utf-8")
    result = rifml_in_process("validate", "--input", "lab.csv", "--rejects", "rejects.csv", "--output", "ok.csv",
                              "--columns", "map.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert ("columns: 'Sample' -> patient_id; 'Th1/Th2 (IFN-g/IL-4)' -> pb_th1_th2_ifng_il4; "
            "'IL-6 [ng/mL]' -> serum_il6_pg_ml [ng/mL] x1000") in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "rows in 2 = accepted 1 + rejected 1"
    accepted = (tmp_path / "ok.csv").read_text(encoding="utf-8").splitlines()
    assert accepted[0] == "patient_id,pb_th1_th2_ifng_il4,serum_il6_pg_ml,CRP"
    assert accepted[1] == "A,12,0.004e3,1"  # in the catalog unit, exactly


def test_cli_refuses_an_unknown_mapped_column_in_one_line(tmp_path):
    (tmp_path / "lab.csv").write_text("Sample,NK\nA,12\n", encoding="utf-8")
    (tmp_path / "map.yaml").write_text("Sample: patient_id\nNK: nk_percent\n", encoding="utf-8")
    result = rifml_in_process("validate", "--input", "lab.csv", "--rejects", "rejects.csv", "--columns", "map.yaml",
                              cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("rifml: error: map.yaml: 'NK' is mapped to 'nk_percent', which is not a catalog column")


def test_a_catalog_pickled_before_aliases_existed_reads_back_without_them(catalog):
    # models trained before this change carry a catalog without alias and unit fields
    state = catalog.__getstate__()
    kept = set(Catalog.model_fields) - {"id_aliases", "label_aliases"}
    state["__dict__"] = {k: v for k, v in state["__dict__"].items() if k in kept}
    old = object.__new__(Catalog)
    old.__setstate__(state)
    assert old.id_aliases == () and old != catalog
    assert names(["Subject ID", "patient_id"], old) == ["Subject ID", "patient_id"]


def test_outcomes_reads_panel_covariates_through_the_same_options(tmp_path, catalog):
    """`rifml outcomes --panels` reads with the reading options: mapped names and long files give the same covariates."""
    from rifml.io.columns import load_column_map
    from rifml.io.dialects import ReadOptions
    from rifml.outcomes.files import read_panel_columns

    (tmp_path / "wide.csv").write_text("patient_id,pb_nk_pct,age_years\nP1,12,34\nP2,9,41\n", encoding="utf-8")
    (tmp_path / "mapped.csv").write_text("Subject,NK,Age at transfer\nP1,12,34\nP2,9,41\n", encoding="utf-8")
    (tmp_path / "map.yaml").write_text('Subject: patient_id\nNK: pb_nk_pct\n"Age at transfer": age_years\n', encoding="utf-8")
    (tmp_path / "long.csv").write_text(
        "patient_id,analyte,value,unit,age_years\nP1,NK cells,12,%,34\nP2,NK cells,9,%,41\n", encoding="utf-8"
    )
    expected, reasons = read_panel_columns(tmp_path / "wide.csv", catalog, ["age_years", "pb_nk_pct"])
    assert expected["age_years"].tolist() == [34.0, 41.0] and not reasons
    mapped = ReadOptions(column_map=load_column_map(tmp_path / "map.yaml"))
    for path, options in ((tmp_path / "mapped.csv", mapped), (tmp_path / "long.csv", None)):
        table, reasons = read_panel_columns(path, catalog, ["age_years", "pb_nk_pct"], options=options)
        assert not reasons
        pd.testing.assert_frame_equal(table, expected, check_dtype=False)


def test_an_output_aimed_at_the_columns_map_is_refused(tmp_path):
    (tmp_path / "p.csv").write_text("Patient ID,NK\nP1,12\n", encoding="utf-8")
    (tmp_path / "map.yaml").write_text('"Patient ID": patient_id\nNK: pb_nk_pct\n', encoding="utf-8")
    result = rifml_in_process("validate", "--input", "p.csv", "--rejects", "map.yaml", "--columns", "map.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "--rejects map.yaml is the same file as --columns map.yaml" in result.stderr
    assert (tmp_path / "map.yaml").read_text(encoding="utf-8").startswith('"Patient ID": patient_id')
