"""Matching outcomes rows to calls: every row analysed or rejected with its reason, row by row."""

import numpy as np
import pandas as pd
import pytest

from rifml.errors import RifmlInputError
from rifml.outcomes import contract
from rifml.outcomes.matching import match_registry

LEVELS = {"profile": "immune_profile", "subtype": "subtype"}

CALLS = pd.DataFrame({
    "patient_id": ["A", "B", "C", "D", "E", "F", "G", "H"],
    "immune_profile": ["balanced", "hyperactive", "hypoactive", "mixed", "balanced", "hyperactive", "balanced", "hyperactive"],
    "subtype": ["bal", "th1", "under", "mix", "bal", "nk", "bal2", "th1"],
    "subtype_profile": ["balanced", "hyperactive", "hypoactive", "mixed", "balanced", "hyperactive", "balanced", "hyperactive"],
})
PANELS = pd.DataFrame({"patient_id": ["A", "B", "C", "D", "E", "F", "G", "H"],
                       "age_years": [31.0, 38.0, 40.0, np.nan, 29.0, 35.0, 33.0, 36.0]})


def _match(rows: list[dict], adjust=("age_years", "embryo_quality"), calls=CALLS):
    outcomes = pd.DataFrame(rows, dtype=object)
    return match_registry(
        outcomes, np.arange(len(outcomes)) + 2, calls, id_column="patient_id", level_columns=LEVELS,
        outcome="live_birth", adjust=list(adjust), panel_covariates=PANELS,
    )


ROWS = [
    {"patient_id": "A", "treatment": "none", "live_birth": "1", "embryo_quality": "good"},   # line 2: fine
    {"patient_id": "", "treatment": "ivig", "live_birth": "0", "embryo_quality": "good"},    # 3: missing id
    {"patient_id": "B", "treatment": "ivig", "live_birth": "1", "embryo_quality": "fair"},   # 4: duplicate id
    {"patient_id": "B", "treatment": "none", "live_birth": "0", "embryo_quality": "fair"},   # 5: duplicate id
    {"patient_id": "Z", "treatment": "none", "live_birth": "0", "embryo_quality": "good"},   # 6: not in calls
    {"patient_id": "C", "treatment": "", "live_birth": "1", "embryo_quality": "good"},       # 7: missing treatment
    {"patient_id": "E", "treatment": "none", "live_birth": "", "embryo_quality": "good"},    # 8: missing outcome
    {"patient_id": "F", "treatment": "none", "live_birth": "2", "embryo_quality": "poor"},   # 9: outcome not 0/1
    {"patient_id": "G", "treatment": "none", "live_birth": "yes", "embryo_quality": "poor"}, # 10: outcome not 0/1
    {"patient_id": "D", "treatment": "none", "live_birth": "1", "embryo_quality": "good"},   # 11: age missing (panels)
    {"patient_id": "H", "treatment": " IVIG ", "live_birth": "1.0", "embryo_quality": ""},   # 12: embryo_quality missing
]
EXPECTED = {
    3: (contract.MISSING_ID, "patient_id", ""),
    4: (contract.DUPLICATE_ID, "patient_id", "B"),
    5: (contract.DUPLICATE_ID, "patient_id", "B"),
    6: (contract.UNKNOWN_ID, "patient_id", "Z"),
    7: (contract.MISSING_TREATMENT, "treatment", ""),
    8: (contract.MISSING_OUTCOME, "live_birth", ""),
    9: (contract.OUTCOME_NOT_BINARY, "live_birth", "2"),
    10: (contract.OUTCOME_NOT_BINARY, "live_birth", "yes"),
    11: (contract.MISSING_COVARIATE, "age_years", ""),
    12: (contract.MISSING_COVARIATE, "embryo_quality", ""),
}


def test_each_bad_row_is_rejected_with_its_reason():
    matched = _match(ROWS)
    rejects = matched.rejects.set_index("row")
    assert list(matched.rejects.columns) == contract.REJECT_COLUMNS
    assert sorted(rejects.index) == sorted(EXPECTED)
    for row, (reason, column, value) in EXPECTED.items():
        assert (rejects.loc[row, "reason"], rejects.loc[row, "column"], rejects.loc[row, "value"]) == (reason, column, value), row
    assert matched.rows_in == len(ROWS) == len(matched.registry.data) + len(matched.rejects)


def test_accepted_rows_carry_groups_treatment_outcome_covariates():
    # "none" in any case is no add-on; treatment names keep their spelling (stripped).
    matched = _match([{"patient_id": "A", "treatment": "None", "live_birth": "1", "embryo_quality": "good"},
                      {"patient_id": "H", "treatment": " IVIG ", "live_birth": "1.0", "embryo_quality": "fair"}])
    data = matched.registry.data
    assert matched.rejects.empty
    assert data.to_dict("records") == [
        {"profile": "balanced", "subtype": "bal", "treatment": "none", "live_birth": 1, "age_years": 31.0, "embryo_quality": "good"},
        {"profile": "hyperactive", "subtype": "th1", "treatment": "IVIG", "live_birth": 1, "age_years": 36.0, "embryo_quality": "fair"},
    ]
    assert matched.registry.covariates == {"age_years": "numeric", "embryo_quality": "categorical"}
    # the profile level compares with balanced; the subtype level with the largest balanced subtype
    assert matched.registry.reference_groups == {"profile": "balanced", "subtype": "bal"}
    assert matched.calls_without_outcome == len(CALLS) - 2
    assert "patient_id" not in data


def test_first_reason_wins_when_a_row_has_several():
    matched = _match([{"patient_id": "Z", "treatment": "", "live_birth": "7", "embryo_quality": ""}])
    assert matched.rejects.iloc[0]["reason"] == contract.UNKNOWN_ID


def test_covariates_in_the_outcomes_file_take_precedence_over_the_panels():
    rows = [{"patient_id": "A", "treatment": "none", "live_birth": "0", "age_years": "44"}]
    matched = _match(rows, adjust=["age_years"])
    assert matched.registry.data["age_years"].tolist() == [44.0]


@pytest.mark.parametrize(
    "rows, adjust, calls, message",
    [
        ([{"patient_id": "A", "live_birth": "1"}], [], CALLS, "no 'treatment' column"),
        ([{"patient_id": "A", "treatment": "none"}], [], CALLS, "no 'live_birth' column"),
        ([{"patient_id": "A", "treatment": "none", "live_birth": "1"}], ["bmi"], CALLS, "--adjust bmi: no such column"),
        ([{"patient_id": "A", "treatment": "none", "live_birth": "1"}], [], CALLS.drop(columns="subtype"), "no 'subtype' column"),
        ([{"patient_id": "A", "treatment": "none", "live_birth": "1"}], [], pd.concat([CALLS, CALLS.head(1)]), "repeats patient ids"),
    ],
)
def test_unusable_tables_are_one_line_input_errors(rows, adjust, calls, message):
    with pytest.raises(RifmlInputError, match=message.replace("(", r"\(")):
        _match(rows, adjust=adjust, calls=calls)
