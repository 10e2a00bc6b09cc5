"""Locating and loading the YAML files under configs/, and the schema of train.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rifml.errors import RifmlInputError


def config_dir() -> Path:
    """The configs folder: packaged inside a wheel, or at the repository root in a checkout."""
    packaged = Path(__file__).parent / "configs"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "configs"


def load_yaml(path: str | Path | None, default_name: str) -> dict[str, Any]:
    """Read a YAML mapping from ``path`` or from configs/``default_name``."""
    target = Path(path) if path is not None else config_dir() / default_name
    try:
        text = target.read_text(encoding="utf-8")
    except OSError as exc:
        raise RifmlInputError(f"cannot read config {target}: {exc.strerror or exc}") from exc
    try:
        # libyaml's parser when present: PyYAML's own, in pure Python, took 45 ms of a small batch's
        # start for markers.yaml, libyaml 5 ms (the same safe constructor builds the same data)
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        try:  # PyYAML's parser words the error better (it quotes the line)
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RifmlInputError(f"config {target} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise RifmlInputError(f"config {target} must be a YAML mapping at top level")
    return data


def load_validated(model, path: str | Path | None, default_name: str, what: str):
    """Load a YAML config and validate it with a pydantic model; any problem is one clear error."""
    return validate_mapping(model, load_yaml(path, default_name), str(path or "configs/" + default_name), what)


def validate_mapping(model, data: dict[str, Any], source: str, what: str):
    """Validate an already loaded mapping (e.g. a config with an overlay merged in) as ``load_validated`` does."""
    from pydantic import ValidationError

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            message = "unknown key" + _suggestion(model, first["loc"])
        raise RifmlInputError(f"{what} {source} is malformed at {where or 'top level'}: {message}") from exc


def _suggestion(model, loc: tuple) -> str:
    """``; did you mean 'n_estimators'?`` for a misspelt key of a nested pydantic model (else empty)."""
    import difflib

    for step in loc[:-1]:
        if isinstance(step, int):  # an item of a list: its model is already the item's
            continue
        field = model.model_fields.get(step)
        inner = [a for a in (field.annotation, *getattr(field.annotation, "__args__", ())) if isinstance(a, type)] if field else []
        nested = [a for a in inner if issubclass(a, BaseModel)]
        if not nested:
            return ""
        model = nested[0]
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


# --------------------------------------------------------------------------------------
# configs/train.yaml: every setting of the fitted pipeline, checked before any data is read
# --------------------------------------------------------------------------------------
# Kept here, beside the loader, rather than in training.py: `rifml train` validates its
# config before importing the model stack, so a typo costs a fraction of a second.

# LightGBM's own limit on num_leaves; the explainer takes any tree size up to it
MAX_NUM_LEAVES = 131072
Count = Annotated[int, Field(ge=1)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class _Settings(BaseModel):
    # strict: YAML `10` for a float is fine, but "10" (text) or `true` for a number is a mistake
    model_config = ConfigDict(extra="forbid", strict=True)


class ModelSettings(_Settings):
    """The boosted classifiers (:class:`rifml.model.CalibratedBoostedClassifier`)."""

    n_estimators: Count = 100
    num_leaves: Annotated[int, Field(ge=2, le=MAX_NUM_LEAVES)] = 8  # see rifml.explain.check_tree_settings
    learning_rate: Annotated[float, Field(gt=0.0)] = 0.08
    min_child_samples: Count = 20
    reg_lambda: Annotated[float, Field(ge=0.0)] = 1.0
    calibration_folds: Annotated[int, Field(ge=2)] = 5


class SubtypeSettings(_Settings):
    """Subtype discovery (:class:`rifml.subtypes.ConsensusClustering`) and naming, lab offsets."""

    k_min: Annotated[int, Field(ge=2)] = 2
    k_max: Annotated[int, Field(ge=2)] = 8
    n_resamples: Annotated[int, Field(ge=2)] = 30
    subsample: Annotated[float, Field(gt=0.0, le=1.0)] = 0.8
    max_items: Optional[Count] = 1200
    pac_tolerance: Fraction = 0.05
    scaling: Literal["within", "robust"] = "within"
    refine: Literal["gaussian", "none"] = "gaussian"
    min_variance: Annotated[float, Field(gt=0.0)] = 1.0
    subtype_trees: Count = 40
    min_effect: Annotated[float, Field(gt=0.0)] = 1.5
    signature_reading: Literal["mean", "patchy"] = "mean"
    lab_min_panels: Count = 30

    @model_validator(mode="after")
    def _k_range(self) -> "SubtypeSettings":
        if self.k_max < self.k_min:
            raise ValueError(f"k_max ({self.k_max}) is below k_min ({self.k_min})")
        if self.max_items is not None and self.max_items <= self.k_max:
            raise ValueError(f"max_items ({self.max_items}) must exceed k_max ({self.k_max})")
        return self


class FeatureSettings(_Settings):
    """Model features (:class:`rifml.features.PanelFeatures`)."""

    lab_min_count: Optional[Count] = None  # None: subtypes.lab_min_panels (one threshold for a lab's data)
    censor_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    normalize_labs: bool = True


class ExplainSettings(_Settings):
    background_size: Count = 200


class Floors(_Settings):
    """Figures a model must reach for the champion alias to move to it; unset = not checked."""

    macro_f1: Optional[Fraction] = None
    balanced_accuracy: Optional[Fraction] = None
    subtype_stability: Optional[Fraction] = None
    max_ece: Optional[Fraction] = None


class TrainConfig(_Settings):
    """configs/train.yaml: ``extra="forbid"`` at every level, so a misspelt key is an error, not a default."""

    model: ModelSettings = ModelSettings()
    subtypes: SubtypeSettings = SubtypeSettings()
    features: FeatureSettings = FeatureSettings()
    explain: ExplainSettings = ExplainSettings()
    random_state: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0
    n_jobs: Annotated[int, Field(ge=1)] = 1  # LightGBM threads: one level of parallelism on small machines
    floors: Floors = Floors()
    label_free_floors: Floors = Floors()
    registered_model: Annotated[str, Field(min_length=1)] = "rifml-immune-profile"
    experiment: Annotated[str, Field(min_length=1)] = "rifml"


def load_train_config(path: str | Path | None = None) -> dict[str, Any]:
    """configs/train.yaml (or ``path``) validated against :class:`TrainConfig`, every setting filled in.

    A plain mapping, so it can be edited and logged as MLflow params as is; :func:`rifml.training.train`
    validates it again, so an edited mapping is checked too.
    """
    return load_validated(TrainConfig, path, "train.yaml", "training config").model_dump()
