"""The MLflow pyfunc face of a fitted ImmuneProfiler (what `score`, `mlflow models serve` and Spark run).

``predict`` takes raw panel rows (cells as text, numbers or ``<x``), validates
them exactly as the CLI does, and answers one row per input row: the calls
columns for accepted rows, and ``status`` / ``reject_reason`` for all rows, so a
serving client or a Spark UDF always gets a same-length answer.
"""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from rifml.pipeline import ImmuneProfiler, calls_columns
from rifml.validate import validate_chunk

PROFILER_ARTIFACT = "profiler"


def score_frame(profiler: ImmuneProfiler, raw: pd.DataFrame) -> pd.DataFrame:
    """Validate and call a self-contained batch; one output row per input row, input order."""
    catalog = profiler.catalog_
    raw = raw.reset_index(drop=True)
    rows = np.arange(2, len(raw) + 2)
    ids = raw[catalog.id_column].astype("string").str.strip() if catalog.id_column in raw else pd.Series(dtype="string")
    counts = ids[ids.notna() & (ids != "")].value_counts()
    checked = validate_chunk(raw, rows, catalog, frozenset(counts.index[counts > 1]))
    calls = profiler.call(checked.panel) if len(checked.panel) else pd.DataFrame(columns=calls_columns(catalog))
    calls = calls.reindex(columns=calls_columns(catalog))
    calls.index = checked.panel.index
    out = calls.reindex(rows)
    out[catalog.id_column] = raw[catalog.id_column].to_numpy() if catalog.id_column in raw else None
    reasons = checked.rejects.set_index("row")["reason"]
    out["status"] = np.where(out.index.isin(reasons.index), "rejected", "scored")
    out["reject_reason"] = reasons.reindex(out.index).fillna("").to_numpy()
    return out.reset_index(drop=True)


class RifmlModel(PythonModel):
    """pyfunc wrapper: loads the pickled profiler logged as an artifact."""

    def load_context(self, context) -> None:
        with open(context.artifacts[PROFILER_ARTIFACT], "rb") as handle:
            self.profiler: ImmuneProfiler = pickle.load(handle)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return score_frame(self.profiler, model_input)
