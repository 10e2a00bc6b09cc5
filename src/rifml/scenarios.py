"""Scenario overlays for the simulator: configs/scenarios/NAME.yaml merged over simulate.yaml.

A scenario is a partial simulator config describing another plausible world (an assay that
reads high, other prevalences, a lab seen only at scoring, ...). It is applied as a JSON
Merge Patch (RFC 7386), so it states only what differs and can delete a subtype with
``null``. Its ``description`` key says what world it is and why it is plausible.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

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
            f", or {RANDOM_PREFIX}<seed> for a world drawn at random"
        )
    return named


def random_seed(name) -> int | None:
    """The seed of a drawn world's name (``random-7`` -> 7), None for any other scenario."""
    text = str(name)
    if text.startswith(RANDOM_PREFIX) and text[len(RANDOM_PREFIX):].isdigit():
        return int(text[len(RANDOM_PREFIX):])
    return None


def scenario_overlay(name_or_file, base: dict | None = None) -> dict:
    """The overlay of a scenario: its parameters, without its ``description``.

    ``random-<seed>`` names a world drawn by :func:`random_overlay` over ``base``
    (default: configs/simulate.yaml).
    """
    overlay = _overlay_with_description(name_or_file, base)
    overlay.pop("description", None)
    return overlay


def scenario_description(name_or_file) -> str:
    """The ``description`` of a scenario overlay ("" when it has none)."""
    return str(_overlay_with_description(name_or_file, None).get("description", "")).strip()


def _overlay_with_description(name_or_file, base: dict | None) -> dict:
    seed = random_seed(name_or_file)
    if seed is None:
        return load_yaml(scenario_path(name_or_file), "")
    from rifml.catalog import load_catalog

    return random_overlay(seed, base if base is not None else load_yaml(None, "simulate.yaml"),
                          [m.name for m in load_catalog().numeric_markers])

RANDOM_PREFIX = "random-"


def random_overlay(seed: int, base: dict, marker_names: list[str]) -> dict:
    """An overlay drawing a plausible world at random: ``random-<seed>`` in ``make robustness``.

    Shipped scenarios each move one or two knobs on purpose; a drawn world moves all of them
    at once, by amounts no one chose, so that rifml is judged on worlds it was not shaped
    around. Ranges are those domain.md calls plausible: assays reading a marker 0.55-1.8x
    (tens of percent, up to a band's edge), prevalences around Ledee's, shifts 0.8-1.25x
    with each subtype's own markers moved 0.7-1.3x (one sometimes left out), 2-5 labs
    drifting on any marker plus a lab seen only at scoring, detection limits 0.3-2.5, and
    50-80% complete panels.

    Parameters
    ----------
    seed : int
    base : dict
        The simulator config the overlay applies to (plain YAML data).
    marker_names : list of str
        The numeric markers of the catalog (assay and lab drift may hit any of them).

    Returns
    -------
    dict
        A merge patch for :func:`merge_patch`, with a ``description`` of what was drawn.
    """
    rng = np.random.default_rng([seed, 1709])  # the same world for a seed, whoever draws it
    subtypes = base["subtypes"]
    names = list(subtypes)
    weights = rng.dirichlet([30 * subtypes[n]["prevalence"] for n in names])
    overlay_subtypes = {}
    for name, weight in zip(names, weights):
        shifts = dict(subtypes[name].get("shifts", {}))
        if len(shifts) > 1 and rng.random() < 0.15:
            shifts[rng.choice(sorted(shifts))] = None
        shifts = {m: (None if v is None else round(float(v * rng.uniform(0.7, 1.3)), 3)) for m, v in shifts.items()}
        overlay_subtypes[name] = {"prevalence": round(float(weight), 4), **({"shifts": shifts} if shifts else {})}
    shares = np.round(weights, 4)
    overlay_subtypes[names[-1]]["prevalence"] = round(float(1 - shares[:-1].sum()), 4)

    assay = {m: round(float(np.exp(rng.uniform(-0.6, 0.6))), 3) for m in marker_names if rng.random() < 0.35}
    n_labs = int(rng.integers(2, 6))
    lab_shares = np.round(rng.dirichlet([5.0] * n_labs) * 0.8, 4)
    labs: dict = {name: None for name in base["labs"]}

    def marker_drift(count: int) -> dict:
        chosen = rng.choice(marker_names, size=count, replace=False)
        return {str(m): round(float(np.exp(rng.uniform(-0.4, 0.4))), 3) for m in chosen}

    for i, share in enumerate(lab_shares):
        labs[f"lab_{i + 1}"] = {"share": float(share), "drift": round(float(rng.uniform(0.7, 1.4)), 3),
                                "marker_drift": marker_drift(int(rng.integers(0, 3)))}
    labs[f"lab_{n_labs}"]["share"] = round(float(0.8 - lab_shares[:-1].sum()), 4)
    labs["lab_new"] = {"share": 0.2, "drift": round(float(rng.uniform(0.6, 1.6)), 3), "scoring_only": True,
                       "marker_drift": marker_drift(int(rng.integers(1, 4)))}
    complete = round(float(rng.uniform(0.5, 0.8)), 3)
    blood = round(float((1 - complete) * rng.uniform(0.3, 0.7)), 3)
    overlay = {
        "subtypes": overlay_subtypes,
        "baseline": {"assay_factors": assay},
        "shift": {"scale": round(float(rng.uniform(0.8, 1.25)), 3), "probability": round(float(rng.uniform(0.65, 0.95)), 3),
                  "jitter": round(float(rng.uniform(0.1, 0.4)), 3)},
        "labs": labs,
        "panels": {"complete": complete, "blood_only": blood, "biopsy_only": round(1 - complete - blood, 3)},
        "limit_of_detection": {"concentration": round(float(rng.uniform(0.3, 2.5)), 2)},
    }
    overlay["description"] = (
        f"Drawn at random (seed {seed}): prevalences "
        + ", ".join(f"{n} {overlay_subtypes[n]['prevalence']:.2f}" for n in names)
        + f"; shifts x{overlay['shift']['scale']}, p {overlay['shift']['probability']}; assay reads "
        + (", ".join(f"{m} x{f}" for m, f in assay.items()) or "as the bands")
        + f"; {n_labs} labs + one at scoring only; {complete:.0%} complete panels"
    )
    return overlay
