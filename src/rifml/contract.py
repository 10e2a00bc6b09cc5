"""What rifml's outputs promise (design.md): calls and rejects columns, reject reasons, decimals, suffixes.

The CLI, REST (:mod:`rifml.serving`), Spark (:mod:`rifml.spark_engine`), the simulator and the
report all read and write these names; each is spelled here once and imported everywhere else.
Column names that depend on the data (patient id, label, markers, lab, profiles) are not here:
they are the catalog's (configs/markers.yaml, :mod:`rifml.catalog`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rifml.catalog import Catalog

# -- Calls file: one row per accepted input row, input order ------------------------------
# The called profile's column is the catalog's label column (what training learns to predict).
SUBTYPE = "subtype"
COMPARTMENTS = "compartments"
SUBTYPE_PROFILE = "subtype_profile"  # the profile the subtype belongs to
# beyond design.md's list: flags where a call leaves what the model was trained on
SUBTYPE_MATCHES_PROFILE = "subtype_matches_profile"
UNKNOWN_LAB = "unknown_lab"
LAB_ADAPTED = "lab_adapted"
LAB_ADAPTATION_PANELS = "lab_adaptation_panels"
OUTSIDE_TRAINING_RANGE = "outside_training_range"
OUT_OF_RANGE_MARKERS = "out_of_range_markers"

N_DRIVERS = 3
CONTRIBUTION_SUFFIX = "_contribution"
# Probabilities and contributions are reported to 6 decimals: calibration and SHAP carry no
# meaning beyond that, and shorter numbers make large calls files faster to write and read.
# Rounding once, in the pipeline, keeps the CLI, REST and Spark answers identical.
REPORTED_DECIMALS = 6


def probability_column(profile: str) -> str:
    return f"prob_{profile}"


def driver_columns(k: int) -> tuple[str, str]:
    """The k-th driver (1-based): the marker's column and its contribution's column."""
    return f"driver_{k}", f"driver_{k}{CONTRIBUTION_SUFFIX}"


def profile_columns(catalog: Catalog) -> list[str]:
    return [probability_column(p) for p in catalog.profiles]


def calls_columns(catalog: Catalog) -> list[str]:
    """The calls-file contract (design.md), then rifml's extra columns."""
    return [
        catalog.id_column,
        catalog.label_column,
        *profile_columns(catalog),
        SUBTYPE,
        *(column for k in range(1, N_DRIVERS + 1) for column in driver_columns(k)),
        COMPARTMENTS,
        SUBTYPE_PROFILE,
        SUBTYPE_MATCHES_PROFILE,
        UNKNOWN_LAB,
        LAB_ADAPTED,
        LAB_ADAPTATION_PANELS,
        OUTSIDE_TRAINING_RANGE,
        OUT_OF_RANGE_MARKERS,
        *[m.flag_at_or_above.flag for m in catalog.markers if m.flag_at_or_above],
    ]


# -- Clean panels: a censored "<x" cell holds x, flagged in a boolean column beside it -----
CENSORED_SUFFIX = "__censored"


def censored_column(marker: str) -> str:
    """Name of the boolean column telling which cells of ``marker`` were ``<x``."""
    return f"{marker}{CENSORED_SUFFIX}"


# -- Rejects file: one row per refused input row -----------------------------------------
# Its fields by name, for code that reads or renames one of them (serving's answer, the report's counts).
REJECTS_ROW = "row"
REJECTS_COLUMN = "column"
REJECTS_VALUE = "value"
REJECTS_REASON = "reason"
REJECTS_ALL_PROBLEMS = "all_problems"
REJECT_COLUMNS = [REJECTS_ROW, "patient_id", REJECTS_COLUMN, REJECTS_VALUE, REJECTS_REASON, REJECTS_ALL_PROBLEMS]

# Reasons, in plain words (design.md). Row-level reasons come first when a row has several problems.
MISSING_ID = "missing patient_id"
DUPLICATE_ID = "duplicate patient_id"
NOT_A_NUMBER = "not a number"
NEGATIVE = "negative value"
PERCENT_ABOVE_100 = "percentage above 100"
ABOVE_RANGE = "above the valid range (max {limit:g})"  # the catalog's bound, as the user can look it up
BELOW_RANGE = "below the valid range (min {limit:g})"
CENSOR_NOT_ALLOWED = "censored value not allowed for this column"
CENSOR_LIMIT_ZERO = "censor limit must be above 0"
NOT_A_CATEGORY = "not a valid category"
NO_MARKERS = "no markers"
WRONG_FIELD_COUNT = "wrong number of fields"
UNCLOSED_QUOTE = "unclosed quote"
MISPLACED_QUOTE = "misplaced quote"

# -- Batch engines (REST, Spark): one answer row per input row, scored or rejected -------
STATUS = "status"
SCORED = "scored"
REJECTED = "rejected"
REJECT_REASON = "reject_reason"
