"""Matching an outcomes registry to the calls: every outcomes row analysed or rejected with a reason.

Pure core: frames in, a :class:`~rifml.outcomes.analysis.Registry` and a rejects
frame out. Rows are matched by patient_id. A row is rejected, with the first
reason that applies, when its id is missing, repeated in the outcomes file (every
row sharing it: neither can be trusted), absent from the calls, or its patient has
no call; when its treatment or outcome is missing, the outcome is not 0/1, or an
adjustment covariate is missing. Covariates come from the outcomes file, else from
the patient's panel; a covariate whose every present value is a number is numeric,
any other is categorical.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from rifml.errors import RifmlInputError
from rifml.outcomes import contract as c
from rifml.outcomes.analysis import Registry

NUMERIC = "numeric"
CATEGORICAL = "categorical"


@dataclass
class MatchedRegistry:
    """The analysable registry, the refused rows, and how many calls had no outcome."""

    registry: Registry
    rejects: pd.DataFrame
    rows_in: int
    calls_without_outcome: int


def _text(column: pd.Series) -> pd.Series:
    """Stripped text, "" for missing."""
    return column.astype("string").fillna("").str.strip().astype(object)


def _is_number(text: pd.Series) -> pd.Series:
    return pd.to_numeric(text.where(text != "", None), errors="coerce").notna()


def covariate_kind(values: pd.Series) -> str:
    """``numeric`` when every present value is a number, else ``categorical``."""
    text = _text(values)
    present = text != ""
    return NUMERIC if present.any() and _is_number(text[present]).all() else CATEGORICAL


def match_registry(
    outcomes: pd.DataFrame,
    rows: np.ndarray,
    calls: pd.DataFrame,
    *,
    id_column: str,
    level_columns: dict[str, str],
    outcome: str,
    adjust: list[str],
    panel_covariates: pd.DataFrame | None = None,
    reference_profile: str = "balanced",
) -> MatchedRegistry:
    """Match outcomes rows to calls (and panel covariates) by patient id.

    Parameters
    ----------
    outcomes : DataFrame
        The outcomes file as read (cells as text or values).
    rows : ndarray
        Each outcomes row's line number in its file (header = line 1).
    calls : DataFrame
        The calls file: ``id_column`` and the group columns of ``level_columns``
        (plus ``subtype_profile`` when present, to find the balanced subtype).
    id_column : str
    level_columns : dict
        Level -> calls column holding its groups.
    outcome : str
        The 0/1 outcome column of ``outcomes``.
    adjust : list of str
        Covariates, each a column of ``outcomes`` or of ``panel_covariates``.
    panel_covariates : DataFrame, optional
        ``id_column`` plus covariate columns from the panels file (one row per id).
    reference_profile : str
        The profile other groups are compared with; a subtype level's reference is the
        largest subtype of that profile.

    Returns
    -------
    MatchedRegistry

    Raises
    ------
    RifmlInputError
        When a needed column is absent or the calls repeat a patient id.
    """
    for name in (id_column, c.TREATMENT, outcome):
        if name not in outcomes:
            raise RifmlInputError(f"outcomes file has no {name!r} column (found: {', '.join(map(str, outcomes.columns[:8]))})")
    for name in (id_column, *level_columns.values()):
        if name not in calls:
            raise RifmlInputError(f"calls file has no {name!r} column: is it a calls file written by `rifml score`?")
    sources = {}
    for name in adjust:
        if name in outcomes:
            sources[name] = "outcomes"
        elif panel_covariates is not None and name in panel_covariates:
            sources[name] = "panels"
        else:
            raise RifmlInputError(f"--adjust {name}: no such column in the outcomes file or the panels file")
    if name_clash := sorted({outcome, c.TREATMENT} & set(adjust)):
        raise RifmlInputError(f"--adjust cannot name {', '.join(name_clash)}")

    call_ids = _text(calls[id_column])
    if call_ids.duplicated().any():
        raise RifmlInputError(f"calls file repeats patient ids (e.g. {call_ids[call_ids.duplicated()].iloc[0]!r}): one call per patient")
    calls_by_id = calls.assign(**{id_column: call_ids}).set_index(id_column)

    ids = _text(outcomes[id_column])
    treatment = _text(outcomes[c.TREATMENT])
    # Treatment names stay as the registry spells them (they name rows of effects.csv); only "none" is a keyword.
    treatment = treatment.mask(treatment.str.lower() == c.NO_TREATMENT, c.NO_TREATMENT)
    result = _text(outcomes[outcome])
    number = pd.to_numeric(result.where(result != "", None), errors="coerce")
    known = ids.isin(calls_by_id.index)
    groups = {
        level: ids.map(_text(calls_by_id[column])).fillna("") for level, column in level_columns.items()
    }
    covariates = {}
    for name, source in sources.items():
        if source == "outcomes":
            covariates[name] = _text(outcomes[name])
        else:
            panel = panel_covariates.assign(**{id_column: _text(panel_covariates[id_column])}).drop_duplicates(id_column)
            covariates[name] = ids.map(_text(panel.set_index(id_column)[name])).fillna("")

    # (reason, column, value) per check, in the order they are reported; the first that applies wins.
    checks = [
        (ids == "", c.MISSING_ID, id_column, ids),
        (ids.duplicated(keep=False) & (ids != ""), c.DUPLICATE_ID, id_column, ids),
        (~known, c.UNKNOWN_ID, id_column, ids),
        (pd.concat(groups, axis=1).eq("").any(axis=1), c.MISSING_GROUP, id_column, ids),
        (treatment == "", c.MISSING_TREATMENT, c.TREATMENT, treatment),
        (result == "", c.MISSING_OUTCOME, outcome, result),
        (~number.isin([0, 1]), c.OUTCOME_NOT_BINARY, outcome, result),
    ]
    checks += [(values == "", c.MISSING_COVARIATE, name, values) for name, values in covariates.items()]
    reason = pd.Series("", index=outcomes.index, dtype=object)
    column = pd.Series("", index=outcomes.index, dtype=object)
    value = pd.Series("", index=outcomes.index, dtype=object)
    for failed, why, name, values in checks:
        new = failed.to_numpy() & (reason == "").to_numpy()
        reason[new], column[new], value[new] = why, name, values[new]
    bad = (reason != "").to_numpy()
    rejects = pd.DataFrame(
        {"row": np.asarray(rows)[bad], id_column: ids[bad].to_numpy(), "column": column[bad].to_numpy(),
         "value": value[bad].to_numpy(), "reason": reason[bad].to_numpy()}
    ).rename(columns={id_column: "patient_id"})[c.REJECT_COLUMNS]

    good = ~bad
    data = pd.DataFrame({level: groups[level][good].to_numpy() for level in level_columns})
    data[c.TREATMENT] = treatment[good].to_numpy()
    data[outcome] = number[good].astype(int).to_numpy()
    kinds = {}
    for name, values in covariates.items():
        kinds[name] = covariate_kind(values[good])
        data[name] = pd.to_numeric(values[good]).to_numpy(dtype=float) if kinds[name] == NUMERIC else values[good].to_numpy()
    references = _reference_groups(calls_by_id, level_columns, reference_profile)
    registry = Registry(data=data, levels={level: level for level in level_columns}, outcome=outcome,
                        covariates=kinds, reference_groups=references)
    return MatchedRegistry(
        registry=registry, rejects=rejects, rows_in=len(outcomes),
        calls_without_outcome=int((~calls_by_id.index.isin(ids[good])).sum()),
    )


def _reference_groups(calls_by_id: pd.DataFrame, level_columns: dict[str, str], profile: str) -> dict[str, str]:
    """The reference group of each level: the profile itself, and the largest subtype of that profile."""
    references = {}
    for level, column in level_columns.items():
        groups = _text(calls_by_id[column])
        if level == "profile":
            references[level] = profile
        elif c.SUBTYPE_PROFILE_COLUMN in calls_by_id:
            of_profile = groups[_text(calls_by_id[c.SUBTYPE_PROFILE_COLUMN]) == profile]
            if len(of_profile):
                references[level] = str(of_profile.value_counts().index[0])
    return references
