"""Reading the outcomes, calls and panels files, and writing an analysis folder (the I/O edge).

The panels file is read with the project's reader (:mod:`rifml.io.reader`), so every
format it learns works here too; only accepted panels supply covariates. Outcomes
and calls files are small tables: CSV (separator sniffed) or Parquet.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rifml.catalog import Catalog
from rifml.errors import RifmlInputError
from rifml.outcomes import contract as c
from rifml.outcomes.analysis import OutcomeAnalysis

PARQUET_MAGIC = b"PAR1"


def read_table(path: Path, what: str) -> tuple[pd.DataFrame, np.ndarray]:
    """A small table as text cells ("" = missing), with each row's line number (header = 1).

    Line numbers assume one line per record (true of the files rifml writes); a
    record whose quoted cell spans lines shifts the numbers after it.
    """
    path = Path(path)
    if not path.is_file():
        raise RifmlInputError(f"{path}: no such file" if not path.exists() else f"{path}: is not a file")
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
        if head == PARQUET_MAGIC:
            frame = pd.read_parquet(path).astype("string").fillna("").astype(object)
        else:
            frame = pd.read_csv(path, sep=None, engine="python", dtype=str, keep_default_na=False,
                                encoding="utf-8-sig", skip_blank_lines=False)
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise RifmlInputError(f"{path}: cannot be read as a {what} table ({str(exc).splitlines()[0]})") from exc
    if frame.empty:
        raise RifmlInputError(f"{path}: the {what} file has no data rows")
    frame.columns = [str(name).strip() for name in frame.columns]
    return frame.reset_index(drop=True), np.arange(len(frame)) + 2


def read_panel_columns(
    path: Path, catalog: Catalog, columns: list[str], options=None
) -> tuple[pd.DataFrame, Counter]:
    """Id plus ``columns`` of the accepted panels (parsed as validation parses them), and reject reasons.

    ``options`` (:class:`rifml.io.dialects.ReadOptions`) say how the file is written, else detected.
    """
    from rifml.io.reader import PanelFile, validated_chunks

    panel_file = PanelFile(path, catalog, options=options)
    parts, reasons = [], Counter()
    for chunk in validated_chunks(panel_file):
        # the panel's columns, not the file's: a long file's analytes become columns only here
        parts.append(chunk.panel[[catalog.id_column, *(name for name in columns if name in chunk.panel)]])
        reasons.update(chunk.rejects["reason"])
    return pd.concat(parts, ignore_index=True), reasons


@dataclass
class AnalysisFolder:
    """What was written where."""

    folder: Path
    files: dict[str, Path]


OUTPUT_FILES = ("effects.csv", "rates.csv", "interactions.csv", "rejects.csv", "index.html")


def prepare_folder(folder: Path) -> Path:
    """Create the output folder (the CLI has refused paths that clash with inputs); refuse a file in its place."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RifmlInputError(f"{folder}: exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RifmlInputError(f"{folder}: cannot create the output folder ({exc.strerror})") from exc
    return folder


def write_analysis(folder: Path, analysis: OutcomeAnalysis, rejects: pd.DataFrame, html: str,
                   pngs: dict[str, bytes]) -> AnalysisFolder:
    """effects.csv, rates.csv, interactions.csv, rejects.csv, index.html and the figures as PNG."""
    from rifml.io.writer import AtomicCsvWriter, write_table

    files = {}
    for name, table in (("effects", analysis.effects), ("rates", analysis.rates), ("interactions", analysis.interactions)):
        files[name] = folder / f"{name}.csv"
        write_table(table, files[name])
    files["rejects"] = folder / "rejects.csv"
    with AtomicCsvWriter(files["rejects"], columns=c.REJECT_COLUMNS) as writer:
        writer.write(rejects)
    for stem, data in pngs.items():
        files[stem] = folder / f"{stem}.png"
        files[stem].write_bytes(data)
    files["index"] = folder / "index.html"
    files["index"].write_text(html, encoding="utf-8")
    return AnalysisFolder(folder, files)
