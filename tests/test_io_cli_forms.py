"""End to end: train on a European export, score the same batch in several forms, same calls."""

import gzip
import re

import pandas as pd
import pytest

from cli_support import rifml_in_process
from lab_exports import decimal_comma, excel_numbers
from mlflow_support import quick_train_config

ACCENTED = "Jos\u00e9-001"


def rifml(*args, cwd):
    # in this process: the reading is tested here, not the process start (~3 s of imports per command)
    return rifml_in_process(*args, cwd=cwd)


@pytest.fixture(scope="module")
def forms(tmp_path_factory):
    from rifml.catalog import load_catalog
    from rifml.simulate import simulate_cohort

    work = tmp_path_factory.mktemp("forms")
    catalog = load_catalog()
    cohort, _ = simulate_cohort(300, seed=21, bad_share=0.02, catalog=catalog)
    cohort.loc[5, "patient_id"] = "Zo\u00eb-7"
    # trained from a Windows-1252, ';' separated, decimal-comma export: train reads it like score
    decimal_comma(cohort).to_csv(work / "cohort.csv", index=False, sep=";", encoding="cp1252", lineterminator="\r\n")
    # the reading is tested, not the model: the smallest settings that still train every part
    (work / "train.yaml").write_text(quick_train_config("forms", n_estimators=10, k_max=3, n_resamples=2))
    trained = rifml("train", "--data", "cohort.csv", "--config", "train.yaml", cwd=work)
    assert trained.returncode == 0, trained.stderr
    assert re.search(r"read cohort.csv: (Windows-1252|Latin-1|Latin-9), ';' separated, decimal ',', CRLF", trained.stderr)

    batch, _ = simulate_cohort(150, seed=22, bad_share=0.08, catalog=catalog)
    batch.loc[0, "patient_id"] = ACCENTED
    batch.to_csv(work / "plain.csv", index=False, lineterminator="\n")
    decimal_comma(batch).to_csv(work / "europe.csv", index=False, sep=";", encoding="latin-1", lineterminator="\r\n")
    excel_numbers(batch).to_excel(work / "panels.xlsx", index=False)
    with gzip.open(work / "panels.csv.gz", "wt", encoding="utf-8", newline="") as handle:
        batch.to_csv(handle, index=False, lineterminator="\r\n")
    reference = rifml("score", "--input", "plain.csv", "--output", "plain_calls.csv", "--rejects", "plain_rejects.csv", cwd=work)
    assert reference.returncode == 0, reference.stderr
    return work, reference


# UTF-16 and tab files are compared cell by cell in test_io_dialects; here the slow end-to-end runs
@pytest.mark.parametrize("name", ["europe.csv", "panels.xlsx", "panels.csv.gz"])
def test_score_gives_the_same_calls_and_rejects_in_every_form(forms, name):
    forms, reference = forms
    scored = rifml("score", "--input", name, "--output", f"{name}_calls.csv", "--rejects", f"{name}_rejects.csv", cwd=forms)
    assert scored.returncode == 0, scored.stderr
    last = scored.stdout.strip().splitlines()
    assert last[-1] == reference.stdout.strip().splitlines()[-1]
    assert last[-1].startswith("rows in 150 = scored ")
    assert last[-2].startswith(f"read {name}: ")
    expected = pd.read_csv(forms / "plain_calls.csv", dtype=str, keep_default_na=False)
    calls = pd.read_csv(forms / f"{name}_calls.csv", dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(calls, expected)
    assert ACCENTED in set(calls["patient_id"])
    same = ["row", "patient_id", "column", "reason"]
    rejects = pd.read_csv(forms / f"{name}_rejects.csv", dtype=str, keep_default_na=False)
    expected_rejects = pd.read_csv(forms / "plain_rejects.csv", dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(rejects[same], expected_rejects[same])


def test_reading_options_on_the_command_line(forms):
    forms, _ = forms
    told = rifml("validate", "--input", "europe.csv", "--rejects", "r.csv", "--sep", ";", "--decimal", ",",
                 "--encoding", "latin-1", cwd=forms)
    assert told.returncode == 0, told.stderr
    assert "read europe.csv: Latin-1, ';' separated, decimal ',', CRLF" in told.stdout
    wrong = rifml("validate", "--input", "europe.csv", "--rejects", "r.csv", "--sep", "|", cwd=forms)
    assert wrong.returncode == 2 and wrong.stderr.strip().count("\n") == 0 and "--sep" in wrong.stderr
    sheet = rifml("validate", "--input", "panels.xlsx", "--rejects", "r.csv", "--sheet", "nope", cwd=forms)
    assert sheet.returncode == 2 and "no sheet 'nope'" in sheet.stderr
