"""The careful reader of delimited text: records with their line spans, broken quotes contained.

Follows the record rule of :mod:`rifml.io.accounting` (quote parity opens and closes a
cell that goes on over line breaks; a cell that does not close into one well-formed record,
or would take in a line that has the header's number of separators, rejects only its
opening line). Used for files Arrow cannot number line by line: quotes in
the data, blank lines, ragged rows, bare CRs, undecodable bytes.
"""

from __future__ import annotations

import csv
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from rifml.contract import MISPLACED_QUOTE, UNCLOSED_QUOTE, WRONG_FIELD_COUNT

csv.field_size_limit(sys.maxsize)


@dataclass
class Record:
    """One record: first and last physical line, its cells (cut or padded to the header's width), problem."""

    start: int
    end: int
    cells: list[str]
    problem: str | None = None


def _is_blank(line: str) -> bool:
    return not line.rstrip("\r\n")


def _odd(line: str) -> bool:
    return line.count('"') % 2 == 1


def records(lines: Iterable[str], sep: str, width: int) -> Iterator[Record]:
    """Data records of text ``lines`` (line ends kept), header skipped, in file order."""
    source = enumerate(lines, 1)
    returned: deque[tuple[int, str]] = deque()  # lines given back after an unclosed quote

    def next_line() -> tuple[int, str] | None:
        return returned.popleft() if returned else next(source, None)

    header_seen = False
    while (item := next_line()) is not None:
        number, line = item
        if _is_blank(line):
            continue
        if not header_seen:
            header_seen = True
            continue
        if not _odd(line):
            yield _single(number, line, sep, width)
            continue
        group = [item]
        while (more := next_line()) is not None:
            group.append(more)
            if _odd(more[1]):
                break
        closed = len(group) > 1 and _odd(group[-1][1])
        # a line with the header's number of separators is a record of its own, never part of a cell
        swallows = any(text.count(sep) == width - 1 for _, text in group[1:])
        cells = _one_record([text for _, text in group], sep, width) if closed and not swallows else None
        if cells is not None:
            yield Record(number, group[-1][0], cells)
        else:
            yield Record(number, number, _fit(_lenient(line, sep), width), UNCLOSED_QUOTE)
            returned.extendleft(reversed(group[1:]))


def _single(number: int, line: str, sep: str, width: int) -> Record:
    try:
        cells = next(csv.reader([line], delimiter=sep, strict=True))
    except csv.Error:
        return Record(number, number, _fit(_lenient(line, sep), width), MISPLACED_QUOTE)
    if len(cells) != width:
        return Record(number, number, _fit(cells, width), WRONG_FIELD_COUNT)
    return Record(number, number, cells)


def _one_record(lines: list[str], sep: str, width: int) -> list[str] | None:
    """The cells when ``lines`` are exactly one well-formed record of ``width`` fields, else None."""
    try:
        parsed = list(csv.reader(lines, delimiter=sep, strict=True))
    except csv.Error:
        return None
    return parsed[0] if len(parsed) == 1 and len(parsed[0]) == width else None


def _lenient(line: str, sep: str) -> list[str]:
    """Best-effort cells of a broken line, so its reject can show the patient id."""
    try:
        return next(csv.reader([line.rstrip("\r\n")], delimiter=sep), [])
    except csv.Error:
        return line.rstrip("\r\n").split(sep)


def _fit(cells: list[str], width: int) -> list[str]:
    return (cells + [""] * width)[:width]
