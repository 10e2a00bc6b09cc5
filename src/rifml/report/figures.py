"""Cohort figures of the report: matplotlib figures embedded in the cohort page as base64 PNG."""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd

from rifml.report.cohort import CohortData, subtype_marker_table

PROFILE_COLOURS = {"balanced": "#3d8c5c", "hyperactive": "#c0392b", "hypoactive": "#2874a6", "mixed": "#7d5ba6"}

SHAP_SAMPLE = 3000  # per profile: a beeswarm of more points shows nothing new and plots slowly


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


def cohort_figures(data: CohortData, drift: pd.DataFrame, subtype_profile: dict[str, str]) -> tuple[dict[str, str], list[dict]]:
    """The cohort page's figures as base64 PNG: probabilities, subtype heatmap, lab drift (when some
    lab drifts), and one SHAP beeswarm per profile that was called."""
    calls = data.calls
    profiles = list(data.profiler.catalog_.profiles)
    figures = {"probabilities": figure_png(plot_probabilities(calls, profiles))}
    heat = subtype_marker_table(data.profiler, data.panel, calls["subtype"])
    figures["subtypes"] = figure_png(plot_subtype_heatmap(heat, calls["subtype"].value_counts(), subtype_profile))
    shap = [{"profile": p, "png": figure_png(plot_profile_shap(data, p))}
            for p in profiles if (calls["immune_profile"] == p).any()]
    if len(drift):
        figures["drift"] = figure_png(plot_lab_drift(drift))
    return figures, shap
