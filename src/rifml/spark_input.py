"""How Spark reads a panel file for ``rifml score --engine spark``: lines or cells, each record numbered.

Spark's text reader splits a text file's lines across executors and the Python workers
parse them with the local engine's own parsers (:func:`parse_lines`), so every line gives
the local engine's cells; Spark's CSV reader (:func:`read_panel`) reads what Spark would
split otherwise (UTF-16, bare CRs, gzip not named ``.gz``), its Parquet reader Parquet.
Records are numbered within their partition (:func:`with_records`), without a job.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from rifml.errors import RifmlInputError
from rifml.io.dialects import JAVA_CHARSETS
from rifml.io.reader import PanelFile
from rifml.io.records import records

# Working columns; the prefix keeps them apart from whatever a panel file carries.
LINE = "_rifml_line"  # one line of a text file, as bytes
PROBLEM = "_rifml_reading_problem"  # why a line could not be read cell by cell (records()), or null
RECORD = "_rifml_record"  # monotonically_increasing_id(): partition << RECORD_BITS | index within the partition
CORRUPT = "_rifml_corrupt_record"
FIELD_COUNT = "_rifml_wrong_field_count"
# Bits of monotonically_increasing_id() that count records within one partition.
RECORD_BITS = 33


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


@dataclass(frozen=True)
class LineReading:
    """How a Python worker turns a text file's lines into cells: as the local reader does.

    A plain file (:attr:`PanelFile.simple`) is parsed by Arrow, a careful one record by
    record (:func:`rifml.io.records.records`: wrong field counts, misplaced quotes), so each
    line gives the local engine's cells. ``header_line`` is dropped from partition 0.
    """

    columns: tuple[str, ...]
    sep: str
    encoding: str
    plain: bool
    header_line: int


def line_reading(panel_file: PanelFile) -> LineReading | None:
    """How to read the file as lines, or None when Spark's line split would not be the survey's.

    UTF-16/32 line ends are not the byte 0x0A, bare CRs end lines for Spark but not for the
    survey, and Spark decompresses gzip only by the ``.gz`` name: those files go through
    Spark's CSV reader (:func:`read_panel`) instead.
    """
    dialect = panel_file.dialect
    if panel_file.format != "text" or panel_file.survey.lone_cr:
        return None
    if codecs.lookup(dialect.encoding).name.startswith(("utf-16", "utf-32")):
        return None
    if dialect.compressed and not panel_file.path.name.lower().endswith(".gz"):
        return None
    return LineReading(tuple(panel_file.columns), dialect.sep, dialect.encoding, panel_file.simple, panel_file.survey.header_line)


def read_lines(spark, panel_file: PanelFile):
    """The file's lines (bytes, line ends dropped) under :data:`LINE`, split across executors by Spark's text reader.

    Reading lines costs the JVM a fraction of parsing every cell (1M panels: 1.6-2.2 s vs
    8-16 s, to Arrow, on 2 loaded cores); the Python workers parse them as the local engine does.
    """
    from pyspark.sql import functions as F

    return spark.read.text(str(panel_file.path.resolve())).select(F.col("value").cast("binary").alias(LINE))


def parse_lines(cells: pa.Array, lines: np.ndarray, reading: LineReading) -> tuple[pd.DataFrame, np.ndarray, np.ndarray | None]:
    """Data lines (bytes) numbered ``lines`` into (raw cells, the records' line numbers, their reading problems)."""
    import pyarrow.csv as pacsv

    if reading.plain:  # one record per line, all of the header's width: Arrow, as the local fast path
        joined = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(cells)], pa.int32()), cells), b"\n")[0]
        encoding = "utf8" if reading.encoding.startswith("utf-8") else reading.encoding
        table = pacsv.read_csv(
            pa.BufferReader(joined.as_buffer()),
            read_options=pacsv.ReadOptions(column_names=list(reading.columns), encoding=encoding, use_threads=False),
            parse_options=pacsv.ParseOptions(delimiter=reading.sep),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in reading.columns}, strings_can_be_null=False),
        )
        return table.to_pandas(types_mapper=pd.ArrowDtype), lines, None
    # records() numbers from a header line of its own: record k of the batch starts on its line k + 2.
    text = ["header\n", *(line.decode(reading.encoding, errors="replace") + "\n" for line in cells.to_pylist())]
    found = list(records(text, reading.sep, len(reading.columns)))
    frame = pd.DataFrame([r.cells for r in found], columns=list(reading.columns), dtype=object)
    at = np.array([r.start - 2 for r in found], dtype=np.int64)
    return frame, lines[at], np.array([r.problem for r in found], dtype=object)


def with_records(frame):
    """Add :data:`RECORD`, which numbers the rows within each partition without a Spark job or moving a row.

    A partition's rows get consecutive indexes from 0 (:data:`RECORD_BITS` low bits) under
    the partition's number; :func:`score_with_spark` turns them into line numbers as it
    reads the partitions in order.
    """
    from pyspark.sql import functions as F

    return frame.withColumn(RECORD, F.monotonically_increasing_id())


def record_positions(records: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split :data:`RECORD` values into (partition, index within the partition)."""
    return records >> RECORD_BITS, records & ((1 << RECORD_BITS) - 1)


def batch_cells(batch: pa.RecordBatch, columns: list[str], reading: LineReading | None) -> tuple:
    """An input batch's raw cells as the local reader gives them, and where its records are.

    Returns (partition, record indexes within it, raw cells, line numbers as if the partition
    began the file, wrong-field-count flags, reading problems or None).
    """
    part, index = record_positions(batch.column(RECORD).to_numpy())
    if part[0] != part[-1]:
        raise RuntimeError("an Arrow batch spans two partitions of the read")
    if reading is None:
        raw = batch.select(columns).to_pandas(types_mapper=pd.ArrowDtype)  # Arrow-backed, as the local reader gives
        return part[0], index, raw, index + 2, batch.column(FIELD_COUNT).to_numpy(zero_copy_only=False), None
    lines = index + 1
    data = lines > (reading.header_line if part[0] == 0 else 0)
    raw, rows, problems = parse_lines(batch.column(LINE).filter(pa.array(data)), lines[data], reading)
    return part[0], index, raw, rows, np.zeros(len(raw), dtype=bool), problems


def parsed_cells(batches: Iterator[pa.RecordBatch], reading: LineReading) -> Iterator[pa.RecordBatch]:
    """``mapInArrow`` body: lines into text cells (empty as ""), :data:`FIELD_COUNT` and :data:`PROBLEM`."""
    columns = list(reading.columns)
    for batch in batches:
        if batch.num_rows == 0:
            continue
        _, _, raw, _, bad_field_count, problems = batch_cells(batch, columns, reading)
        arrays = [pa.array(raw[c].astype(object), type=pa.string()) for c in columns]
        arrays += [pa.array(bad_field_count), pa.array(problems if problems is not None else [None] * len(raw), type=pa.string())]
        yield pa.RecordBatch.from_arrays(arrays, names=[*columns, FIELD_COUNT, PROBLEM])


def cells_of_lines(spark, panel_file: PanelFile, reading: LineReading):
    """The file's cells as the Python workers parse its lines (:func:`parse_lines`), for the whole-file rules.

    Spark's CSV reader would parse some files otherwise (and refuses Windows code pages).
    """
    from pyspark.sql import types as T

    schema = T.StructType(
        [T.StructField(name, T.StringType()) for name in reading.columns]
        + [T.StructField(FIELD_COUNT, T.BooleanType()), T.StructField(PROBLEM, T.StringType())]
    )
    return with_records(read_lines(spark, panel_file)).mapInArrow(partial(parsed_cells, reading=reading), schema)
