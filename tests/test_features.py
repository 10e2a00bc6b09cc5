"""Tests for rifml.features: the clean panel -> model features step.

Marker names come from the catalog (its markers and its NK/HLA-C interaction), never spelled here,
so the tests follow the catalog if it grows.
"""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import check_estimator

from rifml.catalog import load_catalog
from rifml.features import (
    FlooredLog,
    PanelFeatures,
    _distinct_rows,
    band_position,
)

CATALOG = load_catalog()
NUMERIC = CATALOG.numeric_markers
LOG_MARKERS = [m for m in NUMERIC if m.transform == "log"]
DRIFTING = [m.name for m in NUMERIC if m.drifts]
STEADY = [m.name for m in NUMERIC if not m.drifts]
CENSORABLE = [m.name for m in NUMERIC if m.censorable]
BLOOD = [m.name for m in CATALOG.compartment_markers("blood") if m.is_numeric]
ENDO = [m.name for m in CATALOG.compartment_markers("endometrium") if m.is_numeric]
INCOMPATIBILITY_FEATURE = CATALOG.interactions[0].name
(KIR, KIR_RISK), (HLA, HLA_RISK) = CATALOG.interactions[0].when.items()
KIR_OTHER = next(c for c in CATALOG.by_name[KIR].categories if c != KIR_RISK)
HLA_OTHER = next(c for c in CATALOG.by_name[HLA].categories if c != HLA_RISK)


def make_panel(n: int = 30, lab: str = "A", seed: int = 0) -> pd.DataFrame:
    """A complete clean panel: log-normal values inside each marker's valid range."""
    rng = np.random.default_rng(seed)
    data: dict[str, object] = {"patient_id": [f"{lab}{i}" for i in range(n)], "lab_id": [lab] * n}
    for marker in NUMERIC:
        low, high = marker.reference_band
        centre = max((low + high) / 2, 0.5)
        data[marker.name] = np.clip(centre * rng.lognormal(0.0, 0.4, n), 0.01, 99.0)
        if marker.censorable:
            data[f"{marker.name}__censored"] = np.zeros(n, dtype=bool)
    data[KIR] = rng.choice([KIR_RISK, KIR_OTHER], n)
    data[HLA] = rng.choice([HLA_RISK, HLA_OTHER], n)
    return pd.DataFrame(data)


@pytest.fixture(scope="module")
def panel() -> pd.DataFrame:
    return make_panel()


@pytest.fixture(scope="module")
def fitted(panel) -> PanelFeatures:
    return PanelFeatures().fit(panel)


# -- log transform, zeros, censoring ----------------------------------------------------


def test_log_features_are_natural_log_of_hand_made_values():
    name = LOG_MARKERS[0].name
    panel = pd.DataFrame({"patient_id": ["a", "b", "c"], name: [1.0, 10.0, 100.0]})
    out = PanelFeatures().fit_transform(panel)
    np.testing.assert_allclose(out[name], np.log([1.0, 10.0, 100.0]))


def test_exact_zero_gets_half_the_smallest_positive_value():
    name = LOG_MARKERS[0].name
    panel = pd.DataFrame({"patient_id": ["a", "b", "c"], name: [0.0, 2.0, 4.0]})
    features = PanelFeatures().fit(panel)
    assert features.zero_floor_[name] == pytest.approx(1.0)
    np.testing.assert_allclose(features.transform(panel)[name], [np.log(1.0), np.log(2.0), np.log(4.0)])


def test_censored_cell_is_imputed_strictly_below_its_limit_and_flagged():
    name = CENSORABLE[0]
    panel = pd.DataFrame(
        {
            "patient_id": ["a", "b", "c"],
            name: [1.0, 1.0, np.nan],
            f"{name}__censored": [True, False, False],
        }
    )
    out = PanelFeatures(censor_fraction=0.5).fit_transform(panel)
    assert out.loc[0, name] == pytest.approx(np.log(0.5))
    assert out.loc[0, name] < np.log(1.0) == out.loc[1, name]
    assert out[f"{name}__censored"].tolist()[:2] == [1.0, 0.0]
    assert np.isnan(out.loc[2, name]) and np.isnan(out.loc[2, f"{name}__censored"])


def test_output_is_float64_with_declared_feature_names(fitted, panel):
    out = fitted.transform(panel)
    assert list(out.columns) == list(fitted.get_feature_names_out())
    assert (out.dtypes == np.float64).all()
    assert out.index.equals(panel.index)


# -- per-lab normalization --------------------------------------------------------------


def two_lab_panel(n: int = 25) -> pd.DataFrame:
    """Lab B is lab A's panel with every drifting marker exactly 1.3x."""
    lab_a = make_panel(n, lab="A", seed=1)
    lab_b = lab_a.copy()
    lab_b["lab_id"] = "B"
    lab_b["patient_id"] = [f"B{i}" for i in range(n)]
    lab_b[DRIFTING] = lab_b[DRIFTING] * 1.3
    return pd.concat([lab_a, lab_b], ignore_index=True)


def test_lab_drift_removed_for_drifting_markers_only():
    assert DRIFTING and STEADY, "catalog should have both drifting and steady markers"
    panel = two_lab_panel()
    features = PanelFeatures(lab_min_count=20).fit(panel)
    out = features.transform(panel)
    in_a, in_b = out[panel["lab_id"] == "A"], out[panel["lab_id"] == "B"]

    np.testing.assert_allclose(in_a[DRIFTING].to_numpy(), in_b[DRIFTING].to_numpy())
    for marker in DRIFTING:
        assert features.lab_shifts_["B"][marker] == pytest.approx(np.log(1.3) / 2)
        assert features.lab_shifts_["A"][marker] == pytest.approx(-np.log(1.3) / 2)
    # steady markers: untouched, i.e. the plain log of the input
    np.testing.assert_allclose(out[STEADY].to_numpy(), np.log(panel[STEADY].to_numpy()))
    assert not any(m in shifts for shifts in features.lab_shifts_.values() for m in STEADY)


def test_normalize_labs_false_leaves_drift_in_place():
    panel = two_lab_panel()
    features = PanelFeatures(normalize_labs=False).fit(panel)
    assert features.lab_shifts_ == {}
    np.testing.assert_allclose(features.transform(panel)[DRIFTING].to_numpy(), np.log(panel[DRIFTING].to_numpy()))


def test_lab_below_min_count_is_known_but_not_shifted():
    panel = pd.concat([two_lab_panel(), make_panel(3, lab="C", seed=2)], ignore_index=True)
    features = PanelFeatures(lab_min_count=20).fit(panel)
    assert "C" in features.known_labs_ and "C" not in features.lab_shifts_
    rows = panel["lab_id"] == "C"
    out = features.transform(panel[rows])
    np.testing.assert_allclose(out[DRIFTING].to_numpy(), np.log(panel.loc[rows, DRIFTING].to_numpy()))
    assert not features.flags(panel[rows])["unknown_lab"].any()


def test_unknown_or_missing_lab_is_flagged_and_not_shifted():
    features = PanelFeatures(lab_min_count=20).fit(two_lab_panel())
    new = make_panel(2, lab="Z", seed=3)
    new.loc[1, "lab_id"] = np.nan
    out = features.transform(new)
    np.testing.assert_allclose(out[DRIFTING].to_numpy(), np.log(new[DRIFTING].to_numpy()))
    assert features.flags(new)["unknown_lab"].tolist() == [True, True]


def test_outside_training_range_names_the_markers(fitted, panel):
    low_marker, high_marker = NUMERIC[0].name, NUMERIC[1].name
    new = panel.iloc[:3].copy().reset_index(drop=True)
    new.loc[1, low_marker] = fitted.training_range_[low_marker][0] / 2
    new.loc[2, high_marker] = fitted.training_range_[high_marker][1] * 2
    new.loc[2, low_marker] = fitted.training_range_[low_marker][0] / 2
    flags = fitted.flags(new)
    assert flags["outside_training_range"].tolist() == [False, True, True]
    assert flags["out_of_range_markers"].tolist() == ["", low_marker, f"{low_marker};{high_marker}"]
    assert flags.loc[0, "unknown_lab"] == False  # noqa: E712 - numpy bool


def test_censored_limit_above_training_max_is_not_out_of_range(fitted, panel):
    name = CENSORABLE[0]
    new = panel.iloc[:1].copy()
    new[name] = fitted.training_range_[name][1] * 2  # "<2*max": the true value may be in range
    new[f"{name}__censored"] = True
    assert not fitted.flags(new)["outside_training_range"].iloc[0]


# -- compartments, categories, absent columns -------------------------------------------


def test_missing_compartment_indicators_and_compartment_names(fitted, panel):
    rows = panel.iloc[:4].copy().reset_index(drop=True)
    rows.loc[1, ENDO] = np.nan  # blood only
    rows.loc[2, BLOOD + [KIR, HLA]] = np.nan  # endometrium only
    rows.loc[3, BLOOD + ENDO + [KIR, HLA]] = np.nan  # nothing (validate would reject; still no crash)
    out = fitted.transform(rows)
    assert out["missing__blood"].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert out["missing__endometrium"].tolist() == [0.0, 1.0, 0.0, 1.0]
    assert fitted.compartments(rows).tolist() == ["blood+endometrium", "blood", "endometrium", "none"]


def test_absent_columns_read_as_missing(fitted):
    blood_only = pd.DataFrame({"patient_id": ["x"], BLOOD[0]: [5.0], "something_else": ["ignored"]})
    out = fitted.transform(blood_only)
    assert out[ENDO].isna().all().all()
    assert out.loc[0, "missing__endometrium"] == 1.0 and out.loc[0, "missing__blood"] == 0.0
    assert np.isnan(out.loc[0, f"{KIR}__{KIR_RISK}"]) and np.isnan(out.loc[0, INCOMPATIBILITY_FEATURE])
    assert fitted.flags(blood_only)["unknown_lab"].iloc[0]  # no lab_id column at all
    # fitting on a panel without endometrial columns works too
    PanelFeatures().fit_transform(blood_only)


@pytest.mark.parametrize(
    ("kir", "hla", "expected"),
    [
        (KIR_RISK, HLA_RISK, 1.0),
        (KIR_RISK, HLA_OTHER, 0.0),
        (KIR_OTHER, HLA_RISK, 0.0),
        (KIR_OTHER, HLA_OTHER, 0.0),
        (KIR_RISK, None, np.nan),
        (None, HLA_RISK, np.nan),
        (KIR_OTHER, None, np.nan),
        (None, None, np.nan),
    ],
)
def test_kir_hla_truth_table(fitted, kir, hla, expected):
    row = pd.DataFrame({"patient_id": ["p"], KIR: [kir], HLA: [hla]})
    out = fitted.transform(row).iloc[0]
    np.testing.assert_equal(out[INCOMPATIBILITY_FEATURE], expected)
    np.testing.assert_equal(out[f"{KIR}__{KIR_RISK}"], np.nan if kir is None else float(kir == KIR_RISK))
    np.testing.assert_equal(out[f"{HLA}__{HLA_RISK}"], np.nan if hla is None else float(hla == HLA_RISK))


def test_interactions_are_the_catalogs_none_spelled_in_code(tmp_path, panel):
    import yaml

    from rifml.config import config_dir

    data = yaml.safe_load((config_dir() / "markers.yaml").read_text())
    data["interactions"] = [
        {"name": "protective", "description": "the other categories together", "when": {KIR: KIR_OTHER, HLA: HLA_OTHER}},
    ]
    (tmp_path / "markers.yaml").write_text(yaml.safe_dump(data))
    features = PanelFeatures(catalog_path=str(tmp_path / "markers.yaml")).fit(panel)
    out = features.transform(panel)
    assert INCOMPATIBILITY_FEATURE not in out  # the shipped interaction is gone with its entry
    expected = ((panel[KIR] == KIR_OTHER) & (panel[HLA] == HLA_OTHER)).astype(float).to_numpy()
    np.testing.assert_array_equal(out["protective"].to_numpy(), expected)
    assert 0 < expected.sum() < len(expected)
    assert features.feature_markers_["protective"] == (KIR, HLA)  # its SHAP credit goes to both markers


@pytest.mark.parametrize("dtype", [object, "string", "string[pyarrow]", "category"])
def test_raw_spellings_of_categories_read_like_canonical_ones(fitted, dtype):
    canonical = pd.DataFrame({"patient_id": ["p", "q", "r"], KIR: [KIR_RISK, KIR_OTHER, None], HLA: [HLA_RISK, HLA_OTHER, None]})
    spelled = canonical.assign(
        **{KIR: [f" {KIR_RISK.lower()} ", KIR_OTHER.upper(), "not a category"], HLA: [HLA_RISK.upper(), HLA_OTHER, None]}
    )
    spelled = spelled.astype({KIR: dtype, HLA: dtype})
    pd.testing.assert_frame_equal(fitted.transform(spelled), fitted.transform(canonical))


def test_distinct_rows_beyond_one_64_bit_word():
    rng = np.random.default_rng(0)
    kinds = rng.random((6, 70)) < 0.5
    kinds[1] = kinds[0]
    kinds[1, 66] = not kinds[0, 66]  # differs only past the first 64 columns
    mask = kinds[rng.integers(0, 6, 400)]
    patterns, which = _distinct_rows(mask)
    np.testing.assert_array_equal(patterns[which], mask)
    assert len(patterns) == len(np.unique(mask, axis=0))


def test_feature_markers_cover_every_feature_and_name_only_catalog_markers(fitted):
    names = list(fitted.get_feature_names_out())
    assert set(fitted.feature_markers_) == set(names)
    for feature, markers in fitted.feature_markers_.items():
        assert isinstance(markers, tuple)
        assert all(m in CATALOG.by_name for m in markers), feature
    assert fitted.feature_markers_[INCOMPATIBILITY_FEATURE] == (KIR, HLA)
    assert fitted.feature_markers_[f"{CENSORABLE[0]}__censored"] == (CENSORABLE[0],)
    assert all(fitted.feature_markers_[f"missing__{c}"] == () for c in CATALOG.compartments)
    # every catalog marker feeds at least one feature
    assert {m for ms in fitted.feature_markers_.values() for m in ms} == set(CATALOG.marker_names)


def test_marker_matrix_is_the_imputed_logged_lab_aligned_value():
    panel = two_lab_panel()
    censored, zero = CENSORABLE[0], LOG_MARKERS[-1].name
    panel.loc[0, f"{censored}__censored"] = True  # "<x": imputed below its limit
    panel.loc[1, zero] = 0.0  # an exact zero: lifted to the learned floor before the log
    features = PanelFeatures(lab_min_count=20, censor_fraction=0.4).fit(panel)
    matrix = features.marker_matrix(panel)

    # computed here from the raw cells and the fitted floors and lab shifts, not through the transformer
    expected = {}
    for marker in NUMERIC:
        values = panel[marker.name].to_numpy(dtype=float)
        if marker.censorable:
            values = np.where(panel[f"{marker.name}__censored"].to_numpy(dtype=bool), values * 0.4, values)
        if marker.transform == "log":
            values = np.log(np.where(values == 0, features.zero_floor_[marker.name], values))
        shifts = [features.lab_shifts_.get(lab, {}).get(marker.name, 0.0) for lab in panel["lab_id"]]
        expected[marker.name] = values - np.asarray(shifts)
    pd.testing.assert_frame_equal(matrix, pd.DataFrame(expected, index=panel.index))
    assert matrix.loc[0, censored] == pytest.approx(np.log(panel.loc[0, censored] * 0.4) - features.lab_shifts_["A"].get(censored, 0.0))
    assert 0 < features.zero_floor_[zero] < panel[zero][panel[zero] > 0].min()
    # transform carries the same values in the markers' own columns
    pd.testing.assert_frame_equal(matrix, features.transform(panel)[list(matrix.columns)])


# -- band positions ---------------------------------------------------------------------


def test_band_position_below_within_above_missing_and_censored():
    marker = next(m for m in NUMERIC if m.censorable and m.reference_band[0] > 0)
    low, high = marker.reference_band
    panel = pd.DataFrame(
        {
            "patient_id": list("abcdefg"),
            marker.name: [low / 2, (low + high) / 2, high * 2, np.nan, low, (low + high) / 2, high * 2],
            f"{marker.name}__censored": [False, False, False, False, True, True, True],
        }
    )
    positions = band_position(panel, CATALOG)
    assert list(positions.columns) == [m.name for m in NUMERIC]
    np.testing.assert_equal(positions[marker.name].to_numpy(), [-1, 0, 1, np.nan, -1, 0, 0])
    assert positions.drop(columns=marker.name).isna().all().all()  # absent columns


# -- estimator contract -----------------------------------------------------------------

# PanelFeatures reads a DataFrame keyed by catalog column names (plus a lab column), so
# sklearn's check_estimator, which feeds anonymous numeric arrays, cannot exercise it
# honestly. The array-in/array-out piece it is built on, FlooredLog, does pass
# check_estimator; for PanelFeatures we test the contract directly: clone, get_params,
# pickle, fit-then-transform consistency, no learning in transform, NotFittedError.


def test_floored_log_passes_check_estimator():
    check_estimator(FlooredLog())


def test_get_params_round_trip_and_clone_is_unfitted(fitted):
    params = {"catalog_path": None, "lab_min_count": 7, "censor_fraction": 0.25, "normalize_labs": False}
    estimator = PanelFeatures(**params)
    assert estimator.get_params() == params
    assert PanelFeatures().set_params(**params).get_params() == params
    copy = clone(fitted)
    assert copy.get_params() == fitted.get_params()
    assert not hasattr(copy, "feature_markers_")


def test_pickle_round_trip_gives_same_features():
    panel = two_lab_panel()
    features = PanelFeatures().fit(panel)
    restored = pickle.loads(pickle.dumps(features))
    pd.testing.assert_frame_equal(restored.transform(panel), features.transform(panel))
    pd.testing.assert_frame_equal(restored.flags(panel), features.flags(panel))


def test_fit_transform_equals_fit_then_transform():
    panel = two_lab_panel()
    pd.testing.assert_frame_equal(PanelFeatures().fit_transform(panel), PanelFeatures().fit(panel).transform(panel))


def test_transform_learns_nothing_and_rows_do_not_depend_on_their_batch():
    features = PanelFeatures().fit(two_lab_panel())
    state = pickle.dumps(features)
    query = make_panel(5, lab="B", seed=11)
    before = features.transform(query)
    features.transform(make_panel(40, lab="B", seed=12))  # other data, same lab
    features.flags(make_panel(40, lab="Q", seed=13))
    assert pickle.dumps(features) == state
    pd.testing.assert_frame_equal(features.transform(query), before)
    # a row's features do not depend on the rest of the batch
    pd.testing.assert_frame_equal(features.transform(query.iloc[[2]]), before.iloc[[2]])


@pytest.mark.parametrize("method", ["transform", "flags", "marker_matrix", "compartments", "get_feature_names_out"])
def test_methods_need_fit(method, panel):
    args = () if method == "get_feature_names_out" else (panel,)
    with pytest.raises(NotFittedError):
        getattr(PanelFeatures(), method)(*args)


@pytest.mark.parametrize(
    "params",
    [
        {"lab_min_count": 0},
        {"lab_min_count": 2.5},
        {"censor_fraction": 1.0},
        {"censor_fraction": 0},
        {"normalize_labs": "yes"},
    ],
)
def test_bad_parameters_are_rejected_at_fit(params, panel):
    with pytest.raises(ValueError):
        PanelFeatures(**params).fit(panel)


def test_non_dataframe_input_is_rejected(panel):
    with pytest.raises(TypeError):
        PanelFeatures().fit(panel.to_numpy())
