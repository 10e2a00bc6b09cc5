"""Counting the records a delimited text file holds, apart from parsing it.

The rule (README, "Formats"): after the header, every non-blank line starts a record,
except the lines of a quoted cell that goes on over line breaks. Such a cell is
recognized by quote parity: a line with an odd number of ``"`` opens it and the next
line with an odd number of ``"`` closes it. If the lines between do not parse as one
record with the header's number of fields, or no closing line comes, or a line after the
opening one has the header's number of separators by itself (it is a record of its own:
a stray quote must never swallow patients), the opening line is a record of its own,
rejected as ``unclosed quote``, and reading goes on at the next line.

:func:`survey` counts lines, blank lines and odd-parity lines on the bytes (a compiled
pass per large block, numpy for small ones: the same marks), without the parser.
:meth:`Survey.check` then verifies that the records the parser produced tile the file's
lines exactly (no line lost, none read twice, every multi-line record opened and closed
by odd-parity lines). A mismatch is a bug in rifml, never a
property of the file: it raises, so no wrong total is ever printed.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

from rifml.io.compiled import compiled_on_first_call

SCAN_BLOCK = 4 << 20  # bytes per step (its temporaries are ~10x this)
# Blocks of at least this many bytes are scanned by a compiled loop (rifml.io.compiled); smaller
# ones (small files, a file's last block) with numpy, to the same marks.
COMPILED_SCAN_FROM = 1 << 20
SAMPLE_BYTES = 1 << 16  # non-UTF-8 lines kept for encoding detection
QUOTE, LF, CR = 34, 10, 13


class AccountingError(RuntimeError):
    """The parse accounted for other lines than the file holds: a bug, reported as one (exit 1)."""


@dataclass
class Survey:
    """Line facts of a text file, from bytes alone.

    Attributes
    ----------
    lines : int
        Physical lines (a last line without a line end counts).
    header_line : int
        The first non-blank line (0 when the file is blank).
    blank : ndarray of int
        Blank data lines (after the header), 1-based.
    odd : ndarray of int
        Data lines holding an odd number of quotes.
    narrow : ndarray of int
        Data lines, blank ones included, without the header's number of separators (the
        only lines a quoted cell may run over).
    quoted : bool
        Some data line holds a quote.
    lone_cr : bool
        Some line ends in a bare CR (old Mac style).
    ragged : bool
        Some non-blank data line has another number of separators than the header.
    undecodable_sample : bytes
        Empty when the bytes decode in the expected encoding; else lines that do not
        (for choosing a single-byte code page).
    column_cells : list, or None
        The cells of one column (``survey(..., column=k)``) of every non-blank data line,
        as UTF-8 text, read from the bytes as they are (no quote handling): right for a
        ``plain`` UTF-8 file, where they spare the reader a parse of the whole file. One
        entry per scanned block: a pyarrow array, or what ``digest`` made of it.
    """

    lines: int = 0
    header_line: int = 0
    blank: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    odd: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    narrow: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    quoted: bool = False
    lone_cr: bool = False
    ragged: bool = False
    undecodable_sample: bytes = b""
    column_cells: list | None = None

    @property
    def data_lines(self) -> int:
        """Non-blank lines after the header: the records of a file without multi-line cells."""
        return max(self.lines - self.header_line - len(self.blank), 0)

    @property
    def plain(self) -> bool:
        """One record per line, all of the header's width, nothing to re-number: Arrow can read it."""
        return (
            self.header_line == 1
            and not (self.quoted or self.lone_cr or self.ragged or len(self.blank) or self.undecodable_sample)
        )

    def check(self, starts: np.ndarray, ends: np.ndarray) -> int:
        """Verify that records [start, end] (line numbers, in file order) tile the data lines.

        Between consecutive records only blank lines may lie; a record spanning lines must
        start and end on odd-parity lines with only even ones between. Returns the number
        of records; raises :class:`AccountingError` otherwise. (:class:`Tiling` does the
        same check chunk by chunk.)
        """
        tiling = Tiling(self)
        tiling.add(starts, ends)
        return tiling.finish()


class Tiling:
    """:meth:`Survey.check` fed chunk by chunk, in file order.

    Only the last record's end is kept between chunks, so the check's memory does not
    grow with the file (16 bytes per record for the whole file otherwise: 160 MB at 10M).
    """

    def __init__(self, survey: Survey):
        self.survey = survey
        self.records = 0
        self.last_end = survey.header_line

    def add(self, starts: np.ndarray, ends: np.ndarray) -> None:
        starts, ends = np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)
        if len(starts) != len(ends) or np.any(ends < starts):
            raise AccountingError("record spans are malformed")
        if not len(starts):
            return
        # each gap runs from a record's end (or the header) to the next record's start
        self._gaps(np.r_[self.last_end, ends[:-1]], starts, on_blank=np.isin(starts, self.survey.blank))
        found = self.survey
        for i in np.flatnonzero(ends > starts):
            s, e = int(starts[i]), int(ends[i])
            inner = np.searchsorted(found.odd, e) - np.searchsorted(found.odd, s, side="right")
            narrow = np.searchsorted(found.narrow, e, side="right") - np.searchsorted(found.narrow, s, side="right")
            if not (np.isin([s, e], found.odd).all() and inner == 0 and narrow == e - s):
                raise AccountingError(f"lines {s}-{e} were read as one record against the quote rule")
        self.last_end = int(ends[-1])
        self.records += len(starts)

    def finish(self) -> int:
        """The number of records, once the gap after the last one (to the file's end) is checked."""
        self._gaps(np.array([self.last_end]), np.array([self.survey.lines + 1]), on_blank=np.zeros(1, dtype=bool))
        return self.records

    def _gaps(self, low: np.ndarray, high: np.ndarray, on_blank: np.ndarray) -> None:
        blank = self.survey.blank
        blanks_between = np.searchsorted(blank, high) - np.searchsorted(blank, low, side="right")
        wrong = (high - low - 1 != blanks_between) | on_blank
        if wrong.any():
            first = int(np.flatnonzero(wrong)[0])
            raise AccountingError(
                f"the parse accounts for other lines than the file holds (near line {int(high[first])}): "
                f"{self.records + first:,}+ records read, {self.survey.data_lines:,} non-blank data lines"
            )


def utf8_blocks(stream: BinaryIO, encoding: str) -> Iterator[bytes]:
    """The stream's bytes in blocks, as UTF-8 when its encoding is not ASCII-compatible (UTF-16)."""
    transcode = codecs.lookup(encoding).name.startswith(("utf-16", "utf-32"))
    decoder = codecs.getincrementaldecoder(encoding)(errors="replace") if transcode else None
    while block := stream.read(SCAN_BLOCK):
        yield decoder.decode(block).encode("utf-8") if decoder else block
    if decoder:
        yield decoder.decode(b"", final=True).encode("utf-8")


def survey(
    stream: BinaryIO, encoding: str, sep: str, width: int, column: int | None = None, digest: Callable | None = None
) -> Survey:
    """Count the lines of a text stream and note what a fast parser could not handle.

    With ``column`` (a field position) and a UTF-8 stream, also gathers that column's
    cells (:attr:`Survey.column_cells`), each block's passed through ``digest`` when given
    (so a 10M-line file need not hold all its cells' text at once).
    """
    result = Survey()
    digest = digest or _as_is
    check_utf8 = codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")
    if column is not None and check_utf8:
        result.column_cells = []
    decoder = codecs.getincrementaldecoder("utf-8")() if check_utf8 else None
    blanks, odds, narrows, sample = [], [], [], []
    carry = b""
    for block in utf8_blocks(stream, encoding):
        if decoder is not None:
            try:
                decoder.decode(block)
            except UnicodeDecodeError:
                decoder = None
                sample = [b""]  # from here on, gather non-ASCII lines
                result.column_cells = None  # not UTF-8 text: its cells are never used (and a digest may not read them)
        block = carry + block
        cut = block.rfind(b"\n")
        if cut < 0:
            carry = block
            continue
        carry = block[cut + 1 :]
        _scan(block[: cut + 1], result, sep, width, (blanks, odds, narrows), sample, column, digest)
    cut_short = False
    if decoder is not None:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:  # the text ends inside a character
            cut_short = True
            result.column_cells = None
    if carry:
        _scan(carry + b"\n", result, sep, width, (blanks, odds, narrows), sample, column, digest)  # a last line without a line end
    if cut_short:
        sample = [carry or b"?"]
    result.blank = np.concatenate(blanks) if blanks else result.blank
    result.odd = np.concatenate(odds) if odds else result.odd
    result.narrow = np.concatenate(narrows) if narrows else result.narrow
    result.undecodable_sample = b"".join(sample)
    return result


def _scan(
    block: bytes, result: Survey, sep: str, width: int, found: tuple[list, list, list], sample: list,
    column: int | None = None, digest: Callable | None = None,
) -> None:
    """One block of whole lines (ending in LF, or a bare CR before the block's end).

    Works on positions of the few bytes that matter (line ends, quotes, separators), so
    its temporaries stay small: a byte-wide cumulative sum would cost 8 bytes per byte.
    """
    data = np.frombuffer(block, dtype=np.uint8)
    marks = (_compiled_line_marks if len(data) >= COMPILED_SCAN_FROM else _line_marks_numpy)(
        data, ord(sep), -1 if column is None else column, width)
    ends, content_end, separators, quotes, cell_begin, cell_end, lone_cr = marks
    result.lone_cr |= bool(lone_cr)
    starts = np.r_[0, ends[:-1] + 1]
    numbers = result.lines + 1 + np.arange(len(ends), dtype=np.int64)
    result.lines += len(ends)
    blank = content_end == starts
    if result.header_line == 0:
        nonblank = np.flatnonzero(~blank)
        if not len(nonblank):
            return
        result.header_line = int(numbers[nonblank[0]])
    data_line = numbers > result.header_line
    if result.column_cells is not None:
        keep = data_line & ~blank
        result.column_cells.append((digest or _as_is)(_spans_text(data, cell_begin[keep], cell_end[keep])))
    blanks, odds, narrows = found
    narrow = data_line & (separators != width - 1)
    blanks.append(numbers[data_line & blank])
    odds.append(numbers[data_line & (quotes % 2 == 1)])
    narrows.append(numbers[narrow])
    result.quoted |= bool((quotes[data_line] > 0).any())
    result.ragged |= bool(np.any(narrow & ~blank))
    if sample and sum(map(len, sample)) < SAMPLE_BYTES:
        high = _per_line(np.flatnonzero(data >= 0x80), starts, ends) > 0
        for i in np.flatnonzero(high)[:200]:
            sample.append(block[starts[i] : ends[i] + 1])


def _as_is(cells):
    return cells


def _line_marks_numpy(data: np.ndarray, sep: int, column: int, width: int) -> tuple:
    """:func:`_line_marks` with numpy (a few whole-block passes; small blocks, where compiling does not pay)."""
    ends = np.flatnonzero(data == LF)
    crs = np.flatnonzero(data == CR)
    lone_cr = False
    if len(crs):
        follows = crs + 1 < len(data)
        lone = crs[~follows | (data[np.minimum(crs + 1, len(data) - 1)] != LF)]
        if len(lone):
            lone_cr = True
            ends = np.union1d(ends, lone)
    starts = np.r_[0, ends[:-1] + 1]
    content_end = ends.copy()
    if len(crs):  # a CRLF's CR is not content (read at the byte before each LF: no set lookup of the CRs)
        before = np.maximum(ends - 1, 0)
        content_end -= (ends > 0) & (data[before] == CR) & (data[ends] == LF)
    quotes = _per_line(np.flatnonzero(data == QUOTE), starts, ends)
    separator_at = np.flatnonzero(data == sep)
    separators = _per_line(separator_at, starts, ends)
    if column < 0:
        return ends, content_end, separators, quotes, None, None, lone_cr
    begin, end = _cell_spans(separator_at, starts, content_end, separators, column, width)
    return ends, content_end, separators, quotes, begin, end, lone_cr


def _cell_spans(separator_at, starts, content_end, separators, column: int, width: int):
    """[begin, end) of field ``column`` in each line (lines of ``width`` fields).

    A line with too few fields gives an empty span at its end; such a file is not ``plain``,
    and its cells are never used.
    """
    first = np.searchsorted(separator_at, starts)  # index of each line's first separator
    last = max(len(separator_at) - 1, 0)
    padded = separator_at if len(separator_at) else np.zeros(1, dtype=np.int64)
    begin = starts if column == 0 else np.where(separators >= column, padded[np.minimum(first + column - 1, last)] + 1, content_end)
    if column == width - 1:
        end = content_end
    else:
        end = np.where(separators >= column + 1, padded[np.minimum(first + column, last)], content_end)
    begin = np.minimum(begin, content_end)
    return begin, np.maximum(end, begin)


def _line_marks(data, sep, column, width):
    """Each line of ``data`` (ending in LF, or in a CR not followed by LF) in one pass (compiled).

    Returns the position of each line's end byte, of its content's end (before a CRLF's CR),
    its separators and quotes, the span [begin, end) of field ``column`` (none when
    ``column`` < 0; see :func:`_cell_spans` for short lines) and whether a lone CR ended a line.
    """
    n = data.shape[0]
    lines = 0
    for i in range(n):
        byte = data[i]
        if byte == LF or (byte == CR and (i + 1 == n or data[i + 1] != LF)):
            lines += 1
    ends = np.empty(lines, dtype=np.int64)
    content_end = np.empty(lines, dtype=np.int64)
    separators = np.zeros(lines, dtype=np.int64)
    quotes = np.zeros(lines, dtype=np.int64)
    begin = np.empty(lines if column >= 0 else 0, dtype=np.int64)
    end = np.empty(lines if column >= 0 else 0, dtype=np.int64)
    lone_cr = False
    line = 0
    start = 0
    seps = 0
    cell_begin = -1
    cell_end = -1
    for i in range(n):
        byte = data[i]
        if byte == sep:
            seps += 1
            if seps == column:
                cell_begin = i + 1
            elif seps == column + 1:
                cell_end = i
        elif byte == QUOTE:
            if line < lines:  # (a block ends with a line end: always true; no bounds checks when compiled)
                quotes[line] += 1
        elif byte == LF or (byte == CR and (i + 1 == n or data[i + 1] != LF)):
            last = i
            if byte == CR:
                lone_cr = True
            elif i > 0 and data[i - 1] == CR:
                last = i - 1
            ends[line] = i
            content_end[line] = last
            separators[line] = seps
            if column >= 0:
                if column == 0:
                    cell_begin = start
                if cell_begin < 0 or cell_begin > last:
                    cell_begin = last
                if column == width - 1 or cell_end < 0:
                    cell_end = last
                begin[line] = cell_begin
                end[line] = max(cell_end, cell_begin)
            line += 1
            start = i + 1
            seps = 0
            cell_begin = -1
            cell_end = -1
    return ends, content_end, separators, quotes, begin, end, lone_cr


_compiled_line_marks = compiled_on_first_call(_line_marks)


def _spans_text(data: np.ndarray, begin: np.ndarray, end: np.ndarray):
    """The bytes [begin, end) of ``data`` for each span, as a pyarrow string array."""
    import pyarrow as pa

    lengths = end - begin
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    picked = data[np.repeat(begin - offsets[:-1], lengths) + np.arange(offsets[-1])]
    return pa.StringArray.from_buffers(len(lengths), pa.py_buffer(offsets), pa.py_buffer(picked))


def _per_line(positions: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """How many of ``positions`` fall in each line [start, end)."""
    return np.searchsorted(positions, ends) - np.searchsorted(positions, starts)
