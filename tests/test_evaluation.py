"""Training figures and calibration: one binning, no global matplotlib state."""

import subprocess
import sys

import numpy as np
import pytest

from rifml.evaluation import calibration_bins, expected_calibration_error


def test_calibration_bins_and_ece_share_one_binning():
    proba = np.array([[0.95, 0.05], [0.92, 0.08], [0.55, 0.45], [0.52, 0.48], [0.58, 0.42]])
    correct = np.array([True, False, True, True, False])
    bins = calibration_bins(proba, correct)
    assert bins["n"].tolist() == [3, 2]  # 0.5-0.6 and 0.9-1.0; empty bins are left out
    np.testing.assert_allclose(bins["accuracy"], [2 / 3, 0.5])
    np.testing.assert_allclose(bins["confidence"], [(0.55 + 0.52 + 0.58) / 3, (0.95 + 0.92) / 2])
    expected = 3 / 5 * abs(2 / 3 - 0.55) + 2 / 5 * abs(0.5 - 0.935)
    assert expected_calibration_error(proba, correct) == pytest.approx(expected, abs=1e-12)


# Run apart: other tests in the session may import pyplot themselves.
FIGURES_WITHOUT_GLOBAL_STATE = """
import sys, matplotlib
import numpy as np, pandas as pd
backend = dict.__getitem__(matplotlib.rcParams, "backend")
from rifml.evaluation import plot_calibration, plot_confusion, plot_shap_summary
import rifml.training
rng = np.random.default_rng(0)
values = pd.DataFrame(rng.normal(size=(20, 2)), columns=["a", "b"])
figures = [plot_shap_summary(values, values, "title"),
           plot_calibration(np.array(["x", "y"] * 10, dtype=object), rng.dirichlet([1, 1], 20), ["x", "y"]),
           plot_confusion(np.array(["x", "y"]), np.array(["x", "x"]), ["x", "y"], "title")]
for figure in figures:
    figure.savefig(__import__("io").BytesIO(), format="png")
assert "matplotlib.pyplot" not in sys.modules, "pyplot imported"
assert dict.__getitem__(matplotlib.rcParams, "backend") == backend, "backend switched"
"""


def test_figures_are_drawn_without_pyplot_or_a_backend_switch():
    result = subprocess.run([sys.executable, "-c", FIGURES_WITHOUT_GLOBAL_STATE], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
