"""The calibrated gradient-boosted classifier behind profile and subtype calls.

LightGBM handles missing values natively (partial panels route down learned
default branches). Probabilities are calibrated by temperature scaling fitted on
out-of-fold margins: a single monotone rescaling of the margins, so the call
(argmax) and the tree ensemble being explained stay exactly the booster's.
The out-of-fold probabilities double as the cross-validated predictions that
training reports.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.utils._param_validation import Interval
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from rifml.config import MAX_NUM_LEAVES


class CalibratedBoostedClassifier(ClassifierMixin, BaseEstimator):
    """LightGBM multiclass model with temperature-scaled probabilities.

    Parameters
    ----------
    n_estimators, num_leaves, learning_rate, min_child_samples, reg_lambda :
        LightGBM settings (small trees keep explanations fast; any size stays exact).
    calibration_folds : int
        Folds for the out-of-fold margins the temperature is fitted on (fewer when the
        rarest class has fewer rows).
    classes : list, optional
        Fix the class order (e.g. the four profiles even if one is absent from ``y``).
    random_state : int
    n_jobs : int
        LightGBM threads; one level of parallelism only on small machines.

    Attributes
    ----------
    classes_ : ndarray
        ``classes``, or the sorted labels of ``y`` (with ``y``'s dtype).
    n_features_in_ : int
    booster_ : lightgbm.Booster
    booster_classes_ : ndarray of int
        Indices into ``classes_`` of the booster's outputs (classes seen in training).
    temperature_ : float
    oof_proba_ : ndarray (n_samples, n_classes)
        Calibrated out-of-fold probabilities of the training rows.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(200, 3))
    >>> y = np.where(X[:, 0] > 0, "high", "low")
    >>> model = CalibratedBoostedClassifier(n_estimators=20).fit(X, y)
    >>> model.predict(X[:3]).tolist()
    ['high', 'low', 'high']
    """

    _parameter_constraints: dict = {
        "n_estimators": [Interval(Integral, 1, None, closed="left")],
        "num_leaves": [Interval(Integral, 2, MAX_NUM_LEAVES, closed="both")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "min_child_samples": [Interval(Integral, 1, None, closed="left")],
        "reg_lambda": [Interval(Real, 0, None, closed="left")],
        "calibration_folds": [Interval(Integral, 2, None, closed="left")],
        "classes": ["array-like", None],
        "random_state": ["random_state"],
        "n_jobs": [Integral, None],
    }

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

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # a marker not measured: LightGBM routes it down the learned default branch
        return tags

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

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None, groups=None) -> "CalibratedBoostedClassifier":
        """Fit; ``groups`` keeps copies of one patient in the same calibration fold."""
        X, y = validate_data(self, X, y, dtype=np.float64, ensure_all_finite="allow-nan")
        check_classification_targets(y)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, ensure_non_negative=True)
        if self.classes is None:
            self.classes_ = np.unique(y)
        else:
            self.classes_ = np.asarray(self.classes, dtype=object if y.dtype == object else None)
        unknown = set(y) - set(self.classes_)
        if unknown:
            raise ValueError(f"labels outside classes: {sorted(map(str, unknown))}")
        codes = pd.Categorical(y, categories=self.classes_).codes
        if len(np.unique(codes)) < 2:
            raise ValueError(f"need at least two classes among the labels, got one class: {sorted(map(str, set(y)))}")

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

    def _margins(self, X) -> np.ndarray:
        """Raw margins (n, n_classes); -inf for classes never seen in training."""
        check_is_fitted(self, "booster_")
        X = validate_data(self, X, dtype=np.float64, ensure_all_finite="allow-nan", reset=False)
        return self._margins_of((self.booster_, self.booster_classes_), X)

    def decision_function(self, X) -> np.ndarray:
        """Raw margins: (n, n_classes), -inf for classes never seen in training; for two classes,
        scikit-learn's shape (n,): the second class's margin over the first's."""
        margins = self._margins(X)
        return margins[:, 1] - margins[:, 0] if len(self.classes_) == 2 else margins

    def predict_proba(self, X) -> np.ndarray:
        return self.proba_from_margins(self._margins(X))

    def predict(self, X) -> np.ndarray:
        margins = self._margins(X)  # first: an unfitted model has no classes_ either
        return self.classes_[margins.argmax(axis=1)]


def _fit_temperature(margins: np.ndarray, codes: np.ndarray) -> float:
    """Temperature minimizing the log loss of softmax(margins / T)."""
    finite = np.where(np.isfinite(margins), margins, -1e9)

    def loss(log_t: float) -> float:
        return -log_softmax(finite / np.exp(log_t), axis=1)[np.arange(len(codes)), codes].mean()

    result = minimize_scalar(loss, bounds=(-3.0, 3.0), method="bounded")
    return float(np.exp(result.x))
