"""Issue 10's bars, asserted per scenario on a small grid of worlds that differ from the default.

Each world is simulated twice (a training batch; a scoring batch, 2% corrupt rows, where a
scoring-only lab may appear) and rifml is trained with and without labels through the public
API (rifml.robustness.evaluate_scenario). Bars (complete panels, every one that applies):
label-free macro-F1 >= 0.75, label-free ECE <= 0.10, coherence >= 0.90, unseen-lab gap <= 0.03,
supervised macro-F1 >= 0.87, subtype ARI >= 0.65, driver_1 >= 0.90, supervised ECE <= 0.06,
every corrupt row caught and no clean row rejected.

The grid: assay calibration and five drifting labs plus a strongly drifting lab seen only at
scoring (combo_assay_labs), and five labs drifting on markers the catalog does not flag
(five_labs_drift). `make robustness` runs all fourteen worlds and prints the table; worlds
where some bar is not met yet are listed in benchmarks/RESULTS.md, not hidden here.
"""

import pytest

from rifml.robustness import BARS, bar_results, evaluate_scenario
from rifml.simulate import load_simulation_config
from rifml.training import load_train_config


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["combo_assay_labs", "five_labs_drift"])
def test_bars_hold_in_world(scenario, catalog):
    metrics = evaluate_scenario(load_simulation_config(scenario=scenario), load_train_config(), catalog=catalog)
    held = bar_results(metrics)
    missed = {bar: round(metrics[bar.split()[0]], 3) for bar, ok in held.items() if ok is False}
    assert not missed, f"{scenario}: bars missed {missed}"
    assert sum(ok is True for ok in held.values()) >= len(BARS) - 1  # at most the unseen-lab bar may not apply
