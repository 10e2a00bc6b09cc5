"""Reject rules, one by one: a row that breaks each rule and a row that just passes it."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from rifml import validate as v
from rifml.validate import validate_chunk


def run(cells: dict, catalog, duplicates=frozenset()):
    """Validate a one-row panel (plus patient_id P1 unless given)."""
    row = {"patient_id": "P1", **cells}
    return validate_chunk(pd.DataFrame([row], dtype=object), np.array([2]), catalog, duplicates)


@pytest.mark.parametrize(
    "column, bad, reason, good",
    [
        ("pb_nk_pct", "-0.1", v.NEGATIVE, "0"),
        ("em_il15_fn14_ratio", "-2", v.NEGATIVE, "0"),
        ("pb_nk_pct", "100.01", v.PERCENT_ABOVE_100, "100"),
        ("em_unk_cd56_pct", "250", v.PERCENT_ABOVE_100, "99.9"),
        ("pb_nk_pct", "abc", v.NOT_A_NUMBER, "12.5"),
        ("pb_nk_pct", "nan", v.NOT_A_NUMBER, ""),
        ("serum_il6_pg_ml", "inf", v.NOT_A_NUMBER, "<0.5"),
        ("serum_il6_pg_ml", "<", v.NOT_A_NUMBER, "< 0.5"),
        ("serum_il6_pg_ml", "<abc", v.NOT_A_NUMBER, "<1e-1"),
        ("serum_il6_pg_ml", "1,5", v.NOT_A_NUMBER, "1.5"),
        ("serum_il6_pg_ml", "<-1", v.NEGATIVE, "<1.0"),
        ("serum_il6_pg_ml", "<0", v.CENSOR_LIMIT_ZERO, "<0.01"),
        ("pb_nk_pct", "<101", v.PERCENT_ABOVE_100, "<100"),
        ("age_years", "<30", v.CENSOR_NOT_ALLOWED, "30"),
        ("age_years", "-3", v.NEGATIVE, "0"),
        ("age_years", "121", v.ABOVE_RANGE.format(limit=120), "120"),
        ("cycle_day_lh", "-31", v.BELOW_RANGE.format(limit=-30), "-2"),
        ("kir_haplotype", "AC", v.NOT_A_CATEGORY, "bx"),
        ("partner_hla_c2", "maybe", v.NOT_A_CATEGORY, "Yes"),
        ("immune_profile", "sick", v.NOT_A_CATEGORY, "mixed"),
    ],
)
def test_cell_rules(catalog, column, bad, reason, good):
    marker = {"em_il15_fn14_ratio": "1.0"} if column not in catalog.by_name else {}
    refused = run({**marker, column: bad}, catalog)
    assert len(refused.panel) == 0
    assert refused.rejects.loc[0, ["column", "value", "reason"]].tolist() == [column, bad, reason]
    accepted = run({"em_il15_fn14_ratio": "1.0", column: good}, catalog)
    assert len(accepted.rejects) == 0, accepted.rejects.to_dict("records")
    assert len(accepted.panel) == 1


def test_censored_value_keeps_limit_and_flag(catalog):
    result = run({"serum_il6_pg_ml": "<0.5", "serum_tnfa_pg_ml": " 2.5 "}, catalog)
    panel = result.panel.iloc[0]
    assert panel["serum_il6_pg_ml"] == 0.5 and bool(panel["serum_il6_pg_ml__censored"]) is True
    assert panel["serum_tnfa_pg_ml"] == 2.5 and bool(panel["serum_tnfa_pg_ml__censored"]) is False


def test_categories_are_canonical(catalog):
    panel = run({"kir_haplotype": "ab", "partner_hla_c2": "TRUE"}, catalog).panel.iloc[0]
    assert (panel["kir_haplotype"], panel["partner_hla_c2"]) == ("Bx", "yes")


def test_no_markers_but_context_is_rejected(catalog):
    refused = run({"lab_id": "lab_A", "age_years": "31", "pb_nk_pct": ""}, catalog)
    assert refused.rejects["reason"].tolist() == [v.NO_MARKERS]
    kept = run({"lab_id": "lab_A", "age_years": "31", "kir_haplotype": "AA"}, catalog)
    assert len(kept.panel) == 1


def test_missing_and_blank_patient_id(catalog):
    for blank in ["", "   ", None]:
        refused = run({"patient_id": blank, "pb_nk_pct": "10"}, catalog)
        assert refused.rejects["reason"].tolist() == [v.MISSING_ID]


def test_duplicate_ids_reject_every_row_sharing_the_id(catalog):
    raw = pd.DataFrame({"patient_id": ["A", "B", "A ", "C"], "pb_nk_pct": ["1", "2", "3", "4"]}, dtype=object)
    result = validate_chunk(raw, np.array([2, 3, 4, 5]), catalog, frozenset({"A"}))
    assert result.rejects["row"].tolist() == [2, 4]
    assert set(result.rejects["reason"]) == {v.DUPLICATE_ID}
    assert result.panel.index.tolist() == [3, 5]


def test_first_problem_is_reported_and_all_are_listed(catalog):
    refused = run({"pb_nk_pct": "-1", "pb_treg_pct": "140", "kir_haplotype": "zz"}, catalog)
    record = refused.rejects.iloc[0]
    assert record["reason"] == v.NEGATIVE
    assert "pb_treg_pct: percentage above 100" in record["all_problems"]
    assert "kir_haplotype: not a valid category" in record["all_problems"]


def test_numeric_parquet_style_columns(catalog):
    raw = pd.DataFrame({"patient_id": ["A", "B", "C"], "pb_nk_pct": [10.0, np.nan, np.inf], "pb_treg_pct": [1.0, 2.0, -1.0]})
    result = validate_chunk(raw, np.array([2, 3, 4]), catalog)
    assert result.panel.index.tolist() == [2, 3]
    assert result.rejects["reason"].tolist() == [v.NOT_A_NUMBER]


def test_extra_columns_pass_through_untouched(catalog):
    result = run({"pb_nk_pct": "7", "freezer_box": " 12-b "}, catalog)
    assert result.panel.iloc[0]["freezer_box"] == " 12-b "
    assert result.accepted_raw.iloc[0]["freezer_box"] == " 12-b "


def test_every_row_accounted_for(catalog):
    rng = np.random.default_rng(3)
    cells = np.array(["1", "-1", "", "x", "<2", "101", "50"], dtype=object)
    raw = pd.DataFrame({m: rng.choice(cells, 500) for m in catalog.marker_names if catalog.by_name[m].is_numeric})
    raw.insert(0, "patient_id", rng.choice(["", "a", "b"] + [f"p{i}" for i in range(600)], 500))
    result = validate_chunk(raw, np.arange(2, 502), catalog, frozenset({"a", "b"}))
    assert len(result.panel) + len(result.rejects) == 500
    assert sorted(result.panel.index.tolist() + result.rejects["row"].tolist()) == list(range(2, 502))


def test_repeated_ids_strip_and_ignore_blanks():
    first = pd.Series(["A", " B", "", None, "C"])
    second = pd.Series(["B ", "", "D"])
    assert v.repeated_ids(first, second) == frozenset({"B"})
    assert v.repeated_ids(pd.Series([], dtype=object)) == frozenset()


def test_range_rules_give_the_reasons_a_pandera_schema_of_the_same_bounds_gives(catalog):
    """The rules run with numpy (no schema library to import when scoring); pandera, given the
    same bounds, is the reference: same failing cells, same first reason per cell."""
    import pandera.pandas as pandera

    rules = v.range_rules(catalog)
    columns = list(dict.fromkeys(rule.column for rule in rules))
    rng = np.random.default_rng(5)
    cells = np.array([-3.0, -0.0, 0.0, 0.5, 7.0, 99.9, 100.0, 100.5, 150.0, 1e6, np.nan])
    numbers = {c: rng.choice(cells, 400) for c in columns}
    schema = pandera.DataFrameSchema({
        c: pandera.Column(float, nullable=True, checks=[
            pandera.Check.ge(r.minimum, error=r.reason, ignore_na=True) if r.minimum is not None
            else pandera.Check.le(r.maximum, error=r.reason, ignore_na=True)
            for r in rules if r.column == c])
        for c in columns
    })
    expected: dict[tuple[int, str], str] = {}
    try:
        schema.validate(pd.DataFrame(numbers), lazy=True)
    except pandera.errors.SchemaErrors as errors:
        cases = errors.failure_cases
        cases = cases[cases["index"].notna()]
        order = {(r.column, r.reason): i for i, r in enumerate(rules)}
        for case in sorted(cases.itertuples(), key=lambda c: order[(c.column, c.check)]):
            expected.setdefault((int(case.index), case.column), case.check)
    found = {(i, column): reason for column, reasons in v._range_problems(numbers, catalog).items()
             for i, reason in enumerate(reasons) if reason is not None}
    assert len(expected) > 100 and {v.NEGATIVE, v.PERCENT_ABOVE_100} <= set(expected.values())
    assert found == expected


def test_range_rules_come_from_the_catalog(catalog):
    rules = {(r.column, r.reason) for r in v.range_rules(catalog)}
    percent = next(m for m in catalog.numeric_markers if m.kind == "percent" and m.valid_range[1] == 100)
    assert (percent.name, v.PERCENT_ABOVE_100) in rules and (percent.name, v.NEGATIVE) in rules
    assert {column for column, _ in rules} >= {m.name for m in catalog.numeric_markers if m.valid_range[0] is not None}


def test_decimal_comma_cells_stay_on_the_arrow_parse(monkeypatch):
    """European exports (';' and decimal commas) are parsed in Arrow compute like plain files.

    The comma-to-point swap yields Arrow's large_string layout; reading it as "not Arrow text"
    sent whole columns through pandas.to_numeric (1M panels: validate 29.7 s vs 8.6 s plain).
    """
    import pyarrow as pa

    def no_pandas_parse(*args, **kwargs):
        raise AssertionError("decimal-comma text fell back to pandas.to_numeric")

    monkeypatch.setattr(v.pd, "to_numeric", no_pandas_parse)
    column = pd.Series(["12,5", "<1,0", "", "abc", "1.234", " 3 "], dtype=pd.ArrowDtype(pa.string()))
    parsed = v.parse_numeric(column, censorable=True, decimal=",")
    np.testing.assert_array_equal(parsed.values, [12.5, 1.0, np.nan, np.nan, np.nan, 3.0])
    assert parsed.censored.tolist() == [False, True, False, False, False, False]
    assert parsed.present.tolist() == [True, True, False, True, True, True]
    assert [p is not None for p in parsed.reasons] == [False, False, False, True, True, False]


@pytest.mark.parametrize("large", [False, True])
def test_the_arrow_parse_of_sliced_chunks_matches_the_pandas_parse(large):
    """Empty cells become nulls over the text's own buffers, chunk by chunk (offsets of slices included)."""
    import pyarrow as pa

    kind = pa.large_string() if large else pa.string()
    cells = ["1.5", "", "2", "nan", "3e2", "", "-0", "7.25", "", "1e-3"]
    chunks = pa.chunked_array([pa.array(cells[:4], kind), pa.array(cells[4:], kind).slice(1)])
    arrow = pd.Series(pd.arrays.ArrowExtensionArray(chunks)).iloc[1:]
    plain = pd.Series(cells[1:4] + cells[5:], dtype=object)
    got, expected = v.parse_numeric(arrow, censorable=True), v.parse_numeric(plain, censorable=True)
    np.testing.assert_array_equal(got.values, expected.values)
    assert got.present.tolist() == expected.present.tolist() == [False, True, True, False, True, True, False, True]
    assert got.reasons.tolist() == expected.reasons.tolist()
    assert got.censored.tolist() == expected.censored.tolist()


@pytest.mark.parametrize("censorable", [True, False])
@pytest.mark.parametrize(
    "cells",
    [
        ["<1.0", "2.5", "", "<0.25", "7"],  # the one-cast parse of limits
        ["<1.0", "<", "< 2", "<<3", "<-1", "<nan", "<+4", "<.5", "<0", "8", ""],  # cells it must read as the general parse
        ["<1.0", "<1e400", "3"],  # beyond float range: left to the general parse
        ["<1.0", "abc", "2"],
    ],
)
def test_censored_cells_parse_in_one_cast_as_the_general_parse_reads_them(cells, censorable):
    """A column of numbers and ``<x`` limits is cast once (the cytokines' usual cells); every cell
    reads as the pandas parse reads it, limits, problems and all."""
    import pyarrow as pa

    arrow = pd.Series(cells, dtype=pd.ArrowDtype(pa.string()))
    got = v.parse_numeric(arrow, censorable=censorable)
    expected = v.parse_numeric(pd.Series(cells, dtype=object), censorable=censorable)
    np.testing.assert_array_equal(got.values, expected.values)
    assert got.censored.tolist() == expected.censored.tolist()
    assert got.present.tolist() == expected.present.tolist()
    assert got.reasons.tolist() == expected.reasons.tolist()


def test_a_column_of_plain_limits_takes_the_one_cast_parse(monkeypatch):
    def no_regex(*args, **kwargs):
        raise AssertionError("limits fell back to the general parse")

    import pyarrow as pa

    monkeypatch.setattr(v.pc, "match_substring_regex", no_regex)
    parsed = v.parse_numeric(pd.Series(["<1.0", "2.5", "", "<3"], dtype=pd.ArrowDtype(pa.string())), censorable=True)
    np.testing.assert_array_equal(parsed.values, [1.0, 2.5, np.nan, 3.0])
    assert parsed.censored.tolist() == [True, False, False, True]


def test_repeated_ids_are_settled_on_the_text_when_hashes_collide(monkeypatch):
    """Every id hashed alike: only ids whose text repeats are duplicates, never two patients sharing a hash."""
    monkeypatch.setattr(v, "_hash64", lambda text: np.zeros(len(text), dtype=np.uint64))
    first = pd.Series(["A", "B", "Jose\u0301", " C"])
    second = pd.Series(["D", "Jos\u00e9", "C", ""])
    assert v.repeated_ids(first, second) == frozenset({"Jos\u00e9", "C"})
    assert v.repeated_ids(pd.Series(["A", "B", "E"])) == frozenset()


def test_repeated_ids_in_reads_the_ids_again_only_when_a_hash_repeats():
    reads = []

    def read(chunks):
        def again():
            reads.append(1)
            return iter(chunks)
        return again

    distinct = [pd.Series(["A", "B"]), pd.Series(["C"])]
    assert v.repeated_ids_in(read(distinct)) == frozenset() and len(reads) == 1
    reads.clear()
    hashes = [v.id_hashes(ids) for ids in distinct]
    assert v.repeated_ids_in(read(distinct), hashes) == frozenset() and reads == []
    twice = [pd.Series(["A", "B"]), pd.Series(["B "])]
    assert v.repeated_ids_in(read(twice), [v.id_hashes(ids) for ids in twice]) == frozenset({"B"}) and len(reads) == 1


def test_id_hashes_are_8_bytes_per_filled_id_and_follow_the_id_reading():
    ids = pd.Series([f"P{i:07d}" for i in range(200_000)] + ["", None, " Zoe\u0308", "Zo\u00eb"])
    hashed = v.id_hashes(ids)
    assert hashed.dtype == np.uint64 and len(hashed) == 200_002
    assert np.all(hashed[1:] >= hashed[:-1])  # sorted
    assert len(np.unique(hashed)) == 200_001  # distinct ids, distinct hashes; the two spellings of Zoë one
    text = pa.array(["x", "ab", "abc", "b\u00e9"] * 3)
    sliced = v._hash64(text.slice(3, 6))
    assert np.array_equal(sliced, v._hash64(pa.array(["b\u00e9", "x", "ab", "abc", "b\u00e9", "x"])))
    assert np.array_equal(sliced, v._hash64(text.slice(3, 6).cast(pa.large_string())))
    assert len(set(v._hash64(pa.array(["ab", "ba", "a", "aa", "b\u00e9"])).tolist())) == 5
