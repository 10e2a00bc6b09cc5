"""Tests of the synthetic cohort simulator (rifml.simulate).

Cells are parsed here with a small independent parser, so the tests check the
CSV-facing output rather than the simulator's internals.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cli_support import rifml_in_process
from rifml.catalog import load_catalog
from rifml.errors import RifmlInputError
from rifml.scenarios import available_scenarios, merge_patch, scenario_description
from rifml.simulate import (
    CORRUPTION_KINDS,
    baseline_distribution,
    load_simulation_config,
    simulate_cohort,
)

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


# ---------------------------------------------------------------------------
# Scenario knobs (issue 10): each defaults to the behaviour above
# ---------------------------------------------------------------------------

# sha256 of cohort.to_csv + truth.to_csv, recorded on main (20f7577) before the knobs existed.
GOLDEN = {
    (500, 11, 0.05): "008686052282dd9f7207de073116a262a7fc7503c625e0b7df442fafb63662a1",
    (3000, 4, 0.0): "61aef2eab4d38c7de0c7cf7c2085ce4b61991647613510715b8add2ad4d3da54",
}
NOT_DRIFTING = next(m for m in CATALOG.numeric_markers if not m.drifts)


def digest(cohort: pd.DataFrame, truth: pd.DataFrame) -> str:
    return hashlib.sha256((cohort.to_csv(index=False) + truth.to_csv(index=False)).encode()).hexdigest()


@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_default_cohort_is_byte_identical_to_before_the_knobs(key):
    n, seed, bad = key
    assert digest(*simulate_cohort(n, seed=seed, bad_share=bad)) == GOLDEN[key]
    # without scoring-only labs a scoring batch is the same cohort
    assert digest(*simulate_cohort(n, seed=seed, bad_share=bad, batch="score")) == GOLDEN[key]


def overlay(tmp_path: Path, text: str):
    path = tmp_path / "scenario.yaml"
    path.write_text(text, encoding="utf-8")
    return load_simulation_config(scenario=path)


def test_assay_factor_and_offset_move_everybody_by_the_stated_amount(tmp_path):
    """Same seed, same draws: an assay factor scales every value of its marker, nothing else."""
    factor_marker, offset_marker = CATALOG.numeric_markers[0], CATALOG.numeric_markers[-1]
    config = overlay(
        tmp_path,
        f"baseline:\n  assay_factors: {{{factor_marker.name}: 1.5}}\n  assay_offsets: {{{offset_marker.name}: -1.0}}\n",
    )
    default = numeric_frame(simulate_cohort(4000, seed=21)[0])
    shifted_cohort, truth = simulate_cohort(4000, seed=21, config=config)
    shifted = numeric_frame(shifted_cohort)
    balanced = truth["subtype"] == "balanced"
    ratio = shifted.loc[balanced, factor_marker.name].median() / default.loc[balanced, factor_marker.name].median()
    assert ratio == pytest.approx(1.5, rel=0.01)
    _, log_sd = baseline_distribution(offset_marker, CONFIG)
    ratio = shifted.loc[balanced, offset_marker.name].median() / default.loc[balanced, offset_marker.name].median()
    assert ratio == pytest.approx(math.exp(-log_sd), rel=0.01)
    others = [m.name for m in CATALOG.numeric_markers if m not in (factor_marker, offset_marker)]
    pd.testing.assert_frame_equal(shifted[others], default[others])


def test_shift_scale_shrinks_subtype_shifts(tmp_path):
    config = overlay(tmp_path, "shift: {scale: 0.5}\n")
    marker = next(iter(CONFIG.subtypes["th1_high"].shifts))
    spec = next(m for m in CATALOG.numeric_markers if m.name == marker)
    median, _ = baseline_distribution(spec, CONFIG)
    full_cohort, truth = simulate_cohort(4000, seed=22)
    half_cohort, _ = simulate_cohort(4000, seed=22, config=config)
    th1 = truth["subtype"] == "th1_high"
    full = np.log(numeric_frame(full_cohort).loc[th1, marker].median() / median)
    half = np.log(numeric_frame(half_cohort).loc[th1, marker].median() / median)
    assert half / full == pytest.approx(0.5, abs=0.08)
    balanced = truth["subtype"] == "balanced"
    pd.testing.assert_frame_equal(full_cohort[balanced], half_cohort[balanced])


def test_lab_marker_drift_applies_to_a_marker_the_catalog_does_not_flag(tmp_path):
    assert not NOT_DRIFTING.drifts
    config = overlay(tmp_path, f"labs:\n  lab_B: {{marker_drift: {{{NOT_DRIFTING.name}: 1.4}}}}\n")
    default = numeric_frame(simulate_cohort(3000, seed=23)[0])
    drifted_cohort, truth = simulate_cohort(3000, seed=23, config=config)
    drifted = numeric_frame(drifted_cohort)
    in_b = truth["lab_id"] == "lab_B"
    ratio = drifted.loc[in_b, NOT_DRIFTING.name] / default.loc[in_b, NOT_DRIFTING.name]
    assert ratio.dropna().median() == pytest.approx(1.4, rel=0.01)
    pd.testing.assert_frame_equal(drifted[~in_b], default[~in_b])
    # lab_B's catalog-flagged markers still drift by its `drift`
    pd.testing.assert_frame_equal(drifted.drop(columns=NOT_DRIFTING.name), default.drop(columns=NOT_DRIFTING.name))


def test_scoring_only_lab_appears_only_in_scoring_batches(tmp_path):
    config = overlay(
        tmp_path,
        "labs:\n  lab_A: {share: 0.3}\n  lab_new: {share: 0.1, drift: 1.5, scoring_only: true}\n",
    )
    _, train = simulate_cohort(3000, seed=24, config=config)
    _, score = simulate_cohort(3000, seed=24, config=config, batch="score")
    assert "lab_new" not in set(train["lab_id"])
    assert set(train["lab_id"]) == {"lab_A", "lab_B", "lab_C"}
    assert (score["lab_id"] == "lab_new").mean() == pytest.approx(0.1, abs=0.02)
    # training shares are the other labs' shares, renormalized
    assert (train["lab_id"] == "lab_A").mean() == pytest.approx(0.3 / 0.9, abs=0.03)


def test_only_scoring_only_labs_is_refused(tmp_path):
    with pytest.raises(RifmlInputError, match="scoring_only"):
        overlay(tmp_path, "labs:\n  lab_A: {scoring_only: true}\n  lab_B: {scoring_only: true}\n  lab_C: {scoring_only: true}\n")


def test_limit_of_detection_per_marker_wins_over_its_kind(tmp_path):
    percent = next(m for m in CATALOG.numeric_markers if m.kind == "percent" and m.censorable and m.reference_band[0] < 1)
    config = overlay(tmp_path, f"limit_of_detection:\n  concentration: 2.0\n  {percent.name}: 0.4\n")
    cohort, _ = simulate_cohort(3000, seed=25, config=config)
    cells = cohort[percent.name]
    assert (cells == "<0.4").mean() > 0.01
    assert (cells[cells.str.match(NUMBER)].astype(float) >= 0.4).all()
    for marker in (m for m in CATALOG.numeric_markers if m.kind == "concentration"):
        assert set(cohort[marker.name][cohort[marker.name].str.startswith("<")]) == {"<2.0"}
    other_percent = [m.name for m in CATALOG.numeric_markers if m.kind == "percent" and m is not percent]
    assert not cohort[other_percent].apply(lambda c: c.str.startswith("<")).any().any()


@pytest.mark.parametrize(
    "text, match",
    [
        ("limit_of_detection: {no_such_marker: 1.0}\n", "no_such_marker"),
        ("labs:\n  lab_A: {marker_drift: {no_such_marker: 1.2}}\n", "no_such_marker"),
        ("baseline: {assay_factors: {no_such_marker: 1.2}}\n", "no_such_marker"),
    ],
)
def test_scenario_naming_unknown_markers_raises(tmp_path, text, match):
    with pytest.raises(RifmlInputError, match=match):
        simulate_cohort(10, config=overlay(tmp_path, text))


@pytest.mark.parametrize(
    "text",
    [
        "shift: {scale: 0}\n",
        "labs:\n  lab_A: {scoring_only: maybe}\n",
        "subtypes:\n  mixed: null\n",  # prevalences no longer sum to 1
    ],
)
def test_malformed_scenario_raises(tmp_path, text):
    with pytest.raises(RifmlInputError):
        overlay(tmp_path, text)


@pytest.mark.parametrize(
    "text, message",
    [
        ("baseline: {assay_factors: {pb_nk_pct: 0}}\n", "at baseline: .*assay_factors must be positive"),
        ("labs:\n  lab_A: {marker_drift: {pb_nk_pct: -1}}\n", "at labs.lab_A: .*marker_drift factors must be positive"),
    ],
)
def test_non_positive_factor_names_its_setting(tmp_path, text, message):
    with pytest.raises(RifmlInputError, match=message):
        overlay(tmp_path, text)


def test_unknown_scenario_and_bad_batch_raise():
    with pytest.raises(RifmlInputError, match="unknown scenario"):
        load_simulation_config(scenario="no_such_scenario")
    with pytest.raises(RifmlInputError, match="batch"):
        simulate_cohort(10, batch="later")


def test_merge_patch_merges_replaces_and_deletes():
    base = {"a": {"x": 1, "y": {"p": 1}}, "b": [1, 2], "c": 3}
    patch = {"a": {"y": {"q": 2}, "x": None}, "b": [3], "d": {"e": 1}}
    assert merge_patch(base, patch) == {"a": {"y": {"p": 1, "q": 2}}, "b": [3], "c": 3, "d": {"e": 1}}
    assert base == {"a": {"x": 1, "y": {"p": 1}}, "b": [1, 2], "c": 3}  # inputs untouched


def test_shipped_scenarios_are_many_distinct_and_valid():
    names = available_scenarios()
    assert len(names) >= 10
    configs = {name: load_simulation_config(scenario=name) for name in names}
    dumps = {name: config.model_dump_json() for name, config in configs.items()}
    assert len(set(dumps.values()) | {CONFIG.model_dump_json()}) == len(names) + 1  # all differ, from default too
    for name, config in configs.items():
        assert scenario_description(name), f"{name} has no description"
        cohort, truth = simulate_cohort(200, seed=1, config=config, batch="score")
        assert len(cohort) == 200 and set(truth["immune_profile"]) <= set(CATALOG.profiles)
    # the kinds of world issue 10 asks for are all there
    assert any(c.baseline.assay_factors for c in configs.values())
    assert any(lab.scoring_only for c in configs.values() for lab in c.labs.values())
    assert any(len(c.labs) >= 5 for c in configs.values())
    assert any(c.shift.scale < 1 for c in configs.values()) and any(c.shift.scale > 1 for c in configs.values())
    assert any("mixed" not in c.subtypes for c in configs.values())


def test_random_worlds_are_valid_reproducible_and_move_every_knob():
    """`random-<seed>` draws a whole world: the same for a seed, another for another seed."""
    first, again, other = (load_simulation_config(scenario=name) for name in ("random-1", "random-1", "random-2"))
    assert first.model_dump_json() == again.model_dump_json() != other.model_dump_json()
    assert scenario_description("random-1").startswith("Drawn at random (seed 1)")
    default = CONFIG
    for world in (first, other):
        assert world.shift != default.shift and world.panels != default.panels
        assert [s.prevalence for s in world.subtypes.values()] != [s.prevalence for s in default.subtypes.values()]
        assert sum(s.prevalence for s in world.subtypes.values()) == pytest.approx(1.0, abs=1e-3)
        assert sum(lab.share for lab in world.labs.values() if not lab.scoring_only) == pytest.approx(0.8, abs=1e-3)
        assert [name for name, lab in world.labs.items() if lab.scoring_only] == ["lab_new"]
        assert set(world.subtypes) == set(default.subtypes)  # same subtype definitions, other sizes
        cohort, truth = simulate_cohort(200, seed=1, config=world, batch="score")
        assert len(cohort) == 200 and "lab_new" in set(truth["lab_id"])


def test_cli_simulates_a_scenario_scoring_batch(tmp_path):
    scenario = next(n for n in available_scenarios() if any(l.scoring_only for l in load_simulation_config(scenario=n).labs.values()))
    new_labs = {k for k, l in load_simulation_config(scenario=scenario).labs.items() if l.scoring_only}
    for batch in ("train", "score"):
        result = rifml_in_process("simulate", "--n", "400", "--output", f"{batch}.csv", "--scenario", scenario,
                                  "--batch", batch, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    train = pd.read_csv(tmp_path / "train.csv", dtype=str)
    score = pd.read_csv(tmp_path / "score.csv", dtype=str)
    assert not new_labs & set(train["lab_id"]) and new_labs <= set(score["lab_id"])
    result = rifml_in_process("simulate", "--n", "10", "--output", "x.csv", "--scenario", "no_such_scenario", cwd=tmp_path)
    assert result.returncode == 2 and "unknown scenario" in result.stderr and result.stderr.count("\n") == 1
