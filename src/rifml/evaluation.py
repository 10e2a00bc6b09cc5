"""Training figures: cross-validated metrics, the rule baseline, and the plots logged with a run.

Pure functions over arrays and frames; matplotlib figures are returned, never saved here.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score  # noqa: E402

from rifml.model import expected_calibration_error  # noqa: E402


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


def plot_confusion(truth: np.ndarray, called: np.ndarray, classes: list[str], title: str) -> plt.Figure:
    matrix = confusion_matrix(truth, called, labels=classes)
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
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


def plot_calibration(truth: np.ndarray, proba: np.ndarray, classes: list[str], bins: int = 10) -> plt.Figure:
    """Reliability of the called class's probability (cross-validated)."""
    confidence = proba.max(axis=1)
    correct = np.asarray(classes, dtype=object)[proba.argmax(axis=1)] == np.asarray(truth, dtype=object)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    xs, ys, ns = [], [], []
    for b in range(bins):
        hit = which == b
        if hit.any():
            xs.append(confidence[hit].mean())
            ys.append(correct[hit].mean())
            ns.append(hit.sum())
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
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


def plot_shap_summary(contributions: pd.DataFrame, values: pd.DataFrame, called: np.ndarray, title: str) -> plt.Figure:
    """Beeswarm-style summary: per marker, each patient's contribution toward the called profile,
    coloured by the marker's value rank (blue low, red high); markers ordered by mean |contribution|."""
    markers = [m for m in contributions.columns if m in values.columns]
    order = contributions[markers].abs().mean().sort_values().index.tolist()
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(order) + 1.5))
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
