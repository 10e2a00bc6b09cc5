"""Tests of the synthetic cohort simulator (rifml.simulate).

Cells are parsed here with a small independent parser, so the tests check the
CSV-facing output rather than the simulator's internals.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rifml.catalog import load_catalog
from rifml.errors import RifmlInputError
from rifml.simulate import CORRUPTION_KINDS, load_simulation_config, simulate_cohort

CATALOG = load_catalog()
CONFIG = load_simulation_config()
NUMBER = re.compile(r"^\d+(\.\d+)?$")  # plain, non-negative, no exponent
CENSOR = re.compile(r"^<\d+(\.\d+)?$")
BLOOD = [m.name for m in CATALOG.compartment_markers("blood")]
ENDO = [m.name for m in CATALOG.compartment_markers("endometrium")]
MARKERS = CATALOG.marker_names


def value_of(cell: str) -> float:
    """A clean numeric cell as a float: '' -> nan, '<x' -> 0 (below x), else the number."""
    if cell == "":
        return math.nan
    if cell.startswith("<"):
        return 0.0
    return float(cell)


def numeric_frame(cohort: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({m.name: cohort[m.name].map(value_of) for m in CATALOG.numeric_markers})


def shifted_sets(truth: pd.DataFrame) -> pd.Series:
    return truth["shifted_markers"].map(lambda s: set(s.split(";")) if s else set())


@pytest.fixture(scope="module")
def big():
    return simulate_cohort(20_000, seed=7)


@pytest.fixture(scope="module")
def dirty():
    return simulate_cohort(600, seed=3, bad_share=0.1)


def test_same_seed_same_cohort_other_seed_differs():
    a_cohort, a_truth = simulate_cohort(300, seed=11, bad_share=0.05)
    b_cohort, b_truth = simulate_cohort(300, seed=11, bad_share=0.05)
    c_cohort, _ = simulate_cohort(300, seed=12, bad_share=0.05)
    pd.testing.assert_frame_equal(a_cohort, b_cohort)
    pd.testing.assert_frame_equal(a_truth, b_truth)
    assert not a_cohort.equals(c_cohort)


def test_cohort_layout_and_cells_are_plain_strings(big):
    cohort, truth = big
    expected = [CATALOG.id_column, *(c.name for c in CATALOG.context), *MARKERS, CATALOG.label_column]
    assert list(cohort.columns) == expected
    assert expected[:6] == ["patient_id", "lab_id", "sample_date", "age_years", "failed_transfers", "cycle_day_lh"]
    assert len(cohort) == len(truth) == 20_000
    assert all(dtype == object for dtype in cohort.dtypes)
    assert all(type(v) is str for v in cohort.to_numpy().ravel())
    assert cohort["patient_id"].is_unique
    assert cohort["patient_id"].str.fullmatch(r"P\d{6}").all()
    for marker in CATALOG.numeric_markers:
        cells = cohort[marker.name]
        filled = cells[cells != ""]
        ok = filled.str.match(NUMBER) | filled.str.match(CENSOR)
        assert ok.all(), f"{marker.name}: {filled[~ok].head().tolist()}"
    for marker in CATALOG.categorical_markers:
        assert set(cohort[marker.name]) <= {"", *marker.categories}
    assert set(cohort["kir_haplotype"]) == {"", "AA", "Bx"}
    assert set(cohort["partner_hla_c2"]) == {"", "yes", "no"}
    assert set(cohort[CATALOG.label_column]) == set(CATALOG.profiles)


def test_clean_cohort_respects_valid_ranges(big):
    values = numeric_frame(big[0])
    for marker in CATALOG.numeric_markers:
        column = values[marker.name].dropna()
        low, high = marker.valid_range
        assert (column >= low).all(), marker.name
        if high is not None:
            assert (column < high).all(), marker.name


def test_context_columns_are_plausible(big):
    cohort, _ = big
    age = cohort["age_years"].astype(int)
    transfers = cohort["failed_transfers"].astype(int)
    day = cohort["cycle_day_lh"].astype(int)
    assert age.between(25, 45).all() and age.nunique() > 15
    assert transfers.between(3, 8).all()
    assert day.between(6, 8).all() and (day == 7).mean() > 0.5
    dates = pd.to_datetime(cohort["sample_date"], format="%Y-%m-%d")
    assert (dates.dt.year == 2025).all()
    assert set(cohort["lab_id"]) == {"lab_A", "lab_B", "lab_C"}


def test_subtype_and_profile_prevalences(big):
    _, truth = big
    observed = truth["subtype"].value_counts(normalize=True)
    for name, spec in CONFIG.subtypes.items():
        assert observed.get(name, 0.0) == pytest.approx(spec.prevalence, abs=0.015), name
    # Ledee et al. 2020 (domain.md): 16.5% balanced, 45% hyper, 28% hypo, 10.5% mixed.
    profiles = truth["immune_profile"].value_counts(normalize=True)
    for profile, share in {"balanced": 0.165, "hyperactive": 0.45, "hypoactive": 0.28, "mixed": 0.105}.items():
        assert profiles[profile] == pytest.approx(share, abs=0.02), profile
    # a subtype maps to exactly one profile
    assert truth.groupby("subtype")["immune_profile"].nunique().eq(1).all()


def test_panel_lab_and_genotype_shares(big):
    cohort, truth = big
    panels = truth["panel"].value_counts(normalize=True)
    assert panels["blood_only"] == pytest.approx(0.15, abs=0.015)
    assert panels["biopsy_only"] == pytest.approx(0.15, abs=0.015)
    labs = truth["lab_id"].value_counts(normalize=True)
    for lab, spec in CONFIG.labs.items():
        assert labs[lab] == pytest.approx(spec.share, abs=0.02)
    kir = cohort["kir_haplotype"]
    measured = kir != ""
    nk_high = truth["subtype"] == "nk_high"
    assert (kir[measured & ~nk_high] == "AA").mean() == pytest.approx(0.25, abs=0.03)
    assert (kir[measured & nk_high] == "AA").mean() == pytest.approx(0.5, abs=0.05)
    hla = cohort["partner_hla_c2"]
    assert (hla[hla != ""] == "yes").mean() == pytest.approx(0.5, abs=0.03)


def test_unshifted_markers_follow_the_fertile_control_bands(big):
    cohort, truth = big
    values = numeric_frame(cohort)
    undrifted = [lab for lab, spec in CONFIG.labs.items() if spec.drift == 1.0]
    assert undrifted, "the default config needs a reference lab with drift 1.0"
    control = (truth["subtype"] == "balanced") & (truth["panel"] == "complete") & truth["lab_id"].isin(undrifted)
    assert control.sum() > 500
    fraction = CONFIG.baseline.zero_band_median_fraction
    for marker in CATALOG.numeric_markers:
        low, high = marker.reference_band
        # domain rule: median at the band's geometric middle; bands from 0 use the configured fraction
        expected = math.sqrt(low * high) if low > 0 else fraction * high
        column = values.loc[control, marker.name].dropna()
        assert column.median() == pytest.approx(expected, rel=0.12), marker.name
        inside = column.between(low, high).mean()
        assert 0.85 <= inside <= 0.95, f"{marker.name}: {inside:.3f} inside the band"


def test_shifted_markers_fall_outside_the_band_in_the_profile_direction(big):
    cohort, truth = big
    values = numeric_frame(cohort)
    listed = shifted_sets(truth)
    assert (listed[truth["subtype"] == "balanced"].map(len) == 0).all()
    for marker in CATALOG.numeric_markers:
        rows = listed.map(lambda s, name=marker.name: name in s)
        if rows.sum() < 50:
            continue
        low, high = marker.reference_band
        column = values.loc[rows, marker.name]
        profile = truth.loc[rows, "immune_profile"]
        direction = np.where(column > high, "above", np.where(column < low, "below", ""))
        signal = pd.Series(direction, index=column.index).map(lambda d: marker.signals.get(d, ""))
        # a mixed patient may point either way; others must point to their own profile
        agrees = (signal == profile) | ((profile == "mixed") & signal.isin(["hyperactive", "hypoactive"]))
        assert agrees.mean() > 0.7, f"{marker.name}: only {agrees.mean():.2f} out of band as expected"
    # the markers that carry the profile signal are actually shifted in some patients
    every_listed = set().union(*listed)
    for name in ["pb_nk_pct", "pb_th1_th2_ifng_il4", "em_unk_cd56_pct", "em_il15_fn14_ratio"]:
        assert name in every_listed


def test_shift_heterogeneity(big):
    _, truth = big
    listed = shifted_sets(truth)
    nk = listed[(truth["subtype"] == "nk_high") & (truth["panel"] != "biopsy_only")]
    share = nk.map(lambda s: "pb_nk_pct" in s).mean()
    # not every patient of a subtype shows every marker, but most do
    assert 0.75 < share < 0.93


def test_lab_drift_on_drifting_markers(big):
    cohort, truth = big
    values = numeric_frame(cohort)
    balanced = truth["subtype"] == "balanced"
    for marker in CATALOG.numeric_markers:
        medians = {lab: values.loc[balanced & (truth["lab_id"] == lab), marker.name].median() for lab in CONFIG.labs}
        ratio = medians["lab_B"] / medians["lab_A"]
        if marker.drifts:
            assert ratio == pytest.approx(CONFIG.labs["lab_B"].drift, rel=0.12), marker.name
        else:
            assert ratio == pytest.approx(1.0, rel=0.12), marker.name


def test_censoring_and_sporadic_missing(big):
    cohort, truth = big
    serum = [m.name for m in CATALOG.numeric_markers if m.kind == "concentration"]
    assert serum
    for name in serum:
        cells = cohort[name]
        assert (cells == "<1.0").mean() > 0.1
        plain = cells[cells.str.match(NUMBER)].astype(float)
        assert (plain >= 1.0).all()
    complete = truth["panel"] == "complete"
    percents = [m.name for m in CATALOG.numeric_markers if m.kind == "percent"]
    empty_share = (cohort.loc[complete, percents] == "").to_numpy().mean()
    assert 0.01 < empty_share < 0.03
    ratios = [m.name for m in CATALOG.numeric_markers if m.kind == "ratio"]
    assert not (cohort.loc[complete, ratios] == "").to_numpy().any()


def test_truth_aligns_with_cohort(big):
    cohort, truth = big
    assert list(truth.columns) == [
        "row", "patient_id", "immune_profile", "subtype", "shifted_markers", "panel", "lab_id", "corruption",
    ]
    assert (truth["row"].to_numpy() == np.arange(len(cohort)) + 2).all()
    assert (truth["patient_id"] == cohort["patient_id"]).all()
    assert (truth["immune_profile"] == cohort["immune_profile"]).all()
    assert (truth["lab_id"] == cohort["lab_id"]).all()
    assert (truth["corruption"] == "").all()
    blood_empty = (cohort[BLOOD] == "").all(axis=1)
    endo_empty = (cohort[ENDO] == "").all(axis=1)
    panel = truth["panel"]
    assert (blood_empty == (panel == "biopsy_only")).all()
    assert (endo_empty == (panel == "blood_only")).all()
    # shifted markers are only those with a value in the file
    listed = shifted_sets(truth)
    for i in np.flatnonzero(listed.map(len) > 0)[:2000]:
        for name in listed.iloc[i]:
            assert cohort.iloc[i][name] != "", (i, name)


def test_every_corruption_kind_is_present_and_real(dirty):
    cohort, truth = dirty
    assert len(cohort) == 600
    kinds = truth["corruption"]
    assert set(kinds) == {"", *CORRUPTION_KINDS}
    victims = (kinds != "").sum() - (kinds == "duplicate patient_id").sum() / 2
    assert victims == 60
    numeric = [m.name for m in CATALOG.numeric_markers]
    percent = [m.name for m in CATALOG.numeric_markers if m.kind == "percent"]

    def as_float(cell):
        try:
            return float(cell)
        except ValueError:
            return None

    for i, kind in kinds.items():
        row = cohort.loc[i]
        cells = row[numeric]
        if kind == "negative value":
            assert any((v := as_float(c)) is not None and v < 0 for c in cells), row
        elif kind == "percentage above 100":
            assert any((v := as_float(c)) is not None and v > 100 for c in row[percent]), row
        elif kind == "not a number":
            assert any(c and as_float(c) is None and not CENSOR.match(c) for c in cells), row
        elif kind == "no markers":
            assert (row[MARKERS] == "").all() and row["patient_id"] != "" and row["lab_id"] != ""
        elif kind == "missing patient_id":
            assert row["patient_id"] == "" and truth.loc[i, "patient_id"] == ""
        elif kind == "duplicate patient_id":
            assert (cohort["patient_id"] == row["patient_id"]).sum() == 2
            assert set(kinds[cohort["patient_id"] == row["patient_id"]]) == {"duplicate patient_id"}
    # clean rows carry none of these defects
    clean = cohort[kinds == ""]
    assert clean["patient_id"].ne("").all() and clean["patient_id"].is_unique
    for name in numeric:
        filled = clean[name][clean[name] != ""]
        assert (filled.str.match(NUMBER) | filled.str.match(CENSOR)).all(), name
    assert (numeric_frame(clean)[percent].fillna(0) < 100).all().all()
    assert (clean[MARKERS] != "").any(axis=1).all()


def test_corruption_leaves_clean_rows_untouched():
    dirty_cohort, dirty_truth = simulate_cohort(600, seed=5, bad_share=0.1)
    clean_cohort, clean_truth = simulate_cohort(600, seed=5)
    clean_rows = dirty_truth["corruption"] == ""
    pd.testing.assert_frame_equal(dirty_cohort[clean_rows], clean_cohort[clean_rows])
    pd.testing.assert_frame_equal(dirty_truth[clean_rows], clean_truth[clean_rows])


def test_six_bad_rows_cover_all_kinds():
    _, truth = simulate_cohort(60, seed=1, bad_share=0.1)
    assert set(truth["corruption"]) == {"", *CORRUPTION_KINDS}


@pytest.mark.parametrize(
    "edit",
    [
        lambda text: text.replace("prevalence: 0.165", "prevalence: lots"),
        lambda text: text.replace("prevalence: 0.165", "prevalence: 0.5"),  # no longer sums to 1
        lambda text: text.replace("significant_digits: 3", "significant_digit: 3"),  # unknown key
        lambda text: text.replace("drift: 1.3", "drift: -1.3"),
        lambda text: "- just a list\n",
    ],
)
def test_malformed_config_raises(tmp_path: Path, edit):
    source = Path(__file__).resolve().parents[1] / "configs" / "simulate.yaml"
    broken = tmp_path / "simulate.yaml"
    broken.write_text(edit(source.read_text(encoding="utf-8")), encoding="utf-8")
    with pytest.raises(RifmlInputError):
        load_simulation_config(broken)


def test_config_naming_unknown_marker_raises(tmp_path: Path):
    source = Path(__file__).resolve().parents[1] / "configs" / "simulate.yaml"
    broken = tmp_path / "simulate.yaml"
    broken.write_text(source.read_text(encoding="utf-8").replace("pb_nk_pct: 2.75", "pb_nk_pctt: 2.75", 1))
    config = load_simulation_config(broken)
    with pytest.raises(RifmlInputError, match="pb_nk_pctt"):
        simulate_cohort(10, config=config)


@pytest.mark.parametrize("kwargs", [{"n": 0}, {"n": 10, "bad_share": 1.5}, {"n": 10, "bad_share": -0.1}])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(RifmlInputError):
        simulate_cohort(**kwargs)
