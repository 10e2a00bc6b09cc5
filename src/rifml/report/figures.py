"""The cohort page's figures, embedded as base64 PNG; drawn by :mod:`rifml.plots`, chosen and sampled here."""

from __future__ import annotations

import base64

import numpy as np
import pandas as pd

from rifml.contract import SUBTYPE
from rifml.plots import figure_png_bytes, plot_lab_drift, plot_probabilities, plot_shap_summary, plot_subtype_heatmap
from rifml.report.cohort import CohortData, subtype_marker_table

SHAP_SAMPLE = 3000  # per profile: a beeswarm of more points shows nothing new and plots slowly


def figure_png(fig) -> str:
    """A matplotlib figure as base64 PNG text."""
    return base64.b64encode(figure_png_bytes(fig)).decode("ascii")


def plot_profile_shap(data: CohortData, profile: str):
    """Beeswarm of per-marker contributions toward ``profile`` for the patients called it (sampled)."""
    rows = np.flatnonzero((data.calls[data.profiler.catalog_.label_column] == profile).to_numpy())
    if len(rows) > SHAP_SAMPLE:
        rows = np.sort(np.random.default_rng(0).choice(rows, SHAP_SAMPLE, replace=False))
    contributions = data.contributions.iloc[rows].reset_index(drop=True)
    values = data.panel.iloc[rows].reset_index(drop=True)
    title = f"{profile}: what pushed {len(rows):,} patients toward it"
    return plot_shap_summary(contributions, values, title)


def cohort_figures(data: CohortData, drift: pd.DataFrame, subtype_profile: dict[str, str]) -> tuple[dict[str, str], list[dict]]:
    """The cohort page's figures as base64 PNG: probabilities, subtype heatmap, lab drift (when some
    lab drifts), and one SHAP beeswarm per profile that was called."""
    calls = data.calls
    catalog = data.profiler.catalog_
    profiles = list(catalog.profiles)
    figures = {"probabilities": figure_png(plot_probabilities(calls, profiles, catalog.label_column))}
    heat = subtype_marker_table(data.profiler, data.panel, calls[SUBTYPE])
    figures["subtypes"] = figure_png(plot_subtype_heatmap(heat, calls[SUBTYPE].value_counts(), subtype_profile))
    shap = [{"profile": p, "png": figure_png(plot_profile_shap(data, p))}
            for p in profiles if (calls[catalog.label_column] == p).any()]
    if len(drift):
        figures["drift"] = figure_png(plot_lab_drift(drift))
    return figures, shap
