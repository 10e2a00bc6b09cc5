"""The report's edges: reading the calls, panels and rejects, describing the model from MLflow,
writing the folder, and :func:`generate_report`, which runs them around the pure parts.

Patient ids go into the local report only, never to MLflow.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from rifml import __version__
from rifml.catalog import Catalog
from rifml.errors import RifmlInputError
from rifml.io.paths import PART_SUFFIX, temp_prefix
from rifml.contract import CONTRIBUTION_SUFFIX, REJECTS_REASON, REPORTED_DECIMALS, calls_columns, profile_columns
from rifml.pipeline import ImmuneProfiler
from rifml.report.cohort import ModelCard, build_cohort
from rifml.report.interventions import load_interventions
from rifml.report.render import render_index, render_patient_pages

REPORT_MARKER = ".rifml-report"


def _read_output_csv(path: Path, what: str) -> pd.DataFrame:
    """A CSV that rifml wrote (UTF-8), every cell as text exactly (an id "NA" stays "NA"); ``what`` names it in errors."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise RifmlInputError(f"{path}: cannot read the {what} ({exc})") from exc


def read_calls(path: Path, catalog: Catalog) -> pd.DataFrame:
    """A calls file from ``rifml score``; ids kept as text exactly (an id "NA" stays "NA")."""
    calls = _read_output_csv(path, "calls file")
    if calls.empty:
        raise RifmlInputError(f"{path}: no calls to report (were all rows rejected?)")
    calls = _restored(calls)
    missing = [c for c in calls_columns(catalog) if c not in calls.columns]
    if missing:
        raise RifmlInputError(f"{path}: not a rifml calls file (missing columns: {', '.join(missing[:6])})")
    profile = catalog.label_column
    bad = ~calls[profile].isin(catalog.profiles)
    if bad.any():
        raise RifmlInputError(
            f"{path}: line {_line(bad)}: {profile} {calls[profile][bad].iloc[0]!r} is not a profile"
        )
    duplicated = calls[catalog.id_column].duplicated()
    if duplicated.any():
        raise RifmlInputError(f"{path}: {catalog.id_column} {calls[catalog.id_column][duplicated].iloc[0]!r} appears twice")
    numeric = [*profile_columns(catalog), *[c for c in calls.columns if c.endswith(CONTRIBUTION_SUFFIX)]]
    for column in numeric:
        calls[column] = pd.to_numeric(calls[column].replace("", np.nan), errors="coerce")
    _check_probabilities(path, calls, catalog)
    return calls


def _restored(calls: pd.DataFrame) -> pd.DataFrame:
    """Text as it was before ``rifml score`` guarded it against spreadsheets (an id "=x" was written "'=x")."""
    import pyarrow as pa

    from rifml.io.writer import restore_cells

    restored = {name: restore_cells(pa.array(calls[name].to_numpy(dtype=object), type=pa.string())).to_pylist()
                for name in calls.columns}
    return pd.DataFrame(restored, columns=calls.columns, index=calls.index, dtype=object)


def _line(bad: pd.Series | np.ndarray) -> int:
    """Line number in the calls file (header = line 1) of the first flagged row."""
    return int(np.flatnonzero(np.asarray(bad))[0]) + 2


def _check_probabilities(path: Path, calls: pd.DataFrame, catalog: Catalog) -> None:
    """Each row's probabilities are numbers in [0, 1] summing to 1 up to the file's rounding; else the
    file was edited or is not rifml's, and the report would show "nan%" or "500.0%"."""
    columns = profile_columns(catalog)
    proba = calls[columns].to_numpy(dtype=float)
    # each of the k values is off by at most half a unit in the last reported decimal
    slack = len(columns) * 0.5 * 10.0**-REPORTED_DECIMALS + 1e-9
    checks = [
        (np.isnan(proba).any(axis=1), "a probability is missing or not a number"),
        (((proba < 0) | (proba > 1)).any(axis=1), "a probability is outside [0, 1]"),
        (np.abs(proba.sum(axis=1) - 1) > slack, "the probabilities do not sum to 1"),
    ]
    for bad, what in checks:
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            values = ", ".join(f"{c}={calls[c].iloc[row]}" for c in columns)
            raise RifmlInputError(
                f"{path}: line {row + 2} ({catalog.id_column} {calls[catalog.id_column].iloc[row]!r}): {what} ({values});"
                " pass the calls file exactly as `rifml score` wrote it"
            )


def read_panel_for_calls(path: Path, catalog: Catalog, ids: pd.Series, read_options=None) -> tuple[pd.DataFrame, Counter]:
    """The clean panel rows of ``ids`` (in that order) from the scored file, and reject counts by reason.

    Raises
    ------
    RifmlInputError
        When some called patients are not among the file's accepted rows.
    """
    from rifml.io.reader import PanelFile, validated_chunks

    wanted = set(ids)
    parts, reasons = [], Counter()
    for chunk in validated_chunks(PanelFile(path, catalog, options=read_options)):
        reasons.update(chunk.rejects[REJECTS_REASON])
        parts.append(chunk.panel[chunk.panel[catalog.id_column].isin(wanted)])
    panel = pd.concat(parts).set_index(catalog.id_column, drop=False)
    missing = ids[~ids.isin(panel.index)]
    if len(missing):
        raise RifmlInputError(
            f"{path}: {len(missing):,} called patients are not among its accepted rows (first: {missing.iloc[0]!r});"
            " pass the panel file that was scored"
        )
    return panel.loc[ids.to_numpy()].reset_index(drop=True), reasons


def read_reject_counts(path: Path) -> Counter:
    """Rejected rows by reason, from a rejects file of ``rifml score`` or ``rifml validate``."""
    rejects = _read_output_csv(path, "rejects file")
    if REJECTS_REASON not in rejects:
        raise RifmlInputError(f"{path}: not a rifml rejects file (no {REJECTS_REASON} column)")
    return Counter(rejects[REJECTS_REASON].tolist())


def _registry_version(client, model_uri: str):
    """The registered version behind models:/NAME@ALIAS or models:/NAME/VERSION (None otherwise)."""
    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))/?", model_uri)
    if not match or match.group(1).startswith("m-"):
        return None
    name, alias, version = match.groups()
    return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)


def _source_run(client, model_uri: str) -> str | None:
    runs = re.fullmatch(r"runs:/([^/]+)/.*", model_uri)
    if runs:
        return runs.group(1)
    logged = re.fullmatch(r"models:/(m-[^/@]+)/?", model_uri)
    return client.get_logged_model(logged.group(1)).source_run_id if logged else None


def describe_model(model_uri: str, metadata: dict[str, str]) -> ModelCard:
    """Registry name/version/aliases, the training run's metrics and params, if the store answers.

    Never raises for an unreachable or partial store: the card then says what is missing.
    """
    import mlflow
    from mlflow import MlflowClient

    card = ModelCard(uri=model_uri, metadata={k: str(v) for k, v in metadata.items()})
    try:
        client = MlflowClient()
        version = _registry_version(client, model_uri)
        if version is not None:
            card.registered_name, card.version = version.name, str(version.version)
            card.aliases = list(version.aliases or [])
            card.run_id = version.run_id
        else:
            card.run_id = _source_run(client, model_uri)
        if card.run_id is None:
            card.tracking_note = "the model URI names no training run, so its metrics are not shown"
            return card
        run = client.get_run(card.run_id)
        card.metrics, card.params = dict(run.data.metrics), dict(run.data.params)
        card.run_name = run.data.tags.get("mlflow.runName")
        card.experiment = client.get_experiment(run.info.experiment_id).name
        card.trained_at = datetime.fromtimestamp(run.info.start_time / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    except Exception as exc:  # noqa: BLE001 - MLflow raises many types; the report must still be written
        card.tracking_note = f"training run not reachable in {mlflow.get_tracking_uri()}: {str(exc).splitlines()[0]}"
    return card


def write_report(output: Path, index_html: str, pages: Iterator[tuple[str, str]]) -> int:
    """Write index.html and patients/*.html into ``output``, replacing an earlier report whole.

    Pages are written to a hidden folder beside ``output`` and swapped in at the end, so an
    interrupted run leaves the earlier report intact. A folder that holds anything other
    than an earlier rifml report is refused rather than overwritten.

    Returns
    -------
    int
        Number of patient pages written.
    """
    output = Path(output)
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise RifmlInputError(f"{output}: folder {parent} does not exist")
    if output.exists() and not (output.is_dir() and (not any(output.iterdir()) or (output / REPORT_MARKER).exists())):
        raise RifmlInputError(f"{output}: exists and is not an earlier rifml report; choose a new or empty folder")
    staging = Path(tempfile.mkdtemp(prefix=temp_prefix(output), suffix=PART_SUFFIX, dir=parent))
    try:
        (staging / "patients").mkdir()
        count = 0
        for name, html in pages:
            (staging / "patients" / name).write_text(html, encoding="utf-8")
            count += 1
        (staging / "index.html").write_text(index_html, encoding="utf-8")
        (staging / REPORT_MARKER).write_text(f"written by rifml {__version__} report\n", encoding="utf-8")
        if output.exists():
            retired = parent / f".{output.name}.old-{os.getpid()}"
            output.rename(retired)
            staging.rename(output)
            shutil.rmtree(retired)
        else:
            staging.rename(output)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return count


@dataclass
class ReportSummary:
    output: Path
    patients: int
    seconds: float
    changed_calls: int


def generate_report(
    profiler: ImmuneProfiler,
    model_uri: str,
    metadata: dict[str, str],
    *,
    panels: Path,
    calls: Path,
    output: Path,
    rejects: Path | None = None,
    card: ModelCard | None = None,
    read_options=None,
) -> ReportSummary:
    """Read the scored panels and calls, explain, render and write the whole report folder.

    Parameters
    ----------
    profiler : ImmuneProfiler
        The model the calls came from.
    model_uri : str
    metadata : dict
        The logged model's metadata.
    panels, calls : Path
        The panel file that was scored and its calls file.
    output : Path
        Report folder (index.html, patients/).
    rejects : Path, optional
        Rejects file to summarize; without it, the reject reasons found re-validating ``panels``.
    read_options : rifml.io.dialects.ReadOptions, optional
        How ``panels`` is written (separator, decimal mark, encoding, sheet, column map, layout), else detected.
    card : ModelCard, optional
        Model description; looked up in the current MLflow store when not given.

    Returns
    -------
    ReportSummary
    """
    started = time.perf_counter()
    catalog = profiler.catalog_
    interventions = load_interventions()
    call_rows = read_calls(Path(calls), catalog)
    panel, reasons = read_panel_for_calls(Path(panels), catalog, call_rows[catalog.id_column], read_options)
    if rejects is not None:
        reasons, rejects_source = read_reject_counts(Path(rejects)), Path(rejects).name
    else:
        rejects_source = f"re-validating {Path(panels).name} (no rejects file given)"
    card = card or describe_model(model_uri, metadata)
    sources = {"panels": Path(panels).name, "calls": Path(calls).name}
    data = build_cohort(profiler, panel, call_rows, card, reasons, rejects_source, interventions, sources)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    index_html = render_index(data, interventions, generated)
    count = write_report(Path(output), index_html, render_patient_pages(data, interventions, generated))
    return ReportSummary(Path(output), count, time.perf_counter() - started, data.changed_calls)
