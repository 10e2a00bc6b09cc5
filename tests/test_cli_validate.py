"""simulate and validate end to end on the command line, in a temp directory.

The commands run in this process (`rifml_in_process`: the same command lines without ~3 s of imports each);
the console script itself is run for a refusal of each command, an unknown command and --debug."""

import pandas as pd
import pytest

from cli_support import refused, rifml, rifml_in_process


@pytest.fixture(scope="module")
def dirty(tmp_path_factory):
    work = tmp_path_factory.mktemp("dirty")
    result = rifml_in_process("simulate", "--n", 3000, "--seed", 11, "--bad-share", 0.05, "--output", "c.csv", "--truth", "t.csv", cwd=work)
    assert result.returncode == 0, result.stderr
    return work


def test_validate_rejects_each_corrupt_row_and_no_good_row(dirty):
    result = rifml_in_process("validate", "--input", "c.csv", "--rejects", "r.csv", "--output", "ok.csv", cwd=dirty)
    assert result.returncode == 0, result.stderr
    truth = pd.read_csv(dirty / "t.csv", dtype=str, keep_default_na=False)
    rejects = pd.read_csv(dirty / "r.csv", dtype=str, keep_default_na=False)
    accepted = pd.read_csv(dirty / "ok.csv", dtype=str, keep_default_na=False)
    corrupt = truth[truth["corruption"] != ""]
    assert corrupt["corruption"].nunique() == 6
    assert sorted(rejects["row"].astype(int)) == sorted(corrupt["row"].astype(int))
    merged = corrupt.assign(row=corrupt["row"].astype(int)).merge(rejects.assign(row=rejects["row"].astype(int)), on="row")
    assert (merged["corruption"] == merged["reason"]).all(), merged.loc[merged["corruption"] != merged["reason"], ["corruption", "reason"]]
    assert len(accepted) + len(rejects) == len(truth)
    assert f"rows in {len(truth):,} = accepted {len(accepted):,} + rejected {len(rejects):,}" in result.stdout


def test_validate_on_parquet_matches_csv(dirty):
    pd.read_csv(dirty / "c.csv", dtype=str, keep_default_na=False).to_parquet(dirty / "c.parquet")
    assert rifml_in_process("validate", "--input", "c.parquet", "--rejects", "rp.csv", cwd=dirty).returncode == 0
    assert rifml_in_process("validate", "--input", "c.csv", "--rejects", "rc.csv", cwd=dirty).returncode == 0
    pd.testing.assert_frame_equal(pd.read_csv(dirty / "rp.csv"), pd.read_csv(dirty / "rc.csv"))


def test_simulate_is_reproducible(tmp_path):
    for name in ["a.csv", "b.csv"]:
        assert rifml_in_process("simulate", "--n", 200, "--seed", 5, "--output", name, cwd=tmp_path).returncode == 0
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


@pytest.mark.parametrize(
    "run, setup, args, message",
    [
        (rifml, None, ["--input", "absent.csv"], "no such file"),
        (rifml_in_process, "", ["--input", "f.csv"], "empty"),
        (rifml_in_process, "patient_id,pb_nk_pct\n", ["--input", "f.csv"], "header only"),
        (rifml_in_process, "id,x\n1,2\n", ["--input", "f.csv"], "no patient_id column"),
    ],
    ids=["absent-process", "empty", "header-only", "no-patient-id"],
)
def test_file_problems_exit_2_with_one_line(tmp_path, run, setup, args, message):
    if setup is not None:
        (tmp_path / "f.csv").write_text(setup)
    result = run("validate", *args, "--rejects", "r.csv", cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r.csv").exists()


def test_simulate_refuses_one_file_for_two_outputs_and_writes_nothing(tmp_path):
    # through the console script: simulate's exit status and one-line stderr as a process shows them
    refused(rifml("simulate", "--n", "5", "--output", "t.csv", "--truth", "t.csv", cwd=tmp_path), "--truth t.csv", "--output t.csv")
    assert list(tmp_path.iterdir()) == []


def test_usage_errors_exit_2(tmp_path):
    assert rifml_in_process("validate", "--rejects", "r.csv", cwd=tmp_path).returncode == 2
    assert rifml_in_process("simulate", "--n", 0, "--output", "x.csv", cwd=tmp_path).returncode == 2
    assert rifml("nonsense", cwd=tmp_path).returncode == 2


def test_debug_shows_traceback(tmp_path):
    result = rifml("--debug", "validate", "--input", "absent.csv", "--rejects", "r.csv", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" in result.stderr


def test_help_lists_commands(tmp_path):
    result = rifml_in_process("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in ["simulate", "validate"]:
        assert command in result.stdout


def test_simulate_writes_parquet_with_the_same_cells_as_csv(tmp_path):
    """Parquet output (issue 12's untested list): the same seed gives the same cohort in either format."""
    for name in ("s.csv", "s.parquet"):
        result = rifml_in_process("simulate", "--n", 200, "--seed", 5, "--bad-share", 0.05, "--output", name, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    csv = pd.read_csv(tmp_path / "s.csv", dtype=str, keep_default_na=False)
    parquet = pd.read_parquet(tmp_path / "s.parquet")
    assert list(parquet.columns) == list(csv.columns) and len(parquet) == len(csv) == 200
    as_text = parquet.astype(object).where(parquet.notna(), "").astype(str)
    pd.testing.assert_frame_equal(as_text.reset_index(drop=True), csv, check_dtype=False)
