"""What a delimited text file is: its encoding, separator, decimal mark and line ending.

Detected from the file, each overridable (``--encoding``, ``--sep``, ``--decimal``), and
reported back in one line so that a wrong guess is visible, never silent.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from rifml.errors import RifmlInputError

if TYPE_CHECKING:
    from rifml.io.columns import ColumnMap

SEPARATORS = {",": "','", ";": "';'", "\t": "tab"}
SEPARATOR_SPELLINGS = {",": ",", "comma": ",", ";": ";", "semicolon": ";", "\\t": "\t", "\t": "\t", "tab": "\t"}
DECIMAL_MARKS = (".", ",")
LAYOUTS = ("wide", "long")
GZIP_MAGIC = b"\x1f\x8b"
SNIFF_BYTES = 1 << 16
# Non-UTF-8 files: which single-byte code pages charset-normalizer may choose among. A free
# choice among all code pages turns a short "José" sample into Greek or Cyrillic guesses, and
# even Windows-1250 read "Josè" as "Josč": Western code pages only; --encoding for the others.
SINGLE_BYTE_CANDIDATES = ["cp1252", "latin_1", "iso8859_15"]
# Python's codec names (codecs.lookup(...).name) as people know them, and as Java (Spark) does.
ENCODING_NAMES = {"utf-8": "UTF-8", "utf-8-sig": "UTF-8 with BOM", "utf-16": "UTF-16", "cp1252": "Windows-1252",
                  "iso8859-1": "Latin-1", "iso8859-15": "Latin-9", "cp1250": "Windows-1250"}
JAVA_CHARSETS = {"utf-8": "UTF-8", "utf-8-sig": "UTF-8", "utf-16": "UTF-16", "cp1252": "windows-1252",
                 "iso8859-1": "ISO-8859-1", "iso8859-15": "ISO-8859-15", "cp1250": "windows-1250"}
_DECIMAL_COMMA = re.compile(r"^[+-]?\d+,\d+$")
_DECIMAL_POINT = re.compile(r"^[+-]?\d+\.\d+$")


@dataclass(frozen=True)
class ReadOptions:
    """What the user said about a file (None: detect it).

    Parameters
    ----------
    sep : str, optional
        Field separator: ``,``, ``;`` or tab (``\\t`` / ``tab`` accepted).
    decimal : str, optional
        Decimal mark: ``.`` or ``,``.
    encoding : str, optional
        Any Python codec name (``utf-8``, ``cp1252``, ``latin-1``, ``utf-16`` ...).
    sheet : str, optional
        Excel sheet name (default: the first sheet).
    column_map : rifml.io.columns.ColumnMap, optional
        The user's ``--columns`` map, applied before the catalog's aliases.
    layout : {"wide", "long"}, optional
        One row per patient, or one line per patient and analyte (default: told by the header).
    """

    sep: str | None = None
    decimal: str | None = None
    encoding: str | None = None
    sheet: str | None = None
    column_map: ColumnMap | None = None
    layout: str | None = None

    def __post_init__(self) -> None:
        if self.sep is not None:
            if self.sep not in SEPARATOR_SPELLINGS:
                raise RifmlInputError(f"--sep {self.sep!r}: use ',', ';' or tab")
            object.__setattr__(self, "sep", SEPARATOR_SPELLINGS[self.sep])
        if self.decimal is not None and self.decimal not in DECIMAL_MARKS:
            raise RifmlInputError(f"--decimal {self.decimal!r}: use '.' or ','")
        if self.encoding is not None:
            try:
                object.__setattr__(self, "encoding", codecs.lookup(self.encoding).name)
            except LookupError:
                raise RifmlInputError(f"--encoding {self.encoding!r}: not an encoding Python knows") from None
        if self.layout not in (None, *LAYOUTS):
            raise RifmlInputError(f"--layout {self.layout!r}: use {' or '.join(LAYOUTS)}")


@dataclass(frozen=True)
class Dialect:
    """How a delimited text file is written. ``encoding`` is a Python codec name."""

    encoding: str
    sep: str
    decimal: str
    line_end: str  # "LF", "CRLF" or "CR": the header line's ending
    compressed: bool = False

    def describe(self) -> str:
        name = ENCODING_NAMES.get(self.encoding, self.encoding)
        return (
            f"{name}{', gzip' if self.compressed else ''}, {SEPARATORS[self.sep]} separated, "
            f"decimal '{self.decimal}', {self.line_end}"
        )


def open_bytes(path: Path) -> BinaryIO:
    """The file's bytes, gunzipped when it is gzip (by content, whatever its name)."""
    handle = path.open("rb")
    if handle.read(2) == GZIP_MAGIC:
        handle.close()
        return gzip.open(path, "rb")
    handle.seek(0)
    return handle


def is_gzip(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(2) == GZIP_MAGIC


def detect_encoding(head: bytes, given: str | None) -> str:
    """Codec name: the user's, else a byte-order mark's, else UTF-8 when ``head`` decodes as such.

    A head that is not UTF-8 goes to charset-normalizer (among :data:`SINGLE_BYTE_CANDIDATES`).
    A file whose non-UTF-8 bytes come only later is caught by :func:`rifml.io.accounting.survey`,
    which then calls :func:`guess_single_byte` on the lines that hold them.
    """
    if given:
        return given
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        return "utf-8"
    except UnicodeDecodeError:
        return guess_single_byte(head)


def guess_single_byte(sample: bytes) -> str:
    """The likeliest Western/Central European code page of bytes that are not UTF-8."""
    from charset_normalizer import from_bytes

    best = from_bytes(sample, cp_isolation=SINGLE_BYTE_CANDIDATES).best()
    return codecs.lookup(best.encoding if best is not None else "cp1252").name


def head_text(path: Path, encoding: str) -> str:
    """The first ~64 KB of the file as text (cut at the last line end, so no half line)."""
    with open_bytes(path) as handle:
        head = handle.read(SNIFF_BYTES)
    text = head.decode(encoding, errors="replace")
    cut = max(text.rfind("\n"), text.rfind("\r"))
    return text if len(head) < SNIFF_BYTES or cut < 0 else text[: cut + 1]


def detect_dialect(path: Path, options: ReadOptions) -> Dialect:
    """Encoding, separator, decimal mark and line ending of a delimited text file."""
    with open_bytes(path) as handle:
        head = handle.read(SNIFF_BYTES)
    encoding = detect_encoding(head, options.encoding)
    try:
        text = head_text(path, encoding)
    except LookupError as exc:  # a codec name that only fails when used
        raise RifmlInputError(f"{path}: cannot decode as {encoding} ({exc})") from exc
    lines = [line for line in text.splitlines() if line.strip()][:50]
    sep = options.sep or sniff_separator(lines)
    decimal = options.decimal or sniff_decimal(lines[1:], sep)
    return Dialect(encoding, sep, decimal, _line_end(text), compressed=is_gzip(path))


def sniff_separator(lines: list[str]) -> str:
    """The separator that splits the header into the most fields and the data lines into as many."""
    if not lines:
        return ","
    best, best_score = ",", (-1, -1)
    for sep in SEPARATORS:
        width = _field_count(lines[0], sep)
        if width < 2:
            continue
        agreeing = sum(_field_count(line, sep) == width for line in lines[1:])
        score = (agreeing, width)
        if score > best_score:
            best, best_score = sep, score
    return best


def sniff_decimal(data_lines: list[str], sep: str) -> str:
    """',' when cells like ``12,5`` occur and none like ``12.5``; '.' otherwise.

    With a comma separator a decimal comma could only live inside quotes; '.' is assumed
    (``--decimal ,`` says otherwise).
    """
    if sep == ",":
        return "."
    comma = point = 0
    for record in csv.reader(data_lines, delimiter=sep):
        for cell in record:
            cell = cell.strip().lstrip("<").strip()
            comma += bool(_DECIMAL_COMMA.match(cell))
            point += bool(_DECIMAL_POINT.match(cell))
    return "," if comma > point else "."


def _field_count(line: str, sep: str) -> int:
    try:
        return len(next(csv.reader([line], delimiter=sep)))
    except (csv.Error, StopIteration):
        return line.count(sep) + 1


def _line_end(text: str) -> str:
    end = re.search(r"\r\n|\n|\r", text)
    return {"\r\n": "CRLF", "\r": "CR"}.get(end.group(0), "LF") if end else "LF"


def text_stream(path: Path, encoding: str) -> io.TextIOWrapper:
    """Text lines as written (``\\n``, ``\\r\\n`` or ``\\r`` kept), undecodable bytes as U+FFFD.

    One bad byte then spoils one cell, not the batch.
    """
    return io.TextIOWrapper(open_bytes(path), encoding=encoding, errors="replace", newline="")
