"""rifml.plots: one idiom for every figure (bare Agg figures, one style, draws on a given axes)."""

import io

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rifml.plots import (
    STYLE,
    new_figure,
    plot_calibration,
    plot_confusion,
    plot_lab_drift,
    plot_probabilities,
    plot_shap_summary,
    plot_subtype_heatmap,
)

PROFILES = ["balanced", "hyperactive"]


def host_axes():
    """An axes of a larger figure, as a notebook would lay one out."""
    figure = new_figure(10, 4)
    return figure, figure.subplots(1, 2)


def test_new_figure_is_a_bare_agg_figure_with_constrained_layout():
    figure = new_figure(3, 2)
    assert isinstance(figure, Figure) and isinstance(figure.canvas, FigureCanvasAgg)
    assert figure.get_constrained_layout()
    assert tuple(figure.get_size_inches()) == (3, 2)


def test_every_figure_keeps_the_style_when_saved_outside_it():
    figure = plot_confusion(np.array(["x", "y", "y"]), np.array(["x", "x", "y"]), ["x", "y"], "title")
    figure.savefig(io.BytesIO(), format="png")  # outside the style's rc_context
    ax = figure.axes[0]
    assert ax.title.get_fontsize() == STYLE["axes.titlesize"]
    assert ax.xaxis.label.get_fontsize() == STYLE["axes.labelsize"]
    assert {t.get_fontsize() for t in ax.get_yticklabels()} == {STYLE["ytick.labelsize"]}


def test_confusion_draws_counts_on_a_given_axes():
    host, (left, right) = host_axes()
    figure = plot_confusion(np.array(["x", "y", "y", "y"]), np.array(["x", "x", "y", "y"]), ["x", "y"], "cv", ax=right)
    assert figure is host
    assert not left.images and len(right.images) == 1
    assert [t.get_text() for t in right.texts] == ["1", "0", "1", "2"]  # row = label, column = called
    assert (right.get_xlabel(), right.get_ylabel(), right.get_title()) == ("called", "label", "cv")


def test_calibration_plots_the_bins_against_the_diagonal():
    host, (left, _) = host_axes()
    proba = np.array([[0.95, 0.05], [0.92, 0.08], [0.55, 0.45], [0.52, 0.48]])
    figure = plot_calibration(np.array(["x", "y", "x", "x"], dtype=object), proba, ["x", "y"], ax=left)
    assert figure is host
    diagonal, curve = left.get_lines()
    np.testing.assert_allclose(curve.get_ydata(), [1.0, 0.5])  # two non-empty bins: 0.5-0.6 and 0.9-1.0
    assert [t.get_text() for t in left.texts] == ["2", "2"]
    assert left.get_xlim() == (0, 1)


def test_shap_summary_orders_markers_by_mean_absolute_contribution():
    contributions = pd.DataFrame({"small": [0.1, -0.1], "large": [2.0, -3.0], "mid": [0.5, 0.5]})
    values = pd.DataFrame({"small": [1.0, 2.0], "large": [1.0, np.nan], "mid": [3.0, 4.0]})
    figure = plot_shap_summary(contributions, values, "why")
    labels = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    assert labels == ["small", "mid", "large"]  # largest at the top
    assert figure.axes[0].get_title() == "why"


def test_probabilities_has_a_called_and_a_rest_row_per_profile():
    calls = pd.DataFrame({"immune_profile": ["balanced", "balanced", "hyperactive"],
                          "prob_balanced": [0.9, 0.8, 0.3], "prob_hyperactive": [0.1, 0.2, 0.7]})
    figure = plot_probabilities(calls, PROFILES, "immune_profile")
    assert len(figure.axes) == 4
    assert [ax.get_title() for ax in figure.axes[:2]] == ["balanced (2 called)", "hyperactive (1 called)"]
    assert figure.axes[2].get_xlabel() == "probability of balanced"


def test_subtype_heatmap_labels_rows_with_profile_and_size():
    table = pd.DataFrame({"a": [1.0, -2.5], "b": [0.01, np.nan]}, index=["s1", "s2"])
    figure = plot_subtype_heatmap(table, pd.Series({"s1": 1200, "s2": 3}), {"s1": "balanced"})
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["s1 (balanced, n=1,200)", "s2 (?, n=3)"]
    assert [t.get_text() for t in ax.texts] == ["1.0", "0.0", "-2.5"]  # the NaN cell stays empty


@pytest.mark.parametrize("markers", [["nk"], ["nk", "tnfa"]])
def test_lab_drift_has_one_axes_per_marker_and_one_legend(markers):
    drift = pd.DataFrame([{"lab": lab, "marker": m, "batch_pct": 5.0, "learned_pct": np.nan}
                          for m in markers for lab in ("L1", "L2")])
    figure = plot_lab_drift(drift)
    assert [ax.get_title() for ax in figure.axes] == markers
    assert len(figure.legends) == 1
    assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == ["L1", "L2"]
