"""The fast explainer is exact: equal to shap's interventional TreeExplainer, summing to the margin."""

import pickle

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import shap

from rifml.explain import COVERAGE, InterventionalExplainer, marker_contributions, top_drivers


def random_model(seed, n_classes=4, missing_rate=0.2, n_features=12, num_leaves=8):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(1500, n_features))
    X[rng.random(X.shape) < missing_rate] = np.nan
    X[rng.random(X.shape) < 0.05] = 0.0  # exact zeros exercise LightGBM's zero handling
    signal = np.nan_to_num(X[:, 0]) + 0.7 * np.nan_to_num(X[:, 1]) * np.nan_to_num(X[:, 2]) + rng.normal(0, 0.3, len(X))
    y = np.digitize(signal, np.quantile(signal, np.linspace(0, 1, n_classes + 1)[1:-1]))
    model = lgb.LGBMClassifier(n_estimators=40, num_leaves=num_leaves, verbose=-1, n_jobs=1, random_state=seed).fit(X, y)
    return model, X, rng


@pytest.mark.parametrize("seed, n_classes, missing_rate", [(0, 4, 0.2), (1, 3, 0.0), (2, 4, 0.5), (3, 2, 0.1)])
def test_matches_shap_interventional_and_sums_to_margin(seed, n_classes, missing_rate):
    model, X, rng = random_model(seed, n_classes, missing_rate)
    background = X[rng.choice(len(X), 60, replace=False)]
    explainer = InterventionalExplainer(model.booster_, background)
    raw = model.booster_.predict(X, raw_score=True).reshape(len(X), -1)
    np.testing.assert_array_equal(explainer.margins(X), raw)  # routing reproduces LightGBM exactly

    rows = X[:200]
    reference = shap.TreeExplainer(model, data=background, feature_perturbation="interventional", model_output="raw")
    expected = np.asarray(reference.shap_values(rows))
    if expected.ndim == 2:  # binary: one output
        expected = expected[:, :, None]
    for c in range(raw.shape[1]):
        ours = explainer.shap_values(rows, c)
        np.testing.assert_allclose(ours, expected[:, :, c], atol=1e-6)
        np.testing.assert_allclose(ours.sum(axis=1), raw[:200, c] - explainer.expected_value_[c], atol=1e-9)


def test_one_class_per_row_equals_full_computation():
    model, X, rng = random_model(4)
    explainer = InterventionalExplainer(model.booster_, X[:50])
    called = rng.integers(0, 4, 300)
    mixed = explainer.shap_values(X[:300], called)
    for c in range(4):
        rows = called == c
        np.testing.assert_allclose(mixed[rows], explainer.shap_values(X[:300][rows], c))


@pytest.mark.parametrize("params", [{"zero_as_missing": True}, {"use_missing": False}, {}])
def test_routing_follows_lightgbm_missing_value_rules(params):
    """"Zero", "None" and "NaN" missing types: NaN and zeros go where LightGBM sends them."""
    rng = np.random.default_rng(7)
    X = rng.normal(size=(2000, 6))
    X[rng.random(X.shape) < 0.2] = np.nan
    X[rng.random(X.shape) < 0.1] = 0.0
    X[:50, 0] = 1e-40  # below LightGBM's zero tolerance: a zero under "Zero"
    y = (np.nan_to_num(X[:, 0], nan=1.0) + np.isnan(X[:, 1]) + (X[:, 2] == 0) > 0.5).astype(int) + (X[:, 3] > 0)
    model = lgb.LGBMClassifier(n_estimators=30, num_leaves=8, verbose=-1, n_jobs=1, **params).fit(X, y)
    explainer = InterventionalExplainer(model.booster_, X[:40])
    raw = model.booster_.predict(X, raw_score=True)
    np.testing.assert_array_equal(explainer.margins(X), raw)
    # the tables route the background in numpy, the kernel routes rows: the same rule, or sums drift
    for c in range(raw.shape[1]):
        phi = explainer.shap_values(X[:300], c)
        np.testing.assert_allclose(phi.sum(axis=1), raw[:300, c] - explainer.expected_value_[c], atol=1e-9)


def test_one_pass_explains_the_highest_margin_class():
    model, X, _ = random_model(5)
    explainer = InterventionalExplainer(model.booster_, X[:50])
    margins, phi = explainer.margins_and_shap(X)
    np.testing.assert_array_equal(margins, explainer.margins(X))
    np.testing.assert_array_equal(phi, explainer.shap_values(X, margins.argmax(axis=1)))


def test_pickles_without_kernel_arrays_and_rebuilds_them():
    model, X, _ = random_model(6)
    explainer = InterventionalExplainer(model.booster_, X[:50])
    state = explainer.__getstate__()
    assert "_table" not in state and "trees_" in state
    loaded = pickle.loads(pickle.dumps(explainer))
    np.testing.assert_array_equal(loaded.margins_and_shap(X)[1], explainer.margins_and_shap(X)[1])


def test_single_leaf_trees_and_bad_background():
    X = np.zeros((100, 3))
    y = np.r_[np.zeros(50), np.ones(50)]
    model = lgb.LGBMClassifier(n_estimators=3, verbose=-1, min_child_samples=60).fit(X, y)
    explainer = InterventionalExplainer(model.booster_, X[:5])
    assert np.all(explainer.shap_values(X[:3], 0) == 0)
    with pytest.raises(ValueError):
        InterventionalExplainer(model.booster_, np.zeros((0, 3)))


def test_marker_sums_keep_the_total_and_split_shared_features():
    phi = np.array([[1.0, 2.0, 4.0, 8.0]])
    names = ["a", "a__censored", "a_x_b", "missing__blood"]
    mapping = {"a": ("a",), "a__censored": ("a",), "a_x_b": ("a", "b"), "missing__blood": ()}
    out = marker_contributions(phi, names, mapping, ["a", "b"])
    assert out.loc[0, "a"] == 5.0 and out.loc[0, "b"] == 2.0 and out.loc[0, COVERAGE] == 8.0
    assert out.sum(axis=1).iloc[0] == phi.sum()


def test_drivers_are_measured_markers_pushing_toward_the_call():
    contributions = pd.DataFrame({"a": [0.5, -1.0], "b": [2.0, -0.5], "c": [1.0, 0.2], COVERAGE: [9.0, 9.0]})
    measured = pd.DataFrame({"a": [True, True], "b": [False, True], "c": [True, True]})
    drivers = top_drivers(contributions, measured, k=3)
    assert drivers.loc[0, ["driver_1", "driver_2", "driver_3"]].tolist() == ["c", "a", ""]
    assert drivers.loc[1, ["driver_1", "driver_2"]].tolist() == ["c", ""]
    assert np.isnan(drivers.loc[1, "driver_2_contribution"])
