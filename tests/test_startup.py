"""Small batches start fast: the model is read from its files (one registry query, no MLflow import),
and the score command imports no library it does not use. Facts checked, not timings."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from cli_support import rifml_in_process
from mlflow_support import copy_store, mlflow_store

from rifml.io.reader import PanelFile, validated_chunks
from rifml.tracking import _load_with_mlflow, load_profiler, local_model_folder, log_training

pytestmark = pytest.mark.slow
NAME = "rifml-immune-profile"
# Libraries a local `rifml score` has no use for (each costs from 0.2 s to seconds to import); numba
# neither, on a small batch of a model with small trees (the explainer's numpy pass, vectorized.py).
NOT_ON_THE_SCORING_PATH = ("mlflow", "pandera", "hypothesis", "sqlalchemy", "matplotlib", "shap", "statsmodels",
                           "jinja2", "pyspark", "numba")


@pytest.fixture(scope="module")
def store(trained_store, tmp_path_factory):
    """A copy of the session's store (version 1, champion), a version 2 added to it, and a batch to score."""
    copied = copy_store(trained_store, tmp_path_factory.mktemp("startup"))
    work, uri = copied.folder, copied.uri
    done = rifml_in_process("simulate", "--n", 120, "--seed", 22, "--bad-share", 0.05, "--output", "batch.csv", cwd=work)
    assert done.returncode == 0, done.stderr
    # Version 2 (champion): the same profiler logged again, into its own folder (seconds, not a training).
    with mlflow_store(uri):  # MLflow's URIs are process-wide: restored for the tests that follow
        profiler, _ = _load_with_mlflow(f"models:/{NAME}/1", uri)
        logged = log_training(profiler, experiment="rifml-startup-test", uri=uri, params={}, metrics={}, figures={},
                              tables={}, floors_met=True, tags={})
    assert logged.version == "2" and logged.champion
    return work, uri


def _mlflow_folder(uri: str, model_uri: str) -> Path:
    """Where MLflow itself resolves a models:/ URI to."""
    from urllib.parse import unquote, urlparse

    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

    with mlflow_store(uri):
        location = ModelsArtifactRepository.get_underlying_uri(model_uri)
    return Path(unquote(urlparse(location).path))


def test_alias_and_version_resolve_to_the_folder_mlflow_names(store):
    work, uri = store
    from mlflow import MlflowClient

    for model_uri in (f"models:/{NAME}@champion", f"models:/{NAME}/1", f"models:/{NAME}/2"):
        assert local_model_folder(model_uri, uri) == _mlflow_folder(uri, model_uri)
    assert local_model_folder(f"models:/{NAME}@champion", uri) == local_model_folder(f"models:/{NAME}/2", uri)
    assert local_model_folder(f"models:/{NAME}/1", uri) != local_model_folder(f"models:/{NAME}/2", uri)
    with mlflow_store(uri):
        MlflowClient().set_registered_model_alias(NAME, "champion", "1")
    try:
        assert local_model_folder(f"models:/{NAME}@champion", uri) == local_model_folder(f"models:/{NAME}/1", uri)
    finally:
        with mlflow_store(uri):
            MlflowClient().set_registered_model_alias(NAME, "champion", "2")
    folder = _mlflow_folder(uri, f"models:/{NAME}/2")
    assert local_model_folder(str(folder), uri) == folder and local_model_folder(folder.as_uri(), uri) == folder


def test_what_cannot_be_told_from_the_files_is_left_to_mlflow(store, tmp_path):
    work, uri = store
    assert local_model_folder(f"models:/{NAME}@no-such-alias", uri) is None
    assert local_model_folder("models:/no-such-model@champion", uri) is None
    assert local_model_folder(f"models:/{NAME}/9", uri) is None
    assert local_model_folder(f"models:/{NAME}@champion", f"sqlite:///{tmp_path / 'absent.db'}") is None
    assert local_model_folder(f"models:/{NAME}@champion", "http://127.0.0.1:9/") is None
    assert local_model_folder("runs:/abc/model", uri) is None
    assert local_model_folder(str(tmp_path), uri) is None  # a folder without an MLmodel file


def test_the_profiler_read_from_files_calls_exactly_as_the_one_mlflow_loads(store):
    work, uri = store
    fast, fast_metadata = load_profiler(f"models:/{NAME}@champion", uri)
    with mlflow_store(uri):
        slow, slow_metadata = _load_with_mlflow(f"models:/{NAME}@champion", uri)
    assert fast_metadata == slow_metadata and fast_metadata["catalog_version"]
    panel = pd.concat(chunk.panel for chunk in validated_chunks(PanelFile(work / "batch.csv", fast.catalog_)))
    pd.testing.assert_frame_equal(fast.call(panel), slow.call(panel))


def test_the_score_command_imports_no_library_it_does_not_use(store):
    work, uri = store
    probe = f"""
import sys
from rifml.cli import app
try:
    app(["score", "--input", "batch.csv", "--output", "calls.csv", "--rejects", "rejects.csv",
         "--tracking-uri", {uri!r}, "-q"])
except SystemExit as done:
    assert not done.code, done.code
print("imported:" + ",".join(sorted(m for m in {NOT_ON_THE_SCORING_PATH!r} if m in sys.modules)))
"""
    done = subprocess.run([sys.executable, "-c", probe], cwd=work, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "rows in 120 = scored" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "imported:"  # none of them
    calls = pd.read_csv(work / "calls.csv")
    assert len(calls) > 100 and calls["immune_profile"].notna().all()


def test_a_missing_alias_still_gets_mlflow_s_explanation(store):
    work, uri = store
    done = rifml_in_process("score", "--input", "batch.csv", "--output", "c.csv", "--rejects", "r.csv", "--tracking-uri",
                            uri, "--model", f"models:/{NAME}@no-such-alias", cwd=work)
    assert done.returncode == 2 and "no version of rifml-immune-profile has the alias no-such-alias" in done.stderr
    assert not (work / "c.csv").exists()
