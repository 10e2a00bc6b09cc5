"""Outcomes by immune profile and subtype, and trial planning (research use only).

Pure analysis lives in :mod:`~rifml.outcomes.analysis` (logistic models, rates,
interaction tests) and :mod:`~rifml.outcomes.planning` (sample sizes); reading and
matching in :mod:`~rifml.outcomes.matching`; figures and the HTML page in
:mod:`~rifml.outcomes.render`; the synthetic registry in
:mod:`~rifml.outcomes.simulate`. This module imports nothing heavy, because the
cohort simulator imports the outcome simulator's config from here.
"""
