"""The outcomes page and its figures, rendered from small analyses (no CLI, no MLflow)."""

import pandas as pd

from rifml.outcomes import contract
from rifml.outcomes.analysis import Registry, analyse
from rifml.outcomes.render import figures, png_bytes, render_page


def _registry(n_treated: int, events_treated: int) -> Registry:
    rows = [("balanced", "none", 1)] * 40 + [("balanced", "none", 0)] * 60
    rows += [("hyperactive", "none", 1)] * 30 + [("hyperactive", "none", 0)] * 70
    rows += [("hyperactive", "tacrolimus", 1)] * events_treated + [("hyperactive", "tacrolimus", 0)] * (n_treated - events_treated)
    data = pd.DataFrame(rows, columns=["profile", contract.TREATMENT, "y"])
    return Registry(data=data, levels={"profile": "profile"}, outcome="y", reference_groups={"profile": "balanced"})


def _page(registry: Registry) -> str:
    analysis = analyse(registry)
    pngs = {stem: png_bytes(figure) for stem, figure in figures(analysis, ["profile"], "y").items()}
    summary = {"rows_in": 1, "analysed": 1, "rejected": 0, "reasons": "", "calls_without_outcome": 0,
               "overall_rate": 0.3, "treatments": "none 200"}
    return render_page(analysis, levels=["profile"], outcome="y", adjust=[], pngs=pngs, summary=summary), pngs


def test_page_with_an_estimable_effect_has_a_forest_plot_and_its_row():
    page, pngs = _page(_registry(60, 30))
    assert set(pngs) == {"forest_profile", "rates_profile"}
    assert all(data.startswith(b"\x89PNG") for data in pngs.values())
    assert 'alt="forest plot, profile"' in page and "tacrolimus" in page
    assert "<b>unadjusted</b>" in page  # no covariates named: said plainly
    assert "randomized trials" in page and "ESHRE good practice recommendations on RIF" in page


def test_page_without_estimable_effects_says_so_and_draws_no_forest():
    page, pngs = _page(_registry(60, 3))  # 3 events in the treated arm: not estimable
    assert "forest_profile" not in pngs and "rates_profile" in pngs
    assert "No treatment effect is estimable at this level." in page
    assert "fewer than 5 events in an arm" in page
