"""Science bars of the outcomes analysis on simulated registries (no model: the latent truth is the call).

Each registry: 8,000 simulated patients (configs/simulate.yaml), treatments confounded
by age (older patients get add-ons more often and have fewer live births), true
odds ratios from the config's ``outcomes.odds_ratios`` (1 wherever not listed).
The analysis adjusts for age (from the panels) and embryo quality (from the registry).
"""

import numpy as np
import pandas as pd
import pytest

from rifml.outcomes import contract
from rifml.outcomes.analysis import Registry, analyse, crude_odds_ratio, outcome_rates, treatment_effects, wilson_interval
from rifml.outcomes.matching import match_registry
from rifml.outcomes.simulate import EMBRYO_QUALITY, simulate_outcomes
from rifml.simulate import load_simulation_config, simulate_cohort

SEEDS = (0, 1, 2)
N = 8000


def truth_calls(truth: pd.DataFrame) -> pd.DataFrame:
    """The latent truth in the shape of a calls file."""
    return pd.DataFrame({
        "patient_id": truth["patient_id"], "immune_profile": truth["immune_profile"],
        "subtype": truth["subtype"], "subtype_profile": truth["immune_profile"],
    })


def simulated_registry(seed: int, catalog, n: int = N):
    config = load_simulation_config()
    cohort, truth = simulate_cohort(n, seed=seed, config=config, catalog=catalog)
    registry = simulate_outcomes(cohort, truth, config.outcomes, catalog.id_column, seed=seed)
    age = config.outcomes.age_column
    matched = match_registry(
        registry, np.arange(len(registry)) + 2, truth_calls(truth), id_column=catalog.id_column,
        level_columns={"profile": "immune_profile", "subtype": "subtype"}, outcome=contract.DEFAULT_OUTCOME,
        adjust=[age, EMBRYO_QUALITY], panel_covariates=cohort[[catalog.id_column, age]],
    )
    return matched, config


def true_odds_ratios(config) -> dict[tuple[str, str, str], float]:
    """(level, group, treatment) -> true OR; profile cells only where every subtype of the profile agrees."""
    spec = config.outcomes
    truth = {}
    for subtype in config.subtypes:
        for treatment in spec.treatments:
            truth[("subtype", subtype, treatment)] = spec.odds_ratios.get(subtype, {}).get(treatment, 1.0)
    profiles = {s.profile for s in config.subtypes.values()}
    for profile in profiles:
        members = [name for name, s in config.subtypes.items() if s.profile == profile]
        for treatment in spec.treatments:
            values = {truth[("subtype", m, treatment)] for m in members}
            if len(values) == 1:
                truth[("profile", profile, treatment)] = values.pop()
    return truth


@pytest.fixture(scope="module")
def analyses(catalog):
    runs = []
    for seed in SEEDS:
        matched, config = simulated_registry(seed, catalog)
        runs.append((analyse(matched.registry, min_treated=30), config, matched))
    return runs


def _with_truth(analysis, config) -> pd.DataFrame:
    truth = true_odds_ratios(config)
    effects = analysis.effects[analysis.effects["estimable"]].copy()
    effects["true_or"] = [truth.get(key, np.nan) for key in zip(effects["level"], effects["group"], effects["treatment"])]
    return effects[effects["true_or"].notna()]


def test_every_simulated_patient_is_analysed(analyses):
    for analysis, config, matched in analyses:
        assert matched.rejects.empty
        assert len(matched.registry.data) == N
        assert matched.registry.covariates == {config.outcomes.age_column: "numeric", EMBRYO_QUALITY: "categorical"}


def test_known_benefits_are_found(analyses):
    # Bar: every simulated benefit (true OR 1.8 within its subtype) has an adjusted 95% CI above 1, every seed.
    for analysis, config, _ in analyses:
        effects = analysis.effects.set_index(["level", "group", "treatment"])
        for subtype, table in config.outcomes.odds_ratios.items():
            for treatment, odds_ratio in table.items():
                assert odds_ratio > 1
                row = effects.loc[("subtype", subtype, treatment)]
                assert row["estimable"], row["note"]
                assert row["ci_low"] > 1, (subtype, treatment, row["odds_ratio"], row["ci_low"])


def test_no_effect_is_found_where_there_is_none(analyses):
    # Bars, for cells whose true OR is 1 (pooled over seeds): at least 90% of adjusted 95% CIs cover 1
    # (nominal 95%), and none is significant after Holm's adjustment (family-wise error 5% per run).
    covered, cells = 0, 0
    for analysis, config, _ in analyses:
        effects = _with_truth(analysis, config)
        null = effects[effects["true_or"] == 1.0]
        assert len(null) >= 10
        covered += int(((null["ci_low"] <= 1) & (null["ci_high"] >= 1)).sum())
        cells += len(null)
        assert (null["p_holm"] >= 0.05).all(), null[null["p_holm"] < 0.05]
    assert covered / cells >= 0.90, (covered, cells)


def test_adjusted_intervals_cover_the_truth(analyses):
    # Bar: pooled over all cells with a known truth (benefits and nulls), >= 90% of 95% CIs cover it.
    hits = total = 0
    for analysis, config, _ in analyses:
        effects = _with_truth(analysis, config)
        hits += int(((effects["ci_low"] <= effects["true_or"]) & (effects["true_or"] <= effects["ci_high"])).sum())
        total += len(effects)
    assert hits / total >= 0.90, (hits, total)


def test_adjustment_removes_the_age_confounding(analyses):
    # The treated are older, and older patients have fewer live births: crude ORs are biased down.
    # Bars (mean log OR over cells with a known truth, pooled over seeds): the crude OR sits at least
    # 0.15 below the truth; the adjusted one within 0.07 of it.
    crude_bias, adjusted_bias = [], []
    for analysis, config, _ in analyses:
        effects = _with_truth(analysis, config)
        log_truth = np.log(effects["true_or"])
        crude_bias += list(np.log(effects["crude_odds_ratio"]) - log_truth)
        adjusted_bias += list(np.log(effects["odds_ratio"]) - log_truth)
    assert np.mean(crude_bias) < -0.15, np.mean(crude_bias)
    assert abs(np.mean(adjusted_bias)) < 0.07, np.mean(adjusted_bias)


def test_confounding_shows_in_the_data(analyses):
    # Precondition of the test above: add-ons really went to older patients.
    for _, config, matched in analyses:
        data = matched.registry.data
        age = data[config.outcomes.age_column]
        treated = data[contract.TREATMENT] != contract.NO_TREATMENT
        assert age[treated].mean() - age[~treated].mean() > 1.5


def test_interaction_found_for_a_targeted_benefit_only(analyses):
    # intrauterine hCG helps endometrial_under only (OR 1.8; ~700 treated there), so its effect differs between
    # the subtypes it is given in: LR p < 0.05 in every seed. ivig has no effect anywhere: p > 0.01 in every
    # seed (a 1% false alarm rate per run). (tacrolimus, 1.8 in th1_high against four null subtypes on 4 df
    # with ~100 treated in each, has too little power for a bar.)
    for analysis, _, _ in analyses:
        tests = analysis.interactions.set_index(["level", "treatment"])
        assert tests.loc[("subtype", "intrauterine_hcg"), "p_value"] < 0.05
        assert tests.loc[("subtype", "ivig"), "p_value"] > 0.01
        assert (tests["p_holm"].dropna() >= tests["p_value"].dropna() - 1e-12).all()


def test_prognosis_by_profile_recovered(analyses):
    # Untreated dysregulated patients have lower odds of live birth than balanced ones (true OR exp(-0.44) = 0.64
    # for hyperactive and hypoactive, exp(-0.5) = 0.61 for mixed). Bar: each adjusted CI covers its truth in at
    # least 2 of 3 seeds, and every point estimate is below 1.
    covered = {}
    for analysis, config, _ in analyses:
        rates = analysis.rates[analysis.rates["level"] == "profile"].set_index("group")
        assert rates.loc["balanced", "note"] == "reference group"
        for profile, log_odds in config.outcomes.live_birth.profile_log_odds.items():
            if profile == "balanced":
                continue
            row = rates.loc[profile]
            assert row["odds_ratio_vs_reference"] < 1
            covered[profile] = covered.get(profile, 0) + int(row["ci_low"] <= np.exp(log_odds) <= row["ci_high"])
    assert all(count >= 2 for count in covered.values()), covered


def test_rates_use_wilson_intervals(analyses):
    from statsmodels.stats.proportion import proportion_confint

    rates = analyses[0][0].rates
    for row in rates.itertuples():
        low, high = proportion_confint(row.events, row.n, method="wilson")
        assert (row.rate_ci_low, row.rate_ci_high) == pytest.approx((low, high))
        assert row.rate == pytest.approx(row.events / row.n)


# ---------------------------------------------------------------------------
# Small cells and failed fits: reported not estimable, never as a number
# ---------------------------------------------------------------------------


def _registry(frame: pd.DataFrame, covariates=None) -> Registry:
    return Registry(data=frame, levels={"profile": "profile"}, outcome="y", covariates=covariates or {},
                    reference_groups={"profile": "balanced"})


def _arm(treatment: str, n: int, events: int, group: str = "balanced", **extra) -> pd.DataFrame:
    return pd.DataFrame({"profile": group, contract.TREATMENT: treatment, "y": [1] * events + [0] * (n - events), **extra})


def test_fewer_than_five_events_in_an_arm_is_not_estimable():
    frame = pd.concat([_arm("ivig", 40, 4), _arm("none", 100, 30)], ignore_index=True)
    row = treatment_effects(_registry(frame), "profile").iloc[0]
    assert not row["estimable"]
    assert row["note"] == "fewer than 5 events in an arm"
    assert np.isnan(row["odds_ratio"]) and np.isnan(row["crude_odds_ratio"]) and np.isnan(row["p_value"])
    assert (row["n_treated"], row["events_treated"], row["n_untreated"], row["events_untreated"]) == (40, 4, 100, 30)


def test_fewer_than_five_non_events_in_an_arm_is_not_estimable():
    frame = pd.concat([_arm("ivig", 40, 37), _arm("none", 100, 30)], ignore_index=True)
    row = treatment_effects(_registry(frame), "profile").iloc[0]
    assert not row["estimable"] and row["note"] == "fewer than 5 non-events in an arm"


def test_too_few_treated_is_not_estimable():
    frame = pd.concat([_arm("ivig", 29, 10), _arm("none", 100, 30)], ignore_index=True)
    row = treatment_effects(_registry(frame), "profile", min_treated=30).iloc[0]
    assert not row["estimable"] and row["note"] == "fewer than 30 treated"
    assert treatment_effects(_registry(frame), "profile", min_treated=29).iloc[0]["estimable"]


def test_a_separated_fit_is_not_estimable():
    # Enough events in each arm, but a covariate predicts the outcome perfectly: the MLE does not exist.
    treated, untreated = _arm("ivig", 40, 20), _arm("none", 100, 30)
    frame = pd.concat([treated, untreated], ignore_index=True)
    frame["score"] = np.where(frame["y"] == 1, 1.0, -1.0) + np.linspace(0, 0.1, len(frame))
    row = treatment_effects(_registry(frame, {"score": "numeric"}), "profile").iloc[0]
    assert not row["estimable"]
    assert row["note"].startswith("not estimable:"), row["note"]
    assert np.isnan(row["odds_ratio"]) and np.isnan(row["ci_low"])


def test_estimable_cell_matches_the_two_by_two_table():
    # Without covariates the logistic OR equals the 2x2 OR: (20/20) / (30/70) = 2.333.
    frame = pd.concat([_arm("ivig", 40, 20), _arm("none", 100, 30)], ignore_index=True)
    row = treatment_effects(_registry(frame), "profile").iloc[0]
    assert row["estimable"] and row["note"] == ""
    assert row["odds_ratio"] == pytest.approx(20 / 20 / (30 / 70), rel=1e-6)
    assert row["crude_odds_ratio"] == pytest.approx(row["odds_ratio"], rel=1e-6)
    odds, low, high = crude_odds_ratio(20, 40, 30, 100)
    assert (low, high) == pytest.approx((row["ci_low"], row["ci_high"]), rel=1e-3)  # Wald on log OR = Woolf


def test_small_reference_group_leaves_group_odds_ratios_empty():
    frame = pd.concat([_arm("none", 20, 3), _arm("none", 200, 60, group="hyperactive")], ignore_index=True)
    rates = outcome_rates(_registry(frame), "profile").set_index("group")
    assert rates.loc["balanced", "note"] == "fewer than 5 events in an arm"
    assert rates.loc["hyperactive", "note"] == "reference group not estimable"
    assert rates["odds_ratio_vs_reference"].isna().all()
    assert wilson_interval(60, 200) == pytest.approx((rates.loc["hyperactive", "rate_ci_low"], rates.loc["hyperactive", "rate_ci_high"]))


def test_analyse_lists_tests_and_holm_adjusts(analyses):
    analysis = analyses[0][0]
    assert analysis.tests_run == int(analysis.effects["estimable"].sum())
    estimable = analysis.effects[analysis.effects["estimable"]]
    assert (estimable["p_holm"] >= estimable["p_value"] - 1e-12).all()
    assert analysis.effects.loc[~analysis.effects["estimable"], "p_holm"].isna().all()
    assert list(analysis.effects.columns[:14]) == [
        "level", "group", "treatment", "n_treated", "n_untreated", "events_treated", "events_untreated",
        "odds_ratio", "ci_low", "ci_high", "p_value", "p_holm", "crude_odds_ratio", "adjusted_for",
    ]
    assert set(analysis.effects["adjusted_for"]) == {"age_years,embryo_quality"}
