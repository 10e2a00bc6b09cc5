"""The learning loop on simulated cohorts with known subtypes: the science bars of issue 4.

Bars (stated here, measured on an independent test cohort, complete panels unless said):
  with labels     macro-F1 >= 0.85, ECE of the called class <= 0.08
  without labels  ARI(subtype, latent subtype) >= 0.60, macro-F1 of named profiles >= 0.70
  drivers         for correctly called non-balanced patients, driver_1 is a truly shifted marker in >= 80%
"""

import copy

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score, f1_score

from rifml.features import band_position
from rifml.errors import RifmlInputError
from rifml.evaluation import expected_calibration_error
from rifml.pipeline import ImmuneProfiler, _rare_profile_weights, calls_columns, mask_compartment
from rifml.simulate import simulate_cohort
from rifml.training import load_train_config, profiler_from_config
from rifml.validate import validate_chunk


def clean_cohort(catalog, n, seed):
    cohort, truth = simulate_cohort(n, seed=seed, catalog=catalog)
    checked = validate_chunk(cohort, np.arange(2, n + 2), catalog)
    return checked.panel, truth.set_index("row").loc[checked.panel.index]


@pytest.fixture(scope="module")
def cohorts(catalog):
    train, _ = clean_cohort(catalog, 2000, seed=101)
    test, truth = clean_cohort(catalog, 2500, seed=202)
    return train, test, truth


@pytest.fixture(scope="module")
def supervised(cohorts):
    train, test, _ = cohorts
    profiler = profiler_from_config(load_train_config()).fit(train, train["immune_profile"])
    return profiler, profiler.call(test)


@pytest.fixture(scope="module")
def unsupervised(cohorts):
    train, test, _ = cohorts
    profiler = profiler_from_config(load_train_config()).fit(train.drop(columns="immune_profile"))
    return profiler, profiler.call(test)


def complete(truth):
    return (truth["panel"] == "complete").to_numpy()


def test_supervised_profile_call_and_calibration(cohorts, supervised, catalog):
    _, _, truth = cohorts
    _, calls = supervised
    rows = complete(truth)
    assert f1_score(truth["immune_profile"][rows], calls["immune_profile"][rows], average="macro") >= 0.85
    proba = calls[[f"prob_{p}" for p in catalog.profiles]].to_numpy()
    correct = calls["immune_profile"].to_numpy() == truth["immune_profile"].to_numpy()
    assert expected_calibration_error(proba, correct) <= 0.08
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=len(catalog.profiles) * 0.5e-6)  # 6 decimals each


def test_every_subtype_belongs_to_its_call(supervised):
    _, calls = supervised
    assert calls["subtype_matches_profile"].all()
    assert (calls["subtype_profile"] == calls["immune_profile"]).all()


def test_balanced_calls_take_the_reference_when_no_cluster_is_balanced(cohorts, supervised):
    """Mild shifts can spread the balanced panels over the subtype clusters: then a balanced
    call's subtype is the reference itself, still coherent."""
    _, test, _ = cohorts
    profiler, before = supervised
    altered = copy.deepcopy(profiler)
    table = altered.subtype_table_
    balanced = table["profile"] == "balanced"
    assert balanced.any(), "the default world has balanced subtypes"
    renamed = {name: f"quiet{i}" for i, name in enumerate(table.loc[balanced, "subtype"])}
    altered.subtype_table_ = table.assign(
        profile=table["profile"].mask(balanced, "hyperactive"), subtype=table["subtype"].replace(renamed)
    )
    model = altered.subtype_model_
    model.classes_ = np.array([renamed.get(c, c) for c in model.classes_], dtype=model.classes_.dtype)
    calls = altered.call(test)
    called_balanced = (calls["immune_profile"] == "balanced").to_numpy()
    assert called_balanced.any()
    assert (calls.loc[called_balanced, "subtype"] == "balanced").all()
    assert (calls["subtype_profile"] == calls["immune_profile"]).all() and calls["subtype_matches_profile"].all()
    # hyperactive calls may now carry a formerly balanced subtype, balanced ones never do
    names, _ = altered.subtype_names()
    assert names[-1] == "balanced" and not calls.loc[called_balanced, "subtype"].isin(list(renamed.values())).any()
    pd.testing.assert_frame_equal(calls.filter(like="prob_"), before.filter(like="prob_"))


def test_partial_panels_are_called_with_wider_probabilities(cohorts, supervised):
    _, _, truth = cohorts
    _, calls = supervised
    top = calls.filter(like="prob_").max(axis=1).to_numpy()
    assert top[complete(truth)].mean() > top[~complete(truth)].mean() + 0.05
    expected = truth["panel"].map({"complete": "blood+endometrium", "blood_only": "blood", "biopsy_only": "endometrium"})
    assert expected.notna().all()
    assert (calls["compartments"].to_numpy() == expected.to_numpy()).all()  # every row, not one per kind


def test_unsupervised_subtypes_and_named_profiles(cohorts, unsupervised):
    _, _, truth = cohorts
    profiler, calls = unsupervised
    rows = complete(truth)
    assert adjusted_rand_score(truth["subtype"][rows], calls["subtype"][rows]) >= 0.60
    assert f1_score(truth["immune_profile"][rows], calls["immune_profile"][rows], average="macro") >= 0.70
    assert set(profiler.subtype_table_["profile"]) >= {"balanced", "hyperactive", "hypoactive"}


@pytest.mark.parametrize("mode", ["supervised", "unsupervised"])
def test_drivers_name_truly_abnormal_markers(request, cohorts, catalog, mode):
    _, _, truth = cohorts
    _, calls = request.getfixturevalue(mode)
    right = (calls["immune_profile"].to_numpy() == truth["immune_profile"].to_numpy()) & (
        truth["immune_profile"] != "balanced"
    ).to_numpy()
    shifted = truth["shifted_markers"].fillna("").str.split(";").to_numpy()
    hits = np.array([d in s for d, s in zip(calls["driver_1"], shifted)])
    assert right.sum() > 500
    assert hits[right].mean() >= 0.80
    drivers = set(calls[["driver_1", "driver_2", "driver_3"]].stack()) - {""}
    assert drivers <= set(catalog.marker_names)


def test_drivers_are_out_of_band_not_normal_rule_outs(cohorts, supervised, catalog):
    """design.md: drivers of hyperactive/hypoactive calls are out-of-band markers; a Th1-high
    patient's normal uterine markers (which merely rule out hypoactive) must not lead."""
    _, test, truth = cohorts
    _, calls = supervised
    position = band_position(test, catalog).reset_index(drop=True)
    first = calls["driver_1"].reset_index(drop=True)
    leaning = calls["immune_profile"].isin(["hyperactive", "hypoactive"]).to_numpy() & (first != "").to_numpy()
    out_of_band = [position.at[i, m] != 0 for i, m in first[leaning].items() if m in position]
    assert np.mean(out_of_band) >= 0.80
    th1 = (calls["immune_profile"] == "hyperactive").to_numpy() & (truth["subtype"] == "th1_high").to_numpy()
    th1 &= complete(truth)  # with blood measured, the Th1 markers should explain the call
    endometrial = {m.name for m in catalog.compartment_markers("endometrium")}
    assert np.mean([d in endometrial for d in calls.loc[th1, "driver_1"]]) < 0.05


def test_contributions_sum_to_calibrated_margin_minus_expected(cohorts, supervised):
    """Contributions are on the scale the softmax reads: margin / temperature (issue 10, item 5)."""
    _, test, _ = cohorts
    profiler, calls = supervised
    X = profiler.features_.transform(test.iloc[:300])
    margins = profiler.profile_model_.decision_function(X)
    called = margins.argmax(axis=1)
    per_marker = profiler.contributions(X, called)
    temperature = profiler.profile_model_.temperature_
    assert abs(temperature - 1.0) > 0.01  # otherwise this test could not tell the scales apart
    expected = profiler.explainer_.expected_value_[np.searchsorted(profiler.profile_model_.booster_classes_, called)]
    np.testing.assert_allclose(per_marker.sum(axis=1), (margins[np.arange(300), called] - expected) / temperature,
                               atol=1e-6)
    # the calls file's drivers are the same calibrated contributions, rounded
    from rifml.explain import top_drivers
    from rifml.features import measured_markers

    top = top_drivers(per_marker, measured_markers(test.iloc[:300], profiler.catalog_))["driver_1_contribution"]
    np.testing.assert_allclose(calls["driver_1_contribution"].iloc[:300], top, atol=5e-7)


def test_calls_follow_the_contract_in_input_order(cohorts, supervised, catalog):
    _, test, _ = cohorts
    _, calls = supervised
    assert list(calls.columns[: len(calls_columns(catalog))]) == calls_columns(catalog)
    assert calls["patient_id"].tolist() == test["patient_id"].tolist()
    assert calls["immune_profile"].isin(catalog.profiles).all()


def test_unknown_lab_is_flagged_not_failed(cohorts, supervised):
    _, test, _ = cohorts
    profiler, _ = supervised
    moved = test.iloc[:20].assign(lab_id="lab_never_seen")
    calls = profiler.call(moved)
    assert calls["unknown_lab"].all() and calls["immune_profile"].notna().all()


def test_mask_compartment_hides_only_that_compartment(cohorts, catalog):
    train, _, _ = cohorts
    masked = mask_compartment(train.iloc[:50], catalog, "endometrium")
    for marker in catalog.compartment_markers("endometrium"):
        assert masked[marker.name].isna().all()
    assert masked["pb_nk_pct"].equals(train.iloc[:50]["pb_nk_pct"])


def test_too_few_complete_panels_is_refused(catalog):
    panel = pd.DataFrame({"patient_id": ["a", "b"], "pb_nk_pct": [1.0, 2.0]})
    with pytest.raises(RifmlInputError, match="complete panels"):
        ImmuneProfiler().fit(panel)


def test_one_pass_drivers_match_the_explicit_path_also_for_a_two_profile_model(cohorts, catalog):
    """call() explains the call in the same pass that computes it; a two-class booster has one output,
    explained as is and flipped for the first class. Both must agree with contributions()."""
    from rifml.explain import top_drivers
    from rifml.features import measured_markers

    train, test, _ = cohorts
    two = train["immune_profile"].where(train["immune_profile"].isin(["balanced", "hyperactive"]))
    profiler = profiler_from_config(load_train_config()).fit(train, two)
    assert profiler.explainer_.n_classes_ == 1
    rows = test.iloc[:400]
    calls = profiler.call(rows)
    assert set(calls["immune_profile"]) == {"balanced", "hyperactive"}
    called = np.array([list(profiler.profile_model_.classes_).index(p) for p in calls["immune_profile"]])
    X = profiler.features_.transform(rows)
    per_marker = profiler.contributions(X, called)
    # toward the called class: +(margin - expected) for the booster's class, minus that for the other
    margin = (profiler.explainer_.margins(X.to_numpy())[:, 0] - profiler.explainer_.expected_value_[0]) / (
        profiler.profile_model_.temperature_)
    sign = np.where(np.searchsorted(profiler.profile_model_.booster_classes_, called) == 1, 1.0, -1.0)
    np.testing.assert_allclose(per_marker.sum(axis=1), sign * margin, atol=1e-9)
    expected = top_drivers(per_marker, measured_markers(rows, catalog), k=3)
    for k in (1, 2, 3):
        assert calls[f"driver_{k}"].tolist() == expected[f"driver_{k}"].astype(object).tolist()
        np.testing.assert_allclose(calls[f"driver_{k}_contribution"], expected[f"driver_{k}_contribution"], atol=5e-7)
    compact = profiler.call(rows, compact=True)
    pd.testing.assert_frame_equal(compact.astype(object), calls.astype(object))


def test_explanations_that_do_not_add_up_fail_loudly(cohorts, supervised, monkeypatch):
    """Every call checks that contributions + expected value = margin (as shap does by default)."""
    _, test, _ = cohorts
    profiler, _ = supervised
    honest = profiler.explainer_.margins_and_shap

    def skewed(X):
        raw, phi = honest(X)
        phi = phi.copy()
        phi[3, 0] += 1e-3  # one row's first feature off by a little
        return raw, phi

    monkeypatch.setattr(profiler.explainer_, "margins_and_shap", skewed)
    with pytest.raises(RuntimeError, match="additivity"):
        profiler.call(test.iloc[:20])


def test_rare_profiles_weigh_more_in_training():
    """A profile seen in 2% of complete panels weighs more than one seen in 60%; weights average 1."""
    readings = np.array(["hyperactive"] * 60 + ["balanced"] * 20 + ["hypoactive"] * 18 + ["mixed"] * 2, dtype=object)
    weights = _rare_profile_weights(readings)
    by_profile = pd.Series(weights).groupby(readings).agg(["min", "max"])
    assert (by_profile["min"] == by_profile["max"]).all()  # one weight per reading
    order = by_profile["min"].sort_values().index.tolist()
    assert order == ["hyperactive", "balanced", "hypoactive", "mixed"]
    assert weights.mean() == pytest.approx(1.0)
    assert by_profile.loc["mixed", "min"] / by_profile.loc["hyperactive", "min"] < 60 / 2  # damped, not inverse


def test_label_free_model_of_a_cohort_without_subtypes_is_not_champion(catalog):
    """A cohort of balanced patients only has no stable subtypes: k-means still cuts it, but the
    cuts do not survive resampling, so the label-free floors (subtype stability) keep such a model
    from becoming champion."""
    from rifml.simulate import SimulationConfig, load_simulation_config
    from rifml.training import train

    base = load_simulation_config().model_dump()
    only_balanced = SimulationConfig.model_validate({**base, "subtypes": {"balanced": {"profile": "balanced", "prevalence": 1.0}}})
    cohort, _ = simulate_cohort(1000, seed=5, config=only_balanced, catalog=catalog)
    panel = validate_chunk(cohort, np.arange(2, 1002), catalog).panel.drop(columns="immune_profile")
    config = load_train_config()
    config = {**config, "model": {**config["model"], "n_estimators": 10}, "subtypes": {**config["subtypes"], "n_resamples": 10}}
    result = train(panel, None, config)
    assert result.metrics["subtype_stability"] < config["label_free_floors"]["subtype_stability"]
    assert not result.floors_met
    assert any(failure.startswith("subtype_stability") for failure in result.floor_failures)
