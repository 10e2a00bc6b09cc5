"""Locating and loading the YAML files under configs/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

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
        raise RifmlInputError(f"{what} {source} is malformed at {where or 'top level'}: {first['msg']}") from exc
