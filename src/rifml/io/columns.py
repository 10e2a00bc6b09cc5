"""Which input column is which catalog column: the user's map, the catalog's aliases, header units.

A header is matched, in this order, by the user's ``--columns`` map, then by the
catalog's names and aliases, both compared with :func:`rifml.catalog.spelling_key`
(case, spaces and most punctuation do not count). A header that matches neither
as a whole is tried once more without a closing unit (``IL-6 (ng/mL)`` -> ``IL-6``,
unit ``ng/mL``). Unmatched headers pass through as they are. Two headers that
name one column, or a map that names an unknown column, are errors that name them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from rifml.catalog import Catalog, spelling_key
from rifml.errors import RifmlInputError
from rifml.io.units import is_unit, split_header_unit


@dataclass(frozen=True)
class ColumnMatch:
    """One header: as given, the column it feeds, the unit it states, and how it was matched.

    ``how`` is ``map`` (the user's file), ``catalog`` (a name or alias) or ``""`` (passed through).
    """

    header: str
    column: str
    unit: str | None = None
    how: str = ""

    @property
    def renamed(self) -> bool:
        return self.column != self.header.strip()

    def describe(self) -> str:
        unit = f" [{self.unit}]" if self.unit else ""
        return f"{self.header.strip()!r} -> {self.column}{unit}"


@dataclass(frozen=True)
class ColumnMap:
    """The user's ``--columns`` file: spelling key of an input header -> catalog column."""

    entries: tuple[tuple[str, str], ...]  # (input header as written, target)
    source: str = "--columns"

    @property
    def by_spelling(self) -> dict[str, str]:
        return {spelling_key(header): target for header, target in self.entries}

    def check_targets(self, allowed: set[str]) -> None:
        unknown = [(h, t) for h, t in self.entries if t not in allowed]
        if unknown:
            header, target = unknown[0]
            raise RifmlInputError(
                f"{self.source}: {header!r} is mapped to {target!r}, which is not a catalog column"
                f" (known: {', '.join(sorted(allowed)[:6])}, ...)"
            )


def load_column_map(path: str | Path) -> ColumnMap:
    """Read a ``--columns`` YAML file (``input column name: catalog column``)."""
    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise RifmlInputError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    except yaml.YAMLError as exc:
        raise RifmlInputError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(loaded, dict) or not loaded:
        raise RifmlInputError(f"{path}: expected a mapping of 'input column name: catalog column'")
    entries, seen = [], {}
    for header, target in loaded.items():
        if not isinstance(header, str) or not isinstance(target, str) or not header.strip() or not target.strip():
            raise RifmlInputError(f"{path}: entry {header!r}: {target!r} is not 'input column name: catalog column'")
        key = spelling_key(header)
        if key in seen and seen[key][1] != target.strip():
            raise RifmlInputError(
                f"{path}: {seen[key][0]!r} and {header!r} are the same column name but map to {seen[key][1]} and {target.strip()}"
            )
        seen[key] = (header, target.strip())
        entries.append((header, target.strip()))
    return ColumnMap(tuple(entries), source=str(path))


def takes_unit(catalog: Catalog, column: str) -> bool:
    if column in catalog.by_name:
        return catalog.by_name[column].is_numeric
    return any(c.name == column and c.kind == "number" for c in catalog.context)


def _unit_of(catalog: Catalog, column: str, bracket: str | None, whole_name: bool) -> str | None:
    """The unit a matched header states for ``column``.

    After a whole-name match a bracket counts as a unit only when it reads as one
    (``Th1/Th2 (IFN-g/IL-4)`` names the ratio, it is no unit); after a match without
    the bracket it is the unit, whatever it says (then validation refuses what is unknown).
    """
    if bracket is None or not takes_unit(catalog, column):
        return None
    if not whole_name:
        return bracket
    catalog_unit = catalog.by_name[column].unit if column in catalog.by_name else None
    return bracket if spelling_key(bracket) == spelling_key(catalog_unit or "") or is_unit(bracket) else None


def match_name(
    text: str, catalog: Catalog, column_map: ColumnMap | None = None, extra: tuple[str, ...] = ()
) -> ColumnMatch:
    """Match one header (or long-format analyte) to a column; unmatched text passes through stripped."""
    by_map = column_map.by_spelling if column_map else {}
    known = {**{spelling_key(name): name for name in extra}, **catalog.column_spellings}
    name, bracket = split_header_unit(text)
    for key, whole in ((spelling_key(text), True), (spelling_key(name), False)):
        if not whole and bracket is None:
            break
        for how, table in (("map", by_map), ("catalog", known)):
            if key in table:
                column = table[key]
                return ColumnMatch(text, column, _unit_of(catalog, column, bracket, whole), how)
    return ColumnMatch(text, text.strip())


@dataclass(frozen=True)
class HeaderMatch:
    """Every header of a file, matched; ``names`` is what the reader calls the columns."""

    matches: tuple[ColumnMatch, ...]

    @property
    def names(self) -> list[str]:
        return [m.column for m in self.matches]

    @property
    def renamed(self) -> list[ColumnMatch]:
        """Headers that feed a column of another name, or state a unit (for the summary)."""
        return [m for m in self.matches if m.renamed or m.unit]

    @property
    def units(self) -> dict[str, str]:
        """Column -> unit its header states."""
        return {m.column: m.unit for m in self.matches if m.unit}

    def passing_through(self, columns: tuple[str, ...]) -> "HeaderMatch":
        """The same match with ``columns`` (matched only in another layout) left as their headers."""
        return HeaderMatch(tuple(replace(m, column=m.header.strip(), how="") if m.column in columns else m for m in self.matches))


def match_header(
    header: list[str],
    catalog: Catalog,
    column_map: ColumnMap | None = None,
    extra: tuple[str, ...] = (),
    source: str = "input",
) -> HeaderMatch:
    """Match every header; ``extra`` names columns matched besides the catalog's (a layout's own).

    Raises
    ------
    RifmlInputError
        When the map names an unknown column, or two headers feed one column.
    """
    if column_map is not None:
        column_map.check_targets(set(catalog.known_columns) | set(extra))
    matched = HeaderMatch(tuple(match_name(h, catalog, column_map, extra) for h in header))
    fed_by: dict[str, str] = {}
    for match in matched.matches:
        if match.column in fed_by:
            first = fed_by[match.column]
            same = first.strip() == match.header.strip()
            raise RifmlInputError(
                f"{source}: column {match.column!r} appears twice in the header"
                if same and not match.renamed
                else f"{source}: columns {first.strip()!r} and {match.header.strip()!r} both name {match.column};"
                " drop one, or map one elsewhere with --columns"
            )
        fed_by[match.column] = match.header
    return matched
