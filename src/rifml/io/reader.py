"""Reading panel files (delimited text, Excel, Parquet) in chunks, with file-level checks.

The edge of the pipeline: everything here touches files; validation of the cells
is :mod:`rifml.validate`. A file is read twice: once for the patient ids (so the
duplicate-id rule holds across chunks) and once for the rows, chunk by chunk, so
a file larger than memory works. Dialects are :mod:`rifml.io.dialects`, the record
count apart from the parse :mod:`rifml.io.accounting`, the careful text parser
:mod:`rifml.io.records`, workbooks :mod:`rifml.io.excel`.
"""

from __future__ import annotations

import codecs
import csv
import functools
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from rifml.catalog import Catalog
from rifml.errors import RifmlInputError
from rifml.io.columns import HeaderMatch, match_header
from rifml.io.accounting import AccountingError, Survey, Tiling, survey
from rifml.io.dialects import Dialect, ReadOptions, detect_dialect, guess_single_byte, open_bytes, text_stream
from rifml.io.excel import XLSX_MAGIC, Sheet, read_sheet
from rifml.io.records import Record, records
from rifml.validate import ValidatedChunk, id_hashes, nfc, repeated_ids_in, validate_chunk

DEFAULT_CHUNK_ROWS = 50_000
PARQUET_MAGIC = b"PAR1"


@dataclass
class RawChunk:
    """Raw cells of consecutive records and where they are in the file.

    ``rows`` is each record's first line (or sheet row), ``last_rows`` its last line
    when a quoted cell spans lines (None: same as ``rows``); ``bad_field_count`` and
    ``row_problems`` (a reason or None) say what went wrong reading a record.
    """

    frame: pd.DataFrame
    rows: np.ndarray
    bad_field_count: np.ndarray
    row_problems: np.ndarray | None = None
    last_rows: np.ndarray | None = None


def _match_header(header: list[str], catalog: Catalog, path: Path, options: ReadOptions) -> tuple[HeaderMatch, str]:
    """Match headers to catalog columns (:mod:`rifml.io.columns`) and settle the layout; refuse unusable headers."""
    from rifml.io.long_format import LONG_COLUMNS, looks_long, require_long_header

    match = match_header([str(h) for h in header], catalog, options.column_map, extra=LONG_COLUMNS, source=str(path))
    layout = options.layout or ("long" if looks_long(match.names, catalog) else "wide")
    if layout == "wide":  # "value" or "unit" columns of a wide file are ordinary extra columns
        match = match.passing_through(LONG_COLUMNS)
    else:
        require_long_header(match.names, catalog, str(path))
    names = match.names
    if catalog.id_column not in names:
        raise RifmlInputError(
            f"{path}: no {catalog.id_column} column (found: {', '.join(names[:8]) or 'nothing'}"
            f"{', ...' if len(names) > 8 else ''})"
        )
    return match, layout


# Bytes of file per Arrow parse block: Arrow's working memory grows with the block
# (measured ~120 MiB at 6 MiB blocks, ~35 MiB at 1 MiB), and 1 MiB blocks parse as fast.
READ_BLOCK_BYTES = 1 << 20


class PanelFile:
    """An opened panel file: knows its format, dialect and header; yields raw chunks.

    Parameters
    ----------
    path : str or Path
        Delimited text (.csv, .tsv, .txt, gzip-compressed or not), .xlsx or .parquet;
        the format is told by the content, not the name.
    catalog : Catalog
    chunk_rows : int
        Rows per chunk.
    options : ReadOptions, optional
        Separator, decimal mark, encoding, sheet, column map and layout given by the user (else detected).

    Attributes
    ----------
    format : str
        ``text``, ``excel`` or ``parquet``.
    dialect : Dialect or None
        Encoding, separator, decimal mark and line ending of a text file.
    header : HeaderMatch
        Which input column feeds which catalog column, and the units headers state.
    layout : str
        ``wide`` (a row per patient) or ``long`` (a line per patient and analyte).
    row_count : int
        Records the file holds (exact once :func:`validated_chunks` has run to the end).
    """

    def __init__(
        self,
        path: str | Path,
        catalog: Catalog,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        options: ReadOptions | None = None,
    ):
        self.path = Path(path)
        self.catalog = catalog
        self.chunk_rows = chunk_rows
        self.options = options or ReadOptions()
        self.dialect: Dialect | None = None
        self._sheet: Sheet | None = None
        if not self.path.exists():
            raise RifmlInputError(f"{self.path}: no such file")
        if self.path.is_dir():
            raise RifmlInputError(f"{self.path}: is a folder, not a file")
        try:
            with self.path.open("rb") as handle:
                head = handle.read(8192)
        except OSError as exc:
            raise RifmlInputError(f"{self.path}: cannot be read ({exc.strerror})") from exc
        if head.startswith(PARQUET_MAGIC):
            self.format = "parquet"
            self.columns = self._parquet_header()
        elif head.startswith(XLSX_MAGIC):
            self.format = "excel"
            self._sheet = read_sheet(self.path, self.options.sheet)
            self.columns = self._match(self._sheet.header)
        else:
            self.format = "text"
            self._check_text()
            self.dialect = detect_dialect(self.path, self.options)
            self.columns = self._text_header()
        self.decimal = self.options.decimal or (self.dialect.decimal if self.dialect else ".")
        self.row_count: int | None = None

    # -- what the file is ----------------------------------------------------
    @functools.cached_property
    def survey(self) -> Survey:
        """Line counts apart from the parse (:mod:`rifml.io.accounting`).

        Computed on first use, which is in the reading thread when scoring, so the scan
        overlaps the model load rather than preceding it. A file read as UTF-8 whose later
        bytes are not UTF-8 gets its code page chosen here, from the lines that hold them.
        """
        if self._sheet is not None:
            found = self._sheet.survey
        elif self.format == "parquet":
            rows = self._parquet_file().metadata.num_rows
            found = Survey(lines=rows + 1, header_line=1)
        else:
            id_position = self.columns.index(self.catalog.id_column)  # gathered in the scan: no id pass to parse
            with open_bytes(self.path) as handle:
                found = survey(handle, self.dialect.encoding, self.dialect.sep, len(self.columns), id_position, _cell_hashes)
            if found.undecodable_sample and self.options.encoding is None:
                self.dialect = replace(self.dialect, encoding=guess_single_byte(found.undecodable_sample))
                found.undecodable_sample = b""
        if self.row_count is None:
            self.row_count = found.data_lines  # exact without multi-line cells; settled by the check
        return found

    @property
    def simple(self) -> bool:
        """A text file Arrow can read and number line by line (the fast path)."""
        return self.format == "text" and self.survey.plain

    def describe(self) -> str:
        """One line on what was read, e.g. ``read p.csv: Windows-1252, ';' separated, decimal ',', CRLF``."""
        if self.format == "excel":
            what = f"Excel sheet {self._sheet.name!r}"
        elif self.format == "parquet":
            what = "Parquet"
        else:
            self.survey  # settles the encoding
            what = self.dialect.describe()
        return f"read {self.path.name}: {what}"

    def _match(self, header: list[str]) -> list[str]:
        self.header, self.layout = _match_header(header, self.catalog, self.path, self.options)
        return self.header.names

    @functools.cached_property
    def conversions(self) -> dict:
        """Column -> factor to its catalog unit, or the reason its header's unit is refused."""
        from rifml.io.units import conversion

        return {column: conversion(self.catalog, column, unit) for column, unit in self.header.units.items()}

    # -- file-level checks -------------------------------------------------
    def _check_text(self) -> None:
        try:
            with open_bytes(self.path) as handle:
                head = handle.read(8192)
        except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
            raise RifmlInputError(f"{self.path}: not a readable gzip file ({exc})") from exc
        if not head.strip():
            raise RifmlInputError(f"{self.path}: the file is empty")
        utf16 = head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
        if b"\x00" in head and not utf16 and "16" not in (self.options.encoding or ""):
            raise RifmlInputError(f"{self.path}: not a CSV, Excel or Parquet file (binary content)")

    def _text_header(self) -> list[str]:
        sep = self.dialect.sep
        with text_stream(self.path, self.dialect.encoding) as handle:
            lines = (line for line in handle if line.rstrip("\r\n"))
            header = next(lines, None)
            if header is None:
                raise RifmlInputError(f"{self.path}: the file is empty")
            names = self._match(next(csv.reader([header.rstrip("\r\n")], delimiter=sep), []))
            if next(lines, None) is None:
                raise RifmlInputError(f"{self.path}: no data rows (header only)")
        return names

    def _parquet_file(self):
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(self.path)
        except Exception as exc:  # pyarrow raises several types for damaged files
            raise RifmlInputError(f"{self.path}: not a readable Parquet file ({exc})") from exc

    def _parquet_header(self) -> list[str]:
        parquet = self._parquet_file()
        names = self._match(list(parquet.schema_arrow.names))
        if parquet.metadata.num_rows == 0:
            raise RifmlInputError(f"{self.path}: no data rows (header only)")
        return names

    # -- reading -----------------------------------------------------------
    def chunks(self) -> Iterator[RawChunk]:
        """Raw chunks of the data rows, in file order, patient ids in NFC."""
        if self.format == "parquet":
            chunks = self._parquet_chunks()
        elif self.format == "excel":
            chunks = self._sheet_chunks()
        else:
            chunks = self._arrow_csv_chunks() if self.simple else self._record_chunks()
        for chunk in chunks:
            if self.catalog.id_column in chunk.frame:
                chunk.frame[self.catalog.id_column] = nfc(chunk.frame[self.catalog.id_column])
            yield chunk

    def _arrow_stream(self):
        import pyarrow as pa

        return pa.input_stream(str(self.path), compression="gzip" if self.dialect.compressed else None)

    def _arrow_options(self, **read):
        import pyarrow as pa
        import pyarrow.csv as pacsv

        encoding = self.dialect.encoding
        return dict(
            read_options=pacsv.ReadOptions(
                column_names=self.columns, skip_rows=1, encoding="utf8" if encoding.startswith("utf-8") else encoding, **read
            ),
            parse_options=pacsv.ParseOptions(delimiter=self.dialect.sep),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in self.columns}, strings_can_be_null=False
            ),
        )

    def _arrow_csv_chunks(self) -> Iterator[RawChunk]:
        """Fast path for plain files: Arrow parses; columns stay Arrow-backed (no Python strings).

        Arrow parses in small blocks, gathered without copying into chunks of about ``chunk_rows``.
        """
        import pyarrow as pa
        import pyarrow.csv as pacsv

        def gathered(batches: list, first_row: int) -> RawChunk:
            frame = pa.Table.from_batches(batches).to_pandas(types_mapper=pd.ArrowDtype)
            return RawChunk(frame, np.arange(first_row, first_row + len(frame)), np.zeros(len(frame), dtype=bool))

        first_row = 2
        pending: list = []
        with pacsv.open_csv(self._arrow_stream(), **self._arrow_options(block_size=READ_BLOCK_BYTES)) as reader:
            for batch in reader:
                pending.append(batch)
                if sum(b.num_rows for b in pending) >= self.chunk_rows:
                    chunk = gathered(pending, first_row)
                    pending, first_row = [], first_row + len(chunk.rows)
                    yield chunk
        if any(b.num_rows for b in pending):
            yield gathered(pending, first_row)

    def _records(self) -> Iterator[Record]:
        with text_stream(self.path, self.dialect.encoding) as handle:
            yield from records(handle, self.dialect.sep, len(self.columns))

    def _record_chunks(self) -> Iterator[RawChunk]:
        """The careful path: records with their line spans, broken quotes rejected alone."""
        batch: list[Record] = []
        for record in self._records():
            batch.append(record)
            if len(batch) >= self.chunk_rows:
                yield self._raw_chunk(batch)
                batch = []
        if batch:
            yield self._raw_chunk(batch)

    def _raw_chunk(self, batch: list[Record]) -> RawChunk:
        frame = pd.DataFrame([r.cells for r in batch], columns=self.columns, dtype=object)
        return RawChunk(
            frame,
            np.array([r.start for r in batch], dtype=np.int64),
            np.zeros(len(batch), dtype=bool),
            row_problems=np.array([r.problem for r in batch], dtype=object),
            last_rows=np.array([r.end for r in batch], dtype=np.int64),
        )

    def _sheet_chunks(self) -> Iterator[RawChunk]:
        sheet = self._sheet
        for first in range(0, len(sheet.cells), self.chunk_rows):
            part = slice(first, first + self.chunk_rows)
            frame = pd.DataFrame(sheet.cells[part], columns=self.columns, dtype=object)
            yield RawChunk(frame, sheet.numbers[part], sheet.too_wide[part])

    def _parquet_chunks(self) -> Iterator[RawChunk]:
        parquet = self._parquet_file()
        first_row = 2
        for batch in parquet.iter_batches(batch_size=self.chunk_rows):
            frame = batch.to_pandas()
            frame.columns = self.columns
            rows = np.arange(first_row, first_row + len(frame), dtype=np.int64)
            first_row += len(frame)
            yield RawChunk(frame, rows, np.zeros(len(frame), dtype=bool))

    def patient_ids(self) -> Iterator[pd.Series]:
        """The id column only, chunk by chunk, in NFC (first pass, for the duplicate rule)."""
        position = self.columns.index(self.catalog.id_column)
        if self.format == "parquet":
            parquet = self._parquet_file()
            original = parquet.schema_arrow.names[position]
            for batch in parquet.iter_batches(batch_size=self.chunk_rows, columns=[original]):
                yield nfc(batch.to_pandas().iloc[:, 0])
        elif self.format == "excel":
            yield nfc(pd.Series([row[position] for row in self._sheet.cells], dtype=object))
        elif self.simple:
            # kept Arrow-backed: a million ids never become Python strings
            for cells in self.text_column(self.catalog.id_column):
                yield nfc(cells.to_pandas(types_mapper=pd.ArrowDtype))
        else:
            yield nfc(pd.Series([r.cells[position] for r in self._records()], dtype=object))

    def text_column(self, name: str) -> Iterator:
        """One column of a plain text file (:attr:`simple`) as Arrow text, streamed in blocks."""
        import pyarrow.csv as pacsv

        options = self._arrow_options(block_size=READ_BLOCK_BYTES)
        options["convert_options"].include_columns = [name]
        with pacsv.open_csv(self._arrow_stream(), **options) as reader:
            for batch in reader:
                yield batch.column(0)

    def duplicate_ids(self) -> frozenset[str]:
        """Ids (stripped, NFC, non-empty) that occur on more than one row of the whole file.

        Held as 8-byte hashes (the line scan's, for a plain file), so memory does not grow
        with the ids' text; the file's ids are read again only when some hash repeats.
        """
        import pyarrow as pa

        found = self.survey  # settles the encoding before any text is read
        hashes = found.column_cells if self.simple else None  # the line scan's hashes of the ids, as Arrow reads them
        found.column_cells = None  # read once; no need to hold them through the run
        repeated = repeated_ids_in(self.patient_ids, hashes)
        del hashes
        # Arrow's allocator keeps freed memory for reuse; the id pass's buffers are not needed again.
        pa.default_memory_pool().release_unused()
        return repeated


def _cell_hashes(cells) -> np.ndarray:
    """The line scan keeps 8 bytes per id (:func:`rifml.validate.id_hashes`), not the id's text."""
    return id_hashes(pd.Series(pd.arrays.ArrowExtensionArray(cells)))


def validated_chunks(panel_file: PanelFile) -> Iterator[ValidatedChunk]:
    """Validate a file chunk by chunk; every data record ends in ``panel`` or ``rejects``.

    Header units are converted before validation (:mod:`rifml.io.units`). A long-format
    file is one chunk: a patient's lines may lie anywhere in it (:mod:`rifml.io.long_format`),
    and its records are lines, each ending with its patient's panel or in the rejects.
    After the last chunk the records read are checked against the file's own line count
    (:meth:`Survey.check`); a mismatch raises :class:`AccountingError` (a bug: exit 1).
    """
    from rifml.io.units import convert_columns

    tiling = None

    def read(raw: RawChunk) -> RawChunk:
        nonlocal tiling
        tiling = tiling or Tiling(panel_file.survey)
        tiling.add(raw.rows, raw.rows if raw.last_rows is None else raw.last_rows)
        return raw

    if panel_file.layout == "long":
        from rifml.io.long_format import validated_long

        panel_file.survey  # settles the encoding before any text is read
        raws = [read(raw) for raw in panel_file.chunks()]
        checked = validated_long(raws, panel_file.catalog, panel_file.options.column_map, panel_file.decimal)
        records = sum(len(raw.rows) for raw in raws)
        if checked.accepted_lines + len(checked.rejects) != records:
            raise AccountingError(f"{records:,} lines validated into {checked.accepted_lines + len(checked.rejects):,}")
        yield checked
    else:
        duplicates = panel_file.duplicate_ids()
        for raw in panel_file.chunks():
            read(raw)
            frame, unit_problems = convert_columns(raw.frame, panel_file.conversions, panel_file.decimal)
            checked = validate_chunk(
                frame, raw.rows, panel_file.catalog, duplicates, raw.bad_field_count,
                row_problems=raw.row_problems, decimal=panel_file.decimal, column_problems=unit_problems,
            )
            if len(checked.panel) + len(checked.rejects) != len(raw.rows):
                raise AccountingError(f"{len(raw.rows):,} rows validated into {len(checked.panel) + len(checked.rejects):,}")
            yield checked
    panel_file.row_count = (tiling or Tiling(panel_file.survey)).finish()


# Chunks the reading thread may hold ready: while `rifml score` imports and loads its model
# (a second or more) the reader gets this far ahead, instead of stopping after one chunk.
READ_AHEAD = 4


class Prefetcher:
    """Read and validate chunks in a background thread, from construction on.

    Arrow parsing, numpy and the compiled scoring kernels release the GIL, so on two
    cores the reading of chunk i+1 overlaps the scoring of chunk i, and the first
    chunks are read while the caller is still loading its model. At most ``depth``
    chunks wait. Iterate once; ``close`` (or leaving a ``with`` block) stops the thread.
    Any iterator can run this way (:func:`rifml.scoring.score_file` runs its features stage so).
    """

    _DONE = object()

    def __init__(self, chunks: Iterator, depth: int = READ_AHEAD, name: str = "rifml-reader"):
        import queue
        import threading

        self._waiting: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._produce, args=(chunks,), name=name, daemon=True)
        self._worker.start()

    def _produce(self, chunks: Iterator[ValidatedChunk]) -> None:
        import queue

        try:
            for chunk in chunks:
                while not self._stop.is_set():
                    try:
                        self._waiting.put(chunk, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._waiting.put(self._DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            self._waiting.put(exc)

    def __iter__(self) -> Iterator[ValidatedChunk]:
        try:
            while (item := self._waiting.get()) is not self._DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        while self._worker.is_alive():  # unblock a producer waiting to hand over a chunk
            try:
                self._waiting.get_nowait()
            except Exception:  # queue.Empty
                pass
            self._worker.join(timeout=0.05)

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
