"""Reading panel files (CSV or Parquet) in chunks, with file-level checks.

The edge of the pipeline: everything here touches files; validation of the cells
is :mod:`rifml.validate`. A file is read twice: once for the patient ids (so the
duplicate-id rule holds across chunks) and once for the rows, chunk by chunk, so
a file larger than memory works.
"""

from __future__ import annotations

import codecs
import csv
import functools
import io
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rifml.catalog import Catalog
from rifml.errors import RifmlInputError
from rifml.io.columns import ColumnMap, HeaderMatch, match_header
from rifml.validate import ValidatedChunk, repeated_ids, validate_chunk

DEFAULT_CHUNK_ROWS = 50_000
PARQUET_MAGIC = b"PAR1"

csv.field_size_limit(sys.maxsize)


@dataclass
class RawChunk:
    """Raw cells of consecutive rows, their file line numbers, and which rows had a bad field count."""

    frame: pd.DataFrame
    rows: np.ndarray
    bad_field_count: np.ndarray


def _match_header(
    header: list[str], catalog: Catalog, path: Path, column_map: ColumnMap | None = None, layout: str | None = None
) -> tuple[HeaderMatch, str]:
    """Match headers to catalog columns (:mod:`rifml.io.columns`) and settle the layout; refuse unusable headers."""
    from rifml.io.long_format import LONG_COLUMNS, looks_long, require_long_header

    match = match_header(header, catalog, column_map, extra=LONG_COLUMNS, source=str(path))
    layout = layout or ("long" if looks_long(match.names, catalog) else "wide")
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


SCAN_BLOCK = 4 << 20  # bytes per step of the layout scan (its temporaries are ~10x this)
# Bytes of file per Arrow parse block: Arrow's working memory grows with the block
# (measured ~120 MiB at 6 MiB blocks, ~35 MiB at 1 MiB), and 1 MiB blocks parse as fast.
READ_BLOCK_BYTES = 1 << 20


def simple_csv_layout(path: Path, width: int) -> tuple[bool, int]:
    """Is the file plain enough for the fast Arrow reader? Returns (simple, data rows).

    Simple means: valid UTF-8, no quotes or carriage returns after the header line
    (which the csv module reads), no blank lines, the header on line 1 and every
    data line with exactly ``width`` fields. Then record i is
    line i + 2, which is what the rejects file reports. Anything else takes the
    careful csv-module path, which tracks physical line numbers itself.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    fields_so_far = 0  # separators seen on the current (unfinished) line
    previous = b"\n"
    with path.open("rb") as handle:
        header = handle.readline()  # the csv module reads the header; it may be quoted
        if not header.endswith(b"\n") or b"\r" in header:
            return False, 0
        lines = 1
        while block := handle.read(SCAN_BLOCK):
            try:
                decoder.decode(block)
            except UnicodeDecodeError:
                return False, 0
            if b'"' in block or b"\r" in block or b"\n\n" in block or (previous == b"\n" and block[:1] == b"\n"):
                return False, 0
            data = np.frombuffer(block, dtype=np.uint8)
            ends = np.flatnonzero(data == 10)
            commas = np.flatnonzero(data == 44)
            if len(ends):
                # separators before each line end, differenced: separators per line
                per_line = np.diff(np.r_[0, np.searchsorted(commas, ends)])
                per_line[0] += fields_so_far
                if np.any(per_line != width - 1):
                    return False, 0
                fields_so_far = int(len(commas) - np.searchsorted(commas, ends[-1]))
            else:
                fields_so_far += len(commas)
            lines += len(ends)
            previous = block[-1:]
    if lines == 1 and previous == b"\n" and fields_so_far == 0:
        return False, 0  # nothing after the header
    if previous != b"\n":  # last line without a newline
        if fields_so_far != width - 1:
            return False, 0
        lines += 1
    return True, lines - 1


class PanelFile:
    """An opened panel file: knows its format and header; yields raw chunks.

    Parameters
    ----------
    path : str or Path
        A .csv (or any delimited text) or .parquet file.
    catalog : Catalog
    chunk_rows : int
        Rows per chunk.
    columns : ColumnMap, optional
        The user's ``--columns`` map, applied before the catalog's aliases.
    layout : {"wide", "long"}, optional
        One row per patient, or one line per patient and analyte; None: detected from the header.
    """

    def __init__(
        self,
        path: str | Path,
        catalog: Catalog,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        columns: ColumnMap | None = None,
        layout: str | None = None,
    ):
        self.path = Path(path)
        self.catalog = catalog
        self.chunk_rows = chunk_rows
        self.column_map = columns
        self.layout = layout
        if not self.path.exists():
            raise RifmlInputError(f"{self.path}: no such file")
        if self.path.is_dir():
            raise RifmlInputError(f"{self.path}: is a folder, not a file")
        try:
            with self.path.open("rb") as handle:
                head = handle.read(8192)
        except OSError as exc:
            raise RifmlInputError(f"{self.path}: cannot be read ({exc.strerror})") from exc
        self.format = "parquet" if head.startswith(PARQUET_MAGIC) else "csv"
        self._byte_order_mark = head.startswith(codecs.BOM_UTF8)
        if self.format == "csv":
            self._check_text(head)
            self.columns = self._csv_header()
        else:
            self.columns = self._parquet_header()

    @functools.cached_property
    def conversions(self) -> dict:
        """Column -> factor to its catalog unit, or the reason its header's unit is refused."""
        from rifml.io.units import conversion

        return {column: conversion(self.catalog, column, unit) for column, unit in self.header.units.items()}

    @functools.cached_property
    def simple(self) -> bool:
        """A CSV plain enough for the Arrow fast path (:func:`simple_csv_layout`).

        Scanned on first use, which is in the reading thread when scoring, so the scan
        overlaps the model load rather than preceding it.
        """
        # a byte-order mark would sit in the first column name of an Arrow read
        if self.format != "csv" or self._byte_order_mark:
            return False
        simple, rows = simple_csv_layout(self.path, len(self.columns))
        if simple:
            self.row_count = rows
        return simple

    # -- file-level checks -------------------------------------------------
    def _check_text(self, head: bytes) -> None:
        if not head.strip():
            raise RifmlInputError(f"{self.path}: the file is empty")
        if b"\x00" in head:
            raise RifmlInputError(f"{self.path}: not a CSV or Parquet file (binary content)")

    def _open_text(self) -> io.TextIOWrapper:
        # Undecodable bytes become U+FFFD so one bad cell cannot sink the whole batch.
        return self.path.open("r", encoding="utf-8-sig", errors="replace", newline="")

    def _csv_header(self) -> list[str]:
        with self._open_text() as handle:
            reader = csv.reader(handle)
            header = next((line for line in reader if line), None)
            if header is None:
                raise RifmlInputError(f"{self.path}: the file is empty")
            self.header, self.layout = _match_header(header, self.catalog, self.path, self.column_map, self.layout)
            names = self.header.names
            if next((line for line in reader if line), None) is None:
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
        self.header, self.layout = _match_header(
            list(parquet.schema_arrow.names), self.catalog, self.path, self.column_map, self.layout
        )
        names = self.header.names
        if parquet.metadata.num_rows == 0:
            raise RifmlInputError(f"{self.path}: no data rows (header only)")
        return names

    # -- reading -----------------------------------------------------------
    def chunks(self) -> Iterator[RawChunk]:
        """Raw chunks of the data rows, in file order."""
        if self.format == "csv":
            yield from self._arrow_csv_chunks() if self.simple else self._csv_chunks()
        else:
            yield from self._parquet_chunks()

    def _arrow_options(self, **read):
        import pyarrow as pa
        import pyarrow.csv as pacsv

        return dict(
            read_options=pacsv.ReadOptions(column_names=self.columns, skip_rows=1, **read),
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
        with pacsv.open_csv(self.path, **self._arrow_options(block_size=READ_BLOCK_BYTES)) as reader:
            for batch in reader:
                pending.append(batch)
                if sum(b.num_rows for b in pending) >= self.chunk_rows:
                    chunk = gathered(pending, first_row)
                    pending, first_row = [], first_row + len(chunk.rows)
                    yield chunk
        if any(b.num_rows for b in pending):
            yield gathered(pending, first_row)

    def _csv_chunks(self) -> Iterator[RawChunk]:
        width = len(self.columns)
        with self._open_text() as handle:
            reader = csv.reader(handle)
            header_seen = False
            records: list[list[str]] = []
            rows: list[int] = []
            bad: list[bool] = []
            last_line = 0
            for record in reader:
                start_line = last_line + 1
                last_line = reader.line_num
                if not record:  # a blank line is not a row
                    continue
                if not header_seen:
                    header_seen = True
                    continue
                if len(record) != width:
                    bad.append(True)
                    record = (record + [""] * width)[:width]
                else:
                    bad.append(False)
                records.append(record)
                rows.append(start_line)
                if len(records) >= self.chunk_rows:
                    yield self._raw_chunk(records, rows, bad)
                    records, rows, bad = [], [], []
            if records:
                yield self._raw_chunk(records, rows, bad)

    def _raw_chunk(self, records: list[list[str]], rows: list[int], bad: list[bool]) -> RawChunk:
        frame = pd.DataFrame(records, columns=self.columns, dtype=object)
        return RawChunk(frame, np.asarray(rows, dtype=np.int64), np.asarray(bad, dtype=bool))

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
        """The id column only, chunk by chunk (first pass, for the duplicate rule)."""
        if self.format == "parquet":
            parquet = self._parquet_file()
            position = self.columns.index(self.catalog.id_column)
            original = parquet.schema_arrow.names[position]
            for batch in parquet.iter_batches(batch_size=self.chunk_rows, columns=[original]):
                yield batch.to_pandas().iloc[:, 0]
        elif self.simple:
            import pyarrow.csv as pacsv

            # streamed in blocks and kept Arrow-backed: a million ids never become Python strings
            options = self._arrow_options(block_size=READ_BLOCK_BYTES)
            options["convert_options"].include_columns = [self.catalog.id_column]
            with pacsv.open_csv(self.path, **options) as reader:
                for batch in reader:
                    yield batch.column(0).to_pandas(types_mapper=pd.ArrowDtype)
        else:
            position = self.columns.index(self.catalog.id_column)
            with self._open_text() as handle:
                records = (r for r in csv.reader(handle) if r)
                next(records)  # header
                ids = [r[position] if len(r) > position else "" for r in records]
            yield pd.Series(ids, dtype=object)

    def duplicate_ids(self) -> frozenset[str]:
        """Ids (stripped, non-empty) that occur on more than one row of the whole file.

        Also sets ``row_count`` (data rows in the file), known after this first pass.
        """
        import pyarrow as pa

        parts = list(self.patient_ids())
        self.row_count = sum(len(p) for p in parts)
        repeated = repeated_ids(*parts)
        del parts
        # Arrow's allocator keeps freed memory for reuse; the id pass's hash tables are not
        # needed again, and keeping them would raise the whole run's peak by ~150 MiB per million ids.
        pa.default_memory_pool().release_unused()
        return repeated


def validated_chunks(panel_file: PanelFile) -> Iterator[ValidatedChunk]:
    """Validate a file chunk by chunk; every data row ends in ``panel`` or ``rejects``.

    A long-format file is one chunk: a patient's lines may lie anywhere in it.
    """
    from rifml.io.units import convert_columns

    if panel_file.layout == "long":
        from rifml.io.long_format import validated_long

        chunk = validated_long(panel_file.chunks(), panel_file.catalog, panel_file.column_map)
        panel_file.row_count = chunk.accepted_lines + len(chunk.rejects)
        yield chunk
        return
    duplicates = panel_file.duplicate_ids()
    for raw in panel_file.chunks():
        frame, problems = convert_columns(raw.frame, panel_file.conversions)
        yield validate_chunk(frame, raw.rows, panel_file.catalog, duplicates, raw.bad_field_count, problems)


class Prefetcher:
    """Read and validate chunks in a background thread, from construction on.

    Arrow parsing, numpy and the compiled scoring kernels release the GIL, so on two
    cores the reading of chunk i+1 overlaps the scoring of chunk i, and the first
    chunks are read while the caller is still loading its model. At most ``depth``
    chunks wait. Iterate once; ``close`` (or leaving a ``with`` block) stops the thread.
    """

    _DONE = object()

    def __init__(self, chunks: Iterator[ValidatedChunk], depth: int = 1):
        import queue
        import threading

        self._waiting: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._produce, args=(chunks,), name="rifml-reader", daemon=True)
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


