"""Naive reference scorer for the benchmark: the same trained trees, explained by shap.TreeExplainer.

What a data scientist would write first: read the whole file with pandas, validate
and build features with rifml, call with the booster, explain every row with
shap's TreeExplainer (its default path-dependent algorithm), keep the called
class, sum per marker, write the calls. Used only to measure rifml against.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import shap

from rifml.explain import marker_contributions, top_drivers
from rifml.tracking import connect, load_profiler
from rifml.validate import repeated_ids, validate_chunk


def main(model_uri: str, tracking_uri: str, source: str, target: str) -> None:
    connect(tracking_uri)
    profiler, _ = load_profiler(model_uri)
    catalog = profiler.catalog_
    raw = pd.read_csv(source, dtype=str, keep_default_na=False)
    panel = validate_chunk(raw, np.arange(2, len(raw) + 2), catalog, repeated_ids(raw[catalog.id_column])).panel
    X = profiler.features_.transform(panel)
    model = profiler.profile_model_
    proba = model.predict_proba(X)
    called = proba.argmax(axis=1)
    values = np.asarray(shap.TreeExplainer(model.booster_).shap_values(X.to_numpy(dtype=float)))
    column = np.searchsorted(model.booster_classes_, called)
    phi = values[np.arange(len(X)), :, column]
    per_marker = marker_contributions(phi, profiler.feature_names_, profiler.features_.feature_markers_, catalog.marker_names)
    measured = pd.DataFrame({m: panel[m].notna().to_numpy() if m in panel else False for m in catalog.marker_names})
    calls = pd.concat(
        [
            pd.DataFrame({"patient_id": panel[catalog.id_column].to_numpy(), "immune_profile": np.asarray(catalog.profiles)[called]}),
            pd.DataFrame(proba, columns=[f"prob_{p}" for p in catalog.profiles]),
            top_drivers(per_marker, measured),
        ],
        axis=1,
    )
    calls.to_csv(target, index=False)


if __name__ == "__main__":
    main(*sys.argv[1:5])
