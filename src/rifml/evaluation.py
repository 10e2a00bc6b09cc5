"""Training figures: cross-validated metrics, the rule baseline, and the plots logged with a run.

Pure functions over arrays and frames; matplotlib figures are returned, never saved here.
Figures are bare ``matplotlib.figure.Figure`` objects on an Agg canvas: no pyplot, so no
global backend is chosen at import and nothing needs closing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _new_figure(width: float, height: float) -> tuple["Figure", object]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def calibration_bins(proba: np.ndarray, correct: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """The called class's probability in equal-width bins: per non-empty bin, the mean
    probability (``confidence``), the share of right calls (``accuracy``) and the count (``n``)."""
    confidence = np.asarray(proba).max(axis=1)
    correct = np.asarray(correct, dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    frame = pd.DataFrame({"bin": which, "confidence": confidence, "accuracy": correct})
    grouped = frame.groupby("bin", sort=True)
    return grouped.mean().assign(n=grouped.size())


def expected_calibration_error(proba: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """ECE of the called class's probability: weighted |accuracy - confidence| over equal-width bins."""
    table = calibration_bins(proba, correct, bins)
    if table.empty:
        return 0.0
    return float((table["n"] / table["n"].sum() * (table["accuracy"] - table["confidence"]).abs()).sum())


def classification_metrics(truth: np.ndarray, proba: np.ndarray, classes: list[str], prefix: str = "") -> dict[str, float]:
    """Macro-F1, per-class F1, balanced accuracy and ECE of calls ``argmax(proba)`` against ``truth``."""
    truth = np.asarray(truth, dtype=object)
    called = np.asarray(classes, dtype=object)[proba.argmax(axis=1)]
    per_class = f1_score(truth, called, labels=classes, average=None, zero_division=0)
    present = [c in set(truth) for c in classes]
    metrics = {
        f"{prefix}macro_f1": float(f1_score(truth, called, labels=np.asarray(classes)[present], average="macro", zero_division=0)),
        f"{prefix}balanced_accuracy": float(balanced_accuracy_score(truth, called)),
        f"{prefix}ece": expected_calibration_error(proba, called == truth),
    }
    metrics.update({f"{prefix}f1_{c}": float(f) for c, f, p in zip(classes, per_class, present) if p})
    return metrics


def rule_metrics(truth: np.ndarray, rule_calls: np.ndarray, classes: list[str]) -> dict[str, float]:
    """The literature rule baseline's macro-F1 and balanced accuracy (logged beside the model's)."""
    present = [c for c in classes if c in set(truth)]
    return {
        "rule_macro_f1": float(f1_score(truth, rule_calls, labels=present, average="macro", zero_division=0)),
        "rule_balanced_accuracy": float(balanced_accuracy_score(truth, rule_calls)),
    }


def plot_confusion(truth: np.ndarray, called: np.ndarray, classes: list[str], title: str) -> Figure:
    matrix = confusion_matrix(truth, called, labels=classes)
    fig, ax = _new_figure(5.2, 4.4)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("called")
    ax.set_ylabel("label")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_calibration(truth: np.ndarray, proba: np.ndarray, classes: list[str], bins: int = 10) -> Figure:
    """Reliability of the called class's probability (cross-validated)."""
    correct = np.asarray(classes, dtype=object)[proba.argmax(axis=1)] == np.asarray(truth, dtype=object)
    table = calibration_bins(proba, correct, bins)
    xs, ys, ns = table["confidence"], table["accuracy"], table["n"]
    fig, ax = _new_figure(4.8, 4.4)
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
    fig.tight_layout()
    return fig


def plot_shap_summary(contributions: pd.DataFrame, values: pd.DataFrame, title: str) -> Figure:
    """Beeswarm-style summary: per marker, each patient's contribution toward the called profile,
    coloured by the marker's value rank (blue low, red high); markers ordered by mean |contribution|."""
    markers = [m for m in contributions.columns if m in values.columns]
    order = contributions[markers].abs().mean().sort_values().index.tolist()
    fig, ax = _new_figure(7, 0.32 * len(order) + 1.5)
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
    fig.tight_layout()
    return fig


def mean_abs_contributions(contributions: pd.DataFrame, called: np.ndarray) -> pd.DataFrame:
    """Per called profile (rows), mean |contribution| of each marker (columns)."""
    return contributions.abs().groupby(np.asarray(called, dtype=object)).mean()
