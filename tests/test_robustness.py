"""The robustness metrics on hand-made calls and truth (each can fail), and the runner end to end.

The science bars themselves are not asserted here: they are the target of issue 10.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rifml.robustness import (
    BARS,
    Bar,
    bar_results,
    calibration_error,
    coherence,
    corruption_caught,
    driver_hit_rate,
    macro_f1,
    scenario_metrics,
    subtype_ari,
    unseen_lab_gap,
)

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ["balanced", "hyperactive", "hypoactive", "mixed"]


def calls_frame(profiles, subtype_profiles=None, drivers=None, top=0.9):
    """Calls with the called profile at probability `top`, the rest shared equally."""
    n = len(profiles)
    proba = {f"prob_{p}": [top if c == p else (1 - top) / 3 for c in profiles] for p in PROFILES}
    return pd.DataFrame(
        {
            "immune_profile": profiles,
            **proba,
            "subtype": [f"s_{p}" for p in profiles],
            "subtype_profile": subtype_profiles if subtype_profiles is not None else profiles,
            "driver_1": drivers if drivers is not None else [""] * n,
        }
    )


def truth_frame(profiles, shifted=None, labs=None, panels=None, subtypes=None):
    n = len(profiles)
    return pd.DataFrame(
        {
            "row": np.arange(n) + 2,
            "immune_profile": profiles,
            "subtype": subtypes if subtypes is not None else [f"s_{p}" for p in profiles],
            "shifted_markers": shifted if shifted is not None else [""] * n,
            "panel": panels if panels is not None else ["complete"] * n,
            "lab_id": labs if labs is not None else ["lab_A"] * n,
            "corruption": [""] * n,
        }
    )


def test_bar_holds_in_its_direction_and_skips_nan():
    assert Bar("x", 0.9).holds(0.9) is True and Bar("x", 0.9).holds(0.89) is False
    assert Bar("x", 0.03, at_most=True).holds(0.03) is True and Bar("x", 0.03, at_most=True).holds(0.05) is False
    assert Bar("x", 0.5).holds(float("nan")) is None
    assert str(Bar("coherence", 0.9)) == "coherence >= 0.9"
    results = bar_results({"coherence": 0.5, "unseen_lab_gap": float("nan")})
    assert results["coherence >= 0.9"] is False and results["unseen_lab_gap <= 0.03"] is None
    assert len(results) == len(BARS)


def test_coherence_is_one_half_on_a_half_incoherent_frame():
    calls = calls_frame(["hyperactive", "hypoactive", "balanced", "mixed"], ["hyperactive", "hyperactive", "balanced", "hypoactive"])
    assert coherence(calls) == 0.5
    assert coherence(calls_frame(["hyperactive", "balanced"])) == 1.0


def test_macro_f1_and_ari_fall_when_calls_are_wrong():
    truth = ["balanced", "hyperactive", "hypoactive", "mixed"] * 5
    assert macro_f1(truth, truth) == 1.0
    wrong = ["hyperactive"] * len(truth)
    assert macro_f1(truth, wrong) < 0.2
    assert math.isnan(macro_f1([], []))
    assert subtype_ari(["a", "a", "b", "b"], ["x", "x", "y", "y"]) == 1.0  # labels need not match, partitions do
    assert subtype_ari(["a", "a", "b", "b"], ["x", "y", "x", "y"]) < 0


def test_driver_hit_rate_counts_only_correct_non_balanced_calls():
    truth = truth_frame(
        ["hyperactive", "hyperactive", "balanced", "hypoactive"],
        shifted=["pb_nk_pct;pb_nk_cytotox_pct", "pb_nk_pct", "", "em_unk_cd56_pct"],
    )
    calls = calls_frame(
        ["hyperactive", "hyperactive", "balanced", "hyperactive"],  # last row wrong: not counted
        drivers=["pb_nk_cytotox_pct", "em_cd68_pct", "pb_nk_pct", "em_unk_cd56_pct"],
    )
    assert driver_hit_rate(calls, truth) == 0.5
    assert math.isnan(driver_hit_rate(calls_frame(["balanced"]), truth_frame(["balanced"])))


def test_unseen_lab_gap_is_seen_minus_unseen_macro_f1():
    profiles = ["balanced", "hyperactive", "hypoactive", "mixed"] * 4
    labs = ["lab_A"] * 8 + ["lab_new"] * 8
    called = profiles[:8] + ["balanced"] * 8  # perfect on the known lab, poor on the new one
    truth, calls = truth_frame(profiles, labs=labs), calls_frame(called)
    gap = unseen_lab_gap(calls, truth, {"lab_new"})
    assert gap == pytest.approx(1.0 - macro_f1(profiles[8:], called[8:]))
    assert gap > 0.5
    assert math.isnan(unseen_lab_gap(calls, truth, set()))
    assert unseen_lab_gap(calls_frame(profiles), truth, {"lab_new"}) == 0.0


def test_calibration_error_is_zero_when_confidence_matches_and_large_when_not():
    truth = ["hyperactive"] * 10
    assert calibration_error(calls_frame(truth, top=1.0), truth, _catalog()) == pytest.approx(0.0)
    wrong = calls_frame(["hypoactive"] * 10, top=0.9)
    assert calibration_error(wrong, truth, _catalog()) == pytest.approx(0.9)


def test_corruption_caught_and_clean_rejected():
    truth = truth_frame(["balanced"] * 5)
    truth.loc[[1, 3], "corruption"] = ["negative value", "not a number"]
    assert corruption_caught(truth, {3, 5}) == (1.0, 0)  # rows are file lines: index 1 -> line 3
    assert corruption_caught(truth, {3}) == (0.5, 0)
    assert corruption_caught(truth, {2, 3, 5}) == (1.0, 1)


def test_scenario_metrics_use_complete_panels_only():
    profiles = ["balanced", "hyperactive", "hypoactive", "mixed"] * 3
    panels = ["complete"] * 8 + ["blood_only"] * 4
    truth = truth_frame(profiles, panels=panels, shifted=[""] * 12)
    called = profiles[:8] + ["balanced"] * 4  # wrong only on the partial panels
    metrics = scenario_metrics(truth, calls_frame(called), calls_frame(called), set(), _catalog())
    assert metrics["supervised_f1"] == 1.0 and metrics["label_free_f1"] == 1.0 and metrics["subtype_ari"] == 1.0
    assert metrics["n_complete"] == 8 and math.isnan(metrics["unseen_lab_gap"])
    with pytest.raises(ValueError, match="rows"):
        scenario_metrics(truth, calls_frame(called[:5]), calls_frame(called), set(), _catalog())


def _catalog():
    from rifml.catalog import load_catalog

    return load_catalog()


LIGHT_TRAINING = """\
model: {n_estimators: 10, num_leaves: 4, learning_rate: 0.3, min_child_samples: 10}
subtypes: {k_min: 2, k_max: 4, n_resamples: 3, subtype_trees: 5, subsample: 0.8}
explain: {background_size: 30}
random_state: 0
n_jobs: 1
"""


def run_runner(tmp_path, *args):
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "robustness.py"), *args],
        cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"},
    )


def refusal_of_the_runner(*args):
    """The runner's command line parsed and checked in this process: a refusal answers before any training,
    so a process start (~3 s of imports) would be most of its cost. Exit code and everything printed."""
    import importlib.util

    import typer
    from typer.testing import CliRunner

    spec = importlib.util.spec_from_file_location("robustness_runner", ROOT / "benchmarks" / "robustness.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    app = typer.Typer(add_completion=False)
    app.command()(runner.main)  # as `typer.run(main)` does when the script is run
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception  # no crash
    return result.exit_code, result.stdout + result.stderr


def test_runner_end_to_end_on_one_tiny_scenario(tmp_path):
    (tmp_path / "light.yaml").write_text(LIGHT_TRAINING)
    out = tmp_path / "robustness.csv"
    result = run_runner(
        tmp_path, "--scenarios", "unseen_lab_strong", "--n-train", "300", "--n-test", "200", "--jobs", "1",
        "--train-config", "light.yaml", "--output", str(out),
    )
    assert result.returncode == 0, result.stderr
    assert "unseen_lab_strong" in result.stdout
    table = pd.read_csv(out)
    assert len(table) == 1 and table.loc[0, "scenario"] == "unseen_lab_strong"
    assert isinstance(table.loc[0, "commit"], str) and table.loc[0, "commit"]
    row = table.loc[0]
    for metric in ("supervised_f1", "label_free_f1", "coherence", "driver_1", "ece_supervised", "ece_label_free"):
        assert 0.0 <= row[metric] <= 1.0, metric
    assert -1.0 <= row["unseen_lab_gap"] <= 1.0 and row["n_unseen_complete"] > 0  # the new lab was scored
    assert row["corrupt_caught"] == 1.0 and row["clean_rejected"] == 0
    assert {str(bar) for bar in BARS} <= set(table.columns)


def test_runner_refuses_unknown_scenarios_and_equal_seeds(tmp_path):
    code, printed = refusal_of_the_runner("--scenarios", "no_such_world", "--output", tmp_path / "x.csv")
    assert code == 2 and "unknown scenario" in printed
    code, _ = refusal_of_the_runner("--train-seed", "3", "--test-seed", "3", "--output", tmp_path / "x.csv")
    assert code == 2
    assert not (tmp_path / "x.csv").exists()


def test_runner_runs_each_world_at_each_seed_pair(tmp_path):
    (tmp_path / "light.yaml").write_text(LIGHT_TRAINING)
    out = tmp_path / "robustness.csv"
    result = run_runner(
        tmp_path, "--scenarios", "default", "--n-train", "300", "--n-test", "200", "--jobs", "1",
        "--train-config", "light.yaml", "--seed-pairs", "1:2,3:4", "--output", str(out),
    )
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(out)
    assert sorted(zip(table["train_seed"], table["test_seed"])) == [(1, 2), (3, 4)]
    assert table["label_free_f1"].nunique() == 2  # two draws, not one row written twice
    assert "seed pair 3:4" in result.stdout and "mean over the seed pairs" in result.stdout
    assert f"{table['supervised_f1'].mean():.3f}" in result.stdout


@pytest.mark.parametrize("pairs", ["1:1", "1-2", "1:2:3", ","])
def test_runner_refuses_bad_seed_pairs(tmp_path, pairs):
    code, printed = refusal_of_the_runner("--seed-pairs", pairs, "--output", tmp_path / "x.csv")
    assert code == 2 and "seed-pairs" in printed
    assert not (tmp_path / "x.csv").exists()
