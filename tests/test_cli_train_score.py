"""train -> registry -> score end to end on the command line, with a real SQLite MLflow store.

The shipped-settings training and the batch scored with its champion run through the console script; the
other commands run in this process (`rifml_in_process`), each saving the ~3 s a process spends importing."""

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cli_support import refused, rifml_in_process
from mlflow_support import quick_train_config
from rifml.contract import calls_columns

RIFML = str(Path(sys.executable).parent / "rifml")


def rifml(*args, cwd, env=None):
    environment = {**os.environ, **(env or {})}
    environment.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([RIFML, *map(str, args)], cwd=cwd, capture_output=True, text=True, env=environment)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import yaml

    from rifml.training import load_train_config

    work = tmp_path_factory.mktemp("e2e")
    # The shipped settings and floors, with a 5-resample consensus over k <= 5: the same cross-validated figures
    # on this cohort (measured: macro-F1 0.722 vs 0.719, balanced accuracy 0.705 vs 0.703) at 40% of the CPU.
    settings = load_train_config()
    settings["subtypes"].update(n_resamples=5, k_max=5)
    (work / "train.yaml").write_text(yaml.safe_dump(settings))
    assert rifml_in_process("simulate", "--n", 1500, "--seed", 3, "--bad-share", 0.02, "--output", "cohort.csv", cwd=work).returncode == 0
    assert rifml_in_process("simulate", "--n", 800, "--seed", 4, "--bad-share", 0.03, "--output", "batch.csv", "--truth", "truth.csv", cwd=work).returncode == 0
    result = rifml("train", "--data", "cohort.csv", "--experiment", "e2e", "--config", "train.yaml", cwd=work)
    assert result.returncode == 0, result.stderr
    return work, result


@pytest.fixture(scope="module")
def scored(trained):
    """The batch scored once with the default model (the champion), for every test that reads those calls."""
    work, _ = trained
    return rifml("score", "--input", "batch.csv", "--output", "calls.csv", "--rejects", "rejects.csv", cwd=work)


def small_cohort(work: Path, rows: int = 500) -> pd.DataFrame:
    """The first rows of the training cohort: enough for a run whose registration, not its model, is tested."""
    return pd.read_csv(work / "cohort.csv", dtype=str, keep_default_na=False).iloc[:rows]


def test_train_logs_registers_and_crowns(trained):
    work, result = trained
    assert (work / "mlflow.db").exists()  # default store: sqlite in the working directory
    assert "version 1 (alias champion now points here)" in result.stdout
    from mlflow import MlflowClient

    # both URIs named: an earlier test in this process may have pointed MLflow's registry at another store
    uri = f"sqlite:///{work / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version_by_alias("rifml-immune-profile", "champion")
    run = client.get_run(version.run_id)
    for metric in ["cv_macro_f1", "cv_balanced_accuracy", "cv_ece", "rule_macro_f1", "subtype_stability", "cv_f1_mixed"]:
        assert metric in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/confusion_matrix.png", "plots/calibration_curve.png", "plots/k_selection.png",
            "plots/consensus_matrix.png", "plots/shap_summary.png"} <= artifacts


def test_no_raw_patient_id_reaches_mlflow(trained):
    work, _ = trained
    ids = set(pd.read_csv(work / "cohort.csv", dtype=str, keep_default_na=False)["patient_id"]) - {""}
    dump = "\n".join(sqlite3.connect(work / "mlflow.db").iterdump())
    for path in (work / "mlartifacts").rglob("*"):
        if path.is_file() and path.suffix in {".csv", ".json", ".txt", ".yaml", ".py", ""}:
            dump += path.read_text(errors="ignore")
    assert not [i for i in ids if i in dump]


def test_score_writes_calls_and_rejects_accounting_for_every_row(trained, scored, catalog):
    work, _ = trained
    result = scored
    assert result.returncode == 0, result.stderr
    batch = pd.read_csv(work / "batch.csv", dtype=str, keep_default_na=False)
    truth = pd.read_csv(work / "truth.csv", dtype=str, keep_default_na=False)
    calls = pd.read_csv(work / "calls.csv", dtype={"patient_id": str}, keep_default_na=False)
    rejects = pd.read_csv(work / "rejects.csv", dtype=str, keep_default_na=False)
    assert len(calls) + len(rejects) == len(batch)
    assert f"rows in {len(batch):,} = scored {len(calls):,} + rejected {len(rejects):,}" in result.stdout
    assert list(calls.columns) == calls_columns(catalog)  # every column of the contract, in order, and no other
    good = truth[truth["corruption"] == ""]
    assert calls["patient_id"].tolist() == good["patient_id"].tolist()  # input order, no good row lost
    assert set(rejects["row"].astype(int)) == set(truth.loc[truth["corruption"] != "", "row"].astype(int))


def test_score_with_explicit_model_uri_and_missing_model(trained, scored):
    work, _ = trained
    ok = rifml_in_process("score", "--input", "batch.csv", "--output", "c2.csv", "--rejects", "r2.csv",
                          "--model", "models:/rifml-immune-profile/1", cwd=work)
    assert ok.returncode == 0, ok.stderr
    assert scored.returncode == 0, scored.stderr
    assert (work / "c2.csv").read_bytes() == (work / "calls.csv").read_bytes()  # version 1 is the champion
    # through the console script: score's exit status and one-line stderr as a process shows them
    missing = rifml("score", "--input", "batch.csv", "--output", "c3.csv", "--rejects", "r3.csv",
                    "--model", "models:/no-such-model@champion", cwd=work)
    refused(missing, "no model registered as no-such-model")
    assert not (work / "c3.csv").exists()


def test_score_refuses_input_without_model_markers(trained):
    work, _ = trained
    (work / "odd.csv").write_text("patient_id,colour\nA,blue\n")
    result = rifml_in_process("score", "--input", "odd.csv", "--output", "c4.csv", "--rejects", "r4.csv", cwd=work)
    assert result.returncode == 2 and "marker columns" in result.stderr


def test_train_without_labels_names_profiles_from_subtypes(trained):
    work, _ = trained
    small_cohort(work).to_csv(work / "unlabelled.csv", index=False)
    (work / "small.yaml").write_text(quick_train_config("e2e", n_estimators=10, k_max=3, n_resamples=2))
    result = rifml_in_process("train", "--data", "unlabelled.csv", "--no-labels", "--no-champion", "--experiment", "e2e",
                              "--config", "small.yaml", cwd=work)
    assert result.returncode == 0, result.stderr
    assert "version 2" in result.stdout and "champion alias left where it was" in result.stdout


def test_too_little_training_data_is_a_clear_error(tmp_path):
    lines = ["patient_id,pb_nk_pct,immune_profile"] + [f"P{i},{5 + i % 7},{'hyperactive' if i % 2 else 'balanced'}" for i in range(40)]
    (tmp_path / "l.csv").write_text("\n".join(lines) + "\n")
    result = rifml_in_process("train", "--data", "l.csv", cwd=tmp_path)
    assert result.returncode == 2
    assert "complete panels" in result.stderr and "Traceback" not in result.stderr


def test_score_refuses_a_model_from_another_catalog_version(trained, tmp_path):
    import yaml

    from rifml.config import config_dir

    work, _ = trained
    data = yaml.safe_load((config_dir() / "markers.yaml").read_text())
    data["catalog_version"] = "9.9"
    (tmp_path / "markers.yaml").write_text(yaml.safe_dump(data))
    result = rifml_in_process("score", "--input", "batch.csv", "--output", "c5.csv", "--rejects", "r5.csv",
                              "--catalog", tmp_path / "markers.yaml", cwd=work)
    assert result.returncode == 2
    assert "catalog 1.0" in result.stderr and "9.9" in result.stderr


def test_score_refuses_an_edited_catalog_of_the_same_version(trained, tmp_path):
    """Validating with the model's catalog instead would disagree with `rifml validate --catalog` on the
    same file; scoring stops and names the difference (more cases in test_safety_cli.py)."""
    import yaml

    from rifml.config import config_dir

    work, _ = trained
    data = yaml.safe_load((config_dir() / "markers.yaml").read_text())
    edited = next(m for m in data["markers"] if m["name"] == "pb_nk_pct")
    edited["valid_range"] = [0, 8]  # same version, narrower range
    (tmp_path / "markers.yaml").write_text(yaml.safe_dump(data))
    edited_run = rifml_in_process("score", "--input", "batch.csv", "--output", "c7.csv", "--rejects", "r7.csv",
                                  "--catalog", tmp_path / "markers.yaml", cwd=work)
    assert edited_run.returncode == 2 and "pb_nk_pct valid_range" in edited_run.stderr
    assert not (work / "c7.csv").exists()


def _client(work):
    from mlflow import MlflowClient

    uri = f"sqlite:///{work / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _run_id(result) -> str:
    return re.search(r"^run ([0-9a-f]{32}) in ", result.stdout, re.M).group(1)


def test_a_custom_label_column_below_the_floors_is_registered_but_the_champion_stays(trained):
    """One training (each costs a process and a fit): labels from a column of another name, and a
    floor that always fails, so the version is registered and the champion alias does not move."""
    import yaml

    work, _ = trained
    small_cohort(work).rename(columns={"immune_profile": "profile_by_hand"}).to_csv(work / "relabelled.csv", index=False)
    settings = yaml.safe_load(quick_train_config("e2e", n_estimators=10, k_max=3, n_resamples=2))
    settings["floors"]["max_ece"] = 0.0  # no calibration is perfect: this floor always fails
    (work / "strict.yaml").write_text(yaml.safe_dump(settings))
    result = rifml_in_process("train", "--data", "relabelled.csv", "--label-column", "profile_by_hand",
                              "--experiment", "e2e", "--config", "strict.yaml", cwd=work)
    assert result.returncode == 0, result.stderr
    assert "labels from profile_by_hand" in result.stderr
    found = re.search(r"registered rifml-immune-profile version (\d+) \(not champion: below the floors of "
                      r"configs/train.yaml: cv_ece (\d\.\d{3}) > 0\.0\)", result.stdout)
    assert found, result.stdout
    assert float(found.group(2)) > 0
    client = _client(work)
    assert str(client.get_model_version_by_alias("rifml-immune-profile", "champion").version) == "1"
    assert client.get_model_version("rifml-immune-profile", found.group(1)).run_id == _run_id(result)
    run = client.get_run(_run_id(result))
    assert run.data.params["label_column"] == "profile_by_hand"
    assert run.data.tags["rifml.mode"] == "supervised"
