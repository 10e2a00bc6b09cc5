"""ImmuneProfiler's parts are parameters, as in scikit-learn's Pipeline: cloned, validated, all reachable."""

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.utils._param_validation import InvalidParameterError

from rifml.errors import RifmlInputError
from rifml.features import PanelFeatures
from rifml.model import CalibratedBoostedClassifier
from rifml.pipeline import ImmuneProfiler
from rifml.simulate import simulate_cohort
from rifml.subtypes import ConsensusClustering
from rifml.validate import validate_chunk

TINY = pd.DataFrame({"patient_id": ["a", "b"], "pb_nk_pct": [1.0, 2.0]})  # too few panels to learn anything


def quick_profiler(**own):
    return ImmuneProfiler(
        features=PanelFeatures(lab_min_count=30, censor_fraction=0.25),
        clustering=ConsensusClustering(k_max=5, n_resamples=5, pac_tolerance=0.1),
        classifier=CalibratedBoostedClassifier(n_estimators=12, reg_lambda=2.0, calibration_folds=3),
        subtype_trees=6,
        **own,
    )


@pytest.fixture(scope="module")
def fitted(catalog):
    cohort, _ = simulate_cohort(600, seed=41, catalog=catalog)
    panel = validate_chunk(cohort, np.arange(2, 602), catalog).panel
    return quick_profiler().fit(panel, panel["immune_profile"])


def test_get_params_deep_lists_every_part_setting_and_set_params_reaches_them():
    profiler = quick_profiler()
    params = profiler.get_params(deep=True)
    for name in ("classifier__reg_lambda", "classifier__calibration_folds", "clustering__pac_tolerance",
                 "clustering__max_items", "clustering__scaling", "features__censor_fraction", "features__lab_min_count"):
        assert name in params, name
    profiler.set_params(classifier__num_leaves=5, clustering__scaling="robust", features__normalize_labs=False)
    assert (profiler.classifier.num_leaves, profiler.clustering.scaling, profiler.features.normalize_labs) == (5, "robust", False)
    copy = clone(profiler)
    assert copy.classifier is not profiler.classifier and copy.classifier.num_leaves == 5


def test_fit_clones_the_parts_and_leaves_the_templates_unfitted(fitted):
    assert not hasattr(fitted.classifier, "booster_") and not hasattr(fitted.features, "catalog_")
    assert not hasattr(fitted.clustering, "labels_")
    # the fitted parts carry the templates' settings
    assert fitted.features_.censor_fraction == 0.25
    assert fitted.clustering_.pac_tolerance == 0.1 and fitted.clustering_.n_resamples == 5
    profile = fitted.profile_model_
    assert (profile.reg_lambda, profile.calibration_folds, profile.n_estimators) == (2.0, 3, 12)
    assert list(profile.classes_) == list(fitted.catalog_.profiles)
    # the subtype model: subtype_trees trees, learning at a proportionally higher rate
    assert fitted.subtype_model_.n_estimators == 6
    assert fitted.subtype_model_.learning_rate == pytest.approx(min(0.08 * 12 / 6, 0.5))


@pytest.mark.parametrize("profiler, name", [
    (ImmuneProfiler(min_effect=0.0), "min_effect"),
    (ImmuneProfiler(signature_reading="median"), "signature_reading"),
    (ImmuneProfiler(background_size=0), "background_size"),
    (ImmuneProfiler(features="features"), "features"),
    (ImmuneProfiler(classifier=ConsensusClustering()), "classifier"),
    (ImmuneProfiler(classifier=CalibratedBoostedClassifier(learning_rate=-0.1)), "learning_rate"),
    (ImmuneProfiler(clustering=ConsensusClustering(scaling="zscore")), "scaling"),
    (ImmuneProfiler(features=PanelFeatures(censor_fraction=1.0)), "censor_fraction"),
])
def test_bad_parameters_fail_before_any_learning(profiler, name):
    # two panels: had the parameters passed, fit would stop at "too few complete panels" instead
    with pytest.raises(InvalidParameterError, match=name):
        profiler.fit(TINY)


def test_valid_parameters_reach_the_data_checks():
    with pytest.raises(RifmlInputError, match="complete panels"):
        quick_profiler().fit(TINY)
