"""Tests of the simulator's marker noise knobs (rifml.marker_noise; configs/simulate.yaml ``noise:``).

Correlated and heavy-tailed worlds: the schema refuses impossible values, the default draws
exactly what it drew before the knobs, and the correlation, the tails and the bands' coverage
are what the config says (empirical checks on a few thousand panels, tolerances stated).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from cli_support import rifml_in_process
from rifml.catalog import load_catalog
from rifml.errors import RifmlInputError
from rifml.marker_noise import MAX_TAIL_SD, NO_AXIS, NoiseSpec, band_quantiles, standard_noise
from rifml.scenarios import available_scenarios
from rifml.simulate import baseline_distribution, load_simulation_config, simulate_cohort

CATALOG = load_catalog()
NUMERIC = CATALOG.numeric_markers
COVERAGE = load_simulation_config().baseline.band_coverage
NEW_SCENARIOS = ("correlated_axes", "shared_sample", "heavy_tails", "combo_misspecified")


def overlay(tmp_path: Path, text: str):
    path = tmp_path / "scenario.yaml"
    path.write_text(text, encoding="utf-8")
    return load_simulation_config(scenario=path)


def digest(cohort: pd.DataFrame, truth: pd.DataFrame) -> str:
    return hashlib.sha256((cohort.to_csv(index=False) + truth.to_csv(index=False)).encode()).hexdigest()


# A world of balanced patients only, complete panels, one undrifted lab: every marker is its
# fertile-control distribution, so log values standardized by the baseline are the noise itself.
CONTROLS_ONLY = """
subtypes: {th1_high: null, nk_high: null, endometrial_over: null, endometrial_under: null, mixed: null,
           balanced: {prevalence: 1.0}}
labs: {lab_B: null, lab_C: null, lab_A: {share: 1.0, drift: 1.0}}
panels: {complete: 1.0, blood_only: 0.0, biopsy_only: 0.0}
missing_cells: {rate: 0.0}
"""


def standardized_log_values(cohort: pd.DataFrame, config) -> pd.DataFrame:
    """(log value - log median) / log-SD per numeric marker; censored and missing cells -> NaN."""
    out = {}
    for marker in NUMERIC:
        cells = cohort[marker.name]
        numbers = pd.to_numeric(cells.where(~cells.str.startswith("<") & (cells != "")), errors="coerce")
        median, log_sd = baseline_distribution(marker, config)
        out[marker.name] = (np.log(numbers.where(numbers > 0)) - math.log(median)) / log_sd
    return pd.DataFrame(out)


# ---------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, match",
    [
        ("noise: {correlation: {axis: -0.1}}", "noise.correlation.axis: .*must not be negative"),
        ("noise: {correlation: {compartment: -0.5}}", "noise.correlation.compartment: .*must not be negative"),
        ("noise: {correlation: {axis: 0.6, compartment: 0.4}}", "axis \\+ compartment must be below 1"),
        ("noise: {correlation: {axis: 1.0}}", "noise.correlation.axis"),
        ("noise: {tail_df: 2}", "noise.tail_df: .*must be above 2.*no finite variance"),
        ("noise: {tail_df: 1.5}", "must be above 2"),
        ("noise: {tail_df: many}", "noise.tail_df"),
        ("noise: {tail_df: .inf}", "noise.tail_df"),
        ("noise: {skew: .nan}", "noise.skew"),
        ("noise: {corelation: {axis: 0.5}}", "unknown key; did you mean 'correlation'"),
        ("noise: {correlation: {axes: 0.5}}", "unknown key; did you mean 'axis'"),
    ],
)
def test_schema_refuses_impossible_noise(tmp_path, text, match):
    with pytest.raises(RifmlInputError, match=match):
        overlay(tmp_path, text)


def test_cli_refuses_a_bad_noise_scenario_in_one_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("noise: {tail_df: 2}\n", encoding="utf-8")
    result = rifml_in_process("simulate", "--n", "10", "--output", "x.csv", "--scenario", "bad.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "tail_df" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "x.csv").exists()


# ---------------------------------------------------------------------------
# Default off: the same cohorts as before the knobs
# ---------------------------------------------------------------------------

# sha256 of cohort.to_csv + truth.to_csv of simulate_cohort(400, seed=11, bad_share=0.05,
# batch="score") for the combo_assay_labs scenario, recorded on main (140f58a) before the noise
# knobs existed (the default world's own digests are test_simulate.py's GOLDEN).
COMBO_BEFORE_NOISE = "68ab8acef06a2b1fd83ebe755b8a13060c00389656da40a886b72d607a5cbbd1"


def test_a_scenario_without_noise_draws_the_same_cohort_as_before_the_knobs():
    config = load_simulation_config(scenario="combo_assay_labs")
    assert config.noise.is_independent_normal
    assert digest(*simulate_cohort(400, seed=11, bad_share=0.05, config=config, batch="score")) == COMBO_BEFORE_NOISE


def test_noise_written_out_at_its_defaults_changes_nothing(tmp_path):
    explicit = overlay(tmp_path, "noise: {correlation: {axis: 0, compartment: 0.0}, tail_df: null, skew: 0}")
    assert explicit == load_simulation_config()
    assert digest(*simulate_cohort(300, seed=5, config=explicit)) == digest(*simulate_cohort(300, seed=5))


def test_other_noise_keeps_the_patients_and_changes_only_marker_values():
    """Factors and tails come from a spawned generator: same subtypes, labs, panels, context, genotypes."""
    default = simulate_cohort(1000, seed=3, bad_share=0.02, batch="score")
    numeric = [m.name for m in NUMERIC]
    for name in NEW_SCENARIOS[:3]:  # noise only: everything else as in the default world
        cohort, truth = simulate_cohort(1000, seed=3, bad_share=0.02, config=load_simulation_config(scenario=name), batch="score")
        others = [c for c in cohort.columns if c not in numeric]
        pd.testing.assert_frame_equal(cohort[others], default[0][others])
        pd.testing.assert_frame_equal(truth.drop(columns="shifted_markers"), default[1].drop(columns="shifted_markers"))
        assert (cohort[numeric] != default[0][numeric]).to_numpy().mean() > 0.5, name


# ---------------------------------------------------------------------------
# Correlation
# ---------------------------------------------------------------------------


def pairs_by_relation(markers):
    """Index pairs (i < j): same axis; same compartment on different axes; different compartments."""
    same_axis, same_compartment, across = [], [], []
    for i, a in enumerate(markers):
        for j in range(i + 1, len(markers)):
            b = markers[j]
            if a.compartment != b.compartment:
                across.append((i, j))
            elif a.axis == b.axis and a.axis != NO_AXIS:
                same_axis.append((i, j))
            else:
                same_compartment.append((i, j))
    return same_axis, same_compartment, across


def test_correlated_noise_has_the_stated_correlations_and_unit_variance():
    a, c = 0.5, 0.15
    z = standard_noise(np.random.default_rng(0), NoiseSpec(correlation={"axis": a, "compartment": c}), NUMERIC, 5000, COVERAGE)
    r = np.corrcoef(z.T)
    same_axis, same_compartment, across = pairs_by_relation(NUMERIC)
    assert same_axis and same_compartment and across  # the catalog has all three kinds of pair
    # sampling SD of a correlation at n = 5000 is <= 0.014: 0.05 is > 3.5 SDs
    for pairs, expected in ((same_axis, a + c), (same_compartment, c), (across, 0.0)):
        for i, j in pairs:
            assert r[i, j] == pytest.approx(expected, abs=0.05), (NUMERIC[i].name, NUMERIC[j].name)
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=0.04)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=0.05)


def test_correlation_shows_in_the_written_values_of_fertile_controls(tmp_path):
    """End to end: log values in the CSV of balanced patients correlate as configured."""
    config = overlay(tmp_path, CONTROLS_ONLY + "noise: {correlation: {axis: 0.5, compartment: 0.15}}\n")
    cohort, _ = simulate_cohort(3000, seed=2, config=config)
    z = standardized_log_values(cohort, config)
    uncensored = [m for m in NUMERIC if z[m.name].notna().mean() > 0.95]  # censored cytokines aside
    same_axis, same_compartment, across = pairs_by_relation(uncensored)
    assert same_axis and across
    r = z[[m.name for m in uncensored]].corr().to_numpy()
    # n = 3000 and 3-digit rounding: tolerance 0.06 (> 3 sampling SDs)
    for pairs, expected in ((same_axis, 0.65), (same_compartment, 0.15), (across, 0.0)):
        for i, j in pairs:
            assert r[i, j] == pytest.approx(expected, abs=0.06), (uncensored[i].name, uncensored[j].name)


# ---------------------------------------------------------------------------
# Tails and bands
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("noise", [NoiseSpec(tail_df=4), NoiseSpec(skew=0.5), NoiseSpec(tail_df=5, skew=-0.5)])
def test_reshaped_noise_keeps_the_band_quantiles(noise):
    """Heavy tails and skew leave the share of noise below each band edge where the normal put it."""
    z = standard_noise(np.random.default_rng(1), noise, NUMERIC, 20_000, COVERAGE)
    for j, marker in enumerate(NUMERIC):
        for level in band_quantiles(marker, COVERAGE):
            edge = NormalDist().inv_cdf(level)  # where the band's edge falls in standardized noise
            # 20,000 draws: binomial SD <= 0.0035
            assert np.mean(z[:, j] < edge) == pytest.approx(level, abs=0.012), (marker.name, level)


def test_student_t_noise_has_heavy_tails_around_the_same_centre():
    z = standard_noise(np.random.default_rng(1), NoiseSpec(tail_df=4), NUMERIC, 20_000, COVERAGE)
    normal = standard_noise(np.random.default_rng(1), NoiseSpec(), NUMERIC, 20_000, COVERAGE)
    np.testing.assert_allclose(np.median(z, axis=0), 0.0, atol=0.03)
    # far out: beyond 4 normal SDs a normal puts 6e-5 of its mass, this t(4) ~0.0066
    beyond = np.mean(np.abs(z) > 4)
    assert 0.004 < beyond < 0.01 and np.mean(np.abs(normal) > 4) < 0.0005
    kurtosis = np.mean(z**4, axis=0) / np.mean(z**2, axis=0) ** 2
    assert (kurtosis > 4.5).all()  # normal: 3; t(4) has none, so the sample's is large


@pytest.mark.parametrize("skew", [0.5, -0.5])
def test_skew_lengthens_the_tail_on_its_side(skew):
    z = standard_noise(np.random.default_rng(2), NoiseSpec(skew=skew), NUMERIC, 20_000, COVERAGE)
    centred = z - z.mean(axis=0)
    skewness = np.mean(centred**3, axis=0) / np.mean(centred**2, axis=0) ** 1.5
    # sinh(asinh(x) + 0.5) of a normal x has skewness 0.76; placed on the band it keeps its sign
    assert (np.sign(skew) * skewness > 0.4).all()
    far_up, far_down = np.mean(z > 3), np.mean(z < -3)
    assert (far_up > 3 * far_down) if skew > 0 else (far_down > 3 * far_up)


def test_tails_keep_the_rank_correlation_and_stay_finite():
    """t noise is a per-marker monotone map of the correlated normal noise (a Gaussian copula)."""
    noise = NoiseSpec(correlation={"axis": 0.5, "compartment": 0.15}, tail_df=4)
    z = standard_noise(np.random.default_rng(2), noise, NUMERIC, 5000, COVERAGE)
    ranks = pd.DataFrame(z).rank().to_numpy()
    spearman = np.corrcoef(ranks.T)
    expected = 6 / np.pi * np.arcsin(0.65 / 2)  # Spearman's rho of a normal pair correlated 0.65: 0.632
    same_axis, _, across = pairs_by_relation(NUMERIC)
    for i, j in same_axis:
        assert spearman[i, j] == pytest.approx(expected, abs=0.05)
    for i, j in across:
        assert spearman[i, j] == pytest.approx(0.0, abs=0.05)
    # the heaviest tails allowed still give finite values, capped where an analyser's range ends
    extreme = standard_noise(np.random.default_rng(3), NoiseSpec(tail_df=2.01), NUMERIC, 20_000, COVERAGE)
    assert np.isfinite(extreme).all() and np.abs(extreme).max() == MAX_TAIL_SD


@pytest.mark.parametrize(
    "noise",
    ["{correlation: {axis: 0.5, compartment: 0.15}}", "{tail_df: 4}", "{correlation: {axis: 0.4, compartment: 0.15}, tail_df: 5}",
     "{skew: 0.6}", "{skew: -0.4, tail_df: 6}"],
)
def test_bands_keep_their_coverage_on_fertile_controls(tmp_path, noise):
    """Every marker's catalog band still holds band_coverage (0.90) of balanced panels."""
    config = overlay(tmp_path, CONTROLS_ONLY + f"noise: {noise}\n")
    cohort, _ = simulate_cohort(4000, seed=4, config=config)
    for marker in NUMERIC:
        low, high = marker.reference_band
        cells = cohort[marker.name]
        values = pd.to_numeric(cells.where(~cells.str.startswith("<")), errors="coerce").fillna(0.0)  # "<x" is below any band
        inside = values.between(low, high).mean() if low > 0 else (values <= high).mean()
        # 4,000 panels: binomial SD 0.005; 0.02 leaves room for 3-digit rounding at the edges
        assert inside == pytest.approx(COVERAGE, abs=0.02), f"{marker.name}: {inside:.3f} inside the band"


def test_heavy_tails_put_many_more_values_far_outside_the_bands(tmp_path):
    normal = overlay(tmp_path, CONTROLS_ONLY)
    heavy = overlay(tmp_path, CONTROLS_ONLY + "noise: {tail_df: 4}\n")
    far = {}
    for name, config in (("normal", normal), ("heavy", heavy)):
        z = standardized_log_values(simulate_cohort(4000, seed=6, config=config)[0], config)
        far[name] = np.nanmean(np.abs(z.to_numpy()) > 3.5)
    # normal: 4.7e-4 of cells beyond 3.5 SDs; scaled t(4): ~0.012
    assert far["normal"] < 0.002 and far["heavy"] > 0.008


# ---------------------------------------------------------------------------
# Shipped scenarios
# ---------------------------------------------------------------------------


def test_shipped_noise_scenarios_draw_correlated_and_heavy_tailed_worlds():
    shipped = set(available_scenarios())
    assert set(NEW_SCENARIOS) <= shipped
    configs = {n: load_simulation_config(scenario=n) for n in NEW_SCENARIOS}
    assert configs["correlated_axes"].noise.correlation.axis > 0 and configs["correlated_axes"].noise.tail_df is None
    assert configs["shared_sample"].noise.correlation.compartment > 0
    assert configs["heavy_tails"].noise.tail_df is not None and configs["heavy_tails"].noise.correlation.axis == 0
    combo = configs["combo_misspecified"]
    assert combo.noise.tail_df and combo.noise.correlation.axis and combo.baseline.assay_offsets
    assert any(lab.scoring_only for lab in combo.labs.values())


def test_cli_simulates_a_noise_scenario(tmp_path):
    result = rifml_in_process("simulate", "--n", "300", "--output", "c.csv", "--scenario", "correlated_axes", "--seed", "4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = (tmp_path / "c.csv").read_bytes()
    cohort, _ = simulate_cohort(300, seed=4, config=load_simulation_config(scenario="correlated_axes"))
    assert written.decode("utf-8").replace("\r\n", "\n") == cohort.to_csv(index=False)
