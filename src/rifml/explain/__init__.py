"""Exact interventional SHAP for LightGBM models, and per-marker drivers.

Why our own explainer: the drivers must be measured against a deliberate reference
(balanced patients whose markers sit inside their reference bands), so that a normal
marker that merely rules out another profile is not named as a driver. That is
interventional SHAP with that background, computed exactly for trees of any size
(see explainer.py) and far faster than shap's TreeExplainer.
"""

from rifml.explain.drivers import COVERAGE, marker_contributions, top_drivers
from rifml.explain.explainer import InterventionalExplainer, check_tree_settings
from rifml.explain.patterns import TreeTable  # pickles of earlier models name rifml.explain.TreeTable
from rifml.explain.trees import ARGMAX

__all__ = ["ARGMAX", "COVERAGE", "InterventionalExplainer", "TreeTable", "check_tree_settings", "marker_contributions", "top_drivers"]
