"""A new marker is a catalog entry, not a code change: train, score and report with an extended catalog.

The commands run in this process (`rifml_in_process`: the same command lines, without a process start each);
the console script's own end-to-end runs are in test_cli_train_score.py and test_demo.py."""

import numpy as np
import pandas as pd
import pytest
import yaml

from cli_support import refused, rifml_in_process
from mlflow_support import quick_train_config
from rifml.config import config_dir

NEW = "pb_cd69_nk_pct"
ENTRY = {
    "name": NEW,
    "axis": "nk",
    "description": "CD69+ (activated) NK cells among peripheral NK cells",
    "compartment": "blood",
    "kind": "percent",
    "unit": "%",
    "valid_range": [0, 100],
    "concern": "high",
    "reference_band": [2.0, 10.0],
    "signals": {"above": "hyperactive"},
    "transform": "log",
}


def with_new_marker(frame, profiles, seed):
    """Add the new marker's column to a simulated cohort: high in hyperactive and mixed patients, as
    measured in blood (missing where the panel has no blood markers)."""
    rng = np.random.default_rng(seed)
    high = profiles.isin(["hyperactive", "mixed"]).to_numpy()
    values = np.exp(rng.normal(np.where(high, np.log(30.0), np.log(4.0)), 0.25))
    return frame.assign(**{NEW: np.where(frame["pb_nk_pct"] == "", "", np.round(values, 2).astype(str))})


@pytest.fixture(scope="module")
def extended(tmp_path_factory, catalog):
    from rifml.simulate import simulate_cohort

    work = tmp_path_factory.mktemp("extended")
    data = yaml.safe_load((config_dir() / "markers.yaml").read_text())
    data["catalog_version"] = "1.0.1"
    data["markers"].append(ENTRY)
    (work / "extended.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    # what is tested is that the catalog entry reaches every command, not the model: small training settings
    (work / "train.yaml").write_text(quick_train_config("extended", n_estimators=20, k_max=4, n_resamples=3))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    # simulated in process (as `rifml simulate` would, without a process start each), then given the new column
    for name, n, seed in [("cohort", 600, 21), ("batch", 200, 22)]:
        cohort, truth = simulate_cohort(n, seed=seed, catalog=catalog)
        with_new_marker(cohort, truth["immune_profile"], seed).to_csv(work / f"{name}.csv", index=False)
    trained = rifml_in_process("train", "--data", "cohort.csv", "--catalog", "extended.yaml", "--config", "train.yaml",
                               "--tracking-uri", uri, cwd=work)
    assert trained.returncode == 0, trained.stderr
    scored = rifml_in_process("score", "--input", "batch.csv", "--output", "calls.csv", "--rejects", "rejects.csv",
                              "--catalog", "extended.yaml", "--model", "models:/rifml-immune-profile/1", "--tracking-uri", uri,
                              cwd=work)
    reported = rifml_in_process("report", "--input", "batch.csv", "--calls", "calls.csv", "--rejects", "rejects.csv",
                                "--output", "report", "--model", "models:/rifml-immune-profile/1", "--tracking-uri", uri,
                                cwd=work)
    return work, uri, scored, reported


def test_the_model_records_the_catalog_it_was_trained_with(extended):
    work, uri, *_ = extended
    import mlflow
    from mlflow import MlflowClient

    from mlflow_support import mlflow_store

    with mlflow_store(uri):
        client = MlflowClient()
        version = client.get_model_version("rifml-immune-profile", "1")
        params = client.get_run(version.run_id).data.params
        assert params["catalog_version"] == "1.0.1"
        # every setting is logged, the ones train.yaml left out included, as the fit used them
        assert {"model.reg_lambda", "model.calibration_folds", "subtypes.pac_tolerance", "subtypes.scaling",
                "features.censor_fraction"} <= params.keys()
        assert params["features.lab_min_count"] == "30"
        profiler = mlflow.pyfunc.load_model("models:/rifml-immune-profile/1").unwrap_python_model().profiler
    assert profiler.catalog_.catalog_version == "1.0.1"
    assert NEW in profiler.feature_names_


def test_scoring_with_the_extended_catalog_calls_with_the_new_marker(extended):
    work, _, scored, _ = extended
    assert scored.returncode == 0, scored.stderr
    calls = pd.read_csv(work / "calls.csv", dtype=str, keep_default_na=False)
    drivers = calls[["driver_1", "driver_2", "driver_3"]]
    hyper = calls["immune_profile"] == "hyperactive"
    # it separates hyperactive patients by construction: it must push many such calls
    assert (drivers[hyper] == NEW).any(axis=1).mean() > 0.3
    assert "rows in 200 = scored" in scored.stdout


def test_the_installed_catalog_refuses_the_extended_model(extended):
    work, uri, *_ = extended
    result = rifml_in_process("score", "--input", "batch.csv", "--output", "calls_default.csv", "--rejects",
                              "rejects_default.csv", "--model", "models:/rifml-immune-profile/1", "--tracking-uri", uri, cwd=work)
    refused(result, "trained with marker catalog 1.0.1", "this installation has 1.0")


def test_the_report_shows_the_new_marker_among_drivers_and_on_patient_pages(extended):
    from rifml.report.cohort import patient_file_names

    work, _, scored, reported = extended
    assert scored.returncode == 0, scored.stderr
    assert reported.returncode == 0, reported.stderr
    calls = pd.read_csv(work / "calls.csv", dtype=str, keep_default_na=False)
    pages = dict(zip(calls["patient_id"], patient_file_names(calls["patient_id"].tolist())))
    driven = calls[(calls["driver_1"] == NEW) & (calls["immune_profile"] == "hyperactive")]
    assert len(driven) > 0
    patient = driven.iloc[0]
    page = (work / "report" / "patients" / pages[patient["patient_id"]]).read_text()
    # its bar in the waterfall of what drove the call, its row against its reference band, and the
    # findings it feeds through its catalog fields (blood, nk axis, signals hyperactive)
    assert f'text-anchor="end">{NEW}</text>' in page
    assert f'<td class="name" title="{ENTRY["description"]}">{NEW}</td>' in page
    assert f"{NEW} above its reference band" in page
    # the cohort page's patient table names it as that patient's first driver
    index = (work / "report" / "index.html").read_text()
    assert f">{NEW}<" in index
