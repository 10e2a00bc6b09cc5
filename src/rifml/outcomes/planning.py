"""Trial planning per immune profile and subtype: patients per arm and patients to screen.

Pure core. A two-arm trial within one group compares the control rate p0 with
p1 = p0 + effect (an absolute improvement). Patients per arm come from
statsmodels' power for two independent proportions (normal approximation on
Cohen's arcsine effect size h = 2 asin(sqrt p1) - 2 asin(sqrt p0), two-sided,
equal arms): n = ((z_(1-alpha/2) + z_power) / h)^2 * 2, rounded up. Only a share
of screened patients belongs to the group (its prevalence among the calls), so
enrolling 2n takes about 2n / prevalence screened patients.
"""

from __future__ import annotations

import math

import pandas as pd

from rifml.errors import RifmlInputError
from rifml.outcomes.contract import PLAN_COLUMNS


def check_design(effect: float, alpha: float, power: float) -> None:
    """Refuse settings no trial can have (RifmlInputError, one line)."""
    if not 0 < effect < 1:
        raise RifmlInputError(f"--effect must be an absolute improvement between 0 and 1, got {effect}")
    if not 0 < alpha < 1:
        raise RifmlInputError(f"--alpha must lie between 0 and 1, got {alpha}")
    if not 0 < power < 1:
        raise RifmlInputError(f"--power must lie between 0 and 1, got {power}")


def patients_per_arm(control_rate: float, effect: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Patients per arm to detect ``control_rate -> control_rate + effect`` (two-sided, equal arms).

    Examples
    --------
    >>> patients_per_arm(0.3, 0.1)
    356
    """
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import proportion_effectsize

    target = control_rate + effect
    if not 0 < control_rate < 1 or not 0 < target < 1:
        raise ValueError(f"rates must lie strictly between 0 and 1 (control {control_rate}, target {target})")
    h = proportion_effectsize(target, control_rate)
    n = NormalIndPower().solve_power(effect_size=h, alpha=alpha, power=power, ratio=1.0, alternative="two-sided")
    return int(math.ceil(n))


def plan_trial(
    groups: dict[str, pd.Series],
    control_rates: dict[tuple[str, str], tuple[float, str]],
    baseline: float,
    effect: float,
    alpha: float = 0.05,
    power: float = 0.8,
) -> pd.DataFrame:
    """One planning row per (level, group).

    Parameters
    ----------
    groups : dict
        Level -> each called patient's group at that level (the calls file's column).
    control_rates : dict
        (level, group) -> (control-arm rate, where it came from), for groups with
        observed untreated outcomes; other groups use ``baseline``.
    baseline : float
        Control rate where none was observed (``--baseline``).
    effect, alpha, power : float
        Absolute improvement to detect, two-sided significance level, power.

    Returns
    -------
    DataFrame
        Columns :data:`~rifml.outcomes.contract.PLAN_COLUMNS`, groups by prevalence.
    """
    check_design(effect, alpha, power)
    if not 0 < baseline < 1:
        raise RifmlInputError(f"--baseline must lie between 0 and 1, got {baseline}")
    rows = []
    for level, calls in groups.items():
        counts = calls.value_counts()
        total = int(counts.sum())
        for group, n_calls in counts.items():
            rate, source = control_rates.get((level, str(group)), (baseline, "--baseline"))
            row = {
                "level": level, "group": str(group), "n_calls": int(n_calls), "prevalence": n_calls / total,
                "control_rate": rate, "control_rate_source": source, "target_rate": rate + effect,
                "effect": effect, "alpha": alpha, "power": power, "note": "",
            }
            if rate + effect >= 1:
                row["note"] = "control rate + effect reaches 100%: no trial can show it"
            else:
                per_arm = patients_per_arm(rate, effect, alpha, power)
                row["patients_per_arm"] = per_arm
                row["patients_total"] = 2 * per_arm
                row["patients_to_screen"] = int(math.ceil(2 * per_arm / row["prevalence"]))
            rows.append(row)
    plan = pd.DataFrame(rows, columns=PLAN_COLUMNS)
    for column in ("patients_per_arm", "patients_total", "patients_to_screen"):
        plan[column] = plan[column].astype("Int64")
    return plan
