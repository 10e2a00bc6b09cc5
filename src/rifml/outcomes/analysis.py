"""Outcomes by group (profile or subtype) and treatment: rates, adjusted odds ratios, interactions.

Pure core: DataFrames in, DataFrames out; no files, no MLflow. Every estimate comes
from statsmodels (logistic regression by maximum likelihood, Wilson intervals,
Woolf intervals for the crude 2x2 odds ratio, Holm's step-down adjustment).

For a group g and a treatment t, the adjusted effect is the odds ratio of the
treatment indicator in

    logit P(outcome = 1) = b0 + b_t * [treatment == t] + sum_k b_k * covariate_k

fitted on the patients of g given t or no add-on (``none``); OR = exp(b_t), its 95%
Wald interval exp(b_t +- 1.96 se), p from the Wald test. Numeric covariates enter
linearly, categorical ones as indicator columns. The crude OR (the same 2x2 table
without covariates) sits beside it so a reader sees what the adjustment changed.

A cell is not estimable, and carries no number, when an arm has fewer than
``min_events`` events or non-events, when fewer than ``min_treated`` patients got
the treatment, or when the fit fails (no convergence, separation, a singular
information matrix). Whether a treatment's effect differs between groups is a
likelihood-ratio test of the group-by-treatment terms (a model with them against
one without), over the groups where that treatment is estimable.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from rifml.outcomes.contract import EFFECT_COLUMNS, INTERACTION_COLUMNS, NO_TREATMENT, RATE_COLUMNS, TREATMENT

Z_95 = 1.959963984540054
# Larger log-odds coefficients (OR beyond e^12) only come from (quasi-)separated data.
_SEPARATION_COEF = 12.0


class FitFailed(Exception):
    """A logistic fit that must not be reported (no convergence, separation, singular)."""


@dataclass
class Registry:
    """Analysable patients, one row each: the groups of each level, treatment, outcome, covariates.

    Parameters
    ----------
    data : DataFrame
        Columns: one per level (the patient's group there), ``treatment`` (``none`` =
        no add-on), the 0/1 outcome column, and every covariate.
    levels : dict
        Level name (``profile``, ``subtype``) -> column of ``data`` holding its groups.
    outcome : str
        The 0/1 outcome column.
    covariates : dict
        Covariate column -> ``"numeric"`` or ``"categorical"``, in adjustment order.
    reference_groups : dict
        Level -> the group other groups are compared with (the balanced one).
    """

    data: pd.DataFrame
    levels: dict[str, str]
    outcome: str
    covariates: dict[str, str] = field(default_factory=dict)
    reference_groups: dict[str, str] = field(default_factory=dict)


@dataclass
class OutcomeAnalysis:
    """What :func:`analyse` found: the three tables and the settings that made them."""

    effects: pd.DataFrame
    rates: pd.DataFrame
    interactions: pd.DataFrame
    min_treated: int
    min_events: int

    @property
    def tests_run(self) -> int:
        """Treatment-effect tests that produced a p-value (the Holm family)."""
        return int(self.effects["p_value"].notna().sum())


# ---------------------------------------------------------------------------
# Model fitting
# ---------------------------------------------------------------------------


def covariate_matrix(data: pd.DataFrame, covariates: dict[str, str]) -> pd.DataFrame:
    """The covariates as model columns: numeric ones as they are, each categorical one as
    indicators of every level but its most common (the reference)."""
    columns = {}
    for name, kind in covariates.items():
        if kind == "categorical":
            values = data[name].astype(str)
            for level in sorted(values.value_counts().index[1:]):
                columns[f"{name}[{level}]"] = (values == level).astype(float)
        else:
            columns[name] = data[name].astype(float)
    return pd.DataFrame(columns, index=data.index)


def _indicators(groups: pd.Series, levels: list[str], prefix: str) -> pd.DataFrame:
    return pd.DataFrame({f"{prefix}[{g}]": (groups == g).astype(float) for g in levels}, index=groups.index)


def fit_logit(y: pd.Series, X: pd.DataFrame):
    """A statsmodels logistic fit (intercept added) that raises :class:`FitFailed` rather than
    return a doubtful result. Columns constant in these rows are dropped first: they carry no
    information here and would be collinear with the intercept."""
    # The submodules, not statsmodels.api: that imports every model statsmodels has (seconds).
    from statsmodels.discrete.discrete_model import Logit
    from statsmodels.tools.sm_exceptions import (
        ConvergenceWarning,
        HessianInversionWarning,
        PerfectSeparationError,
        PerfectSeparationWarning,
    )

    X = X.loc[:, X.nunique() > 1]
    X.insert(0, "const", 1.0)
    try:
        with warnings.catch_warnings():
            for category in (ConvergenceWarning, HessianInversionWarning, PerfectSeparationWarning, RuntimeWarning):
                warnings.simplefilter("error", category)
            result = Logit(y.astype(float), X).fit(disp=0, maxiter=200)
    except (PerfectSeparationError, PerfectSeparationWarning):
        raise FitFailed("outcome perfectly separated") from None
    except ConvergenceWarning:
        raise FitFailed("fit did not converge") from None
    except (HessianInversionWarning, np.linalg.LinAlgError):
        raise FitFailed("singular model (collinear covariates?)") from None
    except RuntimeWarning as exc:
        raise FitFailed(f"numerical problem ({exc})") from None
    if not result.mle_retvals.get("converged", False):
        raise FitFailed("fit did not converge")
    if not np.all(np.isfinite(result.bse)) or np.any(np.abs(result.params) > _SEPARATION_COEF):
        raise FitFailed("outcome (quasi-)separated")
    return result


def _odds_ratio(result, term: str) -> tuple[float, float, float, float]:
    """OR, 95% CI and Wald p of one coefficient."""
    coef, se = float(result.params[term]), float(result.bse[term])
    return float(np.exp(coef)), float(np.exp(coef - Z_95 * se)), float(np.exp(coef + Z_95 * se)), float(result.pvalues[term])


def crude_odds_ratio(events_treated: int, n_treated: int, events_untreated: int, n_untreated: int) -> tuple[float, float, float]:
    """Unadjusted OR of the 2x2 table (treated vs untreated) with its 95% Woolf interval."""
    from statsmodels.stats.contingency_tables import Table2x2

    table = Table2x2(
        np.array(
            [[events_treated, n_treated - events_treated], [events_untreated, n_untreated - events_untreated]], dtype=float
        )
    )
    low, high = table.oddsratio_confint(alpha=0.05)
    return float(table.oddsratio), float(low), float(high)


def _small_cells(events: list[int], totals: list[int], min_events: int) -> str | None:
    """Why a comparison is not estimable from its arm counts, or None."""
    if any(e < min_events for e in events):
        return f"fewer than {min_events} events in an arm"
    if any(n - e < min_events for e, n in zip(events, totals)):
        return f"fewer than {min_events} non-events in an arm"
    return None


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------


def treatment_effects(registry: Registry, level: str, min_treated: int = 30, min_events: int = 5) -> pd.DataFrame:
    """Adjusted and crude ORs of each treatment vs no add-on, within each group of one level.

    One row per (group, treatment) given to anyone in the group, columns
    :data:`~rifml.outcomes.contract.EFFECT_COLUMNS` (``p_holm`` left empty:
    :func:`analyse` adjusts across the whole run).
    """
    data = registry.data
    group_column, outcome = registry.levels[level], registry.outcome
    adjusted_for = ",".join(registry.covariates)
    covariates = covariate_matrix(data, registry.covariates)
    frame = data[[TREATMENT]].assign(y=data[outcome])
    rows = []
    for group in _ordered_groups(data[group_column], registry.reference_groups.get(level)):
        in_group = frame[data[group_column] == group]
        untreated = in_group[in_group[TREATMENT] == NO_TREATMENT]
        for treatment in sorted(set(in_group[TREATMENT]) - {NO_TREATMENT}):
            treated = in_group[in_group[TREATMENT] == treatment]
            row = {
                "level": level, "group": group, "treatment": treatment,
                "n_treated": len(treated), "n_untreated": len(untreated),
                "events_treated": int(treated["y"].sum()), "events_untreated": int(untreated["y"].sum()),
                "adjusted_for": adjusted_for, "estimable": False, "note": "",
            }
            if len(treated) < min_treated:
                row["note"] = f"fewer than {min_treated} treated"
            else:
                row["note"] = _small_cells(
                    [row["events_treated"], row["events_untreated"]], [row["n_treated"], row["n_untreated"]], min_events
                ) or ""
            if not row["note"]:
                subset = pd.concat([treated, untreated])
                X = pd.concat([(subset[TREATMENT] != NO_TREATMENT).astype(float).rename("treated"),
                               covariates.loc[subset.index]], axis=1)
                try:
                    result = fit_logit(subset["y"], X)
                except FitFailed as exc:
                    row["note"] = f"not estimable: {exc}"
                else:
                    row["odds_ratio"], row["ci_low"], row["ci_high"], row["p_value"] = _odds_ratio(result, "treated")
                    row["crude_odds_ratio"], row["crude_ci_low"], row["crude_ci_high"] = crude_odds_ratio(
                        row["events_treated"], row["n_treated"], row["events_untreated"], row["n_untreated"]
                    )
                    row["estimable"] = True
            rows.append(row)
    return pd.DataFrame(rows, columns=EFFECT_COLUMNS).astype({"estimable": bool})


def _ordered_groups(groups: pd.Series, reference: str | None) -> list[str]:
    """The reference group first, then the others by size (largest first), ties by name."""
    counts = groups.value_counts()
    ordered = sorted(counts.index, key=lambda g: (g != reference, -counts[g], str(g)))
    return [str(g) for g in ordered]


def wilson_interval(events: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (statsmodels)."""
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(events, n, alpha=0.05, method="wilson")
    return float(low), float(high)


def outcome_rates(registry: Registry, level: str, min_events: int = 5) -> pd.DataFrame:
    """Outcome rate per group (Wilson 95% CI), and each group's OR against the reference group.

    The OR compares untreated patients (conventional care, no add-on) of each group with
    untreated patients of the reference group, adjusted for the covariates, so that
    add-ons given unevenly between groups do not blur the prognostic difference.
    Groups with fewer than ``min_events`` events or non-events among their untreated
    patients are left out of that model and reported not estimable.
    """
    data = registry.data
    group_column, outcome = registry.levels[level], registry.outcome
    reference = registry.reference_groups.get(level)
    adjusted_for = ",".join(registry.covariates)
    rows = []
    for group in _ordered_groups(data[group_column], reference):
        members = data[data[group_column] == group]
        untreated = members[members[TREATMENT] == NO_TREATMENT]
        n, events = len(members), int(members[outcome].sum())
        low, high = wilson_interval(events, n)
        rows.append({
            "level": level, "group": group, "n": n, "events": events, "rate": events / n,
            "rate_ci_low": low, "rate_ci_high": high,
            "n_untreated": len(untreated), "events_untreated": int(untreated[outcome].sum()),
            "rate_untreated": untreated[outcome].mean() if len(untreated) else np.nan,
            "reference_group": reference or "", "adjusted_for": adjusted_for, "estimable": False,
            "note": _small_cells([int(untreated[outcome].sum())], [len(untreated)], min_events) or "",
        })
    rates = pd.DataFrame(rows, columns=RATE_COLUMNS).astype({"estimable": bool})
    if reference is None or reference not in set(rates["group"]):
        rates["note"] = rates["note"].where(rates["note"] != "", "no reference group")
        return rates
    if rates.loc[rates["group"] == reference, "note"].iloc[0]:
        rates["note"] = rates["note"].where(rates["group"] == reference, "reference group not estimable")
        return rates
    usable = rates.loc[rates["note"] == "", "group"].tolist()
    rates.loc[rates["group"] == reference, "note"] = "reference group"
    if len(usable) < 2:
        return rates
    groups = data[group_column].astype(str)
    rows_used = (data[TREATMENT] == NO_TREATMENT) & groups.isin(usable)
    others = [g for g in usable if g != reference]
    X = pd.concat([_indicators(groups[rows_used], others, "group"),
                   covariate_matrix(data, registry.covariates)[rows_used]], axis=1)
    try:
        result = fit_logit(data.loc[rows_used, outcome], X)
    except FitFailed as exc:
        rates.loc[rates["group"].isin(usable) & (rates["group"] != reference), "note"] = f"not estimable: {exc}"
        return rates
    for group in others:
        term = f"group[{group}]"
        at = rates["group"] == group
        rates.loc[at, ["odds_ratio_vs_reference", "ci_low", "ci_high", "p_value"]] = _odds_ratio(result, term)
        rates.loc[at, "estimable"] = True
    return rates


def interaction_tests(registry: Registry, level: str, effects: pd.DataFrame) -> pd.DataFrame:
    """Does a treatment's effect differ between groups? One likelihood-ratio test per treatment.

    Over the groups where the treatment's effect is estimable (at least two), among
    patients given that treatment or none: ``outcome ~ group * treated + covariates``
    against ``outcome ~ group + treated + covariates``; LR = 2 (llf_full - llf_reduced),
    chi-squared with (groups - 1) degrees of freedom.
    """
    from scipy.stats import chi2

    data = registry.data
    group_column = registry.levels[level]
    groups_of = data[group_column].astype(str)
    covariates = covariate_matrix(data, registry.covariates)
    rows = []
    mine = effects[effects["level"] == level]
    for treatment in sorted(set(mine["treatment"])):
        groups = mine.loc[(mine["treatment"] == treatment) & mine["estimable"].astype(bool), "group"].tolist()
        row = {"level": level, "treatment": treatment, "groups": ";".join(groups), "note": ""}
        if len(groups) < 2:
            row["note"] = "estimable in fewer than 2 groups"
            rows.append(row)
            continue
        used = groups_of.isin(groups) & data[TREATMENT].isin([treatment, NO_TREATMENT])
        treated = (data.loc[used, TREATMENT] != NO_TREATMENT).astype(float).rename("treated")
        indicators = _indicators(groups_of[used], groups[1:], "group")
        reduced_X = pd.concat([indicators, treated, covariates[used]], axis=1)
        products = indicators.mul(treated, axis=0).add_suffix(":treated")
        row["n"] = int(used.sum())
        try:
            full = fit_logit(data.loc[used, registry.outcome], pd.concat([reduced_X, products], axis=1))
            reduced = fit_logit(data.loc[used, registry.outcome], reduced_X)
        except FitFailed as exc:
            row["note"] = f"not estimable: {exc}"
        else:
            row["lr_statistic"] = max(0.0, 2.0 * (full.llf - reduced.llf))
            row["df"] = int(round(full.df_model - reduced.df_model))
            row["p_value"] = float(chi2.sf(row["lr_statistic"], row["df"]))
        rows.append(row)
    return pd.DataFrame(rows, columns=INTERACTION_COLUMNS)


def holm(p_values: pd.Series) -> pd.Series:
    """Holm-adjusted p-values over the non-missing entries (one family); missing stay missing."""
    from statsmodels.stats.multitest import multipletests

    adjusted = pd.Series(np.nan, index=p_values.index, dtype=float)
    present = p_values.notna()
    if present.any():
        adjusted[present] = multipletests(p_values[present].astype(float), alpha=0.05, method="holm")[1]
    return adjusted


def analyse(registry: Registry, min_treated: int = 30, min_events: int = 5) -> OutcomeAnalysis:
    """Rates, treatment effects and interaction tests for every level of the registry.

    Holm's adjustment runs over all treatment-effect tests of the run (both levels)
    as one family, and over all interaction tests as another.
    """
    if min_treated < 1 or min_events < 1:
        raise ValueError("min_treated and min_events must be at least 1")
    from threadpoolctl import threadpool_limits

    # Dozens of small fits: BLAS threads only contend for the cores (measured ~30% slower on 2 busy cores).
    with threadpool_limits(1):
        return _analyse(registry, min_treated, min_events)


def _analyse(registry: Registry, min_treated: int, min_events: int) -> OutcomeAnalysis:
    effects = pd.concat(
        [treatment_effects(registry, level, min_treated, min_events) for level in registry.levels], ignore_index=True
    )
    effects["p_holm"] = holm(effects["p_value"])
    rates = pd.concat([outcome_rates(registry, level, min_events) for level in registry.levels], ignore_index=True)
    interactions = pd.concat([interaction_tests(registry, level, effects) for level in registry.levels], ignore_index=True)
    interactions["p_holm"] = holm(interactions["p_value"])
    return OutcomeAnalysis(effects, rates, interactions, min_treated, min_events)
