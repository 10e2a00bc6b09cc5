"""How well rifml holds across simulated worlds: the metrics and bars of issue 10.

One scenario (a :class:`~rifml.simulate.SimulationConfig`) is measured by training on one
simulated batch and calling another (separate seeds, the second a scoring batch, so a
scoring-only lab appears there for the first time), once with labels and once without.
The metric functions take calls (the calls-file columns of design.md) and the
simulator's truth, row-aligned, and are what `make robustness` and the tests share.
Pure core: no file, network or MLflow access; the runner (benchmarks/robustness.py)
does the reading, the printing and the CSV.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score, f1_score

from rifml.catalog import BALANCED, Catalog, load_catalog
from rifml.contract import REJECTS_ROW, SUBTYPE, SUBTYPE_PROFILE, driver_columns, profile_columns
from rifml.evaluation import expected_calibration_error
from rifml.simulate import SimulationConfig, simulate_cohort
from rifml.validate import repeated_ids, validate_chunk

COMPLETE = "complete"  # the simulator's panel kind with both compartments


@dataclass(frozen=True)
class Bar:
    """A bound a metric must meet: ``value >= bound`` (or ``<=`` when ``at_most``)."""

    metric: str
    bound: float
    at_most: bool = False

    def holds(self, value: float) -> bool | None:
        """True/False, or None when the metric does not apply (NaN, e.g. no unseen lab)."""
        if value is None or np.isnan(value):
            return None
        return bool(value <= self.bound) if self.at_most else bool(value >= self.bound)

    def __str__(self) -> str:
        return f"{self.metric} {'<=' if self.at_most else '>='} {self.bound:g}"


# Issue 10's bars (complete panels, per world); the goals beyond them are not bars.
BARS: tuple[Bar, ...] = (
    Bar("label_free_f1", 0.75),
    Bar("ece_label_free", 0.10, at_most=True),
    Bar("coherence", 0.90),
    Bar("unseen_lab_gap", 0.03, at_most=True),
    Bar("supervised_f1", 0.87),
    Bar("subtype_ari", 0.65),
    Bar("driver_1", 0.90),
    Bar("ece_supervised", 0.06, at_most=True),
    Bar("corrupt_caught", 1.0),
    Bar("clean_rejected", 0.0, at_most=True),
)


# ---------------------------------------------------------------------------
# Metrics on calls vs truth (row-aligned)
# ---------------------------------------------------------------------------


def macro_f1(truth: pd.Series | np.ndarray, called: pd.Series | np.ndarray) -> float:
    """Macro-averaged F1 over the profiles present in truth or calls; NaN for no rows."""
    truth, called = np.asarray(truth, dtype=object), np.asarray(called, dtype=object)
    if len(truth) == 0:
        return float("nan")
    return float(f1_score(truth, called, average="macro", zero_division=0))


def subtype_ari(latent: pd.Series | np.ndarray, called: pd.Series | np.ndarray) -> float:
    """Adjusted Rand index between the simulator's latent subtypes and the called subtypes."""
    return float(adjusted_rand_score(np.asarray(latent, dtype=object), np.asarray(called, dtype=object)))


def coherence(calls: pd.DataFrame, catalog: Catalog | None = None) -> float:
    """Share of calls whose subtype belongs to the called profile (``subtype_profile`` = the called profile)."""
    if len(calls) == 0:
        return float("nan")
    profile = (catalog or load_catalog()).label_column
    return float((calls[SUBTYPE_PROFILE].astype(str) == calls[profile].astype(str)).mean())


def calibration_error(calls: pd.DataFrame, truth_profiles: pd.Series | np.ndarray, catalog: Catalog) -> float:
    """Expected calibration error of the called profile's probability against the true profile."""
    proba = calls[profile_columns(catalog)].to_numpy(dtype=float)
    correct = calls[catalog.label_column].astype(str).to_numpy() == np.asarray(truth_profiles, dtype=str)
    return expected_calibration_error(proba, correct)


def driver_hit_rate(calls: pd.DataFrame, truth: pd.DataFrame, catalog: Catalog | None = None) -> float:
    """Among correctly called non-balanced rows, the share whose driver_1 is a truly shifted marker."""
    profile = (catalog or load_catalog()).label_column
    right = (calls[profile].astype(str).to_numpy() == truth[profile].astype(str).to_numpy()) & (
        truth[profile].astype(str).to_numpy() != BALANCED
    )
    if not right.any():
        return float("nan")
    shifted = truth["shifted_markers"].fillna("").astype(str).str.split(";").to_numpy()
    driver = calls[driver_columns(1)[0]].fillna("").astype(str).to_numpy()
    hits = np.array([d != "" and d in s for d, s in zip(driver[right], shifted[right])])
    return float(hits.mean())


def unseen_lab_gap(calls: pd.DataFrame, truth: pd.DataFrame, unseen_labs: set[str] | frozenset[str],
                   catalog: Catalog | None = None) -> float:
    """Macro-F1 on labs seen in training minus macro-F1 on scoring-only labs (NaN without any)."""
    catalog = catalog or load_catalog()
    unseen = truth[catalog.lab_column].astype(str).isin(set(unseen_labs)).to_numpy()
    if not unseen.any() or unseen.all():
        return float("nan")
    profile = catalog.label_column
    truth_profiles, called = truth[profile].to_numpy(dtype=object), calls[profile].to_numpy(dtype=object)
    return macro_f1(truth_profiles[~unseen], called[~unseen]) - macro_f1(truth_profiles[unseen], called[unseen])


def corruption_caught(truth: pd.DataFrame, rejected_rows: set[int] | np.ndarray) -> tuple[float, int]:
    """Share of corrupt rows rejected, and how many clean rows were rejected (should be 0)."""
    rejected = truth["row"].isin(set(np.asarray(list(rejected_rows), dtype=int))).to_numpy()
    corrupt = (truth["corruption"] != "").to_numpy()
    caught = float(rejected[corrupt].mean()) if corrupt.any() else float("nan")
    return caught, int((rejected & ~corrupt).sum())


def scenario_metrics(
    truth: pd.DataFrame,
    supervised: pd.DataFrame,
    label_free: pd.DataFrame,
    unseen_labs: set[str] | frozenset[str],
    catalog: Catalog,
) -> dict[str, float]:
    """Every metric of one scenario from the two sets of calls on the same clean test rows.

    Parameters
    ----------
    truth : DataFrame
        The simulator's truth for the called rows, same order (the catalog's label column,
        ``subtype``, ``shifted_markers``, ``panel``, the catalog's lab column).
    supervised, label_free : DataFrame
        Calls of the profiler trained with and without labels.
    unseen_labs : set of str
        Labs that sent nothing to training.
    catalog : Catalog

    Returns
    -------
    dict
        ``supervised_f1``, ``label_free_f1``, ``subtype_ari`` (label-free subtypes; the
        supervised model's subtypes come from the same clustering), ``coherence``
        (supervised), ``unseen_lab_gap``, ``driver_1`` (supervised), ``ece_supervised``,
        ``ece_label_free``, all on complete panels; ``n_complete``, ``n_unseen_complete``.
    """
    for name, calls in (("supervised", supervised), ("label_free", label_free)):
        if len(calls) != len(truth):
            raise ValueError(f"{name} calls have {len(calls)} rows, truth has {len(truth)}")
    truth = truth.reset_index(drop=True)
    supervised, label_free = supervised.reset_index(drop=True), label_free.reset_index(drop=True)
    complete = (truth["panel"] == COMPLETE).to_numpy()
    t, s, f = truth[complete], supervised[complete], label_free[complete]
    profile = catalog.label_column
    return {
        "supervised_f1": macro_f1(t[profile], s[profile]),
        "label_free_f1": macro_f1(t[profile], f[profile]),
        "subtype_ari": subtype_ari(t[SUBTYPE], f[SUBTYPE]),
        "coherence": coherence(s, catalog),
        "unseen_lab_gap": unseen_lab_gap(s, t, unseen_labs, catalog),
        "driver_1": driver_hit_rate(s, t, catalog),
        "ece_supervised": calibration_error(s, t[profile], catalog),
        "ece_label_free": calibration_error(f, t[profile], catalog),
        "n_complete": float(complete.sum()),
        "n_unseen_complete": float(t[catalog.lab_column].astype(str).isin(set(unseen_labs)).sum()),
    }


def bar_results(metrics: dict[str, float], bars: tuple[Bar, ...] = BARS) -> dict[str, bool | None]:
    """Per bar (keyed by its text, e.g. ``"coherence >= 0.9"``): held, missed, or None (not applicable)."""
    return {str(bar): bar.holds(metrics.get(bar.metric, float("nan"))) for bar in bars}


# ---------------------------------------------------------------------------
# One scenario end to end (public API only)
# ---------------------------------------------------------------------------


def clean_batch(catalog: Catalog, config: SimulationConfig, n: int, seed: int, batch: str, bad_share: float):
    """Simulate a batch, validate it as `rifml score` would; clean panel, its truth, rejected rows, full truth."""
    cohort, truth = simulate_cohort(n, seed=seed, bad_share=bad_share, config=config, catalog=catalog, batch=batch)
    rows = truth["row"].to_numpy()
    checked = validate_chunk(cohort, rows, catalog, duplicate_ids=repeated_ids(cohort[catalog.id_column]))
    clean_truth = truth.set_index("row").loc[checked.panel.index].reset_index()
    return checked.panel, clean_truth, set(checked.rejects[REJECTS_ROW].astype(int)), truth


def evaluate_scenario(
    config: SimulationConfig,
    train_config: dict,
    n_train: int = 2000,
    n_test: int = 2500,
    train_seed: int = 1,
    test_seed: int = 2,
    bad_share: float = 0.02,
    catalog: Catalog | None = None,
) -> dict[str, float]:
    """Train with and without labels on one simulated batch, call another, and measure.

    The training batch is clean and holds no scoring-only lab; the test batch is a
    scoring batch with ``bad_share`` corrupt rows, validated first (the caught share
    is a metric), then called on its clean rows.

    Returns
    -------
    dict
        :func:`scenario_metrics`, plus ``corrupt_caught``, ``clean_rejected`` and
        ``seconds`` (wall time of the whole scenario).
    """
    # Imported here: the metrics and bars alone need no model stack (LightGBM, shap, numba).
    from rifml.training import profiler_from_config

    started = time.perf_counter()
    catalog = catalog if catalog is not None else load_catalog()
    label = catalog.label_column
    train, _, _, _ = clean_batch(catalog, config, n_train, train_seed, "train", 0.0)
    test, test_truth, rejected, full_truth = clean_batch(catalog, config, n_test, test_seed, "score", bad_share)
    test = test.drop(columns=label)
    supervised = profiler_from_config(train_config).fit(train, train[label]).call(test)
    label_free = profiler_from_config(train_config).fit(train.drop(columns=label)).call(test)
    unseen = frozenset(name for name, lab in config.labs.items() if lab.scoring_only)
    metrics = scenario_metrics(test_truth, supervised, label_free, unseen, catalog)
    caught, clean_rejected = corruption_caught(full_truth, rejected)
    metrics.update(corrupt_caught=caught, clean_rejected=float(clean_rejected), seconds=time.perf_counter() - started)
    return metrics
