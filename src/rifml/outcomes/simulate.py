"""A synthetic outcomes registry for a simulated cohort: add-on treatments and live births.

Each patient of a cohort from :func:`rifml.simulate.simulate_cohort` gets an
embryo quality, at most one add-on treatment and a live-birth outcome:

* assignment is confounded by age: the log-odds of receiving any add-on rise by
  ``assignment.age_log_odds_per_year`` per year above ``age_reference`` (older
  patients get add-ons more often), from a per-subtype share at the reference age;
  which add-on follows per-subtype weights (targeted treatments for their finding);
* live birth is a logistic model: ``logit p = logit(reference_rate)
  + age_log_odds_per_year * (age - age_reference) + embryo_quality_log_odds[q]
  + profile_log_odds[profile] + log(odds_ratios[subtype][treatment])``, so older
  patients have fewer live births and the true treatment effect is an odds ratio
  within the subtype, the same at every age and embryo quality.

A crude treated-vs-untreated comparison is therefore biased downwards (the treated
are older); adjusting for age recovers ``odds_ratios``. Every treatment not listed
for a subtype has no effect there (OR 1). Figures in configs/simulate.yaml.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rifml.catalog import Profile, load_catalog
from rifml.errors import RifmlInputError
from rifml.outcomes.contract import DEFAULT_OUTCOME, NO_TREATMENT, TREATMENT

EMBRYO_QUALITY = "embryo_quality"
# Outcomes use their own random stream, so a cohort is the same with or without them.
_OUTCOME_STREAM = 14


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LiveBirthSpec(_Strict):
    reference_rate: float = Field(gt=0, lt=1)
    age_log_odds_per_year: float
    embryo_quality_log_odds: dict[str, float]
    profile_log_odds: dict[Profile, float]


class TreatmentChoice(_Strict):
    add_on_share: float = Field(ge=0, lt=1)
    weights: dict[str, float] = {}

    @model_validator(mode="after")
    def _weights(self) -> "TreatmentChoice":
        if any(w < 0 for w in self.weights.values()):
            raise ValueError("treatment weights must not be negative")
        if self.add_on_share > 0 and sum(self.weights.values()) <= 0:
            raise ValueError("a subtype with add_on_share > 0 needs positive treatment weights")
        return self


class AssignmentSpec(_Strict):
    age_log_odds_per_year: float
    by_subtype: dict[str, TreatmentChoice]


class OutcomesSpec(_Strict):
    """The ``outcomes:`` section of configs/simulate.yaml, validated."""

    age_column: str
    age_reference: float
    treatments: list[str] = Field(min_length=1)
    embryo_quality: dict[str, float]
    live_birth: LiveBirthSpec
    assignment: AssignmentSpec
    odds_ratios: dict[str, dict[str, float]] = {}

    @model_validator(mode="after")
    def _consistent(self) -> "OutcomesSpec":
        if NO_TREATMENT in self.treatments:
            raise ValueError(f"{NO_TREATMENT!r} means no add-on; it cannot be a treatment name")
        shares = self.embryo_quality
        if not shares or any(v < 0 for v in shares.values()) or abs(sum(shares.values()) - 1) > 1e-3:
            raise ValueError("embryo_quality shares must be non-negative and sum to 1")
        if set(self.live_birth.embryo_quality_log_odds) != set(shares):
            raise ValueError("live_birth.embryo_quality_log_odds must name exactly the embryo_quality levels")
        known = set(self.treatments)
        for subtype, choice in self.assignment.by_subtype.items():
            unknown = sorted(set(choice.weights) - known)
            if unknown:
                raise ValueError(f"assignment.by_subtype.{subtype} names unknown treatments: {', '.join(unknown)}")
        for subtype, table in self.odds_ratios.items():
            unknown = sorted(set(table) - known)
            if unknown:
                raise ValueError(f"odds_ratios.{subtype} names unknown treatments: {', '.join(unknown)}")
            if any(v <= 0 for v in table.values()):
                raise ValueError(f"odds_ratios.{subtype}: odds ratios must be positive")
        return self


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def _expit(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def simulate_outcomes(
    cohort: pd.DataFrame, truth: pd.DataFrame, spec: OutcomesSpec, id_column: str, seed: int = 0,
    label_column: str | None = None,
) -> pd.DataFrame:
    """Treatments, embryo quality and live births for each row of a simulated cohort.

    Parameters
    ----------
    cohort : DataFrame
        The cohort as written (text cells); supplies ids and ``spec.age_column``.
    truth : DataFrame
        Its latent truth, same rows: ``subtype`` and the profile in ``label_column``.
    spec : OutcomesSpec
    id_column : str
        The catalog's id column.
    seed : int
        Equal seeds give equal registries (independent of the cohort's draws).
    label_column : str, optional
        The catalog's label column (default: the installed catalog's).

    Returns
    -------
    DataFrame
        One row per cohort row: id, ``treatment`` (``none`` or a treatment name),
        ``embryo_quality`` and the outcome (0/1). The true effects are
        ``spec.odds_ratios`` (1 wherever a subtype does not list a treatment).
    """
    if spec.age_column not in cohort:
        raise RifmlInputError(f"outcomes simulation needs the cohort column {spec.age_column!r}")
    subtypes = truth["subtype"].to_numpy(dtype=object)
    missing = sorted(set(subtypes) - set(spec.assignment.by_subtype))
    if missing:
        raise RifmlInputError(f"simulation config outcomes.assignment.by_subtype lacks {', '.join(missing)}")
    unknown = sorted(set(spec.odds_ratios) - set(spec.assignment.by_subtype))
    if unknown:
        raise RifmlInputError(f"simulation config outcomes.odds_ratios names unknown subtypes: {', '.join(unknown)}")
    n = len(cohort)
    rng = np.random.default_rng([seed, _OUTCOME_STREAM])
    age = pd.to_numeric(cohort[spec.age_column], errors="coerce").fillna(spec.age_reference).to_numpy(dtype=float)
    centred_age = age - spec.age_reference

    levels = list(spec.embryo_quality)
    quality = np.asarray(levels, dtype=object)[
        rng.choice(len(levels), size=n, p=np.asarray(list(spec.embryo_quality.values())) / sum(spec.embryo_quality.values()))
    ]

    treatment = np.full(n, NO_TREATMENT, dtype=object)
    share = np.array([spec.assignment.by_subtype[s].add_on_share for s in subtypes])
    with np.errstate(divide="ignore"):
        assign_logit = np.log(share) - np.log1p(-share) + spec.assignment.age_log_odds_per_year * centred_age
    gets_add_on = rng.random(n) < _expit(assign_logit)
    for subtype, choice in spec.assignment.by_subtype.items():
        rows = np.flatnonzero(gets_add_on & (subtypes == subtype))
        if len(rows):
            names = list(choice.weights)
            weights = np.asarray(list(choice.weights.values()), dtype=float)
            treatment[rows] = np.asarray(names, dtype=object)[rng.choice(len(names), size=len(rows), p=weights / weights.sum())]

    effect = np.array(
        [np.log(spec.odds_ratios.get(s, {}).get(t, 1.0)) if t != NO_TREATMENT else 0.0 for s, t in zip(subtypes, treatment)]
    )
    birth = spec.live_birth
    log_odds = (
        _logit(birth.reference_rate)
        + birth.age_log_odds_per_year * centred_age
        + np.array([birth.embryo_quality_log_odds[q] for q in quality])
        + np.array([birth.profile_log_odds[p] for p in truth[label_column or load_catalog().label_column]])
        + effect
    )
    outcome = (rng.random(n) < _expit(log_odds)).astype(int)
    return pd.DataFrame(
        {
            id_column: cohort[id_column].to_numpy(dtype=object),
            TREATMENT: treatment,
            EMBRYO_QUALITY: quality,
            DEFAULT_OUTCOME: outcome,
        }
    )
