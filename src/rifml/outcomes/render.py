"""Figures and the HTML page of an outcomes analysis (DIR/index.html).

Rendering only: takes the analysis tables, returns matplotlib figures and HTML
text. Writing them to disk is the caller's (rifml.outcomes.files).
"""

from __future__ import annotations

import base64
import io
import math
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from rifml import __version__
from rifml.outcomes.analysis import OutcomeAnalysis

TEMPLATE = "outcomes.html"  # extends base.html, the look of every rifml page
RESEARCH_USE = ("Research use only: an observational analysis of a registry, not a diagnostic device and not a "
                "treatment recommendation.")
_NO_EFFECT = 1.0


def _figure(width: float, height: float):
    """A matplotlib Figure and its axes, without pyplot: no backend, no global state to close."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    return figure, figure.subplots()


def forest_plot(effects: pd.DataFrame, level: str):
    """Adjusted ORs (filled, with 95% CI bars) and crude ORs (hollow) per group x treatment, log scale.

    Returns None when the level has no estimable effect.
    """
    shown = effects[(effects["level"] == level) & effects["estimable"].astype(bool)]
    if shown.empty:
        return None
    labels = [f"{g}: {t}  (n={nt}/{nu})" for g, t, nt, nu in
              zip(shown["group"], shown["treatment"], shown["n_treated"], shown["n_untreated"])]
    y = np.arange(len(shown))[::-1]
    fig, ax = _figure(8.5, 0.42 * len(shown) + 1.4)
    odds, low, high = (shown[c].to_numpy(dtype=float) for c in ("odds_ratio", "ci_low", "ci_high"))
    above = low > _NO_EFFECT
    below = high < _NO_EFFECT
    colours = np.where(above, "#1a7f37", np.where(below, "#c0392b", "#52606d"))
    ax.hlines(y, low, high, colors=colours, lw=2)
    ax.scatter(odds, y, c=colours, s=36, zorder=3, label="adjusted OR (95% CI)")
    ax.scatter(shown["crude_odds_ratio"].to_numpy(dtype=float), y, facecolors="none", edgecolors="#9aa5b1",
               s=36, zorder=2, label="crude OR")
    ax.axvline(_NO_EFFECT, color="#1f2933", lw=1, ls="--")
    ax.set_xscale("log")
    ax.set_yticks(y, labels, fontsize=9)
    lo = min(np.nanmin(low), np.nanmin(shown["crude_odds_ratio"]), 0.5)
    hi = max(np.nanmax(high), np.nanmax(shown["crude_odds_ratio"]), 2.0)
    ax.set_xlim(lo / 1.15, hi * 1.15)
    ticks = [t for t in (0.1, 0.2, 0.5, 1, 2, 5, 10) if lo / 1.15 <= t <= hi * 1.15]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    adjusted_for = shown["adjusted_for"].iloc[0]
    ax.set_xlabel("odds ratio of the outcome, treated vs no add-on (log scale; right of 1 = more often)")
    ax.set_title(f"{level}: treatment effects within each group"
                 + (f", adjusted for {adjusted_for.replace(',', ', ')}" if adjusted_for else " (unadjusted)"), fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3 / fig.get_figheight() - 0.05), ncol=2, fontsize=8, frameon=False)
    ax.grid(axis="x", color="#eef1f4")
    fig.tight_layout()
    return fig


def rate_plot(rates: pd.DataFrame, level: str, outcome: str):
    """Outcome rate per group with its Wilson 95% interval."""
    shown = rates[rates["level"] == level]
    y = np.arange(len(shown))[::-1]
    fig, ax = _figure(7.5, 0.38 * len(shown) + 1.3)
    rate = shown["rate"].to_numpy(dtype=float)
    ax.hlines(y, shown["rate_ci_low"], shown["rate_ci_high"], colors="#1d5fa8", lw=2)
    ax.scatter(rate, y, color="#1d5fa8", s=30, zorder=3)
    ax.set_yticks(y, [f"{g}  (n={n})" for g, n in zip(shown["group"], shown["n"])], fontsize=9)
    ax.set_xlim(0, min(1.0, max(0.6, float(np.nanmax(shown["rate_ci_high"])) + 0.05)))
    ax.set_xlabel(f"{outcome} rate (all patients of the group, 95% Wilson interval)")
    ax.set_title(f"{level}: {outcome} rate by group", fontsize=10)
    ax.grid(axis="x", color="#eef1f4")
    fig.tight_layout()
    return fig


def figures(analysis: OutcomeAnalysis, levels: list[str], outcome: str) -> dict[str, object]:
    """Every figure of the page, by file stem (forest_<level>, rates_<level>); absent when empty."""
    made = {}
    for level in levels:
        forest = forest_plot(analysis.effects, level)
        if forest is not None:
            made[f"forest_{level}"] = forest
        if (analysis.rates["level"] == level).any():
            made[f"rates_{level}"] = rate_plot(analysis.rates, level, outcome)
    return made


def png_bytes(figure) -> bytes:
    """A figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


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
