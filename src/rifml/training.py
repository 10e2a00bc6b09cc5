"""Fitting an ImmuneProfiler and measuring it: the pure part of `rifml train`.

Metrics are cross-validated: the profile model's calibration folds give
out-of-fold probabilities for every training row (copies of one patient stay in
one fold). Without labels they measure agreement with the named clusters.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from rifml.config import TrainConfig, load_train_config, validate_mapping
from rifml.contract import SUBTYPE_MATCHES_PROFILE
from rifml.evaluation import classification_metrics, mean_abs_contributions, rule_metrics
from rifml.features import PanelFeatures, band_position, complete_coverage
from rifml.model import CalibratedBoostedClassifier
from rifml.pipeline import ImmuneProfiler
from rifml.plots import plot_calibration, plot_confusion, plot_consensus, plot_k_selection, plot_shap_summary
from rifml.subtypes import ConsensusClustering, rule_profile

__all__ = ["TrainingResult", "check_floors", "load_train_config", "profiler_from_config", "train"]


@dataclass
class TrainingResult:
    profiler: ImmuneProfiler
    metrics: dict[str, float]
    params: dict[str, object]
    figures: dict[str, object] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    floors_met: bool = False
    floor_failures: list[str] = field(default_factory=list)


def training_config(config: dict | TrainConfig) -> TrainConfig:
    """Training settings as validated :class:`TrainConfig` (a mapping, e.g. edited in code, is checked)."""
    if isinstance(config, TrainConfig):
        return config
    return validate_mapping(TrainConfig, config, "(given as a mapping)", "training config")


def profiler_from_config(config: dict | TrainConfig, catalog_path: str | None = None) -> ImmuneProfiler:
    """The unfitted pipeline train.yaml describes: each section sets one part, the seed and threads all of them."""
    settings = training_config(config)
    subtypes = settings.subtypes.model_dump()
    clustering_keys = ConsensusClustering().get_params().keys() - {"random_state"}
    features = settings.features.model_dump()
    if features["lab_min_count"] is None:  # one threshold for "enough of a lab's data" unless set apart
        features["lab_min_count"] = settings.subtypes.lab_min_panels
    return ImmuneProfiler(
        features=PanelFeatures(catalog_path=None if catalog_path is None else str(catalog_path), **features),
        clustering=ConsensusClustering(**{k: v for k, v in subtypes.items() if k in clustering_keys},
                                       random_state=settings.random_state),
        classifier=CalibratedBoostedClassifier(**settings.model.model_dump(), random_state=settings.random_state,
                                               n_jobs=settings.n_jobs),
        **{k: v for k, v in subtypes.items() if k not in clustering_keys},
        background_size=settings.explain.background_size,
        random_state=settings.random_state,
    )


def _metric_name(name: str, metrics: dict[str, float]) -> str:
    """A floor names a cross-validated figure (``macro_f1`` -> ``cv_macro_f1``) or another metric as is."""
    return f"cv_{name}" if f"cv_{name}" in metrics or name not in metrics else name


def check_floors(metrics: dict[str, float], floors: dict[str, float]) -> list[str]:
    """Floors the model misses, in words (empty when it may become champion)."""
    failures = []
    for name, floor in floors.items():
        if name.startswith("max_"):
            metric = _metric_name(name[4:], metrics)
            value = metrics.get(metric, np.inf)
            if not value <= floor:
                failures.append(f"{metric} {value:.3f} > {floor}")
        else:
            metric = _metric_name(name, metrics)
            value = metrics.get(metric, -np.inf)
            if not value >= floor:
                failures.append(f"{metric} {value:.3f} < {floor}")
    return failures


def train(panel: pd.DataFrame, labels: pd.Series | None, config: dict | TrainConfig,
          catalog_path: str | None = None) -> TrainingResult:
    """Fit the whole pipeline on a clean panel and compute metrics, plots and tables.

    ``catalog_path`` names the marker catalog the panel was validated with (default
    configs/markers.yaml); the fitted model carries that catalog.
    """
    settings = training_config(config)
    started = time.perf_counter()
    profiler = profiler_from_config(settings, catalog_path).fit(panel, labels)
    seconds = time.perf_counter() - started
    catalog = profiler.catalog_
    profiles = list(catalog.profiles)
    model = profiler.profile_model_
    truth = profiler.training_labels_
    oof = model.oof_proba_

    metrics = classification_metrics(truth, oof, profiles, prefix="cv_")
    complete = profiler.training_coverage_ == complete_coverage(catalog)
    metrics.update(classification_metrics(truth[complete], oof[complete], profiles, prefix="cv_complete_"))
    metrics.update(
        {
            "train_seconds": seconds,
            "n_panels": float(len(panel)),
            "n_training_rows": float(len(truth)),
            "n_subtypes": float(len(profiler.subtype_table_)),
            "subtype_stability": float(profiler.clustering_.stability_),
            "subtype_pac": float(profiler.clustering_.pac_[profiler.clustering_.k_]),
            "temperature": float(model.temperature_),
            # share of the training panels' calls whose subtype belongs to the called profile
            "subtype_coherence": float(profiler.call(panel)[SUBTYPE_MATCHES_PROFILE].mean()),
            "labs_normalized": float(len(profiler.features_.lab_shifts_)),
        }
    )
    if profiler.supervised_:
        labeled = labels.notna().to_numpy()
        rules = rule_profile(band_position(panel.loc[labeled], catalog), catalog).to_numpy(dtype=object)
        metrics.update(rule_metrics(labels[labeled].to_numpy(dtype=object), rules, profiles))

    X = profiler.features_.transform(panel)
    called = model.predict_proba(X).argmax(axis=1)
    called_names = np.asarray(profiles, dtype=object)[called]
    contributions = profiler.contributions(X, called)
    figures = {
        "confusion_matrix": plot_confusion(truth, np.asarray(profiles, dtype=object)[oof.argmax(axis=1)], profiles,
                                           "Cross-validated calls" + ("" if profiler.supervised_ else " vs named clusters")),
        "calibration_curve": plot_calibration(truth, oof, profiles),
        "k_selection": plot_k_selection(profiler.clustering_),
        "consensus_matrix": plot_consensus(profiler.clustering_),
        "shap_summary": plot_shap_summary(contributions, panel.reset_index(drop=True),
                                          "What drove each call (toward the called profile)"),
    }
    tables = {
        "subtypes": profiler.subtype_table_.set_index("cluster"),
        "mean_abs_shap_by_profile": mean_abs_contributions(contributions, called_names),
    }
    floors = (settings.floors if profiler.supervised_ else settings.label_free_floors).model_dump(exclude_none=True)
    failures = check_floors(metrics, floors)
    params = {
        "supervised": profiler.supervised_,
        "catalog_version": catalog.catalog_version,
        **{f"{section}.{k}": v for section in ("model", "subtypes", "features", "explain")
           for k, v in getattr(settings, section).model_dump().items()},
        **{f"floor.{k}": v for k, v in floors.items()},
        "random_state": settings.random_state,
        "n_jobs": settings.n_jobs,
        "features.lab_min_count": profiler.features_.lab_min_count,  # as used (null in train.yaml: lab_min_panels)
    }
    return TrainingResult(profiler, metrics, params, figures, tables, not failures, failures)
