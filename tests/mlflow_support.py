"""Test helpers shared by the serving and Spark tests."""

import os
from contextlib import contextmanager


@contextmanager
def mlflow_store(uri: str):
    """Point MLflow at a store, then restore the URIs as they were (set_*_uri also writes os.environ)."""
    import mlflow

    saved = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])
        mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)


def quick_train_config(experiment: str) -> str:
    """Small, fast training settings; floors at zero so the new version always becomes champion."""
    return f"""
model: {{n_estimators: 40, num_leaves: 8, learning_rate: 0.15, min_child_samples: 20}}
subtypes: {{k_min: 2, k_max: 5, n_resamples: 5, subsample: 0.8}}
explain: {{background_size: 100}}
random_state: 0
n_jobs: 1
floors: {{macro_f1: 0.0, balanced_accuracy: 0.0, max_ece: 1.0}}
registered_model: rifml-immune-profile
experiment: {experiment}
"""
