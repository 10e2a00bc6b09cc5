"""Scenario overlays for the simulator: configs/scenarios/NAME.yaml merged over simulate.yaml.

A scenario is a partial simulator config describing another plausible world (an assay that
reads high, other prevalences, a lab seen only at scoring, ...). It is applied as a JSON
Merge Patch (RFC 7386), so it states only what differs and can delete a subtype with
``null``. Its ``description`` key says what world it is and why it is plausible.
"""

from __future__ import annotations

from pathlib import Path

from rifml.config import config_dir, load_yaml
from rifml.errors import RifmlInputError


def merge_patch(target, patch):
    """RFC 7386 JSON Merge Patch of plain YAML data: a new object, neither input is changed."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def scenarios_dir() -> Path:
    return config_dir() / "scenarios"


def available_scenarios() -> list[str]:
    """Names of the scenarios shipped under configs/scenarios/, sorted."""
    return sorted(p.stem for p in scenarios_dir().glob("*.yaml"))


def scenario_path(name_or_file) -> Path:
    """The overlay file of a scenario given by name (configs/scenarios/NAME.yaml) or by path."""
    given = Path(name_or_file)
    if given.suffix in {".yaml", ".yml"} or given.is_file():
        if not given.is_file():
            raise RifmlInputError(f"scenario file {given} does not exist")
        return given
    named = scenarios_dir() / f"{name_or_file}.yaml"
    if not named.is_file():
        raise RifmlInputError(
            f"unknown scenario {str(name_or_file)!r}; known: {', '.join(available_scenarios()) or 'none'}"
        )
    return named


def scenario_overlay(name_or_file) -> dict:
    """The overlay of a scenario: its parameters, without its ``description``."""
    overlay = load_yaml(scenario_path(name_or_file), "")
    overlay.pop("description", None)
    return overlay


def scenario_description(name_or_file) -> str:
    """The ``description`` of a scenario overlay ("" when it has none)."""
    return str(load_yaml(scenario_path(name_or_file), "").get("description", "")).strip()
