"""The registry name comes from the validated training config, read when a command needs it (not at import)."""

import pytest

import rifml.config
from rifml.errors import RifmlInputError
from rifml.tracking import champion_uri, registered_model_name, version_uri


def _configs(tmp_path, monkeypatch, text: str) -> None:
    (tmp_path / "train.yaml").write_text(text)
    monkeypatch.setattr(rifml.config, "config_dir", lambda: tmp_path)


def test_the_name_is_read_from_train_yaml_when_asked(tmp_path, monkeypatch):
    # rifml.tracking was imported before train.yaml changed: the name still follows the file
    _configs(tmp_path, monkeypatch, "registered_model: ward-b-profiles\n")
    assert registered_model_name() == "ward-b-profiles"
    assert champion_uri() == "models:/ward-b-profiles@champion"
    assert version_uri("3") == "models:/ward-b-profiles/3"
    assert champion_uri("other") == "models:/other@champion"


@pytest.mark.parametrize(
    "text, words",
    [
        ("registered_model: ''\n", "registered_model"),
        ("registered_modle: x\n", "did you mean 'registered_model'"),
        ("model: {n_estimator: 10}\n", "did you mean 'n_estimators'"),
    ],
)
def test_a_malformed_train_yaml_is_one_clear_error_where_the_name_is_needed(tmp_path, monkeypatch, text, words):
    _configs(tmp_path, monkeypatch, text)
    with pytest.raises(RifmlInputError, match="malformed") as info:
        registered_model_name()
    assert words in str(info.value)
