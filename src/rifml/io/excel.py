"""Excel workbooks (.xlsx): one sheet as text cells, each row numbered as Excel numbers it.

Read with python-calamine (Rust; a 100k-row sheet in about a second). Cells Excel stores
as numbers become the text a person would type (``12.5``, ``1001`` rather than
``1001.0``), so they validate exactly like the same cells of a CSV.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rifml.errors import RifmlInputError
from rifml.io.accounting import Survey

XLSX_MAGIC = b"PK\x03\x04"


@dataclass
class Sheet:
    """A sheet's header, its non-blank data rows as text cells, and their sheet row numbers.

    Attributes
    ----------
    name : str
    header : list of str
    cells : list of list of str
        Each data row cut or padded to the header's width.
    numbers : ndarray of int
        Sheet row number of each data row (header row = its own number, usually 1).
    too_wide : ndarray of bool
        Rows with filled cells right of the header's last column.
    survey : Survey
        Row counts from the sheet (for the accounting check).
    """

    name: str
    header: list[str]
    cells: list[list[str]]
    numbers: np.ndarray
    too_wide: np.ndarray
    survey: Survey


def cell_text(value: object) -> str:
    """A cell as the text it shows: whole numbers without ``.0``, dates in ISO form."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
    if isinstance(value, dt.datetime):
        return value.date().isoformat() if value.time() == dt.time() else value.isoformat(sep=" ")
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    return str(value)


def read_sheet(path: Path, sheet: str | None) -> Sheet:
    """The named sheet (default: the first) of an .xlsx workbook."""
    from python_calamine import CalamineWorkbook

    try:
        book = CalamineWorkbook.from_path(str(path))
        names = list(book.sheet_names)
        if sheet is not None and sheet not in names:
            raise RifmlInputError(f"{path}: no sheet {sheet!r} (sheets: {', '.join(names)})")
        name = sheet if sheet is not None else names[0]
        rows = book.get_sheet_by_name(name).to_python(skip_empty_area=False)
    except RifmlInputError:
        raise
    except Exception as exc:  # calamine raises its own types for damaged or encrypted books
        raise RifmlInputError(f"{path}: not a readable Excel workbook ({type(exc).__name__}: {exc})") from exc
    text = [[cell_text(v) for v in row] for row in rows]
    filled = [any(c.strip() for c in row) for row in text]
    if not any(filled):
        raise RifmlInputError(f"{path}: sheet {name!r} is empty")
    header_index = filled.index(True)
    header = text[header_index]
    while header and not header[-1].strip():
        header.pop()
    width = len(header)
    data = [i for i in range(header_index + 1, len(text)) if filled[i]]
    if not data:
        raise RifmlInputError(f"{path}: no data rows (header only) in sheet {name!r}")
    blank = np.array([i + 1 for i in range(header_index + 1, len(text)) if not filled[i]], dtype=np.int64)
    return Sheet(
        name=name,
        header=header,
        cells=[(text[i] + [""] * width)[:width] for i in data],
        numbers=np.array(data, dtype=np.int64) + 1,
        too_wide=np.array([any(c.strip() for c in text[i][width:]) for i in data], dtype=bool),
        survey=Survey(lines=len(text), header_line=header_index + 1, blank=blank),
    )
