"""Validation of raw panel rows against the catalog: accept with parsed values, or reject with a reason.

Pure core: takes a chunk of raw cells (text as read from CSV, or typed values from
Parquet) and returns the clean panel of the accepted rows plus one reject record
per refused row. No file access here; see :mod:`rifml.io.reader` for that.

A cell is empty (missing), a number, or ``<x`` (below the limit of detection x,
a valid left-censored value). Parsing is vectorized per column; range rules are plain
bounds declared once from the catalog (:func:`range_rules`), each named by its reason.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import types as pa_types

from rifml.catalog import Catalog
from rifml.contract import (
    ABOVE_RANGE,
    BELOW_RANGE,
    CENSOR_LIMIT_ZERO,
    CENSOR_NOT_ALLOWED,
    DUPLICATE_ID,
    MISSING_ID,
    NEGATIVE,
    NO_MARKERS,
    NOT_A_CATEGORY,
    NOT_A_NUMBER,
    PERCENT_ABOVE_100,
    REJECT_COLUMNS,
    REJECTS_ALL_PROBLEMS,
    REJECTS_COLUMN,
    REJECTS_REASON,
    REJECTS_ROW,
    REJECTS_VALUE,
    WRONG_FIELD_COUNT,
    censored_column,
)

# A plain decimal number. Python's float() would also take "nan", "inf" and "1_0"; labs mean none of those.
NUMBER_PATTERN = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"


@dataclass
class ValidatedChunk:
    """What validation made of one chunk.

    Attributes
    ----------
    panel : DataFrame
        Accepted rows, parsed: floats for numeric columns (a censored cell holds its
        limit, flagged in ``<marker>__censored``), canonical categories, extra
        columns untouched. Index = input line numbers.
    accepted_raw : DataFrame
        Accepted rows exactly as read (for writing an accepted-rows file).
    rejects : DataFrame
        One row per refused input row, columns :data:`REJECT_COLUMNS`.
    lines : ndarray of int, optional
        Input lines behind each accepted panel (long-format files); None: one each.
    """

    panel: pd.DataFrame
    accepted_raw: pd.DataFrame
    rejects: pd.DataFrame
    lines: np.ndarray | None = None

    @property
    def accepted_lines(self) -> int:
        """Input lines that ended in an accepted panel (what the accounting line counts)."""
        return len(self.panel) if self.lines is None else int(np.sum(self.lines))


@dataclass
class _Parsed:
    values: np.ndarray  # float64, NaN where missing or unparseable
    censored: np.ndarray  # bool
    present: np.ndarray  # bool: the cell was not empty
    problem: np.ndarray | None  # object: reason or None per row; None: no row has a problem (see _mark)

    @property
    def reasons(self) -> np.ndarray:
        """A reason or None for every row."""
        return np.full(len(self.values), None, dtype=object) if self.problem is None else self.problem


def _mark(problem: np.ndarray | None, where: np.ndarray, reason: str) -> np.ndarray | None:
    """``problem`` (a reason or None per row; None for all of them) with ``reason`` where ``where`` (bool).

    The array is made on the first row with a problem: most columns of most chunks have none, and
    finding them again by scanning an all-None object array per column held the GIL for a large
    share of validation, which the scoring threads wait on.
    """
    if not where.any():
        return problem
    if problem is None:
        problem = np.full(len(where), None, dtype=object)
    problem[where] = reason
    return problem


def _as_text(column: pd.Series) -> pd.Series:
    """Stripped text, "" where missing, Arrow-backed: strip, match and compare run in C++."""
    if not (_is_arrow_text(column) or column.dtype == "string[pyarrow]"):
        column = column.astype("string[pyarrow]")
    text = pc.utf8_trim_whitespace(pc.fill_null(column.array._pa_array, ""))
    return pd.Series(pd.arrays.ArrowStringArray(text), index=column.index)


def _is_arrow_text(column: pd.Series) -> bool:
    """Arrow-backed text, in either of Arrow's string layouts (the decimal-comma swap makes large_string)."""
    if not isinstance(column.dtype, pd.ArrowDtype):
        return False
    kind = column.dtype.pyarrow_dtype
    return pa_types.is_string(kind) or pa_types.is_large_string(kind)


def parse_numeric(column: pd.Series, censorable: bool, decimal: str = ".") -> _Parsed:
    """Parse one column of numbers / ``<x`` censors / empties; flag text that is neither.

    With ``decimal=","`` text cells are read with a decimal comma (``12,5``); a point in
    such a cell is not a number (``1.234`` could mean 1234 there), so it is refused.
    """
    if decimal == "," and not pd.api.types.is_numeric_dtype(column.dtype) and not pd.api.types.is_bool_dtype(column.dtype):
        return _parse_decimal_comma(column, censorable)
    n = len(column)
    if pd.api.types.is_bool_dtype(column.dtype):
        column = column.astype("object")
    if pd.api.types.is_numeric_dtype(column.dtype):
        values = column.to_numpy(dtype="float64", na_value=np.nan)
        present = ~np.isnan(values)
        problem = _mark(None, np.isinf(values), NOT_A_NUMBER)
        values = np.where(np.isinf(values), np.nan, values)
        return _Parsed(values, np.zeros(n, dtype=bool), present, problem)

    if _is_arrow_text(column):
        parsed = _parse_arrow_numeric(column)
        if parsed is not None:
            return _censor_rules(parsed, censorable)
    # Most cells are plain numbers; only the rest need string handling.
    values = np.array(pd.to_numeric(column, errors="coerce").to_numpy(dtype="float64", na_value=np.nan))
    present = np.ones(n, dtype=bool)
    censored = np.zeros(n, dtype=bool)
    rest = np.flatnonzero(~np.isfinite(values))
    cells = column.to_numpy(dtype=object)[rest]
    # Empty cells are common (partial panels); settle them without string machinery.
    blank = pd.isna(cells) | (cells == "")
    present[rest[blank]] = False
    rest = rest[~blank]
    if len(rest):
        text = _as_text(column.iloc[rest])
        empty = (text == "").to_numpy()
        is_censor = text.str.startswith("<").to_numpy(dtype=bool)
        body = text.where(~is_censor, text.str[1:].str.strip())
        numeric = body.str.fullmatch(NUMBER_PATTERN[1:-1]).to_numpy(dtype=bool)
        values[rest] = pd.to_numeric(body.where(numeric, None), errors="coerce").to_numpy(dtype="float64")
        overflow = numeric & ~np.isfinite(values[rest])  # e.g. "1e400"
        present[rest] = ~empty
        censored[rest] = is_censor & numeric
        unreadable = np.zeros(n, dtype=bool)
        unreadable[rest[~empty & (~numeric | overflow)]] = True
        problem = _mark(None, unreadable, NOT_A_NUMBER)
        values[rest[overflow]] = np.nan
    else:
        problem = None
    return _censor_rules(_Parsed(values, censored, present, problem), censorable)


def _parse_decimal_comma(column: pd.Series, censorable: bool) -> _Parsed:
    text = pa.chunked_array(_as_text(column).array._pa_array)
    pointed = pc.match_substring(text, ".").to_numpy(zero_copy_only=False)
    # Arrow-backed, so the Arrow parse of parse_numeric takes it (no Python string per cell)
    swapped = pd.Series(pd.arrays.ArrowExtensionArray(pc.replace_substring(text, ",", ".")), index=column.index)
    parsed = parse_numeric(swapped, censorable)
    parsed.problem = _mark(parsed.problem, pointed, NOT_A_NUMBER)
    parsed.values[pointed] = np.nan
    parsed.censored[pointed] = False
    return parsed


def _censor_rules(parsed: _Parsed, censorable: bool) -> _Parsed:
    if not censorable:
        parsed.problem = _mark(parsed.problem, parsed.censored, CENSOR_NOT_ALLOWED)
    else:
        parsed.problem = _mark(parsed.problem, parsed.censored & (parsed.values == 0), CENSOR_LIMIT_ZERO)
    return parsed


def _parse_arrow_numeric(column: pd.Series) -> _Parsed | None:
    """The same parse in Arrow compute, for Arrow-backed text from the fast reader (None: use pandas)."""
    if not hasattr(column.array, "_pa_array"):
        return None
    chunks = pa.chunked_array(column.array._pa_array)
    if chunks.null_count == 0:
        parsed = _cast_numbers(chunks)
        if parsed is not None:
            return parsed
    cells = pc.fill_null(chunks.combine_chunks(), "")
    text = pc.utf8_trim_whitespace(cells)
    present = pc.not_equal(text, "").to_numpy(zero_copy_only=False)
    is_censor = pc.starts_with(text, "<")
    body = pc.if_else(is_censor, pc.utf8_trim_whitespace(pc.utf8_slice_codeunits(text, 1)), text)
    numeric = pc.match_substring_regex(body, NUMBER_PATTERN).to_numpy(zero_copy_only=False)
    try:
        values = pc.cast(pc.if_else(pa.array(numeric), body, None), pa.float64())
    except pa.ArrowInvalid:  # e.g. a number beyond float range: let the pandas path judge it
        return None
    values = np.array(values.to_numpy(zero_copy_only=False), dtype="float64")
    problem = _mark(None, present & (~numeric | ~np.isfinite(np.where(numeric, values, 0.0))), NOT_A_NUMBER)
    values[~np.isfinite(values)] = np.nan
    censored = is_censor.to_numpy(zero_copy_only=False) & numeric
    return _Parsed(values, censored, present, problem)


def _cast_numbers(chunks: pa.ChunkedArray) -> _Parsed | None:
    """The one-cast parse of a column of plain numbers, empties and ``<x`` censors written without
    spaces (how cytokine limits arrive), or None when some cell needs the general parse.

    Most columns hold only plain numbers and empties: one cast (:func:`_cast_plain_numbers`)
    settles them. Failing that, each cell's leading ``<`` is cut off and the rest cast: the
    censored cells' limits, the other cells' numbers. Anything the general parse would read
    differently (spaces, a second ``<``, a number beyond float range) fails the cast or the
    finiteness check and is left to it.
    """
    try:
        values, present = _cast_plain_numbers(chunks)
        censored = np.zeros(len(values), dtype=bool)
    except pa.ArrowInvalid:
        is_censor = pc.starts_with(chunks, "<")
        if not pc.any(is_censor).as_py():
            return None
        try:
            values, present = _cast_plain_numbers(pc.if_else(is_censor, pc.utf8_slice_codeunits(chunks, 1), chunks))
        except pa.ArrowInvalid:
            return None
        censored = is_censor.to_numpy(zero_copy_only=False)
        present = present | censored  # "<" alone was written: not an empty cell
        censored = censored & ~np.isnan(values)  # and is no limit
    if not np.isfinite(values[~np.isnan(values)]).all():
        return None
    problem = _mark(None, present & np.isnan(values), NOT_A_NUMBER)  # "nan" spelled out is not a measurement, nor "<" alone
    return _Parsed(values, censored, present, problem)


def _cast_plain_numbers(chunks: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Text cells (no nulls) cast to float64, empty cells as NaN; and which cells were not empty.

    Empty cells become nulls through a validity bitmap laid over the same buffers (read from
    the offsets), chunk by chunk: no copy of the text, unlike replacing them before the cast.
    Raises ``pa.ArrowInvalid`` when a cell is not a number Arrow can read.
    """
    nullable, present = [], []
    for chunk in chunks.chunks:
        offsets_type = np.int64 if pa_types.is_large_string(chunk.type) else np.int32
        offsets = np.frombuffer(chunk.buffers()[1], dtype=offsets_type)[chunk.offset : chunk.offset + len(chunk) + 1]
        filled = offsets[1:] > offsets[:-1]
        valid = np.concatenate([np.ones(chunk.offset, dtype=bool), filled]) if chunk.offset else filled
        bits = np.packbits(valid, bitorder="little")
        nullable.append(pa.Array.from_buffers(
            chunk.type, len(chunk), [pa.py_buffer(bits), *chunk.buffers()[1:]], len(filled) - int(np.count_nonzero(filled)),
            chunk.offset,
        ))
        present.append(filled)
    values = pc.cast(pa.chunked_array(nullable, type=chunks.type), pa.float64())
    empty = np.zeros(0, dtype=bool)
    return np.array(values.to_numpy(), dtype="float64"), np.concatenate(present) if present else empty


def parse_category(column: pd.Series, lookup: dict[str, str]) -> tuple[pd.Categorical, np.ndarray, np.ndarray | None]:
    """Map spellings to canonical categories; returns (categorical, NaN where missing or unknown; present; problem
    (None: no row has one)).

    A categorical keeps one small code per cell (no Python string per row), which later
    steps read without touching the text again.
    """
    text = pa.array(_as_text(column))
    present = pc.not_equal(text, "").to_numpy(zero_copy_only=False)
    spellings = list(lookup)
    categories = list(dict.fromkeys(lookup.values()))
    # position of each lower-cased cell among the spellings (Arrow hash lookup); null: unknown
    found = pc.index_in(pc.utf8_lower(text), value_set=pa.array(spellings, type=pa.string()))
    code_of_spelling = np.array([categories.index(lookup[s]) for s in spellings] + [-1], dtype=np.int64)
    codes = code_of_spelling[pc.fill_null(found, len(spellings)).to_numpy(zero_copy_only=False)]
    problem = _mark(None, present & (codes < 0), NOT_A_CATEGORY)
    return pd.Categorical.from_codes(codes, categories=categories), present, problem


@dataclass(frozen=True)
class RangeRule:
    """One range rule of a numeric column: values below ``minimum`` or above ``maximum`` fail with ``reason``.

    Missing values (NaN) never fail. A column's rules are tried in order; the first that
    fails names the cell's reason.
    """

    column: str
    reason: str
    minimum: float | None = None
    maximum: float | None = None

    def fails(self, values: np.ndarray) -> np.ndarray:
        return values < self.minimum if self.minimum is not None else values > self.maximum


def _column_rules(name: str, low: float | None, high: float | None, percent: bool) -> list[RangeRule]:
    # "negative value" first: a negative cell also fails a positive lower bound, and is clearer.
    rules = []
    if low is not None and low >= 0:
        rules.append(RangeRule(name, NEGATIVE, minimum=0))
    if low is not None and low != 0:
        rules.append(RangeRule(name, BELOW_RANGE.format(limit=low), minimum=low))
    if high is not None:
        # "percentage above 100" is the contract's reason for the 100 limit; a catalog that narrows a
        # percentage (max 20) says so instead, or the reason would name a limit the value is under.
        reason = PERCENT_ABOVE_100 if percent and high == 100 else ABOVE_RANGE.format(limit=high)
        rules.append(RangeRule(name, reason, maximum=high))
    return rules


def range_rules(catalog: Catalog) -> list[RangeRule]:
    """Every numeric column's range rules, from the catalog's valid ranges (the one declaration of them).

    Plain bounds, applied with numpy by :func:`validate_chunk` for every command (validate,
    score, REST, Spark): no schema library on the scoring path, which a small batch would
    wait seconds to import.
    """
    rules: list[RangeRule] = []
    for marker in catalog.numeric_markers:
        low, high = marker.valid_range
        rules += _column_rules(marker.name, low, high, marker.kind == "percent")
    for ctx in catalog.context:
        if ctx.kind == "number" and ctx.valid_range is not None:
            low, high = ctx.valid_range
            rules += _column_rules(ctx.name, low, high, False)
    return rules


def _range_problems(numbers: dict[str, np.ndarray], catalog: Catalog) -> dict[str, np.ndarray]:
    """Column -> reason or None per row, the first failing rule per cell (columns without a failure left out)."""
    problems: dict[str, np.ndarray] = {}
    for rule in range_rules(catalog):
        values = numbers.get(rule.column)
        if values is None:
            continue
        failed = rule.fails(values)
        if not failed.any():
            continue
        reasons = problems.setdefault(rule.column, np.full(len(values), None, dtype=object))
        reasons[failed & pd.isna(reasons)] = rule.reason
    return problems


def nfc(ids: pd.Series) -> pd.Series:
    """Text ids in Unicode NFC, so ``José`` typed on a Mac (NFD) and on Windows is one patient."""
    if _is_arrow_text(ids) or ids.dtype == "string[pyarrow]":
        cells = ids.array._pa_array
    elif ids.dtype == object:
        try:
            cells = pa.chunked_array([pa.array(ids.to_numpy(), type=pa.string(), from_pandas=True)])
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed Python objects: left to validation
            return ids
    else:
        return ids  # numbers (Parquet) need no normalizing
    cells = cells.combine_chunks()
    other = pc.invert(pc.fill_null(pc.string_is_ascii(cells), True))
    if not pc.any(other).as_py():
        return ids
    # Only the non-ASCII ids, in Python: pyarrow's utf8_normalize gave NFD for "NFC" (pyarrow 25).
    spelled = [unicodedata.normalize("NFC", text) for text in pc.filter(cells, other).to_pylist()]
    normalized = pc.replace_with_mask(cells, other, pa.array(spelled, type=cells.type))
    return pd.Series(pd.arrays.ArrowExtensionArray(normalized), index=ids.index, name=ids.name)


def patient_ids(column: pd.Series) -> pd.Series:
    """The patient id as every engine reads it (local files, REST, Spark): NFC text, stripped, "" where missing.

    Duplicates, missing ids and the ids written to the calls and rejects files all come
    from this one reading, so two spellings of one id never count as two patients.
    Arrow-backed: a million ids make no Python string per row.
    """
    return _as_text(nfc(column))


def repeated_ids(*parts: pd.Series) -> frozenset[str]:
    """Patient ids (as :func:`patient_ids` reads them, non-empty) that occur on more than one row across ``parts``."""
    return repeated_ids_in(lambda: parts)


def repeated_ids_in(read: Callable[[], Iterable[pd.Series]], hashes: Iterable[np.ndarray] | None = None) -> frozenset[str]:
    """:func:`repeated_ids` over ids read chunk by chunk (``read()`` gives the chunks anew each call).

    Memory stays at 8 bytes per id whatever the ids' text: each id is first counted by a
    64-bit hash (:func:`id_hashes`; ``hashes`` when the caller already has them, e.g. from
    the file's line scan), then ``read()`` is gone through a second time, only when some
    hash repeats, keeping the text of just those ids; their exact counts settle the
    duplicates, so two patients whose ids share a hash are never rejected.
    """
    wanted = _repeated_hashes([id_hashes(ids) for ids in read()] if hashes is None else hashes)
    if not len(wanted):
        return frozenset()
    candidates = []
    for ids in read():
        for chunk in _filled_ids(ids):
            hashed = _hash64(chunk)
            at = np.minimum(np.searchsorted(wanted, hashed), len(wanted) - 1)
            keep = wanted[at] == hashed
            if keep.any():
                candidates.append(chunk.filter(pa.array(keep)))
    if not candidates:
        return frozenset()
    kind = pa.large_string() if any(pa_types.is_large_string(c.type) for c in candidates) else pa.string()
    counts = pc.value_counts(pa.chunked_array([c.cast(kind) for c in candidates], type=kind))
    return frozenset(pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1)).to_pylist())


def id_hashes(ids: pd.Series) -> np.ndarray:
    """A 64-bit hash (uint64) of each non-empty id as :func:`patient_ids` reads it, sorted."""
    hashed = [_hash64(chunk) for chunk in _filled_ids(ids)]
    return np.sort(np.concatenate(hashed)) if hashed else np.zeros(0, dtype=np.uint64)


def _filled_ids(ids: pd.Series) -> Iterator[pa.Array]:
    """The non-empty ids of ``ids`` (as :func:`patient_ids` reads them), one Arrow array per chunk."""
    for chunk in patient_ids(ids).array._pa_array.chunks:
        yield chunk.filter(pc.not_equal(chunk, ""))


def _repeated_hashes(hashes: Iterable[np.ndarray]) -> np.ndarray:
    """The hashes found more than once across ``hashes``, sorted, each once."""
    every = np.concatenate(list(hashes) or [np.zeros(0, dtype=np.uint64)])
    every.sort()
    return np.unique(every[1:][every[1:] == every[:-1]])


# Odd 64-bit multipliers (splitmix64's) for a polynomial hash over each id's bytes.
_BASE, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _hash64(text: pa.Array) -> np.ndarray:
    """A 64-bit hash per string of ``text`` (all non-empty), vectorized over the UTF-8 bytes.

    Arrow has no per-value hash kernel (pyarrow 25) and pandas' hashes make a Python
    string per row; this reads the array's own buffers. Not collision-free: callers settle
    exact equality on the text.
    """
    if not len(text):
        return np.zeros(0, dtype=np.uint64)
    offset_type = np.int64 if pa_types.is_large_string(text.type) else np.int32
    _, offset_buffer, data_buffer = text.buffers()
    offsets = np.frombuffer(offset_buffer, dtype=offset_type)[text.offset : text.offset + len(text) + 1].astype(np.int64)
    data = np.frombuffer(data_buffer, dtype=np.uint8)
    lengths = np.diff(offsets)
    # Horner's rule one byte place at a time over all ids, longest first, so place j works on
    # just the ids longer than j (a prefix): n-sized temporaries, not one per byte.
    order = np.argsort(-lengths, kind="stable")
    starts, shorter = offsets[:-1][order], -lengths[order]
    hashed = np.zeros(len(text), dtype=np.uint64)
    for place in range(int(-shorter[0])):
        longer = int(np.searchsorted(shorter, -place))
        hashed[:longer] = hashed[:longer] * _BASE + data[starts[:longer] + place] + np.uint64(1)
    hashed ^= (-shorter).astype(np.uint64) * _MIX2
    # splitmix64's finalizer: spreads the polynomial's low bits over the whole word
    hashed ^= hashed >> np.uint64(30)
    hashed *= _MIX1
    hashed ^= hashed >> np.uint64(27)
    hashed *= _MIX2
    hashed ^= hashed >> np.uint64(31)
    in_order = np.empty_like(hashed)
    in_order[order] = hashed
    return in_order


def validate_chunk(
    raw: pd.DataFrame,
    rows: np.ndarray,
    catalog: Catalog,
    duplicate_ids: frozenset[str] | set[str] = frozenset(),
    bad_field_count: np.ndarray | None = None,
    row_problems: np.ndarray | None = None,
    decimal: str = ".",
    column_problems: dict[str, np.ndarray] | None = None,
) -> ValidatedChunk:
    """Validate one chunk of raw panel rows.

    Parameters
    ----------
    raw : DataFrame
        Raw cells; column names already matched to the catalog spelling.
    rows : ndarray of int
        The 1-based line number of each row in its file (header = line 1).
    catalog : Catalog
    duplicate_ids : set of str
        Patient ids that occur more than once in the whole batch (all such rows are rejected).
    bad_field_count : ndarray of bool, optional
        Rows whose field count did not match the header (rejected as such).
    row_problems : ndarray of object, optional
        A reason per row found while reading it (unclosed quote, ...), or None.
    decimal : str
        The file's decimal mark, ``.`` or ``,`` (then a ``.`` in a number is not a number).
    column_problems : dict of str to ndarray, optional
        Problems found before parsing (a unit the catalog does not accept): column ->
        reason or None per row; they come before that column's own checks.

    Returns
    -------
    ValidatedChunk
    """
    n = len(raw)
    raw = raw.reset_index(drop=True)
    # column -> reason or None per row; None for a column none of whose rows has a problem (the
    # key stays: the order of the keys says which problem of a row is its first)
    problems: dict[str, np.ndarray | None] = {}
    panel: dict[str, object] = {}

    # Text stays Arrow-backed (ids, lab, dates): no Python string per row.
    id_text = patient_ids(raw[catalog.id_column]) if catalog.id_column in raw else pd.Series([""] * n, dtype="string[pyarrow]")
    missing_id = (id_text == "").to_numpy(dtype=bool)
    id_problem = _mark(None, missing_id, MISSING_ID)
    if duplicate_ids:
        id_problem = _mark(id_problem, ~missing_id & id_text.isin(duplicate_ids).to_numpy(dtype=bool), DUPLICATE_ID)
    if bad_field_count is not None:
        # A row whose fields do not line up with the header cannot be read cell by cell.
        problems[""] = _mark(None, np.asarray(bad_field_count, dtype=bool), WRONG_FIELD_COUNT)
    if row_problems is not None:
        problems[""] = np.where(pd.notna(row_problems), row_problems, problems.get("", None))
    problems[catalog.id_column] = id_problem
    panel[catalog.id_column] = id_text.array

    any_marker = np.zeros(n, dtype=bool)
    numbers: dict[str, np.ndarray] = {}
    for marker in catalog.markers:
        if marker.name not in raw:
            continue
        if marker.is_numeric:
            parsed = parse_numeric(raw[marker.name], marker.censorable, decimal)
            numbers[marker.name] = parsed.values
            panel[marker.name] = parsed.values
            if marker.censorable:
                panel[censored_column(marker.name)] = parsed.censored
            problems[marker.name] = parsed.problem
            any_marker |= parsed.present
        else:
            values, present, problem = parse_category(raw[marker.name], marker.category_lookup)
            panel[marker.name] = values
            problems[marker.name] = problem
            any_marker |= present

    for ctx in catalog.context:
        if ctx.name not in raw:
            continue
        if ctx.kind == "number":
            parsed = parse_numeric(raw[ctx.name], censorable=False, decimal=decimal)
            numbers[ctx.name] = parsed.values
            panel[ctx.name] = parsed.values
            problems[ctx.name] = parsed.problem
        else:
            text = _as_text(raw[ctx.name]).array._pa_array  # in Arrow: pandas' where holds the GIL per cell
            panel[ctx.name] = pd.arrays.ArrowStringArray(pc.if_else(pc.equal(text, ""), pa.scalar(None, text.type), text))

    if catalog.label_column in raw:
        lookup = {p: p for p in catalog.profiles}
        values, _, problem = parse_category(raw[catalog.label_column], lookup)
        panel[catalog.label_column] = values
        problems[catalog.label_column] = problem

    for column, reasons in (column_problems or {}).items():
        found = pd.notna(reasons)
        problems[column] = np.where(found, reasons, problems.get(column))

    for column, reasons in _range_problems(numbers, catalog).items():
        earlier = problems[column]
        fresh = pd.notna(reasons) & (True if earlier is None else pd.isna(earlier))  # a parse or unit problem comes first
        problems[column] = np.where(fresh, reasons, earlier)

    no_markers = _mark(None, ~any_marker, NO_MARKERS)
    reject_mask, first_column, first_reason, summary = _first_problems(problems, no_markers, n)

    known = set(catalog.known_columns)
    for extra in raw.columns:
        if extra not in known:
            panel[extra] = raw[extra].to_numpy()

    # copy=False: each parsed column stays its own array (pandas would copy the floats into one block)
    panel_frame = pd.DataFrame(panel, index=pd.Index(rows, name="row"), copy=False)
    accepted = ~reject_mask
    rejects = pd.DataFrame(
        {
            REJECTS_ROW: np.asarray(rows)[reject_mask],
            "patient_id": id_text.array[reject_mask].to_numpy(dtype=object),
            REJECTS_COLUMN: first_column[reject_mask],
            REJECTS_VALUE: [_cell_text(raw, c, i) for c, i in zip(first_column[reject_mask], np.flatnonzero(reject_mask))],
            REJECTS_REASON: first_reason[reject_mask],
            REJECTS_ALL_PROBLEMS: summary[reject_mask],
        },
        columns=REJECT_COLUMNS,
    )
    if not reject_mask.any():  # the usual chunk: nothing to drop, so no copies
        return ValidatedChunk(panel=panel_frame, accepted_raw=raw.set_axis(panel_frame.index), rejects=rejects)
    accepted_raw = raw.loc[accepted].set_axis(pd.Index(np.asarray(rows)[accepted], name="row"))
    return ValidatedChunk(panel=panel_frame.loc[accepted], accepted_raw=accepted_raw, rejects=rejects)


def _first_problems(
    problems: dict[str, np.ndarray | None], no_markers: np.ndarray | None, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row: rejected?, first failing column, its reason, and a summary of all problems."""
    ordered = list(problems.items()) + [("", no_markers)]
    first_column = np.full(n, "", dtype=object)
    first_reason = np.full(n, None, dtype=object)
    summary = np.full(n, "", dtype=object)
    reject_mask = np.zeros(n, dtype=bool)
    for column, reasons in ordered:
        if reasons is None:
            continue
        hit = pd.notna(reasons)  # reasons are None or text; a C loop, unlike `!= None` on objects
        if not hit.any():
            continue
        fresh = hit & ~reject_mask
        reject_mask |= hit
        first_column[fresh] = column
        first_reason[fresh] = reasons[fresh]
        label = f"{column}: " if column else ""
        for i in np.flatnonzero(hit):
            summary[i] = f"{summary[i]}; {label}{reasons[i]}" if summary[i] else f"{label}{reasons[i]}"
    return reject_mask, first_column, first_reason, summary


def _cell_text(raw: pd.DataFrame, column: str, position: int) -> str:
    if not column or column not in raw:
        return ""
    value = raw[column].iloc[position]
    # pd.NA: an empty cell of Arrow-backed text (Spark's reader, Parquet) reads "" as in a CSV
    return "" if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)) else str(value)
