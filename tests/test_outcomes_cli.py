"""rifml simulate --outcomes, rifml outcomes and rifml plan-trial end to end on the command line,
in a temp directory with a real SQLite MLflow store. Calls come from the simulator's latent truth
(no model training), shaped like a calls file.

The commands run in this process (`rifml_in_process`: the same command lines without ~3 s of imports each);
one refusal of each command goes through the console script, for the exit status and stderr a process shows."""

from pathlib import Path

import pandas as pd
import pytest

from cli_support import rifml, rifml_in_process

N = 4000


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    work = tmp_path_factory.mktemp("outcomes")
    result = rifml_in_process("simulate", "--n", N, "--seed", 3, "--bad-share", 0.02, "--output", "panels.csv",
                              "--truth", "truth.csv", "--outcomes", "outcomes.csv", cwd=work)
    assert result.returncode == 0, result.stderr
    assert "wrote outcomes of" in result.stdout
    truth = pd.read_csv(work / "truth.csv", dtype=str, keep_default_na=False)
    clean = truth[truth["corruption"] == ""]  # what scoring would have called
    clean.assign(subtype_profile=clean["immune_profile"])[["patient_id", "immune_profile", "subtype", "subtype_profile"]].to_csv(
        work / "calls.csv", index=False
    )
    return work


@pytest.fixture(scope="module")
def analysed(registry):
    result = rifml_in_process("outcomes", "--panels", "panels.csv", "--calls", "calls.csv", "--outcomes", "outcomes.csv",
                              "--output", "out", "--adjust", "age_years,embryo_quality",
                              "--tracking-uri", f"sqlite:///{registry / 'mlflow.db'}", cwd=registry)
    assert result.returncode == 0, result.stderr
    return registry, result


def test_simulated_registry_has_the_contract_columns(registry):
    outcomes = pd.read_csv(registry / "outcomes.csv", dtype=str, keep_default_na=False)
    assert list(outcomes.columns) == ["patient_id", "treatment", "embryo_quality", "live_birth"]
    assert len(outcomes) == N
    assert set(outcomes["live_birth"]) == {"0", "1"}
    assert "none" in set(outcomes["treatment"])
    rate = outcomes["live_birth"].astype(int).mean()
    assert 0.25 <= rate <= 0.40, rate  # domain.md: live birth ~30-40% (dysregulated cohorts nearer 30%)


def test_simulate_without_outcomes_is_unchanged(registry, tmp_path):
    # The registry has its own random stream: the cohort file is the same with or without --outcomes.
    assert rifml_in_process("simulate", "--n", N, "--seed", 3, "--bad-share", 0.02, "--output", "p.csv", cwd=tmp_path).returncode == 0
    assert (tmp_path / "p.csv").read_bytes() == (registry / "panels.csv").read_bytes()


def test_outcomes_writes_the_contract_files_and_accounts_for_every_row(analysed):
    work, result = analysed
    out = work / "out"
    effects = pd.read_csv(out / "effects.csv")
    assert list(effects.columns[:14]) == [
        "level", "group", "treatment", "n_treated", "n_untreated", "events_treated", "events_untreated",
        "odds_ratio", "ci_low", "ci_high", "p_value", "p_holm", "crude_odds_ratio", "adjusted_for",
    ]
    assert set(effects["level"]) == {"profile", "subtype"}
    assert effects["estimable"].any()
    assert effects.loc[~effects["estimable"], "odds_ratio"].isna().all()
    rates = pd.read_csv(out / "rates.csv")
    assert {"level", "group", "n", "events", "rate", "rate_ci_low", "rate_ci_high"} <= set(rates.columns)
    rejects = pd.read_csv(out / "rejects.csv", dtype=str, keep_default_na=False)
    assert list(rejects.columns) == ["row", "patient_id", "column", "value", "reason"]
    # corrupt panels were never called: their outcomes rows are rejected, each with a reason
    assert len(rejects) > 0 and (rejects["reason"] != "").all()
    last = result.stdout.strip().splitlines()[-1]
    assert last == f"rows in {N:,} = analysed {N - len(rejects):,} + rejected {len(rejects):,}"
    assert (out / "forest_profile.png").stat().st_size > 1000


def test_outcomes_page_shows_plots_tests_and_the_caveats(analysed):
    page = (analysed[0] / "out" / "index.html").read_text()
    assert page.count("data:image/png;base64,") >= 3
    for phrase in ["Observational data", "Residual confounding", "randomized trials", "ESHRE good practice recommendations on RIF",
                   "age_years, embryo_quality", "interaction", "Holm"]:
        assert phrase in page, phrase


def test_outcomes_run_is_logged_without_patient_ids(analysed):
    import mlflow

    work, _ = analysed
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("rifml-outcomes")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params["adjusted_for"] == "age_years,embryo_quality"
    assert run.data.metrics["patients_analysed"] > 0
    local = Path(client.download_artifacts(run.info.run_id, "", dst_path=str(work / "artifacts")))
    files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    assert {"tables/effects.csv", "tables/rates.csv", "plots/forest_profile.png", "index.html"} <= set(files)
    ids = pd.read_csv(work / "outcomes.csv", dtype=str, keep_default_na=False)["patient_id"]
    text = " ".join((local / f).read_text(errors="ignore") for f in files if not f.endswith(".png"))
    text += " ".join(map(str, run.data.params.values()))
    assert not any(pid and pid in text for pid in ids.head(300))


def test_plan_trial_with_and_without_outcomes(analysed):
    work, _ = analysed
    result = rifml_in_process("plan-trial", "--calls", "calls.csv", "--effect", "0.10", "--output", "plan.csv", cwd=work)
    assert result.returncode == 0, result.stderr
    plan = pd.read_csv(work / "plan.csv")
    assert set(plan["level"]) == {"profile", "subtype"}
    assert (plan["control_rate"] == 0.3).all() and (plan["patients_per_arm"] == 356).all()
    calls = pd.read_csv(work / "calls.csv")
    balanced = plan[(plan["level"] == "profile") & (plan["group"] == "balanced")].iloc[0]
    assert balanced["n_calls"] == (calls["immune_profile"] == "balanced").sum()
    assert balanced["patients_to_screen"] == -(-712 * len(calls) // balanced["n_calls"])  # ceil(712 / prevalence)
    assert "balanced" in result.stdout and "to screen" in result.stdout

    result = rifml_in_process("plan-trial", "--calls", "calls.csv", "--outcomes", "outcomes.csv", "--effect", "0.1",
                              "--output", "plan2.csv", cwd=work)
    assert result.returncode == 0, result.stderr
    observed = pd.read_csv(work / "plan2.csv")
    assert observed["control_rate_source"].str.startswith("untreated (n=").any()
    assert "rows in" in result.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "run, args, message",
    [
        (rifml, ["plan-trial", "--calls", "calls.csv", "--effect", "0"], "--effect"),
        (rifml_in_process, ["plan-trial", "--calls", "outcomes.csv", "--effect", "0.1"], "no immune_profile"),
        (rifml, ["outcomes", "--panels", "panels.csv", "--calls", "calls.csv", "--outcomes", "outcomes.csv",
                 "--output", "o2", "--adjust", "bmi"], "--adjust bmi"),
        (rifml_in_process, ["outcomes", "--panels", "panels.csv", "--calls", "calls.csv", "--outcomes", "absent.csv",
                            "--output", "o3"], "no such file"),
        (rifml_in_process, ["outcomes", "--panels", "panels.csv", "--calls", "calls.csv", "--outcomes", "outcomes.csv",
                            "--output", "calls.csv"], "would destroy the input"),
    ],
    ids=["plan-trial-effect-process", "plan-trial-no-profile", "outcomes-adjust-process", "outcomes-absent",
         "outcomes-destroys-input"],
)
def test_bad_input_exits_2_with_one_line(registry, run, args, message):
    result = run(*args, cwd=registry)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
