"""MLflow test helpers: quiet store switching, quick training settings, and the session's trained store."""

import os
import shutil
import sqlite3
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path


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


def quick_train_config(experiment: str, n_estimators: int = 40, k_max: int = 5, n_resamples: int = 5) -> str:
    """Small, fast training settings; floors at zero so the new version always becomes champion."""
    return f"""
model: {{n_estimators: {n_estimators}, num_leaves: 8, learning_rate: 0.15, min_child_samples: 20}}
subtypes: {{k_min: 2, k_max: {k_max}, n_resamples: {n_resamples}, subsample: 0.8}}
explain: {{background_size: 100}}
random_state: 0
n_jobs: 1
floors: {{macro_f1: 0.0, balanced_accuracy: 0.0, max_ece: 1.0}}
registered_model: rifml-immune-profile
experiment: {experiment}
"""


SHARED_EXPERIMENT = "rifml-tests"
SHARED_PANELS = 1200  # the cohort the shared store is trained on (seed 11, no corrupt rows)


@dataclass(frozen=True)
class TrainedStore:
    """A SQLite store holding one quick training run (version 1 of the registered model, champion)."""

    folder: Path  # mlflow.db, mlartifacts/, cohort.csv, quick.yaml
    run_id: str
    experiment: str = SHARED_EXPERIMENT
    n_panels: int = SHARED_PANELS

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.folder / 'mlflow.db'}"  # absolute folder: four slashes


def train_shared_store(folder: Path) -> TrainedStore:
    """Simulate a cohort and train the quick model into a fresh store in ``folder``: the session's template."""
    import re

    from cli_support import rifml, rifml_in_process

    (folder / "quick.yaml").write_text(quick_train_config(SHARED_EXPERIMENT))
    simulated = rifml_in_process("simulate", "--n", SHARED_PANELS, "--seed", 11, "--output", "cohort.csv", cwd=folder)
    assert simulated.returncode == 0, simulated.stderr
    store = TrainedStore(folder, run_id="")
    trained = rifml("train", "--data", "cohort.csv", "--config", "quick.yaml", "--tracking-uri", store.uri, cwd=folder)
    assert trained.returncode == 0, trained.stderr
    assert "alias champion now points here" in trained.stdout
    return replace(store, run_id=re.search(r"^run ([0-9a-f]{32}) in ", trained.stdout, re.M).group(1))


def copy_store(store: TrainedStore, folder: Path) -> TrainedStore:
    """A writable copy of ``store`` in ``folder``: its own db and artifacts, every absolute path moved with them.

    MLflow records artifact locations as absolute paths (file URIs) in the db and in each MLmodel file;
    copying is ~100x cheaper than training again, and a fresh store alone costs seconds of migrations.
    """
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(store.folder / "mlflow.db", folder / "mlflow.db")
    shutil.copytree(store.folder / "mlartifacts", folder / "mlartifacts", dirs_exist_ok=True)
    old, new = f"{store.folder}/", f"{folder}/"  # the slash: a folder named like the template plus more is not it
    with closing(sqlite3.connect(folder / "mlflow.db")) as db, db:
        tables = [name for (name,) in db.execute("select name from sqlite_master where type = 'table'")]
        for table in tables:
            for _, column, kind, *_ in db.execute(f'pragma table_info("{table}")').fetchall():
                if kind.upper().startswith(("VARCHAR", "TEXT")):
                    db.execute(f'update "{table}" set "{column}" = replace("{column}", ?, ?) where instr("{column}", ?)',
                               (old, new, old))
    for model_file in (folder / "mlartifacts").rglob("MLmodel"):
        model_file.write_text(model_file.read_text().replace(old, new))
    return replace(store, folder=folder)
