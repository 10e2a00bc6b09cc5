"""Every figure rifml draws: training (MLflow artifacts), subtypes, and the cohort report.

One idiom for all of them, so a figure looks the same in MLflow, in the report and in a
notebook:

* each ``plot_*`` function takes data (arrays, frames or a fitted model) and returns a bare
  ``matplotlib.figure.Figure`` on an Agg canvas: no pyplot, so no backend is chosen at import,
  no global figure list to close, and scoring (which never plots) never imports matplotlib;
* figures are created by :func:`new_figure` (constrained layout) and drawn inside :data:`STYLE`
  (one set of font sizes, :func:`styled`);
* a function that draws on one axes takes ``ax=None``: given an axes, it draws there (a panel
  of a larger figure, a notebook's own layout) and returns that axes' figure.

Pure: nothing here writes a file; callers save or log the figures.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

# Light at import (numpy, pandas): outcomes and the report import this module without the
# model stack; matplotlib, scikit-learn and the subtypes module load when a figure is drawn.
if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from rifml.subtypes import ConsensusClustering

STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "figure.dpi": 100,
}
PROFILE_COLOURS = {"balanced": "#3d8c5c", "hyperactive": "#c0392b", "hypoactive": "#2874a6", "mixed": "#7d5ba6"}
OTHER_COLOUR = "#555555"


def new_figure(width: float, height: float) -> Figure:
    """A bare Figure of ``width`` x ``height`` inches on an Agg canvas, with constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def figure_png_bytes(figure: Figure, dpi: int = 100) -> bytes:
    """A figure as PNG bytes, cropped to what is drawn (for a page that embeds or links it)."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def figure_and_axes(ax: Axes | None, width: float, height: float) -> tuple[Figure, Axes]:
    """The figure and axes to draw on: ``ax`` and its figure when given, else a new figure's one axes."""
    if ax is not None:
        return ax.figure, ax
    figure = new_figure(width, height)
    return figure, figure.add_subplot()


def styled(draw):
    """Run a ``plot_*`` function inside :data:`STYLE`, and give its axes the style's tick sizes.

    Tick labels are made lazily at the first draw, which happens later (in MLflow, the
    report, a notebook), outside the style: their sizes are set on the axes explicitly, so a
    figure looks the same wherever it is saved. On a given ``ax``, the host figure's other
    axes are left as they are.
    """

    @functools.wraps(draw)
    def wrapper(*args, **kwargs) -> Figure:
        import matplotlib

        host = kwargs.get("ax")
        others = set(host.figure.axes) - {host} if host is not None else set()
        with matplotlib.rc_context(STYLE):
            figure = draw(*args, **kwargs)
        for ax in figure.axes:
            if ax not in others:
                ax.tick_params(axis="x", labelsize=STYLE["xtick.labelsize"])
                ax.tick_params(axis="y", labelsize=STYLE["ytick.labelsize"])
        return figure

    return wrapper


# -- training (logged with the MLflow run) ---------------------------------------------------


@styled
def plot_confusion(truth: np.ndarray, called: np.ndarray, classes: list[str], title: str, ax: Axes | None = None) -> Figure:
    """Confusion matrix of the calls against the labels, counts written in the cells."""
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(truth, called, labels=classes)
    fig, ax = figure_and_axes(ax, 5.2, 4.4)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("called")
    ax.set_ylabel("label")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set_title(title)
    return fig


@styled
def plot_calibration(truth: np.ndarray, proba: np.ndarray, classes: list[str], bins: int = 10, ax: Axes | None = None) -> Figure:
    """Reliability of the called class's probability (cross-validated), binned as ECE is."""
    from rifml.evaluation import calibration_bins

    correct = np.asarray(classes, dtype=object)[proba.argmax(axis=1)] == np.asarray(truth, dtype=object)
    table = calibration_bins(proba, correct, bins)
    xs, ys, ns = table["confidence"], table["accuracy"], table["n"]
    fig, ax = figure_and_axes(ax, 4.8, 4.4)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    ax.plot(xs, ys, marker="o", label="rifml (cross-validated)")
    for x, y, n in zip(xs, ys, ns):
        ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlabel("probability of the called profile")
    ax.set_ylabel("share of calls that were right")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="upper left")
    ax.set_title("Calibration")
    return fig


@styled
def plot_shap_summary(contributions: pd.DataFrame, values: pd.DataFrame, title: str, ax: Axes | None = None) -> Figure:
    """Beeswarm-style summary: per marker, each patient's contribution toward the called profile,
    coloured by the marker's value rank (blue low, red high); markers ordered by mean |contribution|."""
    markers = [m for m in contributions.columns if m in values.columns]
    order = contributions[markers].abs().mean().sort_values().index.tolist()
    fig, ax = figure_and_axes(ax, 7, 0.32 * len(order) + 1.5)
    rng = np.random.default_rng(0)
    for row, marker in enumerate(order):
        x = contributions[marker].to_numpy()
        raw = pd.to_numeric(values[marker], errors="coerce") if values[marker].dtype != object else values[marker].astype("category").cat.codes.replace(-1, np.nan)
        colour = pd.Series(raw).rank(pct=True).to_numpy()
        jitter = rng.uniform(-0.3, 0.3, len(x))
        measured = ~np.isnan(colour)
        ax.scatter(x[~measured], row + jitter[~measured], s=4, color="lightgrey", alpha=0.5)
        ax.scatter(x[measured], row + jitter[measured], s=4, c=colour[measured], cmap="coolwarm", alpha=0.7, vmin=0, vmax=1)
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_yticks(range(len(order)), order)
    ax.set_xlabel("contribution toward the called profile (SHAP, log-odds; grey = not measured)")
    ax.set_title(title)
    return fig


# -- subtypes (consensus clustering) ---------------------------------------------------------


@styled
def plot_consensus(model: ConsensusClustering, ax: Axes | None = None) -> Figure:
    """Heatmap of the chosen consensus matrix, rows and columns ordered by cluster.

    Within a cluster, rows are sorted by their mean consensus with the rest of
    their cluster, so a clean block shows as solid and doubtful rows sit at its edge.

    Parameters
    ----------
    model : fitted ConsensusClustering
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(model, "consensus_")
    labels = model.labels_[model.consensus_items_]
    consensus = model.consensus_
    own = np.array([consensus[i, labels == labels[i]].mean() for i in range(len(labels))])
    order = np.lexsort((-own, labels))
    fig, ax = figure_and_axes(ax, 6.0, 5.2)
    image = ax.imshow(consensus[np.ix_(order, order)], cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    edges = np.cumsum(np.bincount(labels, minlength=model.k_))[:-1] - 0.5
    for edge in edges:
        ax.axhline(edge, color="black", linewidth=0.6)
        ax.axvline(edge, color="black", linewidth=0.6)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("patients, ordered by cluster")
    ax.set_ylabel("patients, ordered by cluster")
    ax.set_title(
        f"Consensus matrix, k = {model.k_} (PAC {model.pac_[model.k_]:.3f}, stability {model.stability_:.2f})"
    )
    fig.colorbar(image, ax=ax, label="fraction of resamples clustered together")
    return fig


@styled
def plot_k_selection(model: ConsensusClustering) -> Figure:
    """PAC per k and the consensus CDF curves, with the chosen k marked.

    Parameters
    ----------
    model : fitted ConsensusClustering

    Returns
    -------
    matplotlib.figure.Figure
    """
    from sklearn.utils.validation import check_is_fitted

    from rifml.subtypes import PAC_WINDOW

    check_is_fitted(model, "pac_")
    ks = sorted(model.pac_)
    fig = new_figure(10.0, 4.0)
    ax_pac, ax_cdf = fig.subplots(1, 2)

    ax_pac.plot(ks, [model.pac_[k] for k in ks], marker="o", color="tab:blue")
    ax_pac.plot([model.k_], [model.pac_[model.k_]], marker="o", markersize=12, color="tab:red",
                linestyle="none", label=f"chosen k = {model.k_}")
    best = min(model.pac_.values())
    ax_pac.axhspan(best, best + model.pac_tolerance, color="tab:red", alpha=0.1, label="tolerance band")
    ax_pac.set_xticks(ks)
    ax_pac.set_xlabel("k (number of clusters)")
    ax_pac.set_ylabel(f"PAC (share of pairs with consensus in {PAC_WINDOW})")
    ax_pac.set_title("Proportion of ambiguous clustering")
    ax_pac.legend()

    colors = [f"C{i % 10}" for i in range(len(ks))]
    for k, color in zip(ks, colors):
        x, y = model.cdf_[k]
        chosen = k == model.k_
        ax_cdf.step(x, y, where="post", color=color, linewidth=2.5 if chosen else 1.0,
                    label=f"k = {k}" + (" (chosen)" if chosen else ""))
    for edge in PAC_WINDOW:
        ax_cdf.axvline(edge, color="grey", linestyle=":", linewidth=0.8)
    ax_cdf.set_xlabel("consensus value")
    ax_cdf.set_ylabel("CDF")
    ax_cdf.set_title("Consensus CDF")
    ax_cdf.legend(fontsize="small")
    return fig


# -- the cohort report -------------------------------------------------------------------------


@styled
def plot_probabilities(calls: pd.DataFrame, profiles: list[str], profile_column: str) -> Figure:
    """Per profile: the distribution of its probability among patients called it (top) and the rest (bottom).

    ``calls`` holds the called profile in ``profile_column`` (the catalog's label column).
    """
    from rifml.contract import probability_column

    fig = new_figure(12, 4.6)
    axes = fig.subplots(2, len(profiles), sharex=True, squeeze=False)
    for column, profile in enumerate(profiles):
        probability = calls[probability_column(profile)].to_numpy(dtype=float)
        chosen = (calls[profile_column] == profile).to_numpy()
        colour = PROFILE_COLOURS.get(profile, OTHER_COLOUR)
        top, bottom = axes[0, column], axes[1, column]
        top.hist(probability[chosen], bins=20, range=(0, 1), color=colour)
        bottom.hist(probability[~chosen], bins=20, range=(0, 1), color="#b8c0c8")
        top.set_title(f"{profile} ({int(chosen.sum()):,} called)", color=colour)
        bottom.set_xlabel(f"probability of {profile}")
    axes[0, 0].set_ylabel("patients called it")
    axes[1, 0].set_ylabel("everyone else")
    return fig


@styled
def plot_subtype_heatmap(table: pd.DataFrame, sizes: pd.Series, subtype_profile: dict[str, str], ax: Axes | None = None) -> Figure:
    """Subtype-by-marker heatmap of median standardized marker values (:func:`rifml.report.cohort.subtype_marker_table`)."""
    fig, ax = figure_and_axes(ax, 12, 0.55 * len(table) + 2.6)
    image = ax.imshow(table.to_numpy(dtype=float), cmap="RdBu_r", vmin=-2, vmax=2, aspect="auto")
    ax.set_xticks(range(table.shape[1]), table.columns, rotation=50, ha="right")
    labels = [f"{s} ({subtype_profile.get(s, '?')}, n={sizes.get(s, 0):,})" for s in table.index]
    ax.set_yticks(range(len(table)), labels)
    for (i, j), z in np.ndenumerate(table.to_numpy(dtype=float)):
        if np.isfinite(z):
            ax.text(j, i, f"{0.0 if abs(z) < 0.05 else z:.1f}", ha="center", va="center", fontsize=7, color="white" if abs(z) > 1.3 else "black")
    fig.colorbar(image, ax=ax, fraction=0.025, pad=0.01, label="SD from batch median")
    ax.set_title("Median log marker value per subtype (standardized per marker)")
    return fig


@styled
def plot_lab_drift(drift: pd.DataFrame) -> Figure:
    """Dot plot per drifting marker: each lab's median vs the batch (filled) and the training shift (open).

    ``drift`` has the columns of :func:`rifml.report.cohort.lab_drift` (lab, marker, batch_pct, learned_pct).
    """
    markers = list(dict.fromkeys(drift["marker"]))
    labs = sorted(set(drift["lab"]))
    fig = new_figure(4 * len(markers), 0.35 * len(labs) + 1.6)
    axes = fig.subplots(1, len(markers), sharey=True, squeeze=False)[0]
    for ax, marker in zip(axes, markers):
        part = drift[drift["marker"] == marker].set_index("lab").reindex(labs)
        y = np.arange(len(labs))
        ax.axvline(0, color="grey", linewidth=0.8)
        ax.scatter(part["batch_pct"], y, color="#c0392b", label="this batch vs batch median", zorder=3)
        ax.scatter(part["learned_pct"], y, facecolors="none", edgecolors="#2874a6", label="shift learned in training", zorder=3)
        ax.set_yticks(y, labs)
        ax.set_ylim(-0.6, len(labs) - 0.4)
        ax.set_title(marker)
        ax.set_xlabel("lab median vs overall (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2, frameon=False)
    return fig


# -- outcomes (rifml outcomes: DIR/index.html) ---------------------------------------------------

NO_EFFECT = 1.0  # odds ratio of no treatment effect


@styled
def plot_forest(effects: pd.DataFrame, level: str, ax: Axes | None = None) -> Figure:
    """Adjusted ORs (filled, with 95% CI bars) and crude ORs (hollow) per group x treatment, log scale.

    ``effects`` holds the estimable rows of one level of :data:`rifml.outcomes.contract.EFFECT_COLUMNS`.
    """
    labels = [f"{g}: {t}  (n={nt}/{nu})" for g, t, nt, nu in
              zip(effects["group"], effects["treatment"], effects["n_treated"], effects["n_untreated"])]
    y = np.arange(len(effects))[::-1]
    fig, ax = figure_and_axes(ax, 8.5, 0.42 * len(effects) + 1.4)
    odds, low, high = (effects[c].to_numpy(dtype=float) for c in ("odds_ratio", "ci_low", "ci_high"))
    crude = effects["crude_odds_ratio"].to_numpy(dtype=float)
    colours = np.where(low > NO_EFFECT, "#1a7f37", np.where(high < NO_EFFECT, "#c0392b", "#52606d"))
    ax.hlines(y, low, high, colors=colours, lw=2)
    ax.scatter(odds, y, c=colours, s=36, zorder=3, label="adjusted OR (95% CI)")
    ax.scatter(crude, y, facecolors="none", edgecolors="#9aa5b1", s=36, zorder=2, label="crude OR")
    ax.axvline(NO_EFFECT, color="#1f2933", lw=1, ls="--")
    ax.set_xscale("log")
    ax.set_yticks(y, labels)
    lo = min(np.nanmin(low), np.nanmin(crude), 0.5)
    hi = max(np.nanmax(high), np.nanmax(crude), 2.0)
    ax.set_xlim(lo / 1.15, hi * 1.15)
    ticks = [t for t in (0.1, 0.2, 0.5, 1, 2, 5, 10) if lo / 1.15 <= t <= hi * 1.15]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    adjusted_for = effects["adjusted_for"].iloc[0]
    ax.set_xlabel("odds ratio of the outcome, treated vs no add-on (log scale; right of 1 = more often)")
    ax.set_title(f"{level}: treatment effects within each group"
                 + (f", adjusted for {adjusted_for.replace(',', ', ')}" if adjusted_for else " (unadjusted)"))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3 / fig.get_figheight() - 0.05), ncol=2, frameon=False)
    ax.grid(axis="x", color="#eef1f4")
    return fig


@styled
def plot_outcome_rates(rates: pd.DataFrame, level: str, outcome: str, ax: Axes | None = None) -> Figure:
    """Outcome rate per group of one level with its Wilson 95% interval (:data:`rifml.outcomes.contract.RATE_COLUMNS`)."""
    y = np.arange(len(rates))[::-1]
    fig, ax = figure_and_axes(ax, 7.5, 0.38 * len(rates) + 1.3)
    ax.hlines(y, rates["rate_ci_low"], rates["rate_ci_high"], colors="#1d5fa8", lw=2)
    ax.scatter(rates["rate"].to_numpy(dtype=float), y, color="#1d5fa8", s=30, zorder=3)
    ax.set_yticks(y, [f"{g}  (n={n})" for g, n in zip(rates["group"], rates["n"])])
    ax.set_xlim(0, min(1.0, max(0.6, float(np.nanmax(rates["rate_ci_high"])) + 0.05)))
    ax.set_xlabel(f"{outcome} rate (all patients of the group, 95% Wilson interval)")
    ax.set_title(f"{level}: {outcome} rate by group")
    ax.grid(axis="x", color="#eef1f4")
    return fig
