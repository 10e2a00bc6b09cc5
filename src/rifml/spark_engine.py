"""Batch scoring on Spark (``rifml score --engine spark``): the scoring path of the local engine, over Arrow batches.

Spark's own CSV/Parquet reader splits the file across executors; every row gets its
1-based line number (input index + 2) from its partition's offset, without moving.
The facts a batch cannot see on its own are settled over the whole file first: the
patient_ids repeated anywhere (a Spark aggregation on :func:`rifml.validate.patient_ids`),
a row whose field count does not match the header (the reader's corrupt-record column),
and the offsets of labs unseen in training (estimated on the driver from those labs'
rows). Then ``mapInArrow`` validates and scores large Arrow batches exactly as the local
engine does (:func:`rifml.validate.validate_chunk`, :func:`rifml.scoring.scored_chunks`),
with the profiler and the repeated ids broadcast and unpickled once per Python worker.
Each batch comes back as one row holding its calls and rejects (Arrow IPC); the driver
writes them in input order as one calls CSV and one rejects CSV, as the local engine does.
"""

from __future__ import annotations

import os
import pickle
import re
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from rifml.contract import REJECT_COLUMNS, calls_columns
from rifml.errors import RifmlInputError
from rifml.io.dialects import JAVA_CHARSETS
from rifml.io.reader import PanelFile
from rifml.labs import LabAdaptation
from rifml.scoring import Tally, scored_chunks
from rifml.validate import nfc, patient_ids, validate_chunk

# Working columns; the prefix keeps them apart from whatever a panel file carries.
ROW = "_rifml_row"
CLEAN_ID = "_rifml_patient_id"
CORRUPT = "_rifml_corrupt_record"
FIELD_COUNT = "_rifml_wrong_field_count"
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
# What a Python worker answers per Arrow batch: its first and last line, and its calls and
# rejects as Arrow IPC streams (empty bytes: no calls), so the driver writes them as they are.
BATCH_SCHEMA = "first_row long, last_row long, accepted_lines long, calls binary, rejects binary"
# Arrow record batches handed to a Python worker hold at most --chunk-rows rows.
BATCH_ROWS_SETTING = "spark.sql.execution.arrow.maxRecordsPerBatch"


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
    """The panel file as a Spark DataFrame of text cells (None when empty), plus :data:`FIELD_COUNT`.

    CSV is parsed like the local reader (RFC 4180 quoting); a row with too few or too
    many fields is padded or cut and flagged. Parquet values are turned into text (NaN
    into empty) so validation sees what a CSV would give.

    A file Spark reads holds one record per line (:func:`spark_can_read` refuses cells
    spanning lines), so it is read line by line and split across executors; only an
    encoding whose line ends are not ASCII bytes (UTF-16) needs the whole-file parse.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    path = str(panel_file.path.resolve())
    spark_can_read(panel_file)
    if panel_file.format == "parquet":
        frame = spark.read.parquet(path).toDF(*panel_file.columns)
        text = [_as_text(field.dataType, field.name) for field in frame.schema.fields]
        return frame.select(*text).withColumn(FIELD_COUNT, F.lit(False))
    schema = T.StructType(
        [T.StructField(name, T.StringType()) for name in panel_file.columns] + [T.StructField(CORRUPT, T.StringType())]
    )
    frame = spark.read.csv(
        path, schema=schema, header=True, multiLine=panel_file.dialect.encoding.lower().startswith("utf-16"), quote='"',
        escape='"', mode="PERMISSIVE", columnNameOfCorruptRecord=CORRUPT,
        encoding=JAVA_CHARSETS.get(panel_file.dialect.encoding, panel_file.dialect.encoding), sep=panel_file.dialect.sep,
    )
    return frame.withColumn(FIELD_COUNT, F.col(CORRUPT).isNotNull()).drop(CORRUPT)


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


def repeated_patient_ids(frame, id_column: str) -> frozenset[str]:
    """The patient ids (as :func:`rifml.validate.patient_ids` reads them) on more than one row of the whole file.

    A Spark aggregation: ids are read on the executors, counted per id across all
    partitions, and only the repeated ones come to the driver (every row holding one of
    them is rejected, as :meth:`rifml.io.reader.PanelFile.duplicate_ids` makes the local engine do).
    """
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf

    if id_column not in frame.columns:
        return frozenset()

    @pandas_udf("string")
    def clean(ids: pd.Series) -> pd.Series:
        return patient_ids(ids)

    ids = frame.select(clean(F.col(id_column)).alias(CLEAN_ID))
    repeated = ids.where(F.col(CLEAN_ID) != "").groupBy(CLEAN_ID).count().where(F.col("count") > 1)
    return frozenset(row[0] for row in repeated.select(CLEAN_ID).toLocalIterator())


def unseen_lab_offsets(frame, panel_file: PanelFile, profiler, repeated: frozenset[str]) -> LabAdaptation:
    """Offsets of labs unseen in training, estimated on the driver from the whole file.

    Only rows of such labs come to the driver, validated as the batches will be (whole-file
    rejects included), so every Spark batch scores with the same offsets as the local engine.
    """
    from pyspark.sql import functions as F

    lab_column = panel_file.catalog.lab_column
    if lab_column not in panel_file.columns:
        return LabAdaptation()
    lab = F.trim(F.col(lab_column))
    known = list(profiler.features_.known_labs_)
    rows = frame.where(lab.isNotNull() & (lab != "") & ~lab.isin(known)).select(*panel_file.columns, FIELD_COUNT).toPandas()
    if rows.empty:
        return LabAdaptation()
    checked = validate_chunk(
        rows[panel_file.columns], np.arange(2, len(rows) + 2), panel_file.catalog, repeated, rows[FIELD_COUNT].to_numpy(dtype=bool)
    )
    return profiler.lab_adaptation(checked.panel)


# What this Python worker unpickled for a run (profiler, repeated ids), by run token. Spark reuses
# a worker for many tasks (spark.python.worker.reuse), so every batch after the first finds them here.
_WORKER_RUNS: dict[str, tuple] = {}


def worker_run(token: str, shipped) -> tuple:
    """Run ``token``'s broadcast ``shipped`` (profiler, repeated ids), unpickled the first time this worker needs it."""
    run = _WORKER_RUNS.get(token)
    if run is None:
        _WORKER_RUNS.clear()  # a worker reused by a later run drops the earlier run's profiler
        run = _WORKER_RUNS[token] = pickle.loads(shipped.value)
    return run


def _ipc(frame: pd.DataFrame | None) -> bytes:
    if frame is None:
        return b""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as stream:
        stream.write_table(table)
    return sink.getvalue().to_pybytes()


def _frame(blob: bytes) -> pd.DataFrame:
    # Text stays Arrow-backed, as the local engine hands it to the writer.
    table = pa.ipc.open_stream(pa.py_buffer(blob)).read_all()
    return table.to_pandas(types_mapper={pa.string(): pd.StringDtype("pyarrow")}.get)


def score_batches(
    batches: Iterator[pa.RecordBatch], token: str, shipped, columns: list[str], labs: LabAdaptation
) -> Iterator[pa.RecordBatch]:
    """``mapInArrow`` body: validate and score each Arrow batch of raw rows, one answer row per batch.

    Parameters
    ----------
    batches : iterator of pyarrow.RecordBatch
        The file's text cells (``columns``) with :data:`ROW` and :data:`FIELD_COUNT`.
    token, shipped :
        The run's profiler and repeated patient ids (see :func:`worker_run`).
    labs : LabAdaptation
        Offsets of unseen labs, from the whole file.

    Yields
    ------
    pyarrow.RecordBatch
        :data:`BATCH_SCHEMA`.
    """
    import numba
    from pyspark import TaskContext

    profiler, repeated = worker_run(token, shipped)
    # Spark runs as many tasks at once as an executor has cores, each owning spark.task.cpus of them:
    # the compiled kernels' threads stay within the task's share (else every worker spawns one per core).
    numba.set_num_threads(max(1, min(TaskContext.get().cpus(), numba.config.NUMBA_NUM_THREADS)))
    id_column = profiler.catalog_.id_column
    for batch in batches:
        if batch.num_rows == 0:
            continue
        raw = batch.to_pandas(types_mapper=pd.ArrowDtype)  # Arrow-backed cells, as the local reader gives them
        if id_column in raw:  # ids in NFC as the local reader gives them (a reject's value shows the id so)
            raw[id_column] = nfc(raw[id_column])
        rows = raw[ROW].to_numpy(dtype=np.int64)
        checked = validate_chunk(raw[columns], rows, profiler.catalog_, repeated, raw[FIELD_COUNT].to_numpy(dtype=bool))
        [(_, calls)] = scored_chunks(profiler, [checked], labs=labs)
        yield pa.RecordBatch.from_pydict(
            {"first_row": [int(rows[0])], "last_row": [int(rows[-1])], "accepted_lines": [checked.accepted_lines],
             "calls": [_ipc(calls)], "rejects": [_ipc(checked.rejects)]},
            schema=pa.schema([("first_row", pa.int64()), ("last_row", pa.int64()), ("accepted_lines", pa.int64()),
                              ("calls", pa.binary()), ("rejects", pa.binary())]),
        )


def scored_batches(spark, panel_file: PanelFile, profiler):
    """The file's batches scored on the executors: a DataFrame of :data:`BATCH_SCHEMA`, in input order.

    Returns
    -------
    (DataFrame, Broadcast)
        The answers (one row per batch, partitions in input order), and the broadcast
        to ``destroy`` when they have been read.
    """
    from pyspark.sql import functions as F

    catalog = panel_file.catalog
    frame = read_panel(spark, panel_file)
    repeated = repeated_patient_ids(frame, catalog.id_column)
    labs = unseen_lab_offsets(frame, panel_file, profiler, repeated)
    frame, total = with_row_numbers(frame)
    parallelism = spark.sparkContext.defaultParallelism
    if frame.rdd.getNumPartitions() < parallelism and total > panel_file.chunk_rows:
        # One unsplittable file (gzip, UTF-16) would be scored by one core: spread it, keeping line order.
        frame = frame.repartitionByRange(min(parallelism, -(-total // panel_file.chunk_rows)), ROW).sortWithinPartitions(ROW)
    shipped = spark.sparkContext.broadcast(pickle.dumps((profiler, repeated), protocol=pickle.HIGHEST_PROTOCOL))
    body = partial(score_batches, token=uuid.uuid4().hex, shipped=shipped, columns=list(panel_file.columns), labs=labs)
    inputs = [*panel_file.columns, ROW, FIELD_COUNT]
    return frame.select(*[F.col(f"`{name}`") for name in inputs]).mapInArrow(body, BATCH_SCHEMA), shipped


def score_with_spark(panel_file: PanelFile, profiler, calls_path: Path, rejects_path: Path) -> Tally:
    """Score a panel file on Spark; write the calls and rejects CSVs exactly as the local engine does.

    Parameters
    ----------
    panel_file : PanelFile
        The opened input, with the model's catalog.
    profiler : ImmuneProfiler
        The model's fitted profiler, loaded on the driver; it reaches the executors as a
        broadcast (they need rifml installed, not access to the model's store).
    calls_path, rejects_path : Path
        Output CSVs (written atomically).

    Returns
    -------
    Tally
    """
    from pyspark import StorageLevel

    from rifml.io.writer import AtomicCsvWriter

    tally = Tally()
    last_row = 0
    with _session() as spark, AtomicCsvWriter(rejects_path, columns=REJECT_COLUMNS) as reject_writer, AtomicCsvWriter(
        calls_path
    ) as calls_writer:
        before = spark.conf.get(BATCH_ROWS_SETTING, None)
        spark.conf.set(BATCH_ROWS_SETTING, str(panel_file.chunk_rows))
        try:
            answers, shipped = scored_batches(spark, panel_file, profiler)
            # Score every partition at once (one job across the cluster), then bring the answers home in order.
            answers = answers.persist(StorageLevel.MEMORY_AND_DISK)
            answers.count()
            for answer in answers.toLocalIterator(prefetchPartitions=True):
                if answer.first_row <= last_row or answer.last_row < answer.first_row:
                    raise RuntimeError("Spark returned rows out of input order")
                last_row = answer.last_row
                rejects = _frame(answer.rejects)
                calls = _frame(answer.calls) if answer.calls else None
                reject_writer.write(rejects)
                if calls is not None:
                    calls_writer.write(calls)
                tally.add(rejects, calls, answer.accepted_lines, panel_file.catalog.label_column)
            answers.unpersist()
            shipped.destroy()
        finally:
            if before is None:
                spark.conf.unset(BATCH_ROWS_SETTING)
            else:
                spark.conf.set(BATCH_ROWS_SETTING, before)
        if tally.scored == 0:  # still give the calls file its header
            calls_writer.columns = calls_columns(panel_file.catalog)
    return tally
