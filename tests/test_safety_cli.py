"""Outputs that cannot destroy inputs, stores that are never made up, catalogs that agree, cells that are safe:
each problem of issue 11 (items 7-10) reproduced on the command line, in tmp dirs with SQLite stores.

Refusals run in this process (`rifml_in_process`: the same command line, without ~3 s of imports each); the
console script itself is run where the process matters (signals, leftovers of killed runs) and once per
command for a refusal's exit status and stderr."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cli_support import refused, rifml, rifml_in_process
from mlflow_support import copy_store
from rifml.config import config_dir


@pytest.fixture(scope="module")
def store(trained_store, tmp_path_factory):
    """A quick model in the default SQLite store of the folder (version 1, champion), a batch to score, its calls
    and rejects."""
    work = copy_store(trained_store, tmp_path_factory.mktemp("safety")).folder
    assert rifml_in_process("simulate", "--n", 120, "--seed", 22, "--bad-share", 0.05, "--output", "batch.csv", cwd=work).returncode == 0
    scored = rifml_in_process("score", "--input", "batch.csv", "--output", "calls.csv", "--rejects", "rejects.csv", cwd=work)
    assert scored.returncode == 0, scored.stderr
    return work


def fingerprint(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.suffix == ".csv"}


# -- 7. outputs never land on inputs ------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, phrases",
    [
        (["score", "--input", "batch.csv", "--output", "batch.csv", "--rejects", "r.csv"], ["--output batch.csv", "--input batch.csv"]),
        (["score", "--input", "batch.csv", "--output", "c.csv", "--rejects", "batch.csv"], ["--rejects batch.csv", "--input"]),
        (["score", "--input", "batch.csv", "--output", "x.csv", "--rejects", "x.csv"], ["--rejects x.csv", "--output x.csv"]),
        (["score", "--input", "batch.csv", "--output", "mlflow.db", "--rejects", "r.csv"], ["--tracking-uri"]),
        (["validate", "--input", "batch.csv", "--rejects", "r.csv", "--output", "batch.csv"], ["--output batch.csv", "--input"]),
        (["validate", "--input", "batch.csv", "--rejects", "./sub/../batch.csv"], ["--rejects", "--input"]),
        # simulate's: test_cli_validate.py, through the console script
        (["report", "--input", "batch.csv", "--calls", "calls.csv", "--output", "."], ["--output .", "holds --input batch.csv"]),
        (["report", "--input", "batch.csv", "--calls", "calls.csv", "--output", "batch.csv"], ["--output batch.csv", "--input"]),
        (["score", "--input", "batch.csv", "--output", "sub", "--rejects", "r.csv"], ["--output sub is a folder"]),
        (["score", "--input", "batch.csv", "--output", "nowhere/c.csv", "--rejects", "r.csv"], ["folder nowhere does not exist"]),
        (["score", "--input", "batch.csv", "--output", "/sys/c.csv", "--rejects", "r.csv"], ["cannot write in folder /sys"]),
        (["validate", "--input", "batch.csv", "--rejects", "/sys/r.csv"], ["cannot write in folder /sys"]),
    ],
)
def test_outputs_that_would_destroy_inputs_or_cannot_be_written_are_refused(store, args, phrases):
    (store / "sub").mkdir(exist_ok=True)
    before = fingerprint(store)
    refused(rifml_in_process(*args, cwd=store), *phrases)
    assert fingerprint(store) == before  # nothing written, nothing emptied


def test_an_output_that_is_a_link_to_the_input_is_refused(store, tmp_path):
    shutil.copy(store / "batch.csv", tmp_path / "batch.csv")
    (tmp_path / "soft.csv").symlink_to(tmp_path / "batch.csv")
    os.link(tmp_path / "batch.csv", tmp_path / "hard.csv")
    (tmp_path / "dangling.csv").symlink_to(tmp_path / "later.csv")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    original = (tmp_path / "batch.csv").read_bytes()
    for output, rejects in [("soft.csv", "r.csv"), ("hard.csv", "r.csv"), ("later.csv", "dangling.csv")]:
        refused(rifml_in_process("score", "--input", "batch.csv", "--output", output, "--rejects", rejects,
                                 "--tracking-uri", uri, cwd=tmp_path), output)
    assert (tmp_path / "batch.csv").read_bytes() == original
    assert not (tmp_path / "later.csv").exists()


def test_report_into_a_folder_holding_its_calls_is_refused(store, tmp_path):
    for name in ("batch.csv", "calls.csv"):
        shutil.copy(store / name, tmp_path / name)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    refused(rifml_in_process("report", "--input", "batch.csv", "--calls", "calls.csv", "--output", tmp_path,
                             "--tracking-uri", uri, cwd=tmp_path), "holds --input")
    assert (tmp_path / "calls.csv").read_bytes() == (store / "calls.csv").read_bytes()


def big_batch(store: Path, rows: int) -> Path:
    """The small batch repeated (fresh ids) until scoring takes seconds."""
    batch = pd.read_csv(store / "batch.csv", dtype=str, keep_default_na=False)
    big = pd.concat([batch] * (rows // len(batch) + 1), ignore_index=True).iloc[:rows]
    big["patient_id"] = [f"B{i}" for i in range(len(big))]
    path = store / "big.csv"
    big.to_csv(path, index=False)
    return path


def writing(folder: Path, pattern: str) -> bool:
    for path in folder.glob(pattern):
        try:
            if path.stat().st_size > 0:
                return True
        except FileNotFoundError:  # removed between listing and looking
            pass
    return False


def test_sigterm_stops_score_like_ctrl_c_and_leaves_no_part_file(store):
    big_batch(store, 60_000)
    run = rifml("score", "--input", "big.csv", "--output", "big_calls.csv", "--rejects", "big_rejects.csv",
                "--chunk-rows", 1000, cwd=store, wait=False)
    deadline = time.time() + 120
    # wait until calls are being written (the start-up check's probe file is empty)
    while not writing(store, ".big_calls.csv.*.part"):
        assert run.poll() is None and time.time() < deadline, run.communicate()
        time.sleep(0.05)
    run.send_signal(signal.SIGTERM)
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 128 + signal.SIGTERM, stderr
    assert "interrupted (SIGTERM)" in stderr and "Traceback" not in stderr
    assert not list(store.glob(".big_*.part")) and not (store / "big_calls.csv").exists()


def test_leftovers_of_a_killed_run_are_swept_at_the_next_start(store):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # an ended process: its leftovers are stale
    stale = store / f".swept.csv.{child.pid}.abcdef.part"
    live = store / f".swept.csv.{os.getpid()}.ghijkl.part"  # this test process is running: kept
    for path in (stale, live):
        path.write_bytes(b"x" * 1000)
        os.utime(path, (time.time() - 3600,) * 2)
    result = rifml("score", "--input", "batch.csv", "--output", "swept.csv", "--rejects", "swept_rejects.csv", cwd=store)
    assert result.returncode == 0, result.stderr
    assert not stale.exists() and live.exists()
    live.unlink()


# -- 8. stores (training ones: test_safety_store.py) --------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [
    ["score", "--input", "batch.csv", "--output", "c9.csv", "--rejects", "r9.csv"],
    ["report", "--input", "batch.csv", "--calls", "calls.csv", "--output", "rep9"],
    ["ui", "--port", "5999"],
])
def test_reading_commands_refuse_a_mistyped_store_and_create_nothing(store, command):
    line = refused(rifml_in_process(*command, "--tracking-uri", "sqlite:////no/such/dir/mlflow.db", cwd=store),
                   "no store at /no/such/dir/mlflow.db")
    assert "Traceback" not in line
    missing = store / "typo.db"
    refused(rifml_in_process(*command, "--tracking-uri", f"sqlite:///{missing}", cwd=store), f"no store at {missing}")
    assert not missing.exists()


# -- 9. one catalog for validate and score ----------------------------------------------------------------


def edited_catalog(folder: Path) -> Path:
    data = yaml.safe_load((config_dir() / "markers.yaml").read_text())
    next(m for m in data["markers"] if m["name"] == "pb_nk_pct")["valid_range"] = [0, 20]  # same version
    path = folder / "edited.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_score_refuses_an_edited_catalog_of_the_same_version_and_names_the_difference(store, tmp_path):
    catalog = edited_catalog(tmp_path)
    line = refused(rifml_in_process("score", "--input", "batch.csv", "--output", "c10.csv", "--rejects", "r10.csv",
                                    "--catalog", catalog, cwd=store), str(catalog), "pb_nk_pct valid_range")
    assert "[0.0, 100.0] vs [0.0, 20.0]" in line
    assert not (store / "c10.csv").exists()


def test_validate_names_the_catalogs_own_limit_and_keeps_the_100_percent_reason(store, tmp_path):
    catalog = edited_catalog(tmp_path)
    (tmp_path / "p.csv").write_text("patient_id,pb_nk_pct\nA,25\nB,101\nC,-3\n")
    assert rifml_in_process("validate", "--input", "p.csv", "--rejects", "r.csv", "--catalog", catalog, cwd=tmp_path).returncode == 0
    rejects = pd.read_csv(tmp_path / "r.csv", dtype=str, keep_default_na=False)
    assert rejects["reason"].tolist() == ["above the valid range (max 20)", "above the valid range (max 20)", "negative value"]
    assert rifml_in_process("validate", "--input", "p.csv", "--rejects", "r2.csv", cwd=tmp_path).returncode == 0
    plain = pd.read_csv(tmp_path / "r2.csv", dtype=str, keep_default_na=False)
    assert plain["reason"].tolist() == ["percentage above 100", "negative value"]
    assert plain["value"].tolist() == ["101", "-3"]  # a negative number is left as it is


# -- 10. safe cells, and a report that checks what it reads ---------------------------------------------------


FORMULA_IDS = ['=HYPERLINK("http://evil.example","click")', "+1+2", "@SUM(A1:A2)", "-2+3+cmd", "\tTAB-1"]


def test_formula_cells_are_neutralized_in_calls_and_rejects_and_the_report_reads_them_back(store, tmp_path):
    batch = pd.read_csv(store / "batch.csv", dtype=str, keep_default_na=False)
    accepted = set(pd.read_csv(store / "calls.csv", dtype=str, keep_default_na=False)["patient_id"])
    rows = batch[batch["patient_id"].isin(accepted)].iloc[:8].copy()
    rows["patient_id"] = [*FORMULA_IDS, "=bad-row", "-5", "P-plain"]
    rows.loc[rows.index[5], "pb_nk_pct"] = "-4"  # rejected: negative value, written as -4
    rows.loc[rows.index[6], "pb_nk_pct"] = "=1/0"  # rejected: not a number; id -5 is a number, kept
    rows.to_csv(tmp_path / "b.csv", index=False)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    result = rifml_in_process("score", "--input", "b.csv", "--output", "c.csv", "--rejects", "r.csv", "--tracking-uri", uri,
                              cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    calls = pd.read_csv(tmp_path / "c.csv", dtype=str, keep_default_na=False)
    rejects = pd.read_csv(tmp_path / "r.csv", dtype=str, keep_default_na=False)
    called = dict(zip(calls["patient_id"], calls["patient_id"]))
    for cell in [*calls["patient_id"], *rejects["patient_id"], *rejects["value"]]:
        assert not cell or cell[0] not in "=+@\t\r" and not (cell[0] == "-" and not cell[1:].isdigit()), cell
    assert "'" + FORMULA_IDS[0] in called and "P-plain" in called
    assert rejects["value"].tolist() == ["-4", "'=1/0"] and rejects["patient_id"].tolist() == ["'=bad-row", "-5"]
    report = rifml_in_process("report", "--input", "b.csv", "--calls", "c.csv", "--output", "rep", "--tracking-uri", uri,
                              cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    index = (tmp_path / "rep" / "index.html").read_text(encoding="utf-8")
    assert "=HYPERLINK(" in index and "&#39;=HYPERLINK" not in index  # shown as the lab wrote it


def tampered(store: Path, folder: Path, column: str, value: str, row: int = 3) -> Path:
    calls = pd.read_csv(store / "calls.csv", dtype=str, keep_default_na=False)
    if value == "+0.1":  # off by far more than the 6-decimal rounding
        value = f"{float(calls.loc[row, column]) + 0.1:.6f}" if float(calls.loc[row, column]) < 0.9 else "0.0"
    calls.loc[row, column] = value
    calls.to_csv(folder / "calls.csv", index=False)
    return folder / "calls.csv"


@pytest.mark.parametrize("column, value, phrase", [
    ("prob_mixed", "", "missing or not a number"),
    ("prob_hyperactive", "abc", "missing or not a number"),
    ("prob_hypoactive", "-0.2", "outside [0, 1]"),
    ("prob_balanced", "+0.1", "do not sum to 1"),
    ("immune_profile", "sick", "is not a profile"),
])
def test_a_tampered_calls_file_is_refused_naming_its_line(store, tmp_path, catalog, column, value, phrase):
    from rifml.errors import RifmlInputError
    from rifml.report import read_calls

    with pytest.raises(RifmlInputError, match=re.escape(phrase)) as refusal:
        read_calls(tampered(store, tmp_path, column, value), catalog)
    assert "line 5" in str(refusal.value)
    read_calls(store / "calls.csv", catalog)  # the file as written passes, rounding and all


def test_report_refuses_a_tampered_calls_file_before_writing_anything(store, tmp_path):
    # through the console script: report's exit status and stderr as a process shows them
    tampered(store, tmp_path, "prob_balanced", "5.0")
    shutil.copy(store / "batch.csv", tmp_path / "batch.csv")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    refused(rifml("report", "--input", "batch.csv", "--calls", "calls.csv", "--output", "rep", "--tracking-uri", uri,
                  cwd=tmp_path), "outside [0, 1]", "line 5", "prob_balanced=5.0")
    assert not (tmp_path / "rep").exists()
