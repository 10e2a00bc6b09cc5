"""Stores and names (issue 11, item 8): training refuses names that escape the store, keeps odd
characters, takes turns with a concurrent training on one SQLite store, and explains a missing champion."""

import shutil
import sqlite3
from pathlib import Path

import pytest

from cli_support import refused, rifml, rifml_in_process
from mlflow_support import quick_train_config


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A small cohort and fast training settings, copied into each test's own folder."""
    work = tmp_path_factory.mktemp("store")
    # what is tested is the store, not the model: the smallest settings that still train every part
    (work / "quick.yaml").write_text(quick_train_config("store-test", n_estimators=10, k_max=3, n_resamples=2))
    assert rifml_in_process("simulate", "--n", 300, "--seed", 31, "--output", "cohort.csv", cwd=work).returncode == 0
    return work


def fresh(cohort: Path, folder: Path) -> Path:
    for name in ("cohort.csv", "quick.yaml"):
        shutil.copy(cohort / name, folder / name)
    return folder


def test_a_name_that_escapes_the_store_is_refused_before_training(cohort, tmp_path):
    # through the console script: train's exit status and one-line stderr as a process shows them
    fresh(cohort, tmp_path)
    escaped = rifml("train", "--data", "cohort.csv", "--config", "quick.yaml", "--experiment", "../../escaped", cwd=tmp_path)
    refused(escaped, "../../escaped")
    assert "reading" not in escaped.stderr and not (tmp_path / "mlflow.db").exists()  # refused before training
    assert not [p for p in tmp_path.parent.iterdir() if p.name == "escaped"]


def train_twice_at_once(folder: Path, experiment: str, *options: str) -> None:
    runs = [rifml("train", "--data", "cohort.csv", "--config", "quick.yaml", "--experiment", experiment, *options,
                  cwd=folder, wait=False) for _ in range(2)]
    outcomes = [run.communicate(timeout=900) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [o[1] for o in outcomes]


def runs_in(db_path: Path, experiment: str) -> int:
    db = sqlite3.connect(db_path)
    (experiment_id,) = db.execute("select experiment_id from experiments where name = ?", (experiment,)).fetchone()
    return db.execute("select count(*) from runs where experiment_id = ?", (experiment_id,)).fetchone()[0]


def test_two_trainings_at_once_on_one_store_both_register_and_keep_odd_names(cohort, tmp_path):
    """Without the store lock: "table experiments already exists" (new store), "UNIQUE constraint
    failed" after training (new experiment on an existing store). One pair of trainings also checks
    what a single one would (each training costs seconds): an experiment name with odd characters is
    kept as given, and without the champion alias, score says what exists and how to use it."""
    fresh(cohort, tmp_path)
    db_path = tmp_path / "mlflow.db"
    # first on a store that does not exist yet
    train_twice_at_once(tmp_path, "trial #2", "--no-champion")
    assert runs_in(db_path, "trial #2") == 2
    assert (tmp_path / "mlartifacts" / "trial #2").is_dir()
    refused(rifml_in_process("score", "--input", "cohort.csv", "--output", "c.csv", "--rejects", "r.csv", cwd=tmp_path),
            "alias champion", "latest registered: version 2", "--model models:/rifml-immune-profile/2")
    train_twice_at_once(tmp_path, "existing-store")
    assert runs_in(db_path, "existing-store") == 2
    versions = sorted(row[0] for row in sqlite3.connect(db_path).execute("select version from model_versions"))
    assert versions == [1, 2, 3, 4]


def test_training_on_nothing_usable_is_a_clear_error(tmp_path):
    (tmp_path / "bad.csv").write_text("patient_id,pb_nk_pct\nA,-1\nB,abc\n")
    refused(rifml_in_process("train", "--data", "bad.csv", cwd=tmp_path), "no rows left to train on", "all 2")
    lines = ["patient_id,pb_nk_pct,em_unk_cd56_pct,immune_profile"] + [f"P{i},{5 + i % 7},{3 + i % 5},balanced" for i in range(60)]
    (tmp_path / "one.csv").write_text("\n".join(lines) + "\n")
    refused(rifml_in_process("train", "--data", "one.csv", cwd=tmp_path), "one profile only", "balanced")
    assert not (tmp_path / "mlflow.db").exists()
