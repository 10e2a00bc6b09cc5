"""Batch scoring on Spark (``rifml score --engine spark``): the scoring path of the local engine, over Arrow batches.

The JVM starts in a thread while the driver loads the model and surveys the file
(:func:`session_in_background`). Spark reads the file (:mod:`rifml.spark_input`: lines
parsed by the workers as the local engine parses them, numbered within partitions).
The facts a batch cannot see on its own are settled over the whole file first, on the
driver when its own survey gives them cheaply, else as Spark jobs: the patient_ids
repeated anywhere (the survey's id hashes, or a Spark aggregation on
:func:`rifml.validate.patient_ids`) and the offsets of labs unseen in training
(estimated on the driver from those labs' rows). Then ``mapInArrow`` validates and
scores large Arrow batches exactly as the local engine does
(:func:`rifml.validate.validate_chunk`, :func:`rifml.scoring.scored_chunks`), with the
profiler and the repeated ids broadcast and unpickled once per Python worker. Each
batch comes back as one row holding its calls and rejects (Arrow IPC); the driver
writes them in input order as one calls CSV and one rejects CSV, as the local engine does.
"""

from __future__ import annotations

import logging
import pickle
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from rifml.contract import REJECT_COLUMNS, REJECTS_ROW, calls_columns
from rifml.io.reader import PanelFile
from rifml.labs import LabAdaptation
from rifml.scoring import Tally, scored_chunks
from rifml.spark_input import (
    FIELD_COUNT,
    LINE,
    PROBLEM,
    RECORD,
    LineReading,
    batch_cells,
    cells_of_lines,
    line_reading,
    read_lines,
    read_panel,
    spark_can_read,
    with_records,
)
from rifml.spark_session import existing_session, spark_session
from rifml.validate import nfc, patient_ids, validate_chunk

log = logging.getLogger(__name__)

CLEAN_ID = "_rifml_patient_id"
# What a Python worker answers per Arrow batch: its partition of the read, the first and last record's
# index within that partition, and its calls and rejects as Arrow IPC streams (empty bytes: no calls).
# Rejects are numbered as if the partition began the file; the driver, reading partitions in order,
# adds the records before it, so no Spark job has to count records before scoring.
BATCH_SCHEMA = "part long, first long, last long, accepted_lines long, calls binary, rejects binary"
_BATCH_ARROW = pa.schema([("part", pa.int64()), ("first", pa.int64()), ("last", pa.int64()),
                          ("accepted_lines", pa.int64()), ("calls", pa.binary()), ("rejects", pa.binary())])
# Up to this many cores, answers stream home as partitions finish (toLocalIterator keeps two partitions
# computing); more cores score every partition at once and hold the answers until they are read in order.
STREAMED_CORES = 2
# Arrow record batches handed to a Python worker hold at most --chunk-rows rows.
BATCH_ROWS_SETTING = "spark.sql.execution.arrow.maxRecordsPerBatch"


@contextmanager
def phase(name: str):
    """Log how long ``name`` took (INFO on ``rifml.spark_engine``): Spark's UI is off, so this is where the time shows."""
    started = time.perf_counter()
    yield
    log.info("%s: %.2f s", name, time.perf_counter() - started)


@contextmanager
def session_in_background() -> Iterator[Future]:
    """Start (or find) the Spark session in a thread; yield its future; stop it on leaving if it was started here.

    The JVM takes 10-20 s to start on a loaded 2-core machine: `rifml score --engine spark`
    loads the model and surveys the file meanwhile, instead of one after the other.
    """

    owned = []

    def start():
        owned.append(existing_session() is None)
        started = time.perf_counter()
        spark = spark_session()
        log.info("Spark session (in a thread): %.2f s", time.perf_counter() - started)
        return spark

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rifml-spark-start") as pool:
        future = pool.submit(start)
        try:
            yield future
        finally:
            # Wait for the start even when leaving on an error, so no JVM is left behind.
            if future.exception() is None and owned[0]:
                with phase("Spark stop"):
                    future.result().stop()


def driver_repeated_ids(panel_file: PanelFile) -> frozenset[str] | None:
    """The patient ids on more than one row, when the driver has them cheaply; else None.

    A file the driver's line survey reads line by line (or Parquet) gives them as the local
    engine gets them, from the survey's 8-byte hashes of the ids (``PanelFile.duplicate_ids``,
    exact): under a second at 1M panels, while the JVM starts. Any other file (quoted cells:
    a line is not always a record) is left to :func:`repeated_patient_ids`, a Spark
    aggregation, which costs a pass of Python workers over every id and a shuffle (17-27 s
    at 1M panels on 2 loaded cores).
    """
    if panel_file.format == "parquet" or panel_file.simple:
        return panel_file.duplicate_ids()
    return None


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
    Whether there are any is asked first, reading the lab column alone: the usual file, all
    labs known, costs a parse of one column (~2 s at 1M panels) rather than of every column.
    """
    from pyspark.sql import functions as F

    lab_column = panel_file.catalog.lab_column
    if lab_column not in panel_file.columns:
        return LabAdaptation()
    lab = F.trim(F.col(lab_column))
    known = list(profiler.features_.known_labs_)
    unseen = frame.where(lab.isNotNull() & (lab != "") & ~lab.isin(known))
    if unseen.select(lab_column).isEmpty():
        return LabAdaptation()
    problems = [PROBLEM] if PROBLEM in frame.columns else []
    rows = unseen.select(*panel_file.columns, FIELD_COUNT, *problems).toPandas()
    checked = validate_chunk(
        rows[panel_file.columns], np.arange(2, len(rows) + 2), panel_file.catalog, repeated, rows[FIELD_COUNT].to_numpy(dtype=bool),
        row_problems=rows[PROBLEM].to_numpy(dtype=object) if problems else None,
    )
    return profiler.lab_adaptation(checked.panel)


def driver_sees_unseen_labs(panel_file: PanelFile, known: list[str]) -> bool:
    """False when the driver can tell cheaply that every lab of the file was seen in training.

    A plain text file's lab column is read by Arrow on the driver (~0.5 s at 1M panels,
    while the JVM starts): the usual file, all labs known, needs no Spark job for them.
    Labs are read as the Spark job reads them (spaces trimmed, empty is no lab).
    """
    if panel_file.catalog.lab_column not in panel_file.columns:
        return False
    if not panel_file.simple:
        return True
    seen = set(known) | {""}
    for cells in panel_file.text_column(panel_file.catalog.lab_column):
        if set(pc.unique(pc.utf8_trim(cells, characters=" ")).to_pylist()) - seen:
            return True
    return False


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


# The answers cross from Python to the JVM, are held there and cross back: lz4 makes them ~4x smaller.
IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")


def _ipc(frame: pd.DataFrame | None) -> bytes:
    if frame is None:
        return b""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=IPC_OPTIONS) as stream:
        stream.write_table(table)
    return sink.getvalue().to_pybytes()


def _frame(blob: bytes) -> pd.DataFrame:
    # Text stays Arrow-backed, as the local engine hands it to the writer.
    table = pa.ipc.open_stream(pa.py_buffer(blob)).read_all()
    return table.to_pandas(types_mapper={pa.string(): pd.StringDtype("pyarrow")}.get)


def score_batches(
    batches: Iterator[pa.RecordBatch], token: str, shipped, columns: list[str], labs: LabAdaptation,
    reading: LineReading | None = None,
) -> Iterator[pa.RecordBatch]:
    """``mapInArrow`` body: validate and score each Arrow batch of raw rows, one answer row per batch.

    Parameters
    ----------
    batches : iterator of pyarrow.RecordBatch
        The file's lines (:data:`LINE`, when ``reading`` says how to parse them), or its text
        cells (``columns``) with :data:`FIELD_COUNT`; with :data:`RECORD`.
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
        part, index, raw, rows, bad_field_count, problems = batch_cells(batch, columns, reading)
        answer = {"part": [int(part)], "first": [int(index[0])], "last": [int(index[-1])]}
        if raw.empty:  # the header, or blank lines only
            yield pa.RecordBatch.from_pydict({**answer, "accepted_lines": [0], "calls": [b""], "rejects": [b""]}, schema=_BATCH_ARROW)
            continue
        if id_column in raw:  # ids in NFC as the local reader gives them (a reject's value shows the id so)
            raw[id_column] = nfc(raw[id_column])
        checked = validate_chunk(raw, rows, profiler.catalog_, repeated, bad_field_count, row_problems=problems)
        [(_, calls)] = scored_chunks(profiler, [checked], labs=labs)
        answer.update(accepted_lines=[checked.accepted_lines], calls=[_ipc(calls)], rejects=[_ipc(checked.rejects)])
        yield pa.RecordBatch.from_pydict(answer, schema=_BATCH_ARROW)


def scored_batches(spark, panel_file: PanelFile, profiler, repeated: frozenset[str] | None, unseen_labs: bool = True):
    """The file's batches scored on the executors: a DataFrame of :data:`BATCH_SCHEMA`, in input order.

    ``repeated``: the repeated patient ids, or None to count them with a Spark aggregation;
    ``unseen_labs``: False when the driver found every lab known (no Spark job for them).

    Returns
    -------
    (DataFrame, Broadcast)
        The answers (one row per batch, partitions in input order), and the broadcast
        to ``destroy`` when they have been read.
    """
    from pyspark.sql import functions as F

    reading = line_reading(panel_file)
    # Cells for the whole-file rules Spark must settle: parsed from the lines as scoring parses them, or by
    # Spark's CSV reader for a file not read as lines.
    cells = None
    if reading is None:
        cells = read_panel(spark, panel_file)
    elif repeated is None or unseen_labs:
        cells = cells_of_lines(spark, panel_file, reading)
    if repeated is None:
        with phase("repeated patient ids (Spark)"):
            repeated = repeated_patient_ids(cells, panel_file.catalog.id_column)
    labs = LabAdaptation()
    if unseen_labs:
        with phase("unseen labs (Spark)"):
            labs = unseen_lab_offsets(cells, panel_file, profiler, repeated)
    if reading is not None:
        frame, inputs = read_lines(spark, panel_file), [LINE]
    else:
        frame, inputs = cells, [*panel_file.columns, FIELD_COUNT]
    frame = with_records(frame)
    parallelism = spark.sparkContext.defaultParallelism
    # Spark splits an uncompressed text file by bytes; asking the plan (frame.rdd) costs seconds in a fresh JVM.
    few = panel_file.dialect.compressed if reading is not None else frame.rdd.getNumPartitions() < parallelism
    if few and panel_file.row_count > panel_file.chunk_rows:
        # One unsplittable file (gzip, UTF-16) would be scored by one core: spread it, keeping line order
        # (its records all belong to partition 0 of the read, so their indexes are their order).
        parts = min(parallelism, -(-panel_file.row_count // panel_file.chunk_rows))
        frame = frame.repartitionByRange(parts, RECORD).sortWithinPartitions(RECORD)
    shipped = spark.sparkContext.broadcast(pickle.dumps((profiler, repeated), protocol=pickle.HIGHEST_PROTOCOL))
    body = partial(score_batches, token=uuid.uuid4().hex, shipped=shipped, columns=list(panel_file.columns), labs=labs,
                   reading=reading)
    return frame.select(*[F.col(f"`{name}`") for name in [*inputs, RECORD]]).mapInArrow(body, BATCH_SCHEMA), shipped


def score_with_spark(
    panel_file: PanelFile, profiler, calls_path: Path, rejects_path: Path, session: Future | None = None
) -> Tally:
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
    session : Future, optional
        The Spark session being started (:func:`session_in_background`, entered by the
        caller before loading the model); else one is started here.

    Returns
    -------
    Tally
    """
    from pyspark import StorageLevel

    from rifml.io.writer import AtomicCsvWriter

    tally = Tally()
    with ExitStack() as stack:
        if session is None:
            session = stack.enter_context(session_in_background())
        # The driver's own passes over the file run while the JVM starts.
        with phase("line survey (driver)"):
            spark_can_read(panel_file)
        with phase("repeated patient ids (driver)"):
            repeated = driver_repeated_ids(panel_file)
        with phase("unseen labs (driver)"):
            unseen_labs = driver_sees_unseen_labs(panel_file, list(profiler.features_.known_labs_))
        with phase("waiting for the Spark session"):
            spark = session.result()
        reject_writer = stack.enter_context(AtomicCsvWriter(rejects_path, columns=REJECT_COLUMNS))
        calls_writer = stack.enter_context(AtomicCsvWriter(calls_path))
        before = spark.conf.get(BATCH_ROWS_SETTING, None)
        spark.conf.set(BATCH_ROWS_SETTING, str(panel_file.chunk_rows))
        try:
            with phase("planning"):
                answers, shipped = scored_batches(spark, panel_file, profiler, repeated, unseen_labs)
            # toLocalIterator computes partitions one job at a time with the next one prefetched: two in flight.
            # On up to two cores that is every core, and answers stream to the writer as partitions finish.
            # A larger cluster scores every partition at once (one job), held until brought home in order.
            held = spark.sparkContext.defaultParallelism > STREAMED_CORES
            if held:
                answers = answers.persist(StorageLevel.MEMORY_AND_DISK)
                with phase("scoring (mapInArrow)"):
                    answers.count()
            with phase("writing in input order" if held else "scoring and writing in input order"):
                lines = InputOrder()
                for answer in answers.toLocalIterator(prefetchPartitions=True):
                    start = lines.place(answer.part, answer.first, answer.last)
                    if not answer.rejects:  # the header or blank lines only
                        continue
                    rejects = _frame(answer.rejects)
                    rejects[REJECTS_ROW] += start
                    calls = _frame(answer.calls) if answer.calls else None
                    reject_writer.write(rejects)
                    if calls is not None:
                        calls_writer.write(calls)
                    tally.add(rejects, calls, answer.accepted_lines, panel_file.catalog.label_column)
            if held:
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


class InputOrder:
    """Line numbers for answers that arrive partition by partition, each partition's batches in order.

    Spark numbers records within a partition (:func:`with_records`); a partition starts
    after all the records of the partitions before it, which the driver has seen by then.
    Anything out of order (a gap, a batch twice) is a bug and raises.
    """

    def __init__(self) -> None:
        self.part = -1
        self.start = 0  # records in the partitions before the current one
        self.next = 0  # index of the next record expected in the current partition

    def place(self, part: int, first: int, last: int) -> int:
        """Check the batch of records ``first``..``last`` of partition ``part``; return what its line numbers lack."""
        if part != self.part:
            if part < self.part:
                raise RuntimeError("Spark returned partitions out of input order")
            self.part, self.start, self.next = part, self.start + self.next, 0
        if first != self.next or last < first:
            raise RuntimeError("Spark returned rows out of input order")
        self.next = last + 1
        return self.start
