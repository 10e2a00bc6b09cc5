"""Column names, levels and reject reasons of the outcomes contract (design.md, "Outcomes contract").

One home for every name the outcomes commands read or write; the rest of the
package imports them from here.
"""

from __future__ import annotations

# The panel rejects' reasons for a missing or repeated id: the outcomes rejects say the same words.
from rifml.contract import DUPLICATE_ID, MISSING_ID  # noqa: F401 (re-exported)
from rifml.contract import REJECTS_COLUMN, REJECTS_REASON, REJECTS_ROW, REJECTS_VALUE, SUBTYPE, SUBTYPE_PROFILE

# The outcomes file.
TREATMENT = "treatment"
NO_TREATMENT = "none"  # the untreated arm: no add-on
DEFAULT_OUTCOME = "live_birth"

# Calls-file columns that define the groups of each level (rifml.contract). The profile column
# is the catalog's label column.
SUBTYPE_COLUMN = SUBTYPE
SUBTYPE_PROFILE_COLUMN = SUBTYPE_PROFILE
LEVELS = ("profile", "subtype")

# DIR/effects.csv: one row per (level, group, treatment).
EFFECT_COLUMNS = [
    "level", "group", "treatment", "n_treated", "n_untreated", "events_treated", "events_untreated",
    "odds_ratio", "ci_low", "ci_high", "p_value", "p_holm", "crude_odds_ratio", "adjusted_for",
    # beyond the contract: the crude OR's interval, and why a row carries no estimate
    "crude_ci_low", "crude_ci_high", "estimable", "note",
]

# DIR/rates.csv: one row per (level, group).
RATE_COLUMNS = [
    "level", "group", "n", "events", "rate", "rate_ci_low", "rate_ci_high",
    "n_untreated", "events_untreated", "rate_untreated",
    "reference_group", "odds_ratio_vs_reference", "ci_low", "ci_high", "p_value", "adjusted_for", "estimable", "note",
]

# DIR/interactions.csv: one row per (level, treatment).
INTERACTION_COLUMNS = ["level", "treatment", "groups", "n", "lr_statistic", "df", "p_value", "p_holm", "note"]

# DIR/rejects.csv
REJECT_COLUMNS = [REJECTS_ROW, "patient_id", REJECTS_COLUMN, REJECTS_VALUE, REJECTS_REASON]  # the rejects file's, without all_problems
UNKNOWN_ID = "patient_id not in the calls"
MISSING_OUTCOME = "missing outcome"
OUTCOME_NOT_BINARY = "outcome not 0/1"
MISSING_TREATMENT = "missing treatment"
MISSING_COVARIATE = "missing covariate"
MISSING_GROUP = "no call for this patient"

# plan-trial's CSV: one row per (level, group).
PLAN_COLUMNS = [
    "level", "group", "n_calls", "prevalence", "control_rate", "control_rate_source", "target_rate", "effect",
    "alpha", "power", "patients_per_arm", "patients_total", "patients_to_screen", "note",
]
