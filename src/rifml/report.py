"""Self-contained HTML reports: one cohort page and one page per patient.

Cohort plots are matplotlib figures embedded as base64 PNG. Per-patient charts
(probability bars, contribution waterfall, reference bands) are inline SVG/CSS
laid out by jinja2 templates from numbers computed here: a matplotlib figure per
patient costs ~50 ms, which is minutes for a 10,000-patient batch.

Everything a page shows is computed as plain data in this module; the templates
under ``rifml/templates`` only lay it out. The file and MLflow edges (reading the
calls, panels and rejects, describing the model, writing the folder) sit at the end.
Patient ids go into the local report only, never to MLflow.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import tempfile
import time
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from rifml import __version__
from rifml.catalog import Catalog, Marker, Profile
from rifml.config import load_yaml
from rifml.errors import RifmlInputError
from rifml.explain import COVERAGE
from rifml.features import INCOMPATIBILITY_FEATURE, LAB_COLUMN, band_position
from rifml.io.paths import PART_SUFFIX, temp_prefix
from rifml.pipeline import REPORTED_DECIMALS, ImmuneProfiler, calls_columns, profile_columns
from rifml.validate import censored_column

RESEARCH_USE = (
    "Research use only. rifml sorts panels into immune profiles and shows why. It is not a diagnostic "
    "device, makes no treatment recommendation, and its calls have not been clinically validated."
)
PROFILE_COLOURS = {"balanced": "#3d8c5c", "hyperactive": "#c0392b", "hypoactive": "#2874a6", "mixed": "#7d5ba6"}
KEY_METRICS = {
    "cv_macro_f1": "macro-F1 (cross-validated)",
    "cv_balanced_accuracy": "balanced accuracy (cross-validated)",
    "cv_ece": "expected calibration error (cross-validated)",
    "cv_complete_macro_f1": "macro-F1, complete panels only",
    "rule_macro_f1": "macro-F1 of the literature rule baseline",
    "subtype_stability": "subtype stability (consensus clustering)",
    "subtype_coherence": "calls whose subtype belongs to the called profile",
}
WATERFALL_BARS = 7
SHAP_SAMPLE = 3000  # per profile: a beeswarm of more points shows nothing new and plots slowly
TRACK_PX = 260
TRACK_PAD = 8  # room left and right of a band axis for the value dot
DOT_PX = 12
WATERFALL = {"label_end": 196, "plot_start": 206, "plot_width": 300, "value_end": 580, "row": 24}
# Calls files carry probabilities rounded to REPORTED_DECIMALS (error at most half a unit of the last place).
PROBABILITY_TOLERANCE = 10.0**-REPORTED_DECIMALS
REPORT_MARKER = ".rifml-report"
TEMPLATES = Path(__file__).with_name("templates")


# -- interventions (configs/interventions.yaml) --------------------------------------


class OutOfBand(BaseModel):
    """Markers picked by catalog fields, out of band on the side that signals ``signal``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    signal: Profile
    compartment: str | None = None
    axis: str | None = None
    kind: str | None = None

    def matches(self, marker: Marker) -> bool:
        wanted = {"compartment": self.compartment, "axis": self.axis, "kind": self.kind}
        return marker.is_numeric and all(v is None or getattr(marker, k) == v for k, v in wanted.items())


class Finding(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    key: str
    finding: str
    treatments: tuple[str, ...]
    profiles: tuple[Profile, ...]
    out_of_band: OutOfBand | None = None
    nk_hla_c_incompatibility: bool = False

    @model_validator(mode="after")
    def _has_condition(self) -> "Finding":
        if self.out_of_band is None and not self.nk_hla_c_incompatibility:
            raise ValueError(f"finding {self.key} needs out_of_band or nk_hla_c_incompatibility")
        return self


class Interventions(BaseModel):
    """Treatments the literature discusses per finding, and the caveat shown with them."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    source: str
    caveat: str
    findings: tuple[Finding, ...]


def load_interventions(path: str | Path | None = None) -> Interventions:
    """Load configs/interventions.yaml (or ``path``), validated.

    Raises
    ------
    RifmlInputError
        When the file is missing or malformed.
    """
    try:
        return Interventions.model_validate(load_yaml(path, "interventions.yaml"))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RifmlInputError(f"interventions config is malformed at {where}: {first['msg']}") from exc


@dataclass
class FindingHits:
    """Which patients show a finding, and on what evidence.

    Attributes
    ----------
    finding : Finding
    evidence : list of str
        Column labels of ``hits`` (e.g. "pb_nk_pct above its band").
    hits : ndarray of bool, shape (n_patients, n_evidence)
    applies : ndarray of bool, shape (n_patients,)
        Evidence present and the call is one of the finding's profiles.
    """

    finding: Finding
    evidence: list[str]
    hits: np.ndarray
    applies: np.ndarray


def find_findings(
    positions: pd.DataFrame, called: np.ndarray, incompatible: np.ndarray, catalog: Catalog, interventions: Interventions
) -> list[FindingHits]:
    """Match every patient against the findings of the interventions config.

    Parameters
    ----------
    positions : DataFrame
        :func:`rifml.features.band_position` of the panel (-1 below, 0 within, +1 above, NaN missing).
    called : ndarray of str
        Called profile per patient.
    incompatible : ndarray of bool
        NK/HLA-C incompatibility per patient.
    catalog : Catalog
    interventions : Interventions

    Returns
    -------
    list of FindingHits, one per finding, in config order.
    """
    out = []
    for finding in interventions.findings:
        evidence, columns = [], []
        if finding.out_of_band is not None:
            for marker in filter(finding.out_of_band.matches, catalog.numeric_markers):
                for direction, profile in marker.signals.items():
                    if profile == finding.out_of_band.signal:
                        sign = 1.0 if direction == "above" else -1.0
                        evidence.append(f"{marker.name} {direction} its reference band")
                        columns.append((positions[marker.name] == sign).to_numpy())
        if finding.nk_hla_c_incompatibility:
            evidence.append("maternal KIR AA with a partner carrying HLA-C2 (NK/HLA-C incompatibility)")
            columns.append(np.asarray(incompatible, dtype=bool))
        hits = np.column_stack(columns) if columns else np.zeros((len(positions), 0), dtype=bool)
        applies = hits.any(axis=1) & np.isin(called, finding.profiles)
        out.append(FindingHits(finding, evidence, hits, applies))
    return out


# -- per-patient geometry ---------------------------------------------------------------


@dataclass(frozen=True)
class BandAxis:
    """A marker's fixed horizontal axis (same for every patient): [lo, hi], log or linear."""

    lo: float
    hi: float
    log: bool

    def fraction(self, values: np.ndarray) -> np.ndarray:
        """Position in [0, 1] along the axis (outside when beyond it); non-positive values sit left on a log axis."""
        v = np.asarray(values, dtype=float)
        if not self.log:
            return (v - self.lo) / (self.hi - self.lo)
        with np.errstate(divide="ignore", invalid="ignore"):
            scaled = np.log(np.where(v > 0, v, self.lo / 10))
        return (scaled - np.log(self.lo)) / (np.log(self.hi) - np.log(self.lo))


def band_axis(marker: Marker, training_range: tuple[float, float], zero_floor: float | None) -> BandAxis:
    """Axis spanning the reference band and what training saw, padded 5%; log where the catalog says so."""
    band_low, band_high = marker.reference_band
    low = float(np.nanmin([band_low, training_range[0]]))
    high = float(np.nanmax([band_high, training_range[1]]))
    if marker.transform == "log":
        floor = zero_floor if zero_floor and zero_floor > 0 else band_high / 100
        low = max(low, floor)
        if band_low > 0:
            low = min(low, band_low)
        high = max(high, low * 10)
        pad = (high / low) ** 0.05
        return BandAxis(low / pad, high * pad, True)
    span = (high - low) or 1.0
    return BandAxis(low - 0.05 * span, high + 0.05 * span, False)


def signed(value: float) -> str:
    """A contribution with its sign, two decimals; a value that rounds to zero is 0.00, never -0.00."""
    text = f"{value:+.2f}"
    return "0.00" if text in ("+0.00", "-0.00") else text


def format_value(value: float, censored: bool = False) -> str:
    """A measured value as a clinician writes it: 3 significant digits, "<x" when below detection."""
    if np.isnan(value):
        return "not measured"
    text = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return f"<{text}" if censored else text


@dataclass(frozen=True)
class MarkerBand:
    """Per-marker geometry shared by every patient page."""

    marker: Marker
    axis: BandAxis
    band_x0: float
    band_x1: float
    ticks: tuple[tuple[float, str], ...]
    reference: str


def marker_bands(profiler: ImmuneProfiler) -> list[MarkerBand]:
    """Axis, band rectangle and tick labels (in pixels) for every numeric marker."""
    features = profiler.features_
    bands = []
    for marker in profiler.catalog_.numeric_markers:
        axis = band_axis(marker, features.training_range_[marker.name], features.zero_floor_.get(marker.name))
        low, high = marker.reference_band
        x0, x1 = np.clip(axis.fraction(np.array([low, high])), 0, 1) * TRACK_PX
        ticks = tuple((round(float(x), 1), format_value(v)) for v, x in [(low, x0), (high, x1)] if not (axis.log and v <= 0))
        reference = f"{format_value(low)}–{format_value(high)} {marker.unit}" + (" · log axis" if axis.log else "")
        bands.append(MarkerBand(marker, axis, round(float(x0), 1), round(float(x1), 1), ticks, reference))
    return bands


def waterfall(values: np.ndarray, labels: list[str], bars: int = WATERFALL_BARS) -> dict:
    """SVG geometry of one patient's contributions: the largest ``bars`` markers, the rest summed, the total.

    Parameters
    ----------
    values : ndarray
        Contribution of each label toward the called profile (calibrated log-odds: margin / temperature).
    labels : list of str
    bars : int

    Returns
    -------
    dict with ``steps`` (label, value text, x, width, y, sign), ``total``, ``zero_x``, ``height``.
    """
    order = np.argsort(-np.abs(values), kind="stable")
    top, rest = order[:bars], order[bars:]
    names = [labels[j] for j in top]
    amounts = [float(values[j]) for j in top]
    if len(rest):
        names.append(f"{len(rest)} other markers")
        amounts.append(float(values[rest].sum()))
    ends = np.cumsum(amounts)
    starts = ends - np.asarray(amounts)
    total = float(ends[-1]) if len(ends) else 0.0
    low = min(0.0, float(starts.min(initial=0)), float(ends.min(initial=0)))
    high = max(0.0, float(starts.max(initial=0)), float(ends.max(initial=0)))
    span = (high - low) or 1.0
    geometry = WATERFALL

    def px(v: float) -> float:
        return round(geometry["plot_start"] + (v - low) / span * geometry["plot_width"], 1)

    steps = []
    for row, (name, amount, start, end) in enumerate(zip(names, amounts, starts, ends)):
        x0, x1 = sorted((px(start), px(end)))
        steps.append({"label": name, "value": signed(amount), "x": x0, "width": round(max(x1 - x0, 1.0), 1),
                      "y": row * geometry["row"], "sign": "pos" if amount >= 0 else "neg"})
    x0, x1 = sorted((px(0.0), px(total)))
    total_step = {"label": "total", "value": signed(total), "x": x0, "width": round(max(x1 - x0, 1.0), 1),
                  "y": len(steps) * geometry["row"], "sign": "total"}
    return {"steps": steps, "total": total_step, "zero_x": px(0.0), "height": (len(steps) + 1) * geometry["row"] + 8,
            **geometry}


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
    called_index = calls["immune_profile"].map(index).to_numpy(dtype=int)
    contributions = profiler.contributions(X, called_index)
    now = profiler.profile_model_.predict_proba(X)
    changed = np.abs(now - calls[profile_columns(catalog)].to_numpy(dtype=float)) > PROBABILITY_TOLERANCE
    incompatible = (X[INCOMPATIBILITY_FEATURE] == 1).to_numpy() if INCOMPATIBILITY_FEATURE in X else np.zeros(len(X), bool)
    findings = find_findings(band_position(panel, catalog), calls["immune_profile"].to_numpy(dtype=object),
                             incompatible, catalog, interventions)
    ids = calls[catalog.id_column].astype(str).tolist()
    return CohortData(profiler, calls, panel, contributions, findings, patient_file_names(ids), model, rejects,
                      rejects_source, int(changed.any(axis=1).sum()), sources or {})


# -- cohort figures (matplotlib, embedded as PNG) ------------------------------------------


def _pyplot():
    """pyplot on the file-only Agg backend (a report never opens a window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig) -> str:
    """A matplotlib figure as base64 PNG text (the figure is closed)."""
    plt = _pyplot()

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def plot_probabilities(calls: pd.DataFrame, profiles: list[str]):
    """Per profile: the distribution of its probability among patients called it (top) and the rest (bottom)."""
    plt = _pyplot()

    fig, axes = plt.subplots(2, len(profiles), figsize=(12, 4.6), sharex=True, squeeze=False)
    for column, profile in enumerate(profiles):
        probability = calls[f"prob_{profile}"].to_numpy(dtype=float)
        chosen = (calls["immune_profile"] == profile).to_numpy()
        colour = PROFILE_COLOURS.get(profile, "#555555")
        top, bottom = axes[0, column], axes[1, column]
        top.hist(probability[chosen], bins=20, range=(0, 1), color=colour)
        bottom.hist(probability[~chosen], bins=20, range=(0, 1), color="#b8c0c8")
        top.set_title(f"{profile} ({int(chosen.sum()):,} called)", color=colour)
        bottom.set_xlabel(f"probability of {profile}")
    axes[0, 0].set_ylabel("patients called it")
    axes[1, 0].set_ylabel("everyone else")
    fig.tight_layout()
    return fig


def subtype_marker_table(profiler: ImmuneProfiler, panel: pd.DataFrame, subtypes: pd.Series) -> pd.DataFrame:
    """Median log (lab-normalized) marker value per subtype, in SDs from the batch median."""
    matrix = profiler.features_.marker_matrix(panel)
    spread = matrix.std().replace(0, np.nan)
    medians = matrix.groupby(subtypes.to_numpy()).median()
    return (medians - matrix.median()) / spread


def plot_subtype_heatmap(table: pd.DataFrame, sizes: pd.Series, subtype_profile: dict[str, str]):
    """Subtype-by-marker heatmap of :func:`subtype_marker_table`."""
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(12, 0.55 * len(table) + 2.6))
    image = ax.imshow(table.to_numpy(dtype=float), cmap="RdBu_r", vmin=-2, vmax=2, aspect="auto")
    ax.set_xticks(range(table.shape[1]), table.columns, rotation=50, ha="right", fontsize=8)
    labels = [f"{s} ({subtype_profile.get(s, '?')}, n={sizes.get(s, 0):,})" for s in table.index]
    ax.set_yticks(range(len(table)), labels, fontsize=9)
    for (i, j), z in np.ndenumerate(table.to_numpy(dtype=float)):
        if np.isfinite(z):
            ax.text(j, i, f"{0.0 if abs(z) < 0.05 else z:.1f}", ha="center", va="center", fontsize=7, color="white" if abs(z) > 1.3 else "black")
    fig.colorbar(image, ax=ax, fraction=0.025, pad=0.01, label="SD from batch median")
    ax.set_title("Median log marker value per subtype (standardized per marker)")
    fig.tight_layout()
    return fig


def plot_profile_shap(data: CohortData, profile: str):
    """Beeswarm of per-marker contributions toward ``profile`` for the patients called it (sampled)."""
    from rifml.evaluation import plot_shap_summary

    rows = np.flatnonzero((data.calls["immune_profile"] == profile).to_numpy())
    if len(rows) > SHAP_SAMPLE:
        rows = np.sort(np.random.default_rng(0).choice(rows, SHAP_SAMPLE, replace=False))
    contributions = data.contributions.iloc[rows].reset_index(drop=True)
    values = data.panel.iloc[rows].reset_index(drop=True)
    title = f"{profile}: what pushed {len(rows):,} patients toward it"
    return plot_shap_summary(contributions, values, title)


def lab_drift(panel: pd.DataFrame, profiler: ImmuneProfiler) -> pd.DataFrame:
    """Per lab and drifting marker: the lab's median against the batch median, and the shift learned in training.

    A marker drifts when the catalog says so or when training learned an offset for it in some lab.

    Censored cells are left out (their value is a limit, not a measurement). Differences
    are multiplicative (the assays drift by tens of percent), in percent.
    """
    features = profiler.features_
    learned_markers = {name for shifts in features.lab_shifts_.values() for name, shift in shifts.items() if shift}
    drifting = [m for m in profiler.catalog_.numeric_markers if m.drifts or m.name in learned_markers]
    if LAB_COLUMN not in panel or not drifting:
        return pd.DataFrame(columns=["lab", "marker", "n", "batch_pct", "learned_pct", "known"])
    labs = panel[LAB_COLUMN].astype(object).where(panel[LAB_COLUMN].notna(), "(no lab)").astype(str)
    rows = []
    for marker in drifting:
        values = panel[marker.name].astype(float)
        flag = censored_column(marker.name)
        if flag in panel:
            values = values.where(~panel[flag].astype(bool))
        logs = np.log(values.where(values > 0))
        overall = logs.median()
        for lab, group in logs.groupby(labs):
            learned = features.lab_shifts_.get(lab, {}).get(marker.name)
            rows.append({
                "lab": lab, "marker": marker.name, "n": int(group.notna().sum()),
                "batch_pct": 100 * np.expm1(group.median() - overall),
                "learned_pct": 100 * np.expm1(learned) if learned is not None else np.nan,
                "known": lab in features.known_labs_,
            })
    return pd.DataFrame(rows)


def plot_lab_drift(drift: pd.DataFrame):
    """Dot plot per drifting marker: each lab's median vs the batch (filled) and the training shift (open)."""
    plt = _pyplot()

    markers = list(dict.fromkeys(drift["marker"]))
    labs = sorted(set(drift["lab"]))
    fig, axes = plt.subplots(1, len(markers), figsize=(4 * len(markers), 0.35 * len(labs) + 1.6), sharey=True)
    for ax, marker in zip(np.atleast_1d(axes), markers):
        part = drift[drift["marker"] == marker].set_index("lab").reindex(labs)
        y = np.arange(len(labs))
        ax.axvline(0, color="grey", linewidth=0.8)
        ax.scatter(part["batch_pct"], y, color="#c0392b", label="this batch vs batch median", zorder=3)
        ax.scatter(part["learned_pct"], y, facecolors="none", edgecolors="#2874a6", label="shift learned in training", zorder=3)
        ax.set_yticks(y, labs)
        ax.set_ylim(-0.6, len(labs) - 0.4)
        ax.set_title(marker, fontsize=10)
        ax.set_xlabel("lab median vs overall (%)")
    handles, labels = np.atleast_1d(axes)[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


# -- rendering (jinja2) ---------------------------------------------------------------------


@lru_cache(maxsize=1)
def environment():
    """The jinja2 environment over rifml/templates (autoescaped: ids and values are never markup)."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


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
    labs = data.panel[LAB_COLUMN] if LAB_COLUMN in data.panel else pd.Series([None] * len(calls))
    adapted = _flag_column(calls, "lab_adapted") if "lab_adapted" in calls else np.zeros(len(calls), dtype=bool)
    panels = pd.to_numeric(calls["lab_adaptation_panels"], errors="coerce") if "lab_adaptation_panels" in calls else None
    for i in np.flatnonzero(_flag_column(calls, "unknown_lab")):
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
    outside = calls["out_of_range_markers"].fillna("").astype(str).tolist()
    for i in np.flatnonzero(_flag_column(calls, "outside_training_range")):
        markers = outside[i].replace(";", ", ") or "some markers"
        flags[i].append({"title": "outside training range",
                         "text": f"{markers}: outside the values the model saw in training; the call extrapolates there."})
    return flags


@dataclass(slots=True)
class MarkerRow:
    """One numeric marker on a patient page (attributes, not a dict: jinja reads them fastest)."""

    name: str
    description: str
    track: str
    reference: str
    value: str
    word: str
    position: str
    left: float | None
    contribution: str


def _marker_rows(i: int, bands: list[MarkerBand], compartment: str, values: dict, contribution: np.ndarray) -> list[MarkerRow]:
    rows = []
    for band in bands:
        marker = band.marker
        if marker.compartment != compartment:
            continue
        j = values["column"][marker.name]
        fraction = values["fraction"][i, j]
        measured = not np.isnan(values["numbers"][i, j])
        word = values["position"][i, j]
        # out of band in a direction the catalog calls no concern (high FOXP3, any IL-10) is shown muted
        position = word if word not in values["harmless"][marker.name] else "harmless"
        if measured and values["censored"][i, j]:
            position += " censored"
        if measured and not 0 <= fraction <= 1:
            position += " beyond-right" if fraction > 1 else " beyond-left"
        left = round(float(np.clip(fraction, 0, 1)) * TRACK_PX + TRACK_PAD - DOT_PX / 2, 1) if measured else None
        rows.append(MarkerRow(marker.name, marker.description, values["tracks"][marker.name], band.reference,
                              values["text"][i][j], word, position, left,
                              signed(contribution[values["shap_column"][marker.name]])))
    return rows


def _context(data: CohortData, i: int, bands: list[MarkerBand], values: dict, flags: list[list[dict]],
             subtype_profile: dict[str, str]) -> dict:
    """The template data of patient page ``i``."""
    catalog = data.profiler.catalog_
    calls = values["calls"]
    profile = calls["immune_profile"][i]
    probabilities = [{"profile": p, "pct": 100 * values["proba"][i, j], "called": p == profile,
                      "colour": PROFILE_COLOURS.get(p, "#555")} for j, p in enumerate(catalog.profiles)]
    contribution = values["contributions"][i]
    sections = []
    for compartment in catalog.compartments:
        categories = [{"name": m.name, "description": m.description,
                       "value": values["categorical"][m.name][i] or "not measured",
                       "contribution": signed(contribution[values["shap_column"][m.name]])}
                      for m in catalog.categorical_markers if m.compartment == compartment]
        sections.append({"name": compartment, "rows": _marker_rows(i, bands, compartment, values, contribution),
                         "categories": categories})
    findings = [{"finding": hit.finding.finding, "treatments": hit.finding.treatments,
                 "evidence": [label for label, on in zip(hit.evidence, hit.hits[i]) if on]}
                for hit in data.findings if hit.applies[i]]
    return {
        "id": calls[catalog.id_column][i], "file": data.files[i], "position": i + 1,
        "previous": data.files[i - 1] if i > 0 else None,
        "next": data.files[i + 1] if i + 1 < len(data.files) else None,
        "profile": profile, "colour": PROFILE_COLOURS.get(profile, "#555"),
        "probability": 100 * values["proba"][i, catalog.profiles.index(profile)],
        "probabilities": probabilities, "subtype": calls["subtype"][i],
        "subtype_profile": subtype_profile.get(calls["subtype"][i], ""),
        "compartments": calls["compartments"][i],
        "details": [(name, column[i]) for name, column in values["context"].items() if column[i]],
        "flags": flags[i], "waterfall": waterfall(contribution, values["shap_labels"][i]),
        "sections": sections, "findings": findings,
    }


def _columns(data: CohortData, bands: list[MarkerBand]) -> dict:
    """Column arrays (numpy / lists) so that building each page does no pandas work."""
    catalog = data.profiler.catalog_
    panel, calls = data.panel, data.calls
    names = [b.marker.name for b in bands]
    numbers = panel.reindex(columns=names).to_numpy(dtype=float)
    censored = np.column_stack([panel[censored_column(n)].fillna(False).to_numpy(dtype=bool)
                                if censored_column(n) in panel else np.zeros(len(panel), bool) for n in names])
    fraction = np.column_stack([b.axis.fraction(numbers[:, j]) for j, b in enumerate(bands)])
    text = [[format_value(v, c) for v, c in zip(row, flags)] for row, flags in zip(numbers.tolist(), censored.tolist())]
    positions = band_position(panel, catalog).reindex(columns=names).to_numpy()
    words = {-1.0: "below", 0.0: "within", 1.0: "above"}
    position = np.vectorize(lambda p: words.get(p, "missing"), otypes=[object])(positions)
    shap_names = list(data.contributions.columns)
    measured = {m.name: panel[m.name].notna().to_numpy() if m.name in panel else np.zeros(len(panel), bool)
                for m in catalog.markers}
    shap_labels = [
        [("missing compartment" if n == COVERAGE else n if measured[n][i] else f"{n} (not measured)") for n in shap_names]
        for i in range(len(panel))
    ]
    context = {c.name.replace("_", " "): [_context_text(v) for v in panel[c.name].tolist()]
               for c in catalog.context if c.name in panel}
    return {
        "calls": {c: calls[c].tolist() for c in [catalog.id_column, "immune_profile", "subtype", "compartments"]},
        "proba": calls[profile_columns(catalog)].to_numpy(dtype=float),
        "contributions": data.contributions.to_numpy(dtype=float),
        "shap_column": {n: j for j, n in enumerate(shap_names)}, "shap_labels": shap_labels,
        "column": {n: j for j, n in enumerate(names)}, "numbers": numbers, "censored": censored,
        "fraction": fraction, "text": text, "position": position, "context": context,
        "harmless": {b.marker.name: _harmless_sides(b.marker) for b in bands},
        "categorical": {m.name: panel[m.name].astype(object).where(panel[m.name].notna(), None).tolist()
                        if m.name in panel else [None] * len(panel) for m in catalog.categorical_markers},
    }


def _context_text(value) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _harmless_sides(marker: Marker) -> set[str]:
    """Sides of the band that the catalog does not call a concern for this marker."""
    concerning = {"high": {"above"}, "low": {"below"}, "both": {"above", "below"}}.get(marker.concern, set())
    return {"above", "below"} - concerning


def _shared(data: CohortData, interventions: Interventions, generated: str) -> dict:
    card = data.model
    label = f"{card.registered_name} version {card.version}" if card.registered_name else card.uri
    return {"research_use": RESEARCH_USE, "caveat": interventions.caveat, "source": interventions.source,
            "generated": generated, "model_label": label, "rifml_version": __version__}


def render_patient_pages(data: CohortData, interventions: Interventions, generated: str) -> Iterator[tuple[str, str]]:
    """(file name, HTML) of every patient page, in calls order."""
    template = environment().get_template("patient.html")
    bands = marker_bands(data.profiler)
    columns = _columns(data, bands)
    # the band, axis and ticks of a marker are the same on every page: drawn once, pasted in
    track = environment().get_template("_track.html").module.track
    columns["tracks"] = {band.marker.name: track(band, TRACK_PX, TRACK_PAD) for band in bands}
    flags = patient_flags(data)
    subtype_profile = dict(zip(data.profiler.subtype_table_["subtype"], data.profiler.subtype_table_["profile"]))
    shared = _shared(data, interventions, generated)
    for i in range(len(data.calls)):
        page = _context(data, i, bands, columns, flags, subtype_profile)
        yield page["file"], template.render(shared=shared, p=page)


def _counts(values: pd.Series, order: list[str] | None = None) -> list[dict]:
    counts = values.value_counts()
    keys = [k for k in order if k in counts.index] if order else list(counts.index)
    total = max(int(counts.sum()), 1)
    return [{"name": k, "n": int(counts[k]), "pct": 100 * counts[k] / total} for k in keys]


def _model_section(data: CohortData) -> dict:
    card = data.model
    profiler = data.profiler
    metrics = [(label, card.metrics[key]) for key, label in KEY_METRICS.items() if key in card.metrics]
    trained_on = card.metrics.get("n_panels")
    return {
        "card": card, "metrics": metrics, "all_metrics": sorted(card.metrics.items()),
        "supervised": profiler.supervised_,
        "panels": int(trained_on) if trained_on is not None else None,
        "training_rows": len(profiler.training_labels_),
        "training_labels": _counts(pd.Series(profiler.training_labels_), list(profiler.catalog_.profiles)),
        "subtypes": profiler.subtype_table_.reindex(columns=["subtype", "profile", "size", "evidence", "reference"]).to_dict("records"),
        "min_effect": profiler.min_effect,
        "labs": profiler.features_.known_labs_,
    }


def render_index(data: CohortData, interventions: Interventions, generated: str) -> str:
    """The cohort page: counts, cohort plots, drift, rejects, the model, and the patient table."""
    catalog = data.profiler.catalog_
    calls = data.calls
    profiles = list(catalog.profiles)
    subtype_profile = dict(zip(data.profiler.subtype_table_["subtype"], data.profiler.subtype_table_["profile"]))
    figures = {"probabilities": figure_png(plot_probabilities(calls, profiles))}
    heat = subtype_marker_table(data.profiler, data.panel, calls["subtype"])
    figures["subtypes"] = figure_png(plot_subtype_heatmap(heat, calls["subtype"].value_counts(), subtype_profile))
    shap = [{"profile": p, "png": figure_png(plot_profile_shap(data, p))}
            for p in profiles if (calls["immune_profile"] == p).any()]
    drift = lab_drift(data.panel, data.profiler)
    if len(drift):
        figures["drift"] = figure_png(plot_lab_drift(drift))
    flags = patient_flags(data)
    patients = [{"file": f, "id": pid, "profile": prof, "colour": PROFILE_COLOURS.get(prof, "#555"),
                 "probability": 100 * prob, "subtype": sub, "compartments": comp, "driver": drv,
                 "flags": ", ".join(flag["title"] for flag in fl)}
                for f, pid, prof, prob, sub, comp, drv, fl in zip(
                    data.files, calls[catalog.id_column], calls["immune_profile"],
                    calls[profile_columns(catalog)].max(axis=1), calls["subtype"], calls["compartments"],
                    calls["driver_1"].fillna(""), flags)]
    flag_counts = Counter(flag["title"] for fl in flags for flag in fl)
    findings = [{"finding": h.finding.finding, "treatments": h.finding.treatments, "profiles": h.finding.profiles,
                 "n": int(h.applies.sum())} for h in data.findings]
    # dropna=False: a marker no lab of this batch has a learned shift for keeps its (empty) column
    drift_table = (drift.pivot_table(index=["lab", "known"], columns="marker", values=["n", "batch_pct", "learned_pct"],
                                     aggfunc="first", dropna=False) if len(drift) else None)
    context = {
        "shared": _shared(data, interventions, generated), "n": len(calls), "sources": data.sources,
        "profiles": _counts(calls["immune_profile"], profiles), "colours": PROFILE_COLOURS,
        "subtypes": [dict(row, profile=subtype_profile.get(row["name"], "")) for row in _counts(calls["subtype"])],
        "figures": figures, "shap": shap, "drift": _drift_rows(drift_table),
        "drifting": list(dict.fromkeys(drift["marker"])) if len(drift) else [],
        "rejects": [{"reason": r, "n": c} for r, c in data.rejects.most_common()],
        "rejects_total": sum(data.rejects.values()), "rejects_source": data.rejects_source,
        "flag_counts": sorted(flag_counts.items()), "findings": findings, "model": _model_section(data),
        "changed_calls": data.changed_calls, "patients": patients,
    }
    return environment().get_template("index.html").render(**context)


def _drift_rows(table: pd.DataFrame | None) -> list[dict]:
    if table is None:
        return []
    markers = list(dict.fromkeys(table.columns.get_level_values(1)))
    rows = []
    for (lab, known), row in table.iterrows():
        cells = [{"batch": row[("batch_pct", m)], "learned": row[("learned_pct", m)], "n": row[("n", m)]} for m in markers]
        rows.append({"lab": lab, "known": bool(known), "cells": cells})
    return rows


# -- edges: files and MLflow -----------------------------------------------------------------


def read_calls(path: Path, catalog: Catalog) -> pd.DataFrame:
    """A calls file from ``rifml score``; ids kept as text exactly (an id "NA" stays "NA")."""
    try:
        calls = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise RifmlInputError(f"{path}: cannot read the calls file ({exc})") from exc
    if calls.empty:
        raise RifmlInputError(f"{path}: no calls to report (were all rows rejected?)")
    calls = _restored(calls)
    missing = [c for c in calls_columns(catalog) if c not in calls.columns]
    if missing:
        raise RifmlInputError(f"{path}: not a rifml calls file (missing columns: {', '.join(missing[:6])})")
    bad = ~calls["immune_profile"].isin(catalog.profiles)
    if bad.any():
        raise RifmlInputError(
            f"{path}: line {_line(bad)}: immune_profile {calls['immune_profile'][bad].iloc[0]!r} is not a profile"
        )
    duplicated = calls[catalog.id_column].duplicated()
    if duplicated.any():
        raise RifmlInputError(f"{path}: patient_id {calls[catalog.id_column][duplicated].iloc[0]!r} appears twice")
    numeric = [*profile_columns(catalog), *[c for c in calls.columns if c.endswith("_contribution")]]
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
                f"{path}: line {row + 2} (patient_id {calls[catalog.id_column].iloc[row]!r}): {what} ({values});"
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
        reasons.update(chunk.rejects["reason"])
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
    try:
        rejects = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise RifmlInputError(f"{path}: cannot read the rejects file ({exc})") from exc
    if "reason" not in rejects:
        raise RifmlInputError(f"{path}: not a rifml rejects file (no reason column)")
    return Counter(rejects["reason"].tolist())


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
