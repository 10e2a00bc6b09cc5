"""Writing result tables: streamed chunk by chunk, and atomically.

A run killed midway must not leave a half-written file under the final name, so
rows go to a temporary file beside the target, renamed into place on success.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path
from types import TracebackType

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from rifml.errors import RifmlInputError


def _as_text_table(frame: pd.DataFrame) -> pa.Table:
    """Every column as Arrow strings (missing stays empty), so chunks share one CSV layout."""
    columns = []
    for name in frame.columns:
        column = frame[name]
        try:
            array = pa.array(column, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed Python objects in a pass-through column
            array = pa.array(column.astype("string"), from_pandas=True)
        if pa.types.is_boolean(array.type):
            array = pc.if_else(array, "True", "False")
        columns.append(pc.cast(array, pa.string()))
    return pa.Table.from_arrays(columns, names=[str(c) for c in frame.columns])


class AtomicCsvWriter:
    """Append DataFrame chunks to a CSV that appears under ``path`` only when complete.

    Parameters
    ----------
    path : str or Path
        Final file name.
    columns : list of str, optional
        Header to write even when no chunk arrives (an empty result still has its columns).
    """

    def __init__(self, path: str | Path, columns: list[str] | None = None):
        self.path = Path(path)
        self.columns = columns
        self.rows = 0
        self._handle = None
        self._tmp: Path | None = None

    def __enter__(self) -> "AtomicCsvWriter":
        folder = self.path.parent if str(self.path.parent) else Path(".")
        if not folder.is_dir():
            raise RifmlInputError(f"{self.path}: folder {folder} does not exist")
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".part", dir=folder)
        self._tmp = Path(tmp)
        self._handle = os.fdopen(fd, "wb")  # bytes: Arrow's CSV output goes in without decoding
        self._header_written = False
        return self

    def write(self, frame: pd.DataFrame) -> None:
        if self.columns is not None:
            frame = frame.reindex(columns=self.columns)
        # Arrow's CSV writer is an order of magnitude faster than DataFrame.to_csv on large chunks;
        # with no quoting it refuses values holding separators, quotes or newlines: those chunks go
        # through pandas, which quotes just the cells that need it.
        options = pacsv.WriteOptions(include_header=False, quoting_style="none")
        buffer = pa.BufferOutputStream()
        try:
            pacsv.write_csv(_as_text_table(frame), buffer, write_options=options)
        except pa.ArrowInvalid:
            self._write_with_pandas(frame, header=not self._header_written)
        else:
            if not self._header_written:  # Arrow would quote every name; csv quotes only where needed
                header = io.StringIO()
                csv.writer(header, lineterminator="\n").writerow([str(c) for c in frame.columns])
                self._handle.write(header.getvalue().encode("utf-8"))
            self._handle.write(buffer.getvalue())
        self._header_written = True
        self.rows += len(frame)

    def _write_with_pandas(self, frame: pd.DataFrame, header: bool) -> None:
        frame.to_csv(self._handle, header=header, index=False, encoding="utf-8", lineterminator="\n")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._handle is not None and self._tmp is not None
        try:
            if exc_type is None and not self._header_written and self.columns is not None:
                self._write_with_pandas(pd.DataFrame(columns=self.columns), header=True)
            self._handle.close()
            if exc_type is None:
                os.replace(self._tmp, self.path)
        finally:
            if self._tmp.exists():
                self._tmp.unlink()


def write_table(frame: pd.DataFrame, path: str | Path) -> None:
    """Write a whole table (CSV, or Parquet when the name ends in .parquet) atomically."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        folder = path.parent if str(path.parent) else Path(".")
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=folder)
        os.close(fd)
        try:
            frame.to_parquet(tmp, index=False)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    with AtomicCsvWriter(path) as writer:
        writer.write(frame)
