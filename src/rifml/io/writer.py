"""Writing result tables: streamed chunk by chunk, atomically, and safe to open in a spreadsheet.

A run killed midway must not leave a half-written file under the final name, so
rows go to a temporary file beside the target, renamed into place on success.
Calls and rejects are opened in Excel, which runs a cell such as ``=HYPERLINK(...)``
as a formula; such text cells are written with a leading ``'`` (the OWASP rule for CSV
injection), numbers never.
"""

from __future__ import annotations

import csv
import io
import os
import re
import tempfile
from pathlib import Path
from types import TracebackType

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from rifml.errors import RifmlInputError
from rifml.in_order import InOrder
from rifml.io.float_text import COMPILED_FROM_ROWS, grid_float_text
from rifml.io.paths import PART_SUFFIX, temp_prefix

# First characters a spreadsheet reads as the start of a formula (with their full-width forms,
# which some spreadsheets also accept), tab and carriage return (OWASP, CSV injection).
FORMULA_START = "=+-@\t\r\uff1d\uff0b\uff0d\uff20"
NEUTRALIZER = "'"
# A signed number is data, not a formula: "-3.5" in a reject's value column stays as it is.
# A decimal comma too, as European exports write it.
_SIGNED_NUMBER = r"^[+-](\d+([.,]\d*)?|[.,]\d+)([eE][+-]?\d+)?$"
_FORMULA_LIKE = "^[" + re.escape(FORMULA_START) + "]"


def _formula_mask(array: pa.Array) -> pa.Array:
    """Cells that, after any leading apostrophes, start like a formula and are not a signed number.

    Counting the cell's own leading apostrophes in keeps the rule reversible (see
    ``restore_cell``): ``=x`` is written ``'=x``, and a cell that really was ``'=x`` is
    written ``''=x``.
    """
    core = pc.utf8_ltrim(array, characters=NEUTRALIZER)
    return pc.and_kleene(
        pc.match_substring_regex(core, _FORMULA_LIKE),
        pc.invert(pc.match_substring_regex(core, _SIGNED_NUMBER)),
    )


# First bytes (UTF-8) that can start a cell needing a look: the triggers, "'", and 0xEF (full-width forms).
_CANDIDATE_BYTE = np.zeros(256, dtype=bool)
_CANDIDATE_BYTE[[ord(c) for c in FORMULA_START if ord(c) < 128] + [ord(NEUTRALIZER), 0xEF]] = True


def _may_start_a_formula(array: pa.Array) -> bool:
    """Whether any cell's first byte is a candidate, read straight from Arrow's buffers.

    The exact test (two regular expressions) costs ~1 s per million cells; this one is a few
    milliseconds, and an ordinary column (ids, profile names) has no candidate at all.
    """
    if isinstance(array, pa.ChunkedArray):  # e.g. Arrow-backed ids from the reader
        return any(_may_start_a_formula(chunk) for chunk in array.chunks)
    if not isinstance(array, pa.StringArray):
        return True
    _, offsets_buffer, data_buffer = array.buffers()
    if data_buffer is None or len(array) == 0:
        return False
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32)[array.offset : array.offset + len(array) + 1]
    data = np.frombuffer(data_buffer, dtype=np.uint8)
    starts = offsets[:-1][offsets[1:] > offsets[:-1]]  # non-empty cells (nulls are empty)
    return bool(_CANDIDATE_BYTE[data[starts]].any())


def neutralize_formulas(array: pa.Array) -> pa.Array:
    """Text cells a spreadsheet would execute, prefixed with ``'``; others (and nulls) unchanged."""
    if not _may_start_a_formula(array):
        return array
    mask = pc.fill_null(_formula_mask(array), False)
    if not pc.any(mask).as_py():
        return array
    return pc.if_else(mask, pc.binary_join_element_wise(NEUTRALIZER, array, ""), array)


def neutralize_cell(text: str) -> str:
    """``neutralize_formulas`` for one string (a header name)."""
    return neutralize_formulas(pa.array([text], type=pa.string()))[0].as_py()


def restore_cells(array: pa.Array) -> pa.Array:
    """Undo ``neutralize_formulas`` (for reading a calls file back): drop the one added ``'``."""
    escaped = pc.fill_null(
        pc.and_kleene(pc.starts_with(array, NEUTRALIZER), _formula_mask(pc.utf8_slice_codeunits(array, 1))), False
    )
    if not pc.any(escaped).as_py():
        return array
    return pc.if_else(escaped, pc.utf8_slice_codeunits(array, 1), array)


def _as_text_table(frame: pd.DataFrame, safe_cells: bool = False) -> pa.Table:
    """Every column as Arrow strings (missing stays empty), so chunks share one CSV layout.

    With ``safe_cells``, text columns (never numeric ones) are passed through ``neutralize_formulas``.
    """
    columns = []
    for name in frame.columns:
        column = frame[name]
        if column.dtype == np.float64 and len(column) >= COMPILED_FROM_ROWS:
            text = grid_float_text(column.to_numpy())
            if text is not None:
                columns.append(text)
                continue
        try:
            array = pa.array(column, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed Python objects in a pass-through column
            array = pa.array(column.astype("string"), from_pandas=True)
        if pa.types.is_boolean(array.type):
            array = pc.if_else(array, "True", "False")
        text = pa.types.is_string(array.type) or pa.types.is_large_string(array.type) or pa.types.is_dictionary(array.type)
        if safe_cells and pa.types.is_dictionary(array.type) and pa.types.is_string(array.type.value_type):
            # a categorical's few labels are checked, not each of its rows (the same cells result)
            array = _neutralized_labels(array)
        elif safe_cells and text:
            array = neutralize_formulas(pc.cast(array, pa.string()))
        columns.append(pc.cast(array, pa.string()))
    names = [neutralize_cell(str(c)) if safe_cells else str(c) for c in frame.columns]
    return pa.Table.from_arrays(columns, names=names)


def _neutralized_labels(array: pa.DictionaryArray | pa.ChunkedArray) -> pa.DictionaryArray | pa.ChunkedArray:
    """A categorical column with ``neutralize_formulas`` applied to its labels (each chunk's own)."""
    if isinstance(array, pa.ChunkedArray):
        return pa.chunked_array([_neutralized_labels(chunk) for chunk in array.chunks], type=array.type)
    labels = neutralize_formulas(array.dictionary)
    return array if labels is array.dictionary else pa.DictionaryArray.from_arrays(array.indices, labels)


class AtomicCsvWriter:
    """Append DataFrame chunks to a CSV that appears under ``path`` only when complete.

    Parameters
    ----------
    path : str or Path
        Final file name.
    columns : list of str, optional
        Header to write even when no chunk arrives (an empty result still has its columns).
    safe_cells : bool, default True
        Neutralize text cells (and header names) a spreadsheet would run as formulas; off
        only for files that must reproduce their input unchanged (accepted rows, simulated panels).
    """

    def __init__(self, path: str | Path, columns: list[str] | None = None, safe_cells: bool = True):
        self.path = Path(path)
        self.columns = columns
        self.safe_cells = safe_cells
        self.rows = 0
        self._handle = None
        self._tmp: Path | None = None
        self._formatting: InOrder | None = None

    def __enter__(self) -> "AtomicCsvWriter":
        folder = self.path.parent if str(self.path.parent) else Path(".")
        if not folder.is_dir():
            raise RifmlInputError(f"{self.path}: folder {folder} does not exist")
        try:
            fd, tmp = tempfile.mkstemp(prefix=temp_prefix(self.path), suffix=PART_SUFFIX, dir=folder)
        except OSError as exc:
            raise RifmlInputError(f"{self.path}: cannot write in folder {folder} ({exc.strerror or exc})") from exc
        self._tmp = Path(tmp)
        self._handle = os.fdopen(fd, "wb")  # bytes: Arrow's CSV output goes in without decoding
        self._header_written = False
        # one chunk in flight: memory stays flat, and the chunks reach the file in order
        self._formatting = InOrder("rifml-writer", depth=0).__enter__()
        return self

    def write(self, frame: pd.DataFrame) -> None:
        """Queue a chunk (not to be changed afterwards): it is formatted and written in the writer's thread.

        Formatting is mostly Arrow work that releases the GIL, so on two cores it overlaps
        the caller's next chunk. One chunk at a time is in flight (memory stays flat); an
        error while writing it is raised here, at the next write, or on leaving the block.
        """
        if self.columns is not None:
            frame = frame.reindex(columns=self.columns)
        self.rows += len(frame)
        self._formatting.submit(self._write_now, frame)

    def _write_now(self, frame: pd.DataFrame) -> None:
        # Arrow's CSV writer is an order of magnitude faster than DataFrame.to_csv on large chunks;
        # with no quoting it refuses values holding separators, quotes or newlines: those chunks go
        # through pandas, which quotes just the cells that need it.
        options = pacsv.WriteOptions(include_header=False, quoting_style="none")
        buffer = pa.BufferOutputStream()
        table = _as_text_table(frame, self.safe_cells)
        try:
            pacsv.write_csv(table, buffer, write_options=options)
        except pa.ArrowInvalid:
            self._write_with_pandas(table.to_pandas(), header=not self._header_written)
        else:
            if not self._header_written:  # Arrow would quote every name; csv quotes only where needed
                header = io.StringIO()
                csv.writer(header, lineterminator="\n").writerow(table.column_names)
                self._handle.write(header.getvalue().encode("utf-8"))
            self._handle.write(buffer.getvalue())
        self._header_written = True

    def _write_with_pandas(self, frame: pd.DataFrame, header: bool) -> None:
        frame.to_csv(self._handle, header=header, index=False, encoding="utf-8", lineterminator="\n")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._handle is not None and self._tmp is not None
        try:
            self._formatting.__exit__(exc_type, exc, tb)  # raises the thread's error unless already failing
            if exc_type is None and not self._header_written and self.columns is not None:
                names = [neutralize_cell(str(c)) if self.safe_cells else str(c) for c in self.columns]
                self._write_with_pandas(pd.DataFrame(columns=names), header=True)
            self._handle.close()
            if exc_type is None:
                os.replace(self._tmp, self.path)
        finally:
            self._handle.close()  # no-op when closed above
            if self._tmp.exists():
                self._tmp.unlink()


def write_table(frame: pd.DataFrame, path: str | Path, safe_cells: bool = True) -> None:
    """Write a whole table (CSV, or Parquet when the name ends in .parquet) atomically.

    ``safe_cells`` applies to CSV only: Parquet cells are typed, never run as formulas.
    """
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        folder = path.parent if str(path.parent) else Path(".")
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=PART_SUFFIX, dir=folder)
        os.close(fd)
        try:
            frame.to_parquet(tmp, index=False)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    with AtomicCsvWriter(path, safe_cells=safe_cells) as writer:
        writer.write(frame)
