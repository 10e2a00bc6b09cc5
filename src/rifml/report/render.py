"""Jinja rendering of the cohort page and the patient pages from :class:`rifml.report.cohort.CohortData`.

Everything a page shows is computed before (cohort, geometry); the templates under
``rifml/templates`` only lay it out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from rifml import __version__
from rifml.contract import COMPARTMENTS, SUBTYPE, censored_column, driver_columns, profile_columns
from rifml.catalog import Marker
from rifml.explain import COVERAGE
from rifml.features import band_position
from rifml.plots import PROFILE_COLOURS
from rifml.report.cohort import CohortData, lab_drift, patient_flags
from rifml.report.figures import cohort_figures
from rifml.report.geometry import DOT_PX, TRACK_PAD, TRACK_PX, MarkerBand, format_value, marker_bands, signed, waterfall
from rifml.report.interventions import Interventions

RESEARCH_USE = (
    "Research use only. rifml sorts panels into immune profiles and shows why. It is not a diagnostic "
    "device, makes no treatment recommendation, and its calls have not been clinically validated."
)
KEY_METRICS = {
    "cv_macro_f1": "macro-F1 (cross-validated)",
    "cv_balanced_accuracy": "balanced accuracy (cross-validated)",
    "cv_ece": "expected calibration error (cross-validated)",
    "cv_complete_macro_f1": "macro-F1, complete panels only",
    "rule_macro_f1": "macro-F1 of the literature rule baseline",
    "subtype_stability": "subtype stability (consensus clustering)",
    "subtype_coherence": "calls whose subtype belongs to the called profile",
}
TEMPLATES = Path(__file__).parent.parent / "templates"


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


@dataclass(slots=True)
class PatientPage:
    """The template values of one patient page (patient.html reads them as ``p``)."""

    id: str
    file: str
    position: int
    previous: str | None
    next: str | None
    profile: str
    colour: str
    probability: float
    probabilities: list[dict]
    subtype: str
    subtype_profile: str
    compartments: str
    details: list[tuple[str, str]]
    flags: list[dict]
    waterfall: dict
    sections: list[dict]
    findings: list[dict]


def _context(data: CohortData, i: int, bands: list[MarkerBand], values: dict, flags: list[list[dict]],
             subtype_profile: dict[str, str]) -> PatientPage:
    """The template data of patient page ``i``."""
    catalog = data.profiler.catalog_
    calls = values["calls"]
    profile = calls[catalog.label_column][i]
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
    return PatientPage(
        id=calls[catalog.id_column][i], file=data.files[i], position=i + 1,
        previous=data.files[i - 1] if i > 0 else None,
        next=data.files[i + 1] if i + 1 < len(data.files) else None,
        profile=profile, colour=PROFILE_COLOURS.get(profile, "#555"),
        probability=100 * values["proba"][i, catalog.profiles.index(profile)],
        probabilities=probabilities, subtype=calls[SUBTYPE][i],
        subtype_profile=subtype_profile.get(calls[SUBTYPE][i], ""),
        compartments=calls[COMPARTMENTS][i],
        details=[(name, column[i]) for name, column in values["context"].items() if column[i]],
        flags=flags[i], waterfall=waterfall(contribution, values["shap_labels"][i]),
        sections=sections, findings=findings,
    )


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
        "calls": {c: calls[c].tolist() for c in [catalog.id_column, catalog.label_column, SUBTYPE, COMPARTMENTS]},
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


@dataclass(frozen=True)
class PageHeader:
    """What every page shows around its content: the research-use line, the evidence caveat, the model."""

    research_use: str
    caveat: str
    source: str
    generated: str
    model_label: str
    rifml_version: str


def _shared(data: CohortData, interventions: Interventions, generated: str) -> PageHeader:
    card = data.model
    label = f"{card.registered_name} version {card.version}" if card.registered_name else card.uri
    return PageHeader(RESEARCH_USE, interventions.caveat, interventions.source, generated, label, __version__)


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
        yield page.file, template.render(shared=shared, p=page)


def _counts(values: pd.Series, order: list[str] | None = None) -> list[dict]:
    """Patients per value, most first; with ``order`` (the catalog's profiles) every one of them, n = 0 included:
    a profile nobody was called is a finding, not a row to leave out."""
    counts = values.value_counts()
    keys = list(order) if order else list(counts.index)
    total = max(int(counts.sum()), 1)
    return [{"name": k, "n": int(counts.get(k, 0)), "pct": 100 * counts.get(k, 0) / total} for k in keys]


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


@dataclass
class IndexPage:
    """The cohort page's template values (index.html), one field per section of the page."""

    shared: PageHeader
    n: int
    sources: dict[str, str]
    profiles: list[dict]
    colours: dict[str, str]
    subtypes: list[dict]
    figures: dict[str, str]
    shap: list[dict]
    drift: list[dict]
    drifting: list[str]
    lab_column: str | None
    rejects: list[dict]
    rejects_total: int
    rejects_source: str
    flag_counts: list[tuple[str, int]]
    findings: list[dict]
    model: dict
    changed_calls: int
    patients: list[dict]


def render_index(data: CohortData, interventions: Interventions, generated: str) -> str:
    """The cohort page: counts, cohort plots, drift, rejects, the model, and the patient table."""
    catalog = data.profiler.catalog_
    calls = data.calls
    profiles = list(catalog.profiles)
    subtype_profile = dict(zip(data.profiler.subtype_table_["subtype"], data.profiler.subtype_table_["profile"]))
    drift = lab_drift(data.panel, data.profiler)
    figures, shap = cohort_figures(data, drift, subtype_profile)
    flags = patient_flags(data)
    patients = [{"file": f, "id": pid, "profile": prof, "colour": PROFILE_COLOURS.get(prof, "#555"),
                 "probability": 100 * prob, "subtype": sub, "compartments": comp, "driver": drv,
                 "flags": ", ".join(flag["title"] for flag in fl)}
                for f, pid, prof, prob, sub, comp, drv, fl in zip(
                    data.files, calls[catalog.id_column], calls[catalog.label_column],
                    calls[profile_columns(catalog)].max(axis=1), calls[SUBTYPE], calls[COMPARTMENTS],
                    calls[driver_columns(1)[0]].fillna(""), flags)]
    flag_counts = Counter(flag["title"] for fl in flags for flag in fl)
    findings = [{"finding": h.finding.finding, "treatments": h.finding.treatments, "profiles": h.finding.profiles,
                 "n": int(h.applies.sum())} for h in data.findings]
    drifting, drift_rows = drift_table(drift)
    page = IndexPage(
        shared=_shared(data, interventions, generated), n=len(calls), sources=data.sources,
        profiles=_counts(calls[catalog.label_column], profiles), colours=PROFILE_COLOURS,
        subtypes=[dict(row, profile=subtype_profile.get(row["name"], "")) for row in _counts(calls[SUBTYPE])],
        figures=figures, shap=shap, drift=drift_rows, drifting=drifting, lab_column=catalog.lab_column,
        rejects=[{"reason": r, "n": c} for r, c in data.rejects.most_common()],
        rejects_total=sum(data.rejects.values()), rejects_source=data.rejects_source,
        flag_counts=sorted(flag_counts.items()), findings=findings, model=_model_section(data),
        changed_calls=data.changed_calls, patients=patients,
    )
    # index.html reads the fields as top-level names
    return environment().get_template("index.html").render(**vars(page))


def drift_table(drift: pd.DataFrame) -> tuple[list[str], list[dict]]:
    """The cohort page's drift table: its markers (the header, in :func:`lab_drift`'s catalog order) and one
    row per lab (by name) whose cells follow that header.

    Cells are looked up by marker name, since a pivot's columns are sorted by name, not in the header's order;
    and a lab is one row: ``known`` is the lab's, not a second index (a pivot over (lab, known) would pair
    every lab with both answers as soon as one lab is unknown).
    """
    if not len(drift):
        return [], []
    markers = list(dict.fromkeys(drift["marker"]))
    table = drift.pivot(index="lab", columns="marker", values=["n", "batch_pct", "learned_pct"])
    known = drift.groupby("lab")["known"].first()
    rows = []
    for lab, row in table.iterrows():
        cells = [{"batch": row[("batch_pct", m)], "learned": row[("learned_pct", m)], "n": row[("n", m)]} for m in markers]
        rows.append({"lab": lab, "known": bool(known[lab]), "cells": cells})
    return markers, rows
