"""Units a file states for its values, converted exactly to the catalog's unit.

A unit comes from a header (``IL-6 (ng/mL)``) or from the unit column of a long
file. The catalog says which units each column accepts (``unit`` plus ``units``);
pint reads them and gives the conversion factor as an exact fraction (ng/mL ->
pg/mL is 1000, not 1000.0000000000001). Anything else is refused with a reason,
never guessed.

Converted cells stay text until validation parses them: a power-of-ten factor
moves the decimal exponent (``0.0123`` ng/mL becomes ``0.0123e3``), so the parsed
number is exactly the one the same value written in pg/mL gives.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from functools import lru_cache

import numpy as np
import pandas as pd

from rifml.catalog import Catalog, spelling_key
from rifml.errors import RifmlInputError

UNKNOWN_UNIT = "unknown unit"
UNIT_NOT_ACCEPTED = "unit not accepted for this column"

# A unit that closes a header: "IL-6 (ng/mL)", "Serum IL-6 [ng/mL]".
_HEADER_UNIT = re.compile(r"^(?P<name>.*?\S)\s*[\(\[]\s*(?P<unit>[^()\[\]]*?)\s*[\)\]]\s*$")
_PLAIN_NUMBER = {".": r"[+-]?(?:\d+\.?\d*|\.\d+)", ",": r"[+-]?(?:\d+,?\d*|,\d+)"}


def split_header_unit(header: str) -> tuple[str, str | None]:
    """``"IL-6 (ng/mL)"`` -> ``("IL-6", "ng/mL")``; a header without a closing bracket has no unit."""
    found = _HEADER_UNIT.match(header.strip())
    if found is None or not found.group("unit"):
        return header.strip(), None
    return found.group("name"), found.group("unit")


@lru_cache(maxsize=1)
def _registry():
    # pint loads in seconds: only files that state a unit pay for it.
    import pint

    try:  # pint's own disk cache turns seconds of parsing its definitions into a fraction of one
        registry = pint.UnitRegistry(non_int_type=Fraction, cache_folder=":auto:")
    except OSError:  # no writable cache folder
        registry = pint.UnitRegistry(non_int_type=Fraction)
    registry.define("fraction = 1")  # 0.12 for 12 %, accepted only where the catalog lists it
    return registry


def _parsed(unit: str):
    """pint's reading of a unit, or None when pint does not know it."""
    try:
        parsed = _registry().parse_units(unit.strip())
    except Exception:  # pint's parser raises many types (PintError, TypeError, ...) on text like "IFN-g/IL-4"
        return None
    return parsed


def is_unit(text: str) -> bool:
    """Does pint read ``text`` as a unit?"""
    return _parsed(text) is not None


def _column_units(catalog: Catalog, column: str) -> tuple[str | None, tuple[str, ...]]:
    definition = catalog.by_name.get(column) or next((c for c in catalog.context if c.name == column), None)
    if definition is None:
        return None, ()
    return definition.unit, definition.units


@lru_cache(maxsize=256)
def _conversion(column: str, unit: str | None, accepted: tuple[str, ...], stated: str) -> Fraction | str:
    key = spelling_key(stated)
    if unit is not None and key == spelling_key(unit):
        return Fraction(1)
    if any(key == spelling_key(s) and _parsed(s) is None for s in accepted):
        return Fraction(1)  # a listed spelling pint does not read ("relative", "per HPF") names the catalog unit
    parsed = _parsed(stated)
    if parsed is None:
        return UNKNOWN_UNIT
    spellings = [s for s in ([unit] if unit is not None else []) + list(accepted) if _parsed(s) is not None]
    if not any(_parsed(s) == parsed for s in spellings):
        return UNIT_NOT_ACCEPTED
    try:
        factor = _registry().Quantity(Fraction(1), parsed).to(_parsed(spellings[0])).magnitude
    except Exception as exc:  # pint's DimensionalityError: a catalog whose units do not convert
        raise RifmlInputError(f"catalog: {column} lists unit {stated!r}, which does not convert to {spellings[0]!r}") from exc
    return Fraction(factor)


def conversion(catalog: Catalog, column: str, stated: str | None) -> Fraction | str:
    """Factor from the stated unit to ``column``'s catalog unit, or the reason the unit is refused.

    No stated unit means the catalog's. A column the catalog gives no unit cannot take one.
    """
    if stated is None or not stated.strip():
        return Fraction(1)
    return _conversion(column, *_column_units(catalog, column), stated.strip())


def _power_of_ten(factor: Fraction) -> int | None:
    for value, sign in ((factor.numerator, 1), (factor.denominator, -1)):
        other = factor.denominator if sign == 1 else factor.numerator
        if other == 1 and value > 0 and str(value).rstrip("0") == "1":
            return sign * (len(str(value)) - 1)
    return None


def _scaled_text(cell: str, factor: Fraction, decimal: str = ".") -> str:
    """One cell times ``factor`` in decimal arithmetic; text that is not a number is left for validation.

    With a decimal comma, a cell holding a point is left as it is (validation refuses it there).
    """
    text = cell.strip()
    censor = "<" if text.startswith("<") else ""
    body = text[1:].strip() if censor else text
    if decimal == ",":
        if "." in body:
            return cell
        body = body.replace(",", ".")
    try:
        value = Decimal(body) * factor.numerator / factor.denominator
    except (InvalidOperation, ValueError):
        return cell
    if not value.is_finite():
        return cell
    written = f"{value.normalize():f}" if value else "0"
    return censor + (written.replace(".", ",") if decimal == "," else written)


def scale_column(column: pd.Series, factor: Fraction, decimal: str = ".") -> pd.Series:
    """``column`` (raw cells) expressed in the catalog unit: numbers and ``<x`` limits times ``factor``.

    Typed numbers are multiplied; text is rewritten exactly (see the module docstring),
    in the file's decimal mark, so empties and text that is no number reach validation as they were.
    """
    if factor == 1:
        return column
    if pd.api.types.is_numeric_dtype(column.dtype) and not pd.api.types.is_bool_dtype(column.dtype):
        return column.astype("float64") * factor.numerator / factor.denominator
    text = column.astype(object).where(column.notna(), "").astype(str).str.strip()
    exponent = _power_of_ten(factor)
    plain = text.str.fullmatch(rf"<?\s*{_PLAIN_NUMBER[decimal]}")
    scaled = text.copy()
    if exponent is not None:
        scaled[plain] = text[plain] + f"e{exponent}"
        rest = (text != "") & ~plain
    else:
        rest = text != ""
    if rest.any():
        scaled[rest] = [_scaled_text(cell, factor, decimal) for cell in text[rest]]
    scaled[text == ""] = column[text == ""]
    return scaled.astype(object)


def unit_problems(column: pd.Series, reason: str) -> np.ndarray:
    """``reason`` on every row whose cell holds a value, None elsewhere (an empty cell needs no unit)."""
    present = column.notna().to_numpy() & (column.astype(object).astype(str).str.strip() != "").to_numpy()
    return np.where(present, reason, None)


def describe(factor: Fraction) -> str:
    """``x1000`` / ``/1000`` / ``x1``: how the summary shows a conversion."""
    if factor.denominator == 1:
        return f"x{factor.numerator}"
    if factor.numerator == 1:
        return f"/{factor.denominator}"
    return f"x{factor.numerator}/{factor.denominator}"


def convert_columns(
    frame: pd.DataFrame, conversions: dict[str, Fraction | str], decimal: str = "."
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Raw cells in catalog units, and the rows refused for a unit (column -> reason or None per row)."""
    problems: dict[str, np.ndarray] = {}
    if not conversions:
        return frame, problems
    frame = frame.copy(deep=False)
    for column, factor in conversions.items():
        if isinstance(factor, str):
            problems[column] = unit_problems(frame[column], factor)
        else:
            frame[column] = scale_column(frame[column], factor, decimal).set_axis(frame.index)
    return frame, problems
