"""The MLflow pyfunc face of a fitted ImmuneProfiler (what `score`, `mlflow models serve` and Spark run).

``predict`` takes raw panel rows (cells as text, numbers or ``<x``), validates
them exactly as the CLI does, and answers one row per input row: the calls
columns for accepted rows, and ``status`` / ``reject_reason`` (plus the rejects-file
details) for all rows, so a serving client or a Spark UDF always gets a same-length answer.

A batch is self-contained unless the caller says otherwise: a caller that splits a
file into batches (``mlflow.pyfunc.spark_udf`` over a file) passes the file-level facts
a batch cannot see as two optional boolean columns, :data:`DUPLICATE_FLAG` and
:data:`FIELD_COUNT_FLAG`, and the offsets of labs unseen in training, estimated on the
whole file, as the model parameter :data:`LAB_OFFSETS_PARAM`. Validation and calling are
those of every engine (:func:`rifml.validate.validate_chunk`, :func:`rifml.scoring.scored_chunks`).
"""

from __future__ import annotations

import os
import pickle

# Read by the OpenMP runtime when it loads (with LightGBM, when the profiler is unpickled): threads
# that spin between requests take the cores a busy server needs, and each kernel call then waits for
# its second thread (measured under load: a 1-panel request 0.37 -> 0.27 s, 100 panels 0.41 -> 0.24 s).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pandas as pd
from mlflow.pyfunc import PythonModel

from rifml.contract import (
    REJECT_REASON,
    REJECTED,
    REJECTS_ALL_PROBLEMS,
    REJECTS_COLUMN,
    REJECTS_REASON,
    REJECTS_ROW,
    REJECTS_VALUE,
    SCORED,
    STATUS,
    calls_columns,
)
from rifml.labs import LabAdaptation
from rifml.pipeline import ImmuneProfiler
from rifml.tracking import PROFILER_ARTIFACT
from rifml.scoring import scored_chunks
from rifml.validate import patient_ids, repeated_ids, validate_chunk

DUPLICATE_FLAG = "rifml_duplicate_patient_id"
FIELD_COUNT_FLAG = "rifml_wrong_field_count"
BATCH_FLAGS = (DUPLICATE_FLAG, FIELD_COUNT_FLAG)
# Model parameter carrying whole-file lab offsets (LabAdaptation.to_json) to batch engines' workers.
LAB_OFFSETS_PARAM = "lab_offsets"
# Rejects-file fields (contract.REJECT_COLUMNS) beyond the reason, under their output names.
REJECT_DETAILS = {REJECTS_COLUMN: "reject_column", REJECTS_VALUE: "reject_value", REJECTS_ALL_PROBLEMS: "reject_all_problems"}


def _batch_flag(raw: pd.DataFrame, name: str) -> np.ndarray | None:
    if name not in raw:
        return None
    return raw[name].astype(object).where(raw[name].notna(), False).astype(bool).to_numpy()


def score_frame(profiler: ImmuneProfiler, raw: pd.DataFrame, labs: LabAdaptation | None = None) -> pd.DataFrame:
    """Validate and call a batch; one output row per input row, input order.

    Parameters
    ----------
    profiler : ImmuneProfiler
        A fitted profiler.
    raw : DataFrame
        Raw panel cells. Optional boolean columns :data:`DUPLICATE_FLAG` (the row's
        patient_id occurs more than once in the whole file) and :data:`FIELD_COUNT_FLAG`
        (the row's field count did not match the header) carry file-level facts.
    labs : LabAdaptation, optional
        Offsets for labs unseen in training estimated on the whole file (Spark passes
        them); by default the batch adapts itself (a REST request is its own batch).

    Returns
    -------
    DataFrame
        The calls columns (empty for rejected rows), ``status`` ("scored" or "rejected"),
        ``reject_reason`` and the other rejects-file fields of :data:`REJECT_DETAILS`
        ("" for scored rows).
    """
    catalog = profiler.catalog_
    raw = raw.reset_index(drop=True)
    duplicated, bad_field_count = (_batch_flag(raw, name) for name in BATCH_FLAGS)
    raw = raw.drop(columns=[name for name in BATCH_FLAGS if name in raw])
    rows = np.arange(2, len(raw) + 2)
    duplicates = repeated_ids(raw[catalog.id_column]) if catalog.id_column in raw else frozenset()
    if duplicated is not None:  # repeated elsewhere in the whole file
        ids = patient_ids(raw[catalog.id_column])
        duplicates |= frozenset(ids[(ids != "").to_numpy(dtype=bool) & duplicated])
    checked = validate_chunk(raw, rows, catalog, duplicates, bad_field_count)
    # A request is its own batch: its unseen labs are adapted on its own rows unless the caller passed offsets.
    _, calls = next(scored_chunks(profiler, [checked], labs=labs, compact=False))  # plain text for JSON answers
    if calls is None:
        calls = pd.DataFrame(columns=calls_columns(catalog))
    calls = calls.reindex(columns=calls_columns(catalog))
    calls.index = checked.panel.index
    out = calls.reindex(rows)
    out[catalog.id_column] = raw[catalog.id_column].to_numpy() if catalog.id_column in raw else None
    rejects = checked.rejects.set_index(REJECTS_ROW)
    out[STATUS] = np.where(out.index.isin(rejects.index), REJECTED, SCORED)
    out[REJECT_REASON] = rejects[REJECTS_REASON].reindex(out.index).fillna("").to_numpy()
    for field, name in REJECT_DETAILS.items():
        out[name] = rejects[field].reindex(out.index).fillna("").astype(str).to_numpy()
    return out.reset_index(drop=True)


class RifmlModel(PythonModel):
    """pyfunc wrapper: loads the pickled profiler logged as an artifact."""

    def load_context(self, context) -> None:
        with open(context.artifacts[PROFILER_ARTIFACT], "rb") as handle:
            self.profiler: ImmuneProfiler = pickle.load(handle)
        # A server loads the model before it answers /ping: the first request then finds the kernel loaded.
        self.profiler.explainer_.warm_up()

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return score_frame(self.profiler, model_input, LabAdaptation.from_json((params or {}).get(LAB_OFFSETS_PARAM)))
