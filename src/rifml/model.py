"""The calibrated gradient-boosted classifier behind profile and subtype calls.

LightGBM handles missing values natively (partial panels route down learned
default branches). Probabilities are calibrated by temperature scaling fitted on
out-of-fold margins: a single monotone rescaling of the margins, so the call
(argmax) and the tree ensemble being explained stay exactly the booster's.
The out-of-fold probabilities double as the cross-validated predictions that
training reports.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.utils.validation import check_is_fitted


class CalibratedBoostedClassifier(ClassifierMixin, BaseEstimator):
    """LightGBM multiclass model with temperature-scaled probabilities.

    Parameters
    ----------
    n_estimators, num_leaves, learning_rate, min_child_samples, reg_lambda :
        LightGBM settings (small trees keep explanations exact and fast).
    calibration_folds : int
        Folds for the out-of-fold margins the temperature is fitted on.
    classes : list of str, optional
        Fix the class order (e.g. the four profiles even if one is absent).
    random_state : int
    n_jobs : int
        LightGBM threads; one level of parallelism only on small machines.

    Attributes
    ----------
    classes_ : ndarray of str
    booster_ : lightgbm.Booster
    booster_classes_ : ndarray of int
        Indices into ``classes_`` of the booster's outputs (classes seen in training).
    temperature_ : float
    oof_proba_ : ndarray (n_samples, n_classes)
        Calibrated out-of-fold probabilities of the training rows.
    """

    def __init__(
        self,
        n_estimators: int = 100,
        num_leaves: int = 8,
        learning_rate: float = 0.08,
        min_child_samples: int = 20,
        reg_lambda: float = 1.0,
        calibration_folds: int = 5,
        classes: list[str] | None = None,
        random_state: int = 0,
        n_jobs: int = 1,
    ):
        self.n_estimators = n_estimators
        self.num_leaves = num_leaves
        self.learning_rate = learning_rate
        self.min_child_samples = min_child_samples
        self.reg_lambda = reg_lambda
        self.calibration_folds = calibration_folds
        self.classes = classes
        self.random_state = random_state
        self.n_jobs = n_jobs

    def _booster_model(self, n_classes: int):
        from lightgbm import LGBMClassifier

        return LGBMClassifier(
            objective="multiclass" if n_classes > 2 else "binary",
            n_estimators=self.n_estimators,
            num_leaves=self.num_leaves,
            learning_rate=self.learning_rate,
            min_child_samples=self.min_child_samples,
            reg_lambda=self.reg_lambda,
            random_state=self.random_state,
            n_jobs=self.n_jobs,
            verbose=-1,
        )

    def fit(self, X, y, sample_weight=None, groups=None) -> "CalibratedBoostedClassifier":
        """Fit; ``groups`` keeps copies of one patient in the same calibration fold."""
        X = np.asarray(X, dtype=float)
        y = np.asarray(y, dtype=object)
        self.classes_ = np.array(self.classes if self.classes is not None else sorted(set(y)), dtype=object)
        unknown = set(y) - set(self.classes_)
        if unknown:
            raise ValueError(f"labels outside classes: {sorted(map(str, unknown))}")
        codes = pd.Categorical(y, categories=self.classes_).codes
        if len(np.unique(codes)) < 2:
            raise ValueError(f"need at least two classes among the labels, got {sorted(map(str, set(y)))}")
        self.n_features_in_ = X.shape[1]

        oof_margin = np.zeros((len(X), len(self.classes_)))
        folds = min(self.calibration_folds, int(np.bincount(codes).min(initial=0) or 2))
        folds = max(folds, 2)
        if groups is None:
            splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=self.random_state)
        else:
            splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=self.random_state)
        for train, test in splitter.split(X, codes, groups):
            oof_margin[test] = self._margins_of(self._fit_booster(X[train], codes[train], sample_weight, train), X[test])
        self.temperature_ = _fit_temperature(oof_margin, codes)
        self.oof_proba_ = softmax(oof_margin / self.temperature_, axis=1)
        self.booster_, self.booster_classes_ = self._fit_booster(X, codes, sample_weight, slice(None))
        return self

    def _fit_booster(self, X, codes, sample_weight, rows):
        """Fit on the class codes present; margins of absent classes stay at -inf."""
        local = np.unique(codes)
        model = self._booster_model(len(local))
        weight = None if sample_weight is None else np.asarray(sample_weight)[rows]
        model.fit(X, np.searchsorted(local, codes), sample_weight=weight)
        return model.booster_, local

    def _margins_of(self, fitted, X) -> np.ndarray:
        booster, local = fitted
        # One thread: batch scoring already runs chunk by chunk, and LightGBM's default
        # threading on 2 shared cores is many times slower than a single thread.
        return self.expand_margins(booster.predict(X, raw_score=True, num_threads=self.n_jobs), local)

    def expand_margins(self, raw: np.ndarray, local: np.ndarray | None = None) -> np.ndarray:
        """Booster outputs -> margins over ``classes_`` (-inf for classes absent in training)."""
        local = self.booster_classes_ if local is None else local
        raw = np.asarray(raw, dtype=float)
        if raw.ndim == 2 and raw.shape[1] == 1:
            raw = raw[:, 0]
        if raw.ndim == 1:  # binary: one margin for the second class
            raw = np.column_stack([np.zeros_like(raw), raw])
        margins = np.full((len(raw), len(self.classes_)), -np.inf)
        margins[:, local] = raw
        return margins

    def proba_from_margins(self, margins: np.ndarray) -> np.ndarray:
        """Calibrated probabilities from margins over ``classes_``."""
        return softmax(margins / self.temperature_, axis=1)

    def decision_function(self, X) -> np.ndarray:
        """Raw margins (n, n_classes); -inf for classes never seen in training."""
        check_is_fitted(self, "booster_")
        return self._margins_of((self.booster_, self.booster_classes_), np.asarray(X, dtype=float))

    def predict_proba(self, X) -> np.ndarray:
        return self.proba_from_margins(self.decision_function(X))

    def predict(self, X) -> np.ndarray:
        margins = self.decision_function(X)
        return self.classes_[margins.argmax(axis=1)]


def _fit_temperature(margins: np.ndarray, codes: np.ndarray) -> float:
    """Temperature minimizing the log loss of softmax(margins / T)."""
    finite = np.where(np.isfinite(margins), margins, -1e9)

    def loss(log_t: float) -> float:
        return -log_softmax(finite / np.exp(log_t), axis=1)[np.arange(len(codes)), codes].mean()

    result = minimize_scalar(loss, bounds=(-3.0, 3.0), method="bounded")
    return float(np.exp(result.x))


def expected_calibration_error(proba: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """ECE of the called class's probability: weighted |accuracy - confidence| over equal-width bins."""
    confidence = proba.max(axis=1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            error += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(error)
