"""Batch scoring on Spark (``rifml score --engine spark``): the logged pyfunc model as a Spark UDF.

The edge that runs the same model as ``score``, ``mlflow models serve`` and the
Python API, spread over Spark executors through ``mlflow.pyfunc.spark_udf``.
Every row gets its 1-based line number (input index + 2) before anything moves;
the facts a batch cannot see on its own (a patient_id repeated anywhere in the
file, a row whose field count does not match the header) are computed over the
whole file and handed to the model as the boolean columns of
:data:`rifml.serving.BATCH_FLAGS`, so the calls and rejects equal the local
engine's. Results come back to the driver partition by partition, in input
order, and are written as one calls CSV and one rejects CSV.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rifml.contract import REJECT_COLUMNS, REJECT_REASON, REJECTED, STATUS, calls_columns
from rifml.errors import RifmlInputError
from rifml.io.dialects import JAVA_CHARSETS
from rifml.io.reader import PanelFile
from rifml.serving import BATCH_FLAGS, DUPLICATE_FLAG, FIELD_COUNT_FLAG, LAB_OFFSETS_PARAM, REJECT_DETAILS
from rifml.validate import validate_chunk
from rifml.io.writer import AtomicCsvWriter

# Working columns; the prefix keeps them apart from whatever a panel file carries.
ROW = "_rifml_row"
CLEAN_ID = "_rifml_patient_id"
CORRUPT = "_rifml_corrupt_record"
PREDICTION = "_rifml_prediction"
# Bits of monotonically_increasing_id() that count records within one partition.
RECORD_BITS = 33
LOCAL_SETTINGS = {
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "2",
    "spark.log.level": "ERROR",
}


@dataclass
class SparkScoring:
    """What a Spark scoring run wrote: rows scored, reject reasons and called profiles (counts)."""

    scored: int
    reasons: Counter
    profiles: Counter


def configured_master() -> str | None:
    """The Spark master chosen outside rifml: ``MASTER`` or ``--master`` in ``PYSPARK_SUBMIT_ARGS``."""
    if os.environ.get("MASTER"):
        return os.environ["MASTER"]
    found = re.search(r"--master[= ]\s*(\S+)", os.environ.get("PYSPARK_SUBMIT_ARGS", ""))
    return found.group(1) if found else None


def spark_session():
    """The active Spark session, else a new one: ``local[*]`` bound to loopback unless a master is configured.

    Returns
    -------
    pyspark.sql.SparkSession
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = SparkSession.builder.appName("rifml-score")
    master = configured_master()
    if master is None or master.startswith("local"):
        # Executors are Python workers on this machine: same interpreter, loopback only.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = builder.master(master or "local[*]")
        for key, value in LOCAL_SETTINGS.items():
            builder = builder.config(key, value)
    return builder.getOrCreate()


@contextmanager
def _session():
    from pyspark.sql import SparkSession

    owned = SparkSession.getActiveSession() is None
    spark = spark_session()
    try:
        yield spark
    finally:
        if owned:
            spark.stop()


def read_panel(spark, panel_file: PanelFile):
    """The panel file as a Spark DataFrame of text cells (None when empty), plus :data:`FIELD_COUNT_FLAG`.

    CSV is parsed like the local reader (RFC 4180 quoting, cells may span lines);
    a row with too few or too many fields is padded or cut and flagged. Parquet
    values are turned into text (NaN into empty) so validation sees what a CSV would give.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    path = str(panel_file.path.resolve())
    spark_can_read(panel_file)
    if panel_file.format == "parquet":
        frame = spark.read.parquet(path).toDF(*panel_file.columns)
        text = [_as_text(field.dataType, field.name) for field in frame.schema.fields]
        return frame.select(*text).withColumn(FIELD_COUNT_FLAG, F.lit(False))
    schema = T.StructType(
        [T.StructField(name, T.StringType()) for name in panel_file.columns] + [T.StructField(CORRUPT, T.StringType())]
    )
    frame = spark.read.csv(
        path, schema=schema, header=True, multiLine=True, quote='"', escape='"', mode="PERMISSIVE",
        columnNameOfCorruptRecord=CORRUPT, encoding=JAVA_CHARSETS.get(panel_file.dialect.encoding, panel_file.dialect.encoding), sep=panel_file.dialect.sep,
    )
    return frame.withColumn(FIELD_COUNT_FLAG, F.col(CORRUPT).isNotNull()).drop(CORRUPT)


def spark_can_read(panel_file: PanelFile) -> None:
    """Refuse what Spark's CSV reader would read otherwise than the local reader (one line, exit 2).

    The model's validation runs with a decimal point, Spark has no Excel reader, and
    Spark's multi-line parse of a quote that never closes swallows the lines after it.
    """
    local = "; use --engine local"
    if panel_file.format == "excel":
        raise RifmlInputError(f"{panel_file.path}: --engine spark reads CSV and Parquet, not Excel{local}")
    if panel_file.decimal != ".":
        raise RifmlInputError(f"{panel_file.path}: --engine spark reads numbers with a decimal point only{local}")
    if panel_file.format == "text" and len(panel_file.survey.odd):
        raise RifmlInputError(
            f"{panel_file.path}: a quoted cell spans lines or a quote is unclosed (line {int(panel_file.survey.odd[0])}):"
            f" --engine spark cannot account for such records{local}"
        )


def _as_text(data_type, name: str):
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    column = F.col(name)
    if isinstance(data_type, (T.DoubleType, T.FloatType)):
        column = F.when(F.isnan(column), None).otherwise(column)
    return column.cast("string").alias(name)


def with_row_numbers(frame):
    """Add :data:`ROW`, each row's line number (input index + 2), without moving rows between partitions.

    Returns
    -------
    (DataFrame, int)
        The frame with :data:`ROW`, and its number of rows.
    """
    from pyspark.sql import functions as F

    frame = frame.withColumn("_rifml_id", F.monotonically_increasing_id())
    partition = F.shiftright("_rifml_id", RECORD_BITS)
    sizes = dict(frame.groupBy(partition.alias("p")).count().collect())
    offsets, total = [], 0
    for index in range(max(sizes, default=-1) + 1):
        offsets.append(total)
        total += sizes.get(index, 0)
    offset = F.element_at(F.array(*[F.lit(o) for o in offsets]), (partition + 1).cast("int"))
    within = F.col("_rifml_id").bitwiseAND((1 << RECORD_BITS) - 1)
    return frame.withColumn(ROW, offset + within + 2).drop("_rifml_id"), total


def flag_duplicates(frame, id_column: str):
    """Add :data:`CLEAN_ID` (the id as validation reads it) and :data:`DUPLICATE_FLAG` over the whole file."""
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("string")
    def clean(ids: pd.Series) -> pd.Series:
        # Same reading of an id as reader.PanelFile.duplicate_ids and validate_chunk.
        return ids.astype("string").fillna("").str.strip()

    frame = frame.withColumn(CLEAN_ID, clean(F.col(id_column)))
    repeated = (
        frame.where(F.col(CLEAN_ID) != "")
        .groupBy(CLEAN_ID)
        .count()
        .where(F.col("count") > 1)
        .select(CLEAN_ID, F.lit(True).alias(DUPLICATE_FLAG))
    )
    # A broadcast join keeps every row in its partition, so input order survives.
    frame = frame.join(F.broadcast(repeated), on=CLEAN_ID, how="left")
    return frame.withColumn(DUPLICATE_FLAG, F.coalesce(F.col(DUPLICATE_FLAG), F.lit(False)))


def _model_inputs(udf, model_uri: str) -> list[str]:
    schema = udf.metadata.get_input_schema()
    names = schema.input_names() if schema is not None else []
    missing = [name for name in BATCH_FLAGS if name not in names]
    if missing:
        raise RifmlInputError(
            f"model {model_uri} predates whole-file checks on Spark (its signature lacks {', '.join(missing)}): "
            "retrain it with this rifml, or score with --engine local"
        )
    return names


def unseen_lab_offsets(frame, panel_file: PanelFile, profiler) -> str:
    """Offsets of labs unseen in training, estimated on the driver from the whole file (JSON, "" for none).

    Only rows of such labs come to the driver (validated as usual, whole-file rejects
    left out), so every Spark batch scores with the same offsets as the local engine.
    """
    from pyspark.sql import functions as F

    lab_column = panel_file.catalog.lab_column
    if lab_column not in panel_file.columns:
        return ""
    lab = F.trim(F.col(lab_column))
    known = list(profiler.features_.known_labs_)
    unseen = frame.where(lab.isNotNull() & (lab != "") & ~lab.isin(known) & ~F.col(DUPLICATE_FLAG) & ~F.col(FIELD_COUNT_FLAG))
    rows = unseen.select(*panel_file.columns).toPandas()
    if rows.empty:
        return ""
    checked = validate_chunk(rows, np.arange(2, len(rows) + 2), panel_file.catalog)
    return profiler.lab_adaptation(checked.panel).to_json()


def scored_frame(spark, panel_file: PanelFile, model_uri: str, profiler=None):
    """Every input row with its line number, clean id, and the model's answer (calls or reject details).

    Returns
    -------
    (DataFrame, list of str)
        Rows in input order (range-partitioned on :data:`ROW`, sorted within partitions),
        and the calls-file columns (the calls contract, then the file's extra columns).
    """
    import mlflow.pyfunc
    from pyspark.sql import functions as F

    catalog = panel_file.catalog
    frame, total = with_row_numbers(read_panel(spark, panel_file))
    frame = flag_duplicates(frame, catalog.id_column)
    offsets = unseen_lab_offsets(frame, panel_file, profiler) if profiler is not None else ""
    udf = mlflow.pyfunc.spark_udf(spark, model_uri, result_type=None, env_manager="local",
                                  params={LAB_OFFSETS_PARAM: offsets} if offsets else None)
    inputs = [name for name in _model_inputs(udf, model_uri) if name in panel_file.columns or name in BATCH_FLAGS]
    parts = max(spark.sparkContext.defaultParallelism, math.ceil(total / panel_file.chunk_rows))
    frame = frame.repartitionByRange(max(1, min(parts, total)), ROW)
    frame = frame.withColumn(PREDICTION, udf(F.struct(*inputs)))

    extras = [name for name in panel_file.columns if name not in set(catalog.known_columns)]
    calls = calls_columns(catalog)
    answer = [F.col(f"{PREDICTION}.{name}").alias(name) for name in calls[1:]]
    answer += [F.col(f"{PREDICTION}.{name}").alias(name) for name in [STATUS, REJECT_REASON, *REJECT_DETAILS.values()]]
    result = frame.select(ROW, CLEAN_ID, *answer, *extras)
    # MLflow casts a missing boolean to True: a flag whose marker the file lacks is unknown, not raised.
    for marker in catalog.markers:
        if marker.flag_at_or_above and marker.name not in panel_file.columns:
            result = result.withColumn(marker.flag_at_or_above.flag, F.lit(None).cast("boolean"))
    return result.sortWithinPartitions(ROW), calls + extras


def local_chunks(frame, size: int) -> Iterator[pd.DataFrame]:
    """The frame on the driver as pandas chunks of at most ``size`` rows, partition by partition."""
    records = []
    for record in frame.toLocalIterator(prefetchPartitions=True):
        records.append(tuple(record))
        if len(records) >= size:
            yield pd.DataFrame.from_records(records, columns=frame.columns)
            records = []
    if records:
        yield pd.DataFrame.from_records(records, columns=frame.columns)


def _rejects_records(chunk: pd.DataFrame) -> pd.DataFrame:
    fields = {"row": ROW, "patient_id": CLEAN_ID, "reason": REJECT_REASON, **REJECT_DETAILS}
    return pd.DataFrame({column: chunk[fields[column]].to_numpy() for column in REJECT_COLUMNS})


def score_with_spark(panel_file: PanelFile, model_uri: str, calls_path: Path, rejects_path: Path, profiler=None) -> SparkScoring:
    """Score a panel file on Spark; write the calls and rejects CSVs exactly as the local engine does.

    Parameters
    ----------
    panel_file : PanelFile
        The opened input, with the model's catalog.
    model_uri : str
        Any MLflow model URI the driver and executors can reach.
    calls_path, rejects_path : Path
        Output CSVs (written atomically).
    profiler : ImmuneProfiler, optional
        The model's profiler, loaded on the driver: labs unseen in training are adapted on
        the whole file (:func:`unseen_lab_offsets`) before the batches are scored.

    Returns
    -------
    SparkScoring
    """
    from pyspark import StorageLevel

    id_column = panel_file.catalog.id_column
    reasons: Counter[str] = Counter()
    profiles: Counter[str] = Counter()
    scored = 0
    last_row = 0
    with _session() as spark, AtomicCsvWriter(rejects_path, columns=REJECT_COLUMNS) as reject_writer, AtomicCsvWriter(
        calls_path
    ) as calls_writer:
        result, columns = scored_frame(spark, panel_file, model_uri, profiler)
        calls_writer.columns = columns
        # Score every partition at once (one job across the cluster), then bring them home one by one.
        result = result.persist(StorageLevel.MEMORY_AND_DISK)
        result.count()
        for chunk in local_chunks(result, panel_file.chunk_rows):
            rows = chunk[ROW].to_numpy()
            if rows[0] <= last_row or (rows[1:] <= rows[:-1]).any():
                raise RuntimeError("Spark returned rows out of input order")
            last_row = rows[-1]
            rejected = chunk[STATUS] == REJECTED
            reject_writer.write(_rejects_records(chunk[rejected]))
            reasons.update(chunk.loc[rejected, REJECT_REASON])
            calls = chunk[~rejected].rename(columns={CLEAN_ID: id_column})
            calls_writer.write(calls)
            profiles.update(calls[panel_file.catalog.label_column])
            scored += len(calls)
        result.unpersist()
    return SparkScoring(scored, reasons, profiles)
