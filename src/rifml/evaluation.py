"""Training metrics: cross-validated scores, calibration (ECE) and the rule baseline.

Pure functions over arrays and frames. The figures logged with a run are drawn by
:mod:`rifml.plots`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score, f1_score

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


def mean_abs_contributions(contributions: pd.DataFrame, called: np.ndarray) -> pd.DataFrame:
    """Per called profile (rows), mean |contribution| of each marker (columns)."""
    return contributions.abs().groupby(np.asarray(called, dtype=object)).mean()
