"""Figures and the HTML page of an outcomes analysis (DIR/index.html).

Rendering only: takes the analysis tables, returns matplotlib figures and HTML
text. Writing them to disk is the caller's (rifml.outcomes.files).
"""

from __future__ import annotations

import base64
import math
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from rifml import __version__
from rifml.outcomes.analysis import OutcomeAnalysis
from rifml.plots import figure_png_bytes, plot_forest, plot_outcome_rates

TEMPLATE = "outcomes.html"  # extends base.html, the look of every rifml page
RESEARCH_USE = ("Research use only: an observational analysis of a registry, not a diagnostic device and not a "
                "treatment recommendation.")
PAGE_DPI = 110


def figures(analysis: OutcomeAnalysis, levels: list[str], outcome: str) -> dict[str, object]:
    """Every figure of the page (drawn by :mod:`rifml.plots`), by file stem (forest_<level>,
    rates_<level>); absent when empty (a forest only for a level with an estimable effect)."""
    made = {}
    for level in levels:
        effects = analysis.effects
        estimable = effects[(effects["level"] == level) & effects["estimable"].astype(bool)]
        if not estimable.empty:
            made[f"forest_{level}"] = plot_forest(estimable, level)
        rates = analysis.rates[analysis.rates["level"] == level]
        if not rates.empty:
            made[f"rates_{level}"] = plot_outcome_rates(rates, level, outcome)
    return made


def png_bytes(figure) -> bytes:
    """A figure as PNG bytes, at this page's resolution."""
    return figure_png_bytes(figure, dpi=PAGE_DPI)


def _number(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    return f"{float(value):.{digits}f}"


def _p(value) -> str:
    if value is None or pd.isna(value):
        return ""
    return "<0.001" if float(value) < 0.001 else f"{float(value):.3f}"


def _records(table: pd.DataFrame) -> list[dict]:
    return table.to_dict("records")


def render_page(
    analysis: OutcomeAnalysis,
    *,
    levels: list[str],
    outcome: str,
    adjust: list[str],
    pngs: dict[str, bytes],
    summary: dict,
    model_label: str | None = None,
) -> str:
    """The self-contained index.html (figures inlined as base64 PNG)."""
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    # Not rifml.report's environment: importing that module loads the whole scoring stack (seconds).
    env = Environment(loader=PackageLoader("rifml", "templates"), autoescape=select_autoescape(["html"]),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _number
    env.filters["p"] = _p
    images = {stem: base64.b64encode(data).decode("ascii") for stem, data in pngs.items()}
    sections = []
    for level in levels:
        effects = analysis.effects[analysis.effects["level"] == level]
        sections.append({
            "level": level,
            "forest": images.get(f"forest_{level}"),
            "rates_image": images.get(f"rates_{level}"),
            "rates": _records(analysis.rates[analysis.rates["level"] == level]),
            "effects": _records(effects[effects["estimable"].astype(bool)]),
            "not_estimable": _records(effects[~effects["estimable"].astype(bool)]),
            "interactions": _records(analysis.interactions[analysis.interactions["level"] == level]),
        })
    return env.get_template(TEMPLATE).render(
        sections=sections, outcome=outcome, adjust=adjust, summary=summary, analysis=analysis,
        tests_run=analysis.tests_run, interaction_tests=int(analysis.interactions["p_value"].notna().sum()),
        shared={"rifml_version": __version__, "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "model_label": model_label or "the calls given", "research_use": RESEARCH_USE},
    )
