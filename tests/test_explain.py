"""The fast explainer is exact: equal to shap's interventional TreeExplainer, summing to the margin."""

import itertools
import math
import pickle

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import shap

from rifml.errors import RifmlInputError
from rifml.explain import ARGMAX, COVERAGE, InterventionalExplainer, check_tree_settings, leaves, marker_contributions, top_drivers
from rifml.explain import explainer as explainer_module
from rifml.explain.leaves import LeafTable, leaf_table
from rifml.explain.patterns import TreeTable, pattern_table
from rifml.explain.trees import Branches, SplitNodes, parse_tree
from rifml.model import CalibratedBoostedClassifier
from rifml.pipeline import ImmuneProfiler


def random_model(seed, n_classes=4, missing_rate=0.2, n_features=12, num_leaves=8, n_rows=1500, n_estimators=40, **params):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, n_features))
    X[rng.random(X.shape) < missing_rate] = np.nan
    X[rng.random(X.shape) < 0.05] = 0.0  # exact zeros exercise LightGBM's zero handling
    signal = np.nan_to_num(X[:, 0]) + 0.7 * np.nan_to_num(X[:, 1]) * np.nan_to_num(X[:, 2]) + rng.normal(0, 0.3, len(X))
    y = np.digitize(signal, np.quantile(signal, np.linspace(0, 1, n_classes + 1)[1:-1]))
    model = lgb.LGBMClassifier(
        n_estimators=n_estimators, num_leaves=num_leaves, verbose=-1, n_jobs=1, random_state=seed, **params
    ).fit(X, y)
    return model, X, rng


def assert_matches_shap(model, X, background, explainer, rows=200):
    """Margins bitwise equal to LightGBM; SHAP of every class equal to shap's interventional
    TreeExplainer to 1e-6; each row's SHAP summing to its margin minus the expected value."""
    raw = model.booster_.predict(X, raw_score=True).reshape(len(X), -1)
    np.testing.assert_array_equal(explainer.margins(X), raw)  # routing reproduces LightGBM exactly
    rows = X[:rows]
    reference = shap.TreeExplainer(model, data=background, feature_perturbation="interventional", model_output="raw")
    expected = np.asarray(reference.shap_values(rows, check_additivity=False))
    if expected.ndim == 2:  # binary: one output
        expected = expected[:, :, None]
    for c in range(raw.shape[1]):
        ours = explainer.shap_values(rows, c)
        np.testing.assert_allclose(ours, expected[:, :, c], atol=1e-6)
        np.testing.assert_allclose(ours.sum(axis=1), raw[: len(rows), c] - explainer.expected_value_[c], atol=1e-9)


@pytest.mark.parametrize("seed, n_classes, missing_rate", [(0, 4, 0.2), (1, 3, 0.0), (2, 4, 0.5), (3, 2, 0.1)])
def test_matches_shap_interventional_and_sums_to_margin(seed, n_classes, missing_rate):
    model, X, rng = random_model(seed, n_classes, missing_rate)
    background = X[rng.choice(len(X), 60, replace=False)]
    assert_matches_shap(model, X, background, InterventionalExplainer(model.booster_, background))


LARGE_TREES = [
    # seed, classes, missing rate, num_leaves, max_depth, LightGBM missing-value setting
    # (shap's explainer follows only the "NaN" missing type; the others: brute-force test below)
    (10, 4, 0.2, 31, -1, {}),
    (11, 3, 0.3, 63, -1, {}),
    (12, 2, 0.1, 63, 12, {}),
    (13, 4, 0.4, 255, 12, {}),
    (14, 3, 0.0, 255, -1, {}),
]


@pytest.mark.parametrize("seed, n_classes, missing_rate, num_leaves, max_depth, params", LARGE_TREES)
def test_large_trees_match_shap_interventional(seed, n_classes, missing_rate, num_leaves, max_depth, params):
    model, X, rng = random_model(
        seed, n_classes, missing_rate, num_leaves=num_leaves, n_rows=5000, n_estimators=12, max_depth=max_depth,
        min_child_samples=5, **params,
    )
    background = X[rng.choice(len(X), 50, replace=False)]
    explainer = InterventionalExplainer(model.booster_, background)
    trees = [t for per_class in explainer.trees_ for t in per_class]
    # the leaf-by-leaf path is what is tested here, on trees near the requested size
    assert max(len(t.leaf_values) for t in trees if isinstance(t, LeafTable)) > num_leaves // 2
    assert_matches_shap(model, X, background, explainer, rows=100)


def brute_force_shap(booster, rows, background, c):
    """Interventional SHAP of class c's raw margin from its definition: every coalition of features
    taken from the row, the rest from a reference, evaluated by LightGBM itself, averaged over the
    background. Independent of any tree algorithm (and of how missing values are routed)."""
    n = rows.shape[1]
    coalitions = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(bool)  # (2**n, n)
    size = coalitions.sum(axis=1)
    weight = np.array([math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n) for k in range(n)])
    out = np.zeros(rows.shape)
    for z in background:
        hybrids = np.where(coalitions[None], rows[:, None, :], z[None, None, :]).reshape(-1, n)
        value = booster.predict(hybrids, raw_score=True).reshape(len(rows), 2**n, -1)[:, :, c]
        for i in range(n):
            without = ~coalitions[:, i]
            with_i = np.flatnonzero(without) | (1 << i)
            out[:, i] += (value[:, with_i] - value[:, without]) @ weight[size[without]]
    return out / len(background)


@pytest.mark.parametrize("num_leaves", [8, 63])
@pytest.mark.parametrize("params", [{"zero_as_missing": True}, {"use_missing": False}])
def test_other_missing_types_match_the_definition(params, num_leaves):
    """LightGBM's "Zero" (NaN and zeros go the default way) and "None" (NaN reads as 0) missing types,
    which shap's explainer does not follow (its own sums miss the margins): checked against the
    definition of interventional SHAP, evaluated by LightGBM."""
    model, X, rng = random_model(
        17, 3, 0.3, n_features=7, num_leaves=num_leaves, n_rows=4000, n_estimators=10, min_child_samples=5, **params
    )
    X[:20:2, :3] = 0.0  # rows with zeros where the trees split
    background = X[rng.choice(len(X), 12, replace=False)]
    explainer = InterventionalExplainer(model.booster_, background)
    assert any(isinstance(t, LeafTable) for c in explainer.trees_ for t in c) == (num_leaves > 8)
    for c in range(3):
        np.testing.assert_allclose(explainer.shap_values(X[:20], c), brute_force_shap(model.booster_, X[:20], background, c), atol=1e-9)


@pytest.mark.parametrize("table_values", [0, 10**6])
def test_leaf_tables_and_grouped_sums_agree(monkeypatch, table_values):
    """Each leaf is explained from a table over its masks or by summing its background groups: both exact."""
    monkeypatch.setattr(leaves, "MAX_TABLE_VALUES", table_values)
    model, X, rng = random_model(15, 4, 0.2, num_leaves=31, n_rows=3000, n_estimators=8, max_depth=6, min_child_samples=5)
    background = X[rng.choice(len(X), 40, replace=False)]
    explainer = InterventionalExplainer(model.booster_, background)
    big = [t for per_class in explainer.trees_ for t in per_class if isinstance(t, LeafTable)]
    full_table = np.concatenate([t.full_table for t in big])
    assert full_table.all() if table_values else full_table.mean() < 0.5
    assert_matches_shap(model, X, background, explainer, rows=100)


def test_models_mixing_small_and_large_trees(monkeypatch):
    """Tree sizes vary within a model, so one explainer holds both kinds; here every other tree goes
    each way (either kind explains any tree), and margins still sum in LightGBM's order."""
    model, X, rng = random_model(16, 3, 0.2, num_leaves=8, n_estimators=20)
    kinds = itertools.cycle([pattern_table, leaf_table])
    monkeypatch.setattr(explainer_module, "explain_tree", lambda structure, bg: next(kinds)(parse_tree(structure), bg))
    background = X[rng.choice(len(X), 40, replace=False)]
    explainer = InterventionalExplainer(model.booster_, background)
    kinds = {type(t) for per_class in explainer.trees_ for t in per_class}
    assert kinds == {TreeTable, LeafTable}
    assert_matches_shap(model, X, background, explainer, rows=100)


def test_both_table_forms_keep_the_parsed_tree_s_split_nodes():
    """A pattern table and a leaf table declare no split-node fields of their own: they route rows as the tree does."""
    model, X, _ = random_model(20, n_estimators=2)
    tree = parse_tree(model.booster_.dump_model()["tree_info"][0]["tree_structure"])
    background = X[:50]
    small, large = pattern_table(tree, background), leaf_table(tree, background)
    assert isinstance(small, SplitNodes) and isinstance(large, Branches) and not isinstance(small, Branches)
    for table in (small, large):
        assert table.n_nodes == tree.n_nodes > 1
        np.testing.assert_array_equal(table.decisions(X), tree.decisions(X))
    np.testing.assert_array_equal(large.left, tree.left)
    np.testing.assert_array_equal(large.right, tree.right)


@pytest.mark.parametrize("num_leaves", [8, 63])
def test_one_class_per_row_equals_full_computation(num_leaves):
    model, X, rng = random_model(4, num_leaves=num_leaves, n_estimators=15)
    explainer = InterventionalExplainer(model.booster_, X[:50])
    called = rng.integers(0, 4, 300)
    mixed = explainer.shap_values(X[:300], called)
    for c in range(4):
        rows = called == c
        np.testing.assert_allclose(mixed[rows], explainer.shap_values(X[:300][rows], c))


@pytest.mark.parametrize("num_leaves", [8, 63])
@pytest.mark.parametrize("params", [{"zero_as_missing": True}, {"use_missing": False}, {}])
def test_routing_follows_lightgbm_missing_value_rules(params, num_leaves):
    """"Zero", "None" and "NaN" missing types: NaN and zeros go where LightGBM sends them."""
    rng = np.random.default_rng(7)
    X = rng.normal(size=(2000, 6))
    X[rng.random(X.shape) < 0.2] = np.nan
    X[rng.random(X.shape) < 0.1] = 0.0
    X[:50, 0] = 1e-40  # below LightGBM's zero tolerance: a zero under "Zero"
    y = (np.nan_to_num(X[:, 0], nan=1.0) + np.isnan(X[:, 1]) + (X[:, 2] == 0) > 0.5).astype(int) + (X[:, 3] > 0)
    model = lgb.LGBMClassifier(n_estimators=30, num_leaves=num_leaves, verbose=-1, n_jobs=1, **params).fit(X, y)
    explainer = InterventionalExplainer(model.booster_, X[:40])
    assert any(isinstance(t, LeafTable) for c in explainer.trees_ for t in c) == (num_leaves > 8)
    raw = model.booster_.predict(X, raw_score=True)
    np.testing.assert_array_equal(explainer.margins(X), raw)
    # the tables route the background in numpy, the kernel routes rows: the same rule, or sums drift
    for c in range(raw.shape[1]):
        phi = explainer.shap_values(X[:300], c)
        np.testing.assert_allclose(phi.sum(axis=1), raw[:300, c] - explainer.expected_value_[c], atol=1e-9)


@pytest.mark.parametrize("num_leaves", [8, 63])
def test_one_pass_explains_the_highest_margin_class(num_leaves):
    model, X, _ = random_model(5, num_leaves=num_leaves, n_estimators=15)
    explainer = InterventionalExplainer(model.booster_, X[:50])
    margins, phi = explainer.margins_and_shap(X)
    np.testing.assert_array_equal(margins, explainer.margins(X))
    np.testing.assert_array_equal(phi, explainer.shap_values(X, margins.argmax(axis=1)))


def test_a_few_rows_run_on_as_many_threads_as_blocks_with_the_same_answer():
    import numba

    model, X, _ = random_model(7, n_estimators=15)
    explainer = InterventionalExplainer(model.booster_, X[:50])
    threads = numba.get_num_threads()
    argmax = np.full(3, ARGMAX)
    small = explainer._run(X[:3], argmax, True, execution="compiled")  # one block: one thread
    assert numba.get_num_threads() == threads  # the caller's setting is restored
    whole = explainer._run(X, np.full(len(X), ARGMAX), True, execution="compiled")  # 1,500 rows: six blocks
    for got, expected in zip(small, whole):
        np.testing.assert_array_equal(got, expected[:3])


@pytest.mark.parametrize("num_leaves", [8, 63])
def test_pickles_without_kernel_arrays_and_rebuilds_them(num_leaves):
    model, X, _ = random_model(6, num_leaves=num_leaves, n_estimators=15)
    explainer = InterventionalExplainer(model.booster_, X[:50])
    state = explainer.__getstate__()
    assert "trees_" in state and not any(k in state for k in InterventionalExplainer._PACKED)
    loaded = pickle.loads(pickle.dumps(explainer))
    np.testing.assert_array_equal(loaded.margins_and_shap(X)[1], explainer.margins_and_shap(X)[1])


def _both_executions(explainer, X, classes):
    """(compiled, vectorized) results of margins alone and of margins with SHAP for ``classes``."""
    return [
        (explainer._run(X, np.empty(0, dtype=np.int64), False, execution=execution)[0],
         *explainer._run(X, np.ascontiguousarray(classes, dtype=np.int64), True, execution=execution))
        for execution in ("compiled", "vectorized")
    ]


@pytest.mark.parametrize("seed, n_classes, params", [
    (20, 4, {}), (21, 2, {}), (22, 3, {"zero_as_missing": True}), (23, 4, {"use_missing": False}),
    (24, 3, {"num_leaves": 11, "max_depth": 6}),  # 10 splits: the largest pattern tables
])
def test_the_numpy_pass_gives_the_kernel_s_bits(seed, n_classes, params):
    """Small batches skip numba (vectorized.py): margins and SHAP values must be the compiled kernel's,
    bit for bit, for the highest-margin class, a class per row and one class, across row blocks."""
    model, X, rng = random_model(seed, n_classes, 0.3, n_estimators=25, n_rows=5000, **params)
    explainer = InterventionalExplainer(model.booster_, X[rng.choice(len(X), 80, replace=False)])
    assert all(isinstance(t, TreeTable) for c in explainer.trees_ for t in c)
    n_out = explainer.n_classes_
    for classes in (np.full(len(X), ARGMAX), rng.integers(0, n_out, len(X)), np.full(len(X), n_out - 1)):
        compiled, vectorized = _both_executions(explainer, X, classes)  # 5,000 rows: two numpy blocks
        for ours, kernel in zip(vectorized, compiled):
            assert ours.shape == kernel.shape and ours.flags.c_contiguous
            np.testing.assert_array_equal(ours, kernel)
    np.testing.assert_array_equal(compiled[0], model.booster_.predict(X, raw_score=True).reshape(len(X), -1))
    for rows in (X[:0], X[:1]):
        compiled, vectorized = _both_executions(explainer, rows, np.full(len(rows), ARGMAX))
        for ours, kernel in zip(vectorized, compiled):
            np.testing.assert_array_equal(ours, kernel)
            assert ours.shape == kernel.shape


def test_the_numpy_pass_takes_single_leaf_trees_and_leaves_large_trees_to_the_kernel():
    X = np.zeros((100, 3))
    y = np.r_[np.zeros(50), np.ones(50)]
    stump = lgb.LGBMClassifier(n_estimators=3, verbose=-1, min_child_samples=60, n_jobs=1).fit(X, y)
    explainer = InterventionalExplainer(stump.booster_, X[:5])
    compiled, vectorized = _both_executions(explainer, X, np.full(len(X), ARGMAX))
    for ours, kernel in zip(vectorized, compiled):
        np.testing.assert_array_equal(ours, kernel)
    model, X, _ = random_model(25, num_leaves=31, n_estimators=5)
    large = InterventionalExplainer(model.booster_, X[:50])
    with pytest.raises(ValueError, match="pattern trees only"):
        large._run(X[:10], np.full(10, ARGMAX), True, execution="vectorized")
    np.testing.assert_array_equal(large.margins(X[:10]), model.booster_.predict(X[:10], raw_score=True))  # auto: the kernel


def test_single_leaf_trees_and_bad_background():
    X = np.zeros((100, 3))
    y = np.r_[np.zeros(50), np.ones(50)]
    model = lgb.LGBMClassifier(n_estimators=3, verbose=-1, min_child_samples=60, n_jobs=1).fit(X, y)
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


def test_drivers_read_markers_by_name_whatever_the_column_order():
    """Markers in the contributions' leading columns are read in place; any other order gives the same drivers."""
    rng = np.random.default_rng(3)
    values = np.round(rng.normal(size=(200, 4)), 1)  # ties, so the first-listed marker must win them
    leading = pd.DataFrame(values, columns=["a", "b", "c", COVERAGE])
    shuffled = leading[[COVERAGE, "c", "a", "b"]]
    measured = pd.DataFrame(rng.random((200, 3)) < 0.8, columns=["a", "b", "c"])
    drivers = top_drivers(leading, measured, k=3)
    pd.testing.assert_frame_equal(drivers, top_drivers(shuffled, measured, k=3))
    first = np.where(measured.to_numpy(), values[:, :3], -np.inf).argmax(axis=1)  # first index on ties
    pushed = np.where(measured.to_numpy(), values[:, :3], -np.inf).max(axis=1) > 0
    assert drivers["driver_1"].tolist() == [["a", "b", "c"][j] if p else "" for j, p in zip(first, pushed)]


@pytest.mark.parametrize("num_leaves", [1, 0, 2.5, "63", True, 200_000])
def test_unsupported_tree_settings_are_refused_before_any_fit(num_leaves):
    panel = pd.DataFrame({"patient_id": ["a", "b"], "pb_nk_pct": [1.0, 2.0]})  # too few panels to fit anything
    with pytest.raises(RifmlInputError, match="num_leaves"):
        ImmuneProfiler(classifier=CalibratedBoostedClassifier(num_leaves=num_leaves)).fit(panel)


def test_every_tree_size_is_accepted_unless_paths_could_outgrow_the_masks():
    for num_leaves, n_features in [(2, 40), (63, 40), (255, 40), (131072, 62), (63, 500)]:
        check_tree_settings(num_leaves, n_features)
    with pytest.raises(RifmlInputError, match="distinct features"):
        check_tree_settings(255, 63)
