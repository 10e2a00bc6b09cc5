"""The report as data: every call explained, findings matched, flags and figure tables computed.

Pure: takes the fitted model, the clean panel rows and the calls (row i = patient i) and
returns plain data the figures and templates only lay out.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from rifml import contract
from rifml.contract import REPORTED_DECIMALS, censored_column, profile_columns
from rifml.features import band_position
from rifml.pipeline import ImmuneProfiler
from rifml.report.geometry import format_value
from rifml.report.interventions import FindingHits, Interventions, find_findings

# Calls files carry probabilities rounded to REPORTED_DECIMALS (error at most half a unit of the last place).
PROBABILITY_TOLERANCE = 10.0**-REPORTED_DECIMALS


def patient_file_names(ids: list[str]) -> list[str]:
    """Safe, unique page names: position in the calls plus an ASCII slug of the id."""
    width = max(5, len(str(len(ids))))
    names = []
    for position, patient in enumerate(ids, 1):
        ascii_id = unicodedata.normalize("NFKD", str(patient)).encode("ascii", "ignore").decode()
        slug = re.sub(r"[^A-Za-z0-9_-]+", "-", ascii_id).strip("-_")[:40] or "patient"
        names.append(f"{position:0{width}d}-{slug}.html")
    return names


# -- the report as data ------------------------------------------------------------------


@dataclass
class ModelCard:
    """What the model is: where it came from, how it scored in training, what it was trained on."""

    uri: str
    registered_name: str | None = None
    version: str | None = None
    aliases: list[str] = field(default_factory=list)
    run_id: str | None = None
    run_name: str | None = None
    experiment: str | None = None
    trained_at: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    tracking_note: str | None = None


@dataclass
class CohortData:
    """Everything the pages show, aligned with the calls (row i = patient i)."""

    profiler: ImmuneProfiler
    calls: pd.DataFrame
    panel: pd.DataFrame
    contributions: pd.DataFrame
    findings: list[FindingHits]
    files: list[str]
    model: ModelCard
    rejects: Counter
    rejects_source: str
    changed_calls: int
    sources: dict[str, str]


def build_cohort(
    profiler: ImmuneProfiler,
    panel: pd.DataFrame,
    calls: pd.DataFrame,
    model: ModelCard,
    rejects: Counter,
    rejects_source: str,
    interventions: Interventions,
    sources: dict[str, str] | None = None,
) -> CohortData:
    """Explain every call with the model and match findings; pure.

    Parameters
    ----------
    profiler : ImmuneProfiler
        The fitted model (its catalog is the one the panel was validated with).
    panel : DataFrame
        Clean panel rows, aligned with ``calls`` (row i is patient i).
    calls : DataFrame
        Calls-file rows (see :func:`rifml.pipeline.calls_columns`).
    model : ModelCard
    rejects : Counter
        Rejected rows by reason.
    rejects_source : str
        Where the reject counts come from (shown on the cohort page).
    interventions : Interventions
    sources : dict, optional
        Input file names to show.

    Returns
    -------
    CohortData
    """
    catalog = profiler.catalog_
    calls = calls.reset_index(drop=True)
    panel = panel.reset_index(drop=True)
    X = profiler.features_.transform(panel)
    index = {p: i for i, p in enumerate(catalog.profiles)}
    called_index = calls[catalog.label_column].map(index).to_numpy(dtype=int)
    contributions = profiler.contributions(X, called_index)
    now = profiler.profile_model_.predict_proba(X)
    changed = np.abs(now - calls[profile_columns(catalog)].to_numpy(dtype=float)) > PROBABILITY_TOLERANCE
    # the catalog's interactions (NK/HLA-C incompatibility): any one of them holding
    interactions = [i.name for i in catalog.interactions]
    incompatible = (X[interactions] == 1).any(axis=1).to_numpy() if interactions else np.zeros(len(X), bool)
    findings = find_findings(band_position(panel, catalog), calls[catalog.label_column].to_numpy(dtype=object),
                             incompatible, catalog, interventions)
    ids = calls[catalog.id_column].astype(str).tolist()
    return CohortData(profiler, calls, panel, contributions, findings, patient_file_names(ids), model, rejects,
                      rejects_source, int(changed.any(axis=1).sum()), sources or {})


def subtype_marker_table(profiler: ImmuneProfiler, panel: pd.DataFrame, subtypes: pd.Series) -> pd.DataFrame:
    """Median log (lab-normalized) marker value per subtype, in SDs from the batch median."""
    matrix = profiler.features_.marker_matrix(panel)
    spread = matrix.std().replace(0, np.nan)
    medians = matrix.groupby(subtypes.to_numpy()).median()
    return (medians - matrix.median()) / spread


def lab_drift(panel: pd.DataFrame, profiler: ImmuneProfiler) -> pd.DataFrame:
    """Per lab and drifting marker: the lab's median against the batch median, and the shift learned in training.

    A marker drifts when the catalog says so or when training learned an offset for it in some lab.

    Censored cells are left out (their value is a limit, not a measurement). Differences
    are multiplicative (the assays drift by tens of percent), in percent.
    """
    features = profiler.features_
    learned_markers = {name for shifts in features.lab_shifts_.values() for name, shift in shifts.items() if shift}
    drifting = [m for m in profiler.catalog_.numeric_markers if m.drifts or m.name in learned_markers]
    lab_column = profiler.catalog_.lab_column
    if lab_column not in panel or not drifting:
        return pd.DataFrame(columns=["lab", "marker", "n", "batch_pct", "learned_pct", "known"])
    labs = panel[lab_column].astype(object).where(panel[lab_column].notna(), "(no lab)").astype(str)
    rows = []
    for marker in drifting:
        values = panel[marker.name].astype(float)
        flag = censored_column(marker.name)
        if flag in panel:
            values = values.where(~panel[flag].astype(bool))
        logs = np.log(values.where(values > 0))
        overall = _median_or_nan(logs)
        for lab, group in logs.groupby(labs):
            learned = features.lab_shifts_.get(lab, {}).get(marker.name)
            rows.append({
                "lab": lab, "marker": marker.name, "n": int(group.notna().sum()),
                "batch_pct": 100 * np.expm1(_median_or_nan(group) - overall),
                "learned_pct": 100 * np.expm1(learned) if learned is not None else np.nan,
                "known": lab in features.known_labs_,
            })
    return pd.DataFrame(rows)


def _median_or_nan(logs: pd.Series) -> float:
    """The median of the measured values; NaN (shown as "–", n = 0) when there are none.

    A lab can send no measured value of a marker (biopsy-only panels, every cell censored): that is a
    group with nothing to summarize, not a numerical accident, so it is answered without asking numpy
    for the mean of an empty slice.
    """
    measured = logs.dropna()
    return float(measured.median()) if len(measured) else np.nan


def _flag_column(calls: pd.DataFrame, column: str) -> np.ndarray:
    values = calls[column]
    if values.dtype == bool:
        return values.to_numpy()
    return values.astype(str).str.strip().str.lower().isin(["true", "1", "yes"]).to_numpy()


def patient_flags(data: CohortData) -> list[list[dict]]:
    """Per patient: the flags to show (possible chronic endometritis, unknown lab, outside training range)."""
    catalog = data.profiler.catalog_
    calls = data.calls
    features = data.profiler.features_
    flags: list[list[dict]] = [[] for _ in range(len(calls))]
    for marker in catalog.markers:
        rule = marker.flag_at_or_above
        if rule is None:
            continue
        words = rule.flag.replace("_", " ")
        for i in np.flatnonzero(_flag_column(calls, rule.flag)):
            value = format_value(float(data.panel.at[i, marker.name]))
            flags[i].append({"title": words, "text": f"{marker.name} = {value} {marker.unit} (at or above "
                             f"{format_value(rule.value)}): {words}, a distinct diagnosis to check; it is not an immune profile."})
    lab_column = catalog.lab_column
    labs = data.panel[lab_column] if lab_column in data.panel else pd.Series([None] * len(calls))
    adapted = _flag_column(calls, contract.LAB_ADAPTED) if contract.LAB_ADAPTED in calls else np.zeros(len(calls), dtype=bool)
    panels = (pd.to_numeric(calls[contract.LAB_ADAPTATION_PANELS], errors="coerce")
              if contract.LAB_ADAPTATION_PANELS in calls else None)
    for i in np.flatnonzero(_flag_column(calls, contract.UNKNOWN_LAB)):
        lab = labs.iloc[i]
        name = f"lab {lab}" if isinstance(lab, str) and lab else "the lab (not given)"
        if adapted[i]:
            title = "lab adapted"
            text = (f"{name} was not seen in training; its assay offsets were estimated from its "
                    f"{int(panels.iloc[i]):,} complete panels in this batch (each compared with the median of its own "
                    "subtype, so the lab's case mix does not read as drift) and removed before the call.")
        else:
            title = "unknown lab"
            text = (f"{name} was not seen in training and had too few complete panels in this batch "
                    f"(fewer than {data.profiler.lab_min_panels}) to estimate its assay offsets, so its values were called as measured.")
        if features.known_labs_:
            text += f" Labs seen in training: {', '.join(features.known_labs_)}."
        flags[i].append({"title": title, "text": text})
    outside = calls[contract.OUT_OF_RANGE_MARKERS].fillna("").astype(str).tolist()
    for i in np.flatnonzero(_flag_column(calls, contract.OUTSIDE_TRAINING_RANGE)):
        markers = outside[i].replace(";", ", ") or "some markers"
        flags[i].append({"title": "outside training range",
                         "text": f"{markers}: outside the values the model saw in training; the call extrapolates there."})
    return flags
