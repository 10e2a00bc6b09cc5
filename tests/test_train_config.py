"""configs/train.yaml: validated before any data is read, and every setting reaches the fitted pipeline."""

import time

import pytest
import yaml
from sklearn.base import clone

from cli_support import refused, rifml_in_process
from rifml.config import TrainConfig, config_dir, load_train_config
from rifml.errors import RifmlInputError
from rifml.pipeline import ImmuneProfiler
from rifml.training import profiler_from_config, training_config

# (edit of the default train.yaml, where the error points, words of the message), one row per problem
BAD_CONFIGS = [
    ({"model": {"n_estimator": 10}}, "model.n_estimator", "did you mean 'n_estimators'"),
    ({"modle": {"n_estimators": 10}}, "modle", "unknown key"),
    ({"subtypes": {"min_efect": 1.0}}, "subtypes.min_efect", "did you mean 'min_effect'"),
    ({"features": {"censor": 0.5}}, "features.censor", "unknown key"),
    ({"explain": {"background": 100}}, "explain.background", "unknown key"),
    ({"floors": {"macro_f": 0.7}}, "floors.macro_f", "did you mean 'macro_f1'"),
    ({"label_free_floors": {"stability": 0.7}}, "label_free_floors.stability", "unknown key"),
    ({"model": {"n_estimators": "100"}}, "model.n_estimators", "valid integer"),
    ({"model": {"n_estimators": 10.5}}, "model.n_estimators", "valid integer"),
    ({"model": {"num_leaves": 1}}, "model.num_leaves", "greater than or equal to 2"),
    ({"model": {"num_leaves": 200_000}}, "model.num_leaves", "less than or equal to 131072"),
    ({"model": {"learning_rate": 0}}, "model.learning_rate", "greater than 0"),
    ({"model": {"calibration_folds": 1}}, "model.calibration_folds", "greater than or equal to 2"),
    ({"model": {"reg_lambda": -1}}, "model.reg_lambda", "greater than or equal to 0"),
    ({"subtypes": {"k_min": 5, "k_max": 3}}, "subtypes", "k_max (3) is below k_min (5)"),
    ({"subtypes": {"max_items": 4}}, "subtypes", "max_items (4) must exceed k_max (8)"),
    ({"subtypes": {"subsample": 1.5}}, "subtypes.subsample", "less than or equal to 1"),
    ({"subtypes": {"scaling": "zscore"}}, "subtypes.scaling", "'within' or 'robust'"),
    ({"subtypes": {"lab_min_panels": 0}}, "subtypes.lab_min_panels", "greater than or equal to 1"),
    ({"features": {"censor_fraction": 1.0}}, "features.censor_fraction", "less than 1"),
    ({"features": {"normalize_labs": "yes"}}, "features.normalize_labs", "valid boolean"),
    ({"n_jobs": True}, "n_jobs", "valid integer"),
    ({"random_state": -1}, "random_state", "greater than or equal to 0"),
    ({"floors": {"max_ece": 1.5}}, "floors.max_ece", "less than or equal to 1"),
    ({"registered_model": ""}, "registered_model", "at least 1 character"),
    ({"model": 100}, "model", "valid dictionary"),
]


def edited(changes: dict) -> dict:
    config = yaml.safe_load((config_dir() / "train.yaml").read_text())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


@pytest.mark.parametrize("changes, where, words", BAD_CONFIGS)
def test_each_bad_setting_is_one_clear_error(tmp_path, changes, where, words):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(edited(changes)))
    with pytest.raises(RifmlInputError) as caught:
        load_train_config(path)
    message = str(caught.value)
    assert f"training config {path} is malformed at {where}:" in message
    assert words in message
    assert "\n" not in message


def test_a_mapping_edited_in_code_is_checked_too():
    config = load_train_config()
    config["model"]["n_estimator"] = 10
    with pytest.raises(RifmlInputError, match="model.n_estimator: unknown key"):
        profiler_from_config(config)


def settings_of(estimator) -> dict:
    """Deep parameters without the part objects themselves (their settings are listed beside)."""
    return {k: v for k, v in estimator.get_params(deep=True).items() if not hasattr(v, "get_params")}


def test_defaults_agree_in_train_yaml_the_schema_and_the_estimators():
    """Sections may be left out (schema defaults), and ImmuneProfiler() alone builds the same pipeline."""
    from_yaml, from_nothing = profiler_from_config(load_train_config()), profiler_from_config({})
    assert settings_of(from_yaml) == settings_of(from_nothing)
    bare = ImmuneProfiler()
    for name, part in zip(("features", "clustering", "classifier"), bare._parts()):
        assert part.get_params() == getattr(from_yaml, name).get_params(), name
    own = {k: v for k, v in bare.get_params(deep=False).items() if k not in ("features", "clustering", "classifier")}
    assert own == {k: from_yaml.get_params(deep=False)[k] for k in own}


def test_every_setting_reaches_the_pipeline():
    """Each key of train.yaml is a parameter of the unfitted pipeline (get_params(deep=True) shows it)."""
    values = {
        "model": {"n_estimators": 17, "num_leaves": 12, "learning_rate": 0.11, "min_child_samples": 7,
                  "reg_lambda": 0.3, "calibration_folds": 4},
        "subtypes": {"k_min": 3, "k_max": 6, "n_resamples": 9, "subsample": 0.7, "max_items": 900,
                     "pac_tolerance": 0.02, "scaling": "robust", "subtype_trees": 13, "min_effect": 1.2,
                     "signature_reading": "patchy", "lab_min_panels": 25, "refine": "none", "min_variance": 0.5},
        "features": {"lab_min_count": 11, "censor_fraction": 0.4, "normalize_labs": False},
        "explain": {"background_size": 150},
        "random_state": 7,
        "n_jobs": 2,
    }
    profiler = profiler_from_config(edited(values), catalog_path="some/catalog.yaml")
    params = profiler.get_params(deep=True)
    where = {"model": "classifier__", "features": "features__"}
    for section in ("model", "features"):
        for key, value in values[section].items():
            assert params[where[section] + key] == value, (section, key)
    for key, value in values["subtypes"].items():
        assert params.get(f"clustering__{key}", params.get(key)) == value, key
    assert params["background_size"] == 150
    assert params["random_state"] == params["clustering__random_state"] == params["classifier__random_state"] == 7
    assert params["classifier__n_jobs"] == 2
    assert params["features__catalog_path"] == "some/catalog.yaml"
    # a lab threshold left unset follows lab_min_panels
    assert profiler_from_config(edited({"subtypes": {"lab_min_panels": 44}})).features.lab_min_count == 44
    assert clone(profiler).get_params(deep=True).keys() == params.keys()


def test_training_config_accepts_the_validated_model():
    settings = TrainConfig()
    assert training_config(settings) is settings


@pytest.mark.parametrize("text, words", [
    ("model: {n_estimator: 10}\n", ["model.n_estimator", "did you mean 'n_estimators'"]),
    ("model: {n_estimators: ten}\n", ["model.n_estimators", "valid integer"]),
    ("model: {num_leaves: 1}\n", ["model.num_leaves", "greater than or equal to 2"]),
])
def test_train_refuses_a_bad_config_before_reading_data(tmp_path, text, words):
    (tmp_path / "bad.yaml").write_text(text)
    started = time.perf_counter()
    result = rifml_in_process("train", "--data", "no-such-file.csv", "--config", "bad.yaml", "--tracking-uri",
                              f"sqlite:///{tmp_path / 'mlflow.db'}", cwd=tmp_path)
    seconds = time.perf_counter() - started
    line = refused(result, "training config bad.yaml is malformed at", *words)
    assert "no-such-file" not in line  # the data was never looked at
    assert not (tmp_path / "mlflow.db").exists()  # nor the store
    assert "reading" not in result.stderr
    print(f"refused in {seconds:.2f} s (in process)")
