"""How labs' software writes the same panels: shared by the reader tests."""

import re

import pandas as pd

NUMBER = re.compile(r"^<?-?\d+(\.\d+)?$")


def decimal_comma(frame: pd.DataFrame) -> pd.DataFrame:
    """Text cells as European Excel writes them: ``12,5`` and ``<1,0`` (dates and ids untouched)."""
    return frame.apply(lambda col: col.map(lambda v: v.replace(".", ",") if NUMBER.match(v) else v))


def excel_numbers(frame: pd.DataFrame) -> pd.DataFrame:
    """Cells that look like numbers become numbers, as Excel stores typed values (``<x`` stays text)."""
    return frame.apply(lambda col: col.map(lambda v: float(v) if NUMBER.match(v) and not v.startswith("<") else v))
