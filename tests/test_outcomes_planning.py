"""Trial planning: patients per arm (statsmodels, checked by hand) and patients to screen."""

import math

import pandas as pd
import pytest
from scipy.stats import norm

from rifml.errors import RifmlInputError
from rifml.outcomes.planning import patients_per_arm, plan_trial


def classical_per_arm(p0: float, p1: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The textbook normal-approximation formula (Fleiss, no continuity correction), pooled variance under H0."""
    z_a, z_b = norm.ppf(1 - alpha / 2), norm.ppf(power)
    p_bar = (p0 + p1) / 2
    root = z_a * math.sqrt(2 * p_bar * (1 - p_bar)) + z_b * math.sqrt(p0 * (1 - p0) + p1 * (1 - p1))
    return root**2 / (p1 - p0) ** 2


def test_patients_per_arm_matches_statsmodels():
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import proportion_effectsize

    for p0, effect, power in [(0.3, 0.1, 0.8), (0.25, 0.15, 0.9), (0.4, 0.05, 0.8)]:
        expected = NormalIndPower().solve_power(proportion_effectsize(p0 + effect, p0), alpha=0.05, power=power, ratio=1)
        assert patients_per_arm(p0, effect, power=power) == math.ceil(expected)


def test_patients_per_arm_matches_the_hand_checked_textbook_figure():
    # 30% -> 40%, alpha 0.05 two-sided, power 80%: the classical formula gives 355.9 -> 356 per arm
    # (by hand: [1.96 sqrt(2 .35 .65) + 0.8416 sqrt(.21 + .24)]^2 / 0.1^2 = 1.8867^2 / 0.01 = 355.95).
    # The arcsine method statsmodels uses gives 355.4 -> 356 as well. Bar: equal here, within 1% elsewhere.
    assert classical_per_arm(0.3, 0.4) == pytest.approx(355.95, abs=0.05)
    assert patients_per_arm(0.3, 0.1) == 356
    for p0, p1 in [(0.3, 0.4), (0.5, 0.6), (0.2, 0.35)]:
        assert patients_per_arm(p0, p1 - p0) == pytest.approx(classical_per_arm(p0, p1), rel=0.01)


def test_plan_screens_by_prevalence_and_uses_observed_control_rates():
    calls = {"profile": pd.Series(["balanced"] * 25 + ["hyperactive"] * 75)}
    plan = plan_trial(calls, {("profile", "hyperactive"): (0.25, "observed")}, baseline=0.3, effect=0.1)
    rows = plan.set_index("group")
    assert rows.loc["balanced", "prevalence"] == 0.25
    assert rows.loc["balanced", "control_rate_source"] == "--baseline"
    assert rows.loc["balanced", "patients_per_arm"] == 356
    assert rows.loc["balanced", "patients_total"] == 712
    assert rows.loc["balanced", "patients_to_screen"] == 2848  # 712 / 0.25
    assert rows.loc["hyperactive", "control_rate"] == 0.25
    assert rows.loc["hyperactive", "patients_per_arm"] == patients_per_arm(0.25, 0.1)
    assert rows.loc["hyperactive", "patients_to_screen"] == math.ceil(2 * patients_per_arm(0.25, 0.1) / 0.75)
    assert list(plan["group"]) == ["hyperactive", "balanced"]  # by prevalence


def test_a_target_rate_of_100_percent_gets_a_note_not_a_number():
    plan = plan_trial({"profile": pd.Series(["balanced"] * 4)}, {("profile", "balanced"): (0.95, "observed")}, 0.3, 0.1)
    assert pd.isna(plan.loc[0, "patients_per_arm"]) and "100%" in plan.loc[0, "note"]


@pytest.mark.parametrize("effect, alpha, power, baseline", [(0, 0.05, 0.8, 0.3), (1.2, 0.05, 0.8, 0.3),
                                                            (0.1, 0, 0.8, 0.3), (0.1, 0.05, 1, 0.3), (0.1, 0.05, 0.8, 0)])
def test_impossible_designs_are_input_errors(effect, alpha, power, baseline):
    with pytest.raises(RifmlInputError):
        plan_trial({"profile": pd.Series(["balanced"])}, {}, baseline, effect, alpha, power)
