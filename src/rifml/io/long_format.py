"""Long-format panel files: one line per patient and analyte, pivoted to one panel per patient.

Lab information systems export ``patient_id, analyte, value[, unit]`` plus any
other column (``lab_id``, ``sample_date``, ...), which repeats the patient's value
on each of its lines. An analyte is a catalog column or alias (or a ``--columns``
entry); other analytes pass through as extra columns, like unknown columns of a
wide file. Values are converted to the catalog unit line by line.

Accounting is by line: every data line of the file ends either with its
patient's accepted panel or in the rejects file. A patient's lines share the
fate of the panel: when one line has a problem (an unknown unit, two different
values for one analyte, ...) or the pivoted panel fails validation, every line
of that patient is rejected; the line that holds the problem names it, the
others repeat the panel's first problem. A line without a patient_id is
rejected on its own.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from rifml.catalog import Catalog
from rifml.contract import MISSING_ID, REJECT_COLUMNS, WRONG_FIELD_COUNT
from rifml.contract import REJECTS_ALL_PROBLEMS, REJECTS_COLUMN, REJECTS_REASON, REJECTS_ROW, REJECTS_VALUE
from rifml.errors import RifmlInputError
from rifml.io.columns import ColumnMap, match_name, takes_unit
from rifml.io.units import conversion, scale_column
from rifml.validate import (
    ValidatedChunk,
    _as_text,
    parse_numeric,
    validate_chunk,
)

ANALYTE, VALUE, UNIT = "analyte", "value", "unit"
LONG_COLUMNS = (ANALYTE, VALUE, UNIT)
MISSING_ANALYTE = "missing analyte"
CONFLICT = "conflicting values for one patient"


def looks_long(names: list[str], catalog: Catalog) -> bool:
    """A header of a long file: patient_id, analyte and value, and no marker column."""
    return {catalog.id_column, ANALYTE, VALUE} <= set(names) and not set(names) & set(catalog.marker_names)


def require_long_header(names: list[str], catalog: Catalog, source: str) -> None:
    """Refuse a file read as long format that lacks its columns."""
    missing = [c for c in (catalog.id_column, ANALYTE, VALUE) if c not in names]
    if missing:
        raise RifmlInputError(
            f"{source}: a long-format file needs columns {catalog.id_column}, {ANALYTE}, {VALUE}"
            f" (missing: {', '.join(missing)})"
        )


def _text(column: pd.Series) -> np.ndarray:
    """Cells as stripped text ("" when empty); typed numbers as Python writes them."""
    if pd.api.types.is_numeric_dtype(column.dtype) and not pd.api.types.is_bool_dtype(column.dtype):
        return np.array(["" if pd.isna(v) else repr(float(v)) if isinstance(v, float) else str(v) for v in column], dtype=object)
    return _as_text(column).to_numpy(dtype=object)


def _sameness(text: pd.Series, decimal: str = ".") -> pd.Series:
    """What two cells must share to hold the same value: ``12``, ``12.0`` and ``0.012e3`` do, ``<12`` does not.

    Numbers are read as validation reads them (decimal mark, ``<x`` limits); other text stands for itself.
    """
    parsed = parse_numeric(text.reset_index(drop=True), censorable=True, decimal=decimal)
    number = np.isfinite(parsed.values)
    shown = [("<" if c else "") + repr(v) for v, c in zip(parsed.values[number], parsed.censored[number])]
    same = text.to_numpy(dtype=object).copy()
    same[number] = shown
    return pd.Series(same, index=text.index)


class _LineProblems:
    """The first problem of each line: column, value shown, reason."""

    def __init__(self, n: int):
        self.column = np.full(n, "", dtype=object)
        self.value = np.full(n, "", dtype=object)
        self.reason = np.full(n, None, dtype=object)

    def add(self, where: np.ndarray, column, value, reason) -> None:
        fresh = np.asarray(where, dtype=bool) & pd.isna(self.reason)
        for mine, given in ((self.column, column), (self.value, value), (self.reason, reason)):
            mine[fresh] = given[fresh] if isinstance(given, np.ndarray) else given


def pivot_long(
    frame: pd.DataFrame,
    rows: np.ndarray,
    catalog: Catalog,
    column_map: ColumnMap | None = None,
    bad_field_count: np.ndarray | None = None,
    row_problems: np.ndarray | None = None,
    decimal: str = ".",
) -> ValidatedChunk:
    """Validate a whole long file: one panel per patient, rejects one row per refused line.

    Parameters
    ----------
    frame : DataFrame
        The file's lines, columns already matched (``patient_id``, ``analyte``, ``value``, ...).
    rows : ndarray of int
        Line number of each line in its file (header = line 1).
    bad_field_count, row_problems : ndarray, optional
        What went wrong reading each line (as :class:`rifml.io.reader.RawChunk` says).
    decimal : str
        The file's decimal mark.

    Returns
    -------
    ValidatedChunk
        ``panel`` indexed by each patient's first line, ``accepted_raw`` the accepted lines
        as read, ``lines`` the number of lines behind each accepted panel.
    """
    require_long_header(list(frame.columns), catalog, "input")
    frame = frame.reset_index(drop=True)
    rows = np.asarray(rows, dtype=np.int64)
    n = len(frame)
    ids = _text(frame[catalog.id_column])
    analytes = _text(frame[ANALYTE])
    values = _text(frame[VALUE])
    units = _text(frame[UNIT]) if UNIT in frame else np.full(n, "", dtype=object)
    problems = _LineProblems(n)
    if row_problems is not None:
        read_problem = pd.notna(row_problems)
        problems.add(read_problem, "", "", np.where(read_problem, row_problems, None))
    if bad_field_count is not None:
        problems.add(np.asarray(bad_field_count, dtype=bool), "", "", WRONG_FIELD_COUNT)
    problems.add(ids == "", catalog.id_column, "", MISSING_ID)
    problems.add(analytes == "", ANALYTE, "", MISSING_ANALYTE)

    # Each distinct (analyte, unit) is matched and converted once.
    targets = np.full(n, "", dtype=object)
    for (analyte, unit), where in pd.Series(np.arange(n)).groupby([analytes, units], sort=False).groups.items():
        if not analyte:
            continue
        where = np.asarray(where)
        match = match_name(analyte, catalog, column_map)
        stated = unit or match.unit
        if match.how and match.column != catalog.id_column:
            targets[where] = match.column
            factor = conversion(catalog, match.column, stated) if takes_unit(catalog, match.column) else 1
            if isinstance(factor, str):
                present = np.zeros(n, dtype=bool)
                present[where] = values[where] != ""
                problems.add(present, match.column, stated, factor)
            else:
                values[where] = scale_column(pd.Series(values[where], dtype=object), factor, decimal).to_numpy(dtype=object)
        else:  # not a catalog column: passes through, named with its unit so units never mix
            targets[where] = f"{analyte} ({unit})" if unit else analyte

    # (patient, column, value) from the analyte lines and from every other column of each line
    has_id = ids != ""
    usable = has_id & (targets != "")
    context = [c for c in frame.columns if c not in (catalog.id_column, *LONG_COLUMNS)]
    cells = pd.concat(
        [pd.DataFrame({"patient": ids[usable], "column": targets[usable], "text": values[usable], "line": np.flatnonzero(usable)})]
        + [pd.DataFrame({"patient": ids[has_id], "column": c, "text": _text(frame[c])[has_id], "line": np.flatnonzero(has_id)})
           for c in context],
        ignore_index=True,
    )
    cells = cells[cells["text"] != ""]
    distinct = cells.drop_duplicates(["patient", "column", "text"])  # first: context repeats on every line
    spelled = distinct.duplicated(["patient", "column"], keep=False).to_numpy()
    if spelled.any():  # two spellings for one cell: the same value, or a conflict
        several = distinct[spelled].assign(same=lambda d: _sameness(d["text"], decimal))
        several = several[~several.duplicated(["patient", "column", "same"])].drop(columns="same")
        distinct = pd.concat([distinct[~spelled], several]).sort_index()
    clashing = distinct.duplicated(["patient", "column"], keep=False)
    conflicts = distinct[clashing].groupby(["patient", "column"], sort=False)["text"].agg(" | ".join)
    if len(conflicts):
        clash = cells.join(conflicts.rename("shown"), on=["patient", "column"], how="inner")
        where = np.zeros(n, dtype=bool)
        where[clash["line"].to_numpy()] = True
        column = np.full(n, "", dtype=object)
        column[clash["line"].to_numpy()] = clash["column"].to_numpy()
        shown_value = np.full(n, "", dtype=object)
        shown_value[clash["line"].to_numpy()] = clash["shown"].to_numpy()
        problems.add(where, column, shown_value, CONFLICT)

    return _panels(frame, rows, ids, has_id, problems, distinct, catalog, decimal)


def _panels(
    frame, rows, ids, has_id, problems: _LineProblems, distinct: pd.DataFrame, catalog: Catalog, decimal: str
) -> ValidatedChunk:
    """Pivot the patients whose lines are all sound, validate their panels, and account for every line."""
    lines = pd.DataFrame({"patient": ids, "line": np.arange(len(ids)), "problem": problems.reason})[has_id]
    first_problem = lines[lines["problem"].notna()].drop_duplicates("patient").set_index("patient")["line"]
    patients = pd.unique(ids[has_id])
    sound = patients[~pd.Index(patients).isin(first_problem.index)]
    first_line = lines.drop_duplicates("patient").set_index("patient")["line"]

    cells = distinct[distinct["patient"].isin(sound)].drop_duplicates(["patient", "column"])
    wide = cells.pivot(index="patient", columns="column", values="text")
    wide = wide.reindex(index=sound, columns=list(dict.fromkeys(cells["column"]))).fillna("")
    wide.insert(0, catalog.id_column, sound)
    wide = wide.reset_index(drop=True).astype(object)
    first_rows = rows[first_line.loc[sound].to_numpy()] if len(sound) else np.zeros(0, dtype=np.int64)
    checked = validate_chunk(wide, first_rows, catalog, decimal=decimal)

    panel_rejects = checked.rejects.set_index(REJECTS_ROW)
    failed = set(panel_rejects["patient_id"])
    accepted_patients = [p for p in sound if p not in failed]
    in_accepted = pd.Series(ids).isin(accepted_patients).to_numpy() & has_id

    # one reject row per refused line
    refused = np.flatnonzero(~in_accepted)
    reject = pd.DataFrame({REJECTS_ROW: rows[refused], "patient_id": ids[refused]})
    summary = _patient_summaries(ids, has_id, problems)
    own = pd.notna(problems.reason[refused])
    head = first_problem.reindex(ids[refused]).to_numpy()  # the patient's first problem line, or NaN
    from_panel = ~own & pd.isna(head)
    by_patient = panel_rejects.reset_index().set_index("patient_id")
    borrowed = np.where(own, refused, np.where(pd.isna(head), refused, head)).astype(np.int64)
    reject[REJECTS_COLUMN] = problems.column[borrowed]
    reject[REJECTS_VALUE] = problems.value[borrowed]
    reject[REJECTS_REASON] = problems.reason[borrowed]
    reject[REJECTS_ALL_PROBLEMS] = [summary.get(p, r) for p, r in zip(ids[refused], problems.reason[borrowed])]
    if from_panel.any():
        verdict = by_patient.loc[ids[refused][from_panel]]
        for name in (REJECTS_COLUMN, REJECTS_VALUE, REJECTS_REASON, REJECTS_ALL_PROBLEMS):
            reject.loc[from_panel, name] = verdict[name].to_numpy()
    reject = reject[REJECT_COLUMNS].reset_index(drop=True)

    accepted_raw = frame[in_accepted].set_axis(pd.Index(rows[in_accepted], name="row"))
    counts = pd.Series(ids[in_accepted]).value_counts()
    accepted_order = checked.panel[catalog.id_column].astype(str).to_numpy()
    return ValidatedChunk(
        panel=checked.panel,
        accepted_raw=accepted_raw,
        rejects=reject,
        lines=counts.reindex(accepted_order).to_numpy(dtype=np.int64),
    )


def _patient_summaries(ids, has_id, problems: _LineProblems) -> dict[str, str]:
    """Patient -> every line problem of that patient, as validation's all_problems writes them."""
    hit = has_id & pd.notna(problems.reason)
    summaries: dict[str, list[str]] = {}
    for patient, column, reason in zip(ids[hit], problems.column[hit], problems.reason[hit]):
        text = f"{column}: {reason}" if column else reason
        if text not in summaries.setdefault(patient, []):
            summaries[patient].append(text)
    return {p: "; ".join(t) for p, t in summaries.items()}


def validated_long(
    chunks: Iterable, catalog: Catalog, column_map: ColumnMap | None = None, decimal: str = "."
) -> ValidatedChunk:
    """Gather a long file's raw chunks (a patient's lines may lie anywhere) and pivot them."""
    frames, rows, bad, read_problems = [], [], [], []
    for raw in chunks:
        frames.append(raw.frame.reset_index(drop=True))
        rows.append(raw.rows)
        bad.append(raw.bad_field_count)
        read_problems.append(np.full(len(raw.rows), None, dtype=object) if raw.row_problems is None else raw.row_problems)
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return pivot_long(frame, np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64), catalog, column_map,
                      np.concatenate(bad) if bad else None, np.concatenate(read_problems) if read_problems else None,
                      decimal)
