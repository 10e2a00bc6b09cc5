"""`rifml score --engine spark`: Arrow batches on Spark write the local engine's calls and rejects files, byte for byte."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_support import rifml_in_process
from mlflow_support import mlflow_store
from typer.testing import CliRunner

pytest.importorskip("pyspark", reason="pyspark is not installed (pip install -e '.[spark]')")
if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
    pytest.skip("Spark needs Java 17+: no java on PATH and no JAVA_HOME", allow_module_level=True)

from rifml.cli import app  # noqa: E402
from rifml.pipeline import calls_columns  # noqa: E402
from rifml.io.reader import PanelFile  # noqa: E402
from rifml.spark_engine import InputOrder, worker_run  # noqa: E402
from rifml.spark_session import (  # noqa: E402
    ARCHIVE_SETTING, JAVA_OPTIONS, LOCAL_SETTINGS, archive_options, class_archive, java_binary, local_settings,
    spark_session, user_settings,
)
from rifml.spark_input import FIELD_COUNT, RECORD, read_panel, record_positions, with_records  # noqa: E402
from rifml.validate import validate_chunk  # noqa: E402

pytestmark = pytest.mark.slow
CHUNK_ROWS = 50  # several Arrow batches per partition and several local chunks for a 300-row file
N_SIMULATED = 296
SPLIT_BYTES = "8k"  # Spark splits the ~38 kB batch file into several partitions (the default is 128 MB)
UNSEEN_LAB = "lab_unseen"
NFC_ID, NFD_ID = "Jos\u00e9-7", "Jose\u0301-7"  # one patient, typed on Windows and on a Mac



@pytest.fixture(scope="session")
def spark():
    session = spark_session()
    yield session
    session.stop()


@pytest.fixture(scope="module")
def work(trained_store, spark, tmp_path_factory):
    """The session's trained store (read only), and a 300-row batch with corrupt rows, duplicates far apart,
    a short row, an extra column."""
    work = tmp_path_factory.mktemp("spark")
    simulated = rifml_in_process("simulate", "--n", N_SIMULATED, "--seed", 22, "--bad-share", 0.1, "--output", "sim.csv", cwd=work)
    assert simulated.returncode == 0, simulated.stderr
    batch = pd.read_csv(work / "sim.csv", dtype=str, keep_default_na=False)
    batch["site_note"] = [f'note {i}, "quoted"' if i % 7 == 0 else "" for i in range(len(batch))]
    batch.loc[batch.index % 3 == 1, "lab_id"] = UNSEEN_LAB  # ~100 panels of a lab the model never saw: adapted
    batch.loc[60, "patient_id"], batch.loc[240, "patient_id"] = NFC_ID, NFD_ID
    first, middle = batch.iloc[[0]], batch.iloc[[150]]
    batch = pd.concat([batch, middle, first, middle], ignore_index=True)
    batch.to_csv(work / "batch.csv", index=False)
    with (work / "batch.csv").open("a") as handle:
        handle.write("SHORT-1,lab_A,2025-01-01\n")  # wrong number of fields
    return work, trained_store.uri


def score(work, uri, engine, name="batch", prefix=None):
    prefix = prefix or (engine if name == "batch" else f"{name}_{engine}")
    result = CliRunner().invoke(
        app,
        ["score", "--engine", engine, "-q", "--input", str(work / f"{name}.csv"), "--output", str(work / f"{prefix}_calls.csv"),
         "--rejects", str(work / f"{prefix}_rejects.csv"), "--tracking-uri", uri, "--chunk-rows", str(CHUNK_ROWS)],
    )
    assert result.exit_code == 0, result.output
    calls = pd.read_csv(work / f"{prefix}_calls.csv", dtype=str, keep_default_na=False)
    rejects = pd.read_csv(work / f"{prefix}_rejects.csv", dtype=str, keep_default_na=False)
    summary = next(line for line in result.output.splitlines() if line.startswith("rows in "))
    return calls, rejects, summary


@pytest.fixture(scope="module")
def both_engines(work):
    folder, uri = work
    spark = spark_session()
    spark.conf.set("spark.sql.files.maxPartitionBytes", SPLIT_BYTES)
    try:
        with mlflow_store(uri):  # the in-process CLI points MLflow at the store: leave no trace for other tests
            return score(folder, uri, "local"), score(folder, uri, "spark")
    finally:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")


def test_spark_writes_the_local_engines_files_byte_for_byte(both_engines, work, catalog):
    folder, _ = work
    (local_calls, _, _), _ = both_engines
    assert (folder / "spark_calls.csv").read_bytes() == (folder / "local_calls.csv").read_bytes()
    assert (folder / "spark_rejects.csv").read_bytes() == (folder / "local_rejects.csv").read_bytes()
    # what the files hold: the calls contract, an extra column carried through, an unseen lab adapted
    assert list(local_calls.columns[: len(calls_columns(catalog))]) == calls_columns(catalog)
    assert "site_note" in local_calls.columns
    assert len(local_calls) > 200
    batch = pd.read_csv(folder / "batch.csv", dtype=str, keep_default_na=False)
    unseen = local_calls["patient_id"].map(batch.drop_duplicates("patient_id").set_index("patient_id")["lab_id"]) == UNSEEN_LAB
    assert unseen.sum() > 50 and (local_calls.loc[unseen, "lab_adapted"] == "True").sum() >= 30
    assert (local_calls.loc[~unseen, "lab_adapted"] == "False").all()


def test_a_plain_file_takes_its_repeated_ids_from_the_drivers_line_survey(work, catalog, monkeypatch):
    """One record per line, no quotes (most lab exports): the driver's survey hashes settle the duplicate rule
    while the JVM starts, no Spark aggregation runs, and the files still equal the local engine's."""
    import rifml.spark_engine as engine

    folder, uri = work
    batch = pd.read_csv(folder / "batch.csv", dtype=str, keep_default_na=False).drop(columns="site_note")
    batch.to_csv(folder / "plain.csv", index=False, lineterminator="\r\n")  # CRLF, as labs write
    assert PanelFile(folder / "plain.csv", catalog).simple

    def no_aggregation(*args):
        raise AssertionError("the Spark aggregation ran for a plain file")

    monkeypatch.setattr(engine, "repeated_patient_ids", no_aggregation)
    spark = spark_session()
    spark.conf.set("spark.sql.files.maxPartitionBytes", SPLIT_BYTES)
    try:
        with mlflow_store(uri):
            (_, _, local_summary), (_, spark_rejects, spark_summary) = (
                score(folder, uri, "local", "plain"), score(folder, uri, "spark", "plain"))
    finally:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")
    assert (folder / "plain_spark_calls.csv").read_bytes() == (folder / "plain_local_calls.csv").read_bytes()
    assert (folder / "plain_spark_rejects.csv").read_bytes() == (folder / "plain_local_rejects.csv").read_bytes()
    assert spark_summary == local_summary
    duplicated = spark_rejects[spark_rejects["reason"] == "duplicate patient_id"]
    assert {"62", "242", "2", str(N_SIMULATED + 3)} <= set(duplicated["row"])  # NFC/NFD pair and copies far apart
    assert duplicated["row"].astype(int).max() > 250  # numbered across several partitions


def test_answers_held_for_a_larger_cluster_write_the_same_files(both_engines, work, monkeypatch):
    """More cores than toLocalIterator keeps busy: every partition is scored at once and held, then read in order."""
    import rifml.spark_engine as engine

    folder, uri = work
    monkeypatch.setattr(engine, "STREAMED_CORES", 0)
    spark = spark_session()
    spark.conf.set("spark.sql.files.maxPartitionBytes", SPLIT_BYTES)
    try:
        with mlflow_store(uri):
            score(folder, uri, "spark", prefix="held_spark")
    finally:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")
    assert (folder / "held_spark_calls.csv").read_bytes() == (folder / "local_calls.csv").read_bytes()
    assert (folder / "held_spark_rejects.csv").read_bytes() == (folder / "local_rejects.csv").read_bytes()


def test_a_windows_1252_file_with_quoted_cells_writes_the_local_engines_files(work):
    """Spark's CSV reader refuses Windows code pages: the lines are decoded and parsed by the workers, for the
    whole-file rules (a Spark count of the ids, the unseen lab's rows) as for scoring."""
    folder, uri = work
    text = (folder / "batch.csv").read_text()
    (folder / "win.csv").write_bytes(text.replace("\n", "\r\n").encode("cp1252", errors="replace"))
    with mlflow_store(uri):
        (_, _, local_summary), (spark_calls, _, spark_summary) = score(folder, uri, "local", "win"), score(folder, uri, "spark", "win")
    assert (folder / "win_spark_calls.csv").read_bytes() == (folder / "win_local_calls.csv").read_bytes()
    assert (folder / "win_spark_rejects.csv").read_bytes() == (folder / "win_local_rejects.csv").read_bytes()
    assert spark_summary == local_summary
    assert NFC_ID in set(spark_calls["patient_id"])  # "José" decoded from its one cp1252 byte (its NFD twin is not cp1252)


def test_a_file_spark_cannot_split_into_lines_is_read_by_its_csv_reader(work, catalog):
    """UTF-16 line ends are not the byte LF: Spark's CSV reader parses it (one partition, spread by line number)."""
    from rifml.spark_input import line_reading

    folder, uri = work
    text = (folder / "batch.csv").read_text()
    (folder / "wide16.csv").write_text(text, encoding="utf-16")
    assert line_reading(PanelFile(folder / "batch.csv", catalog)) is not None
    assert line_reading(PanelFile(folder / "wide16.csv", catalog)) is None
    with mlflow_store(uri):
        (_, _, local_summary), (_, _, spark_summary) = score(folder, uri, "local", "wide16"), score(folder, uri, "spark", "wide16")
    assert (folder / "wide16_spark_calls.csv").read_bytes() == (folder / "wide16_local_calls.csv").read_bytes()
    assert (folder / "wide16_spark_rejects.csv").read_bytes() == (folder / "wide16_local_rejects.csv").read_bytes()
    assert spark_summary == local_summary


def test_the_file_was_read_in_several_partitions(work, spark, catalog):
    spark.conf.set("spark.sql.files.maxPartitionBytes", SPLIT_BYTES)
    try:
        assert read_panel(spark, PanelFile(work[0] / "batch.csv", catalog)).rdd.getNumPartitions() >= 3
    finally:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")


def test_spark_rejects_equal_local_rejects_including_whole_file_rules(both_engines, work):
    (_, local_rejects, local_summary), (_, spark_rejects, spark_summary) = both_engines
    pd.testing.assert_frame_equal(spark_rejects, local_rejects)
    assert spark_summary == local_summary
    reasons = set(spark_rejects["reason"])
    assert {"duplicate patient_id", "wrong number of fields", "negative value", "missing patient_id"} <= reasons
    # two spellings of one id (NFC, NFD) are one patient on both engines: both rows rejected, named in NFC
    assert spark_rejects.loc[spark_rejects["row"].isin(["62", "242"]), "reason"].tolist() == ["duplicate patient_id"] * 2
    assert spark_rejects.loc[spark_rejects["row"].isin(["62", "242"]), "patient_id"].tolist() == [NFC_ID] * 2
    batch = pd.read_csv(work[0] / "batch.csv", dtype=str, keep_default_na=False)
    for position, copies in [(0, [N_SIMULATED + 3]), (150, [N_SIMULATED + 2, N_SIMULATED + 4])]:
        repeated = spark_rejects[spark_rejects["patient_id"] == batch["patient_id"].iloc[position]]
        assert {position + 2, *copies} <= set(repeated["row"].astype(int))  # lines far apart in the file
        assert (repeated["reason"] == "duplicate patient_id").all()


def test_every_row_is_accounted_for(both_engines, work):
    (_, _, _), (spark_calls, spark_rejects, summary) = both_engines
    lines = (work[0] / "batch.csv").read_text().count("\n") - 1
    assert len(spark_calls) + len(spark_rejects) == lines
    assert summary == f"rows in {lines:,} = scored {len(spark_calls):,} + rejected {len(spark_rejects):,}"


def test_parquet_cells_read_as_the_csv_cells(work, spark, catalog):
    folder, _ = work
    panel_file = PanelFile(folder / "batch.csv", catalog)
    typed = pd.read_csv(folder / "batch.csv", dtype=str, keep_default_na=False, nrows=N_SIMULATED + 3)
    for column in typed.columns:  # numbers as doubles (NaN when empty) wherever a whole column parses
        numbers = pd.to_numeric(typed[column].replace("", np.nan), errors="coerce")
        if numbers.notna().sum() == (typed[column] != "").sum() and numbers.notna().any():
            typed[column] = numbers
    assert (typed.dtypes == float).sum() >= 5 and typed.isna().any().any()
    typed.to_parquet(folder / "typed.parquet", index=False)

    def validated(path):
        cells = read_panel(spark, PanelFile(path, catalog)).toPandas()
        return validate_chunk(cells.drop(columns=FIELD_COUNT), np.arange(2, len(cells) + 2), catalog)

    from_csv, from_parquet = validated(panel_file.path), validated(folder / "typed.parquet")
    for checked in (from_csv, from_parquet):  # an empty extra cell is "" in Parquet, None from CSV: both write ""
        checked.panel["site_note"] = checked.panel["site_note"].fillna("")
    pd.testing.assert_frame_equal(from_parquet.panel, from_csv.panel.loc[from_parquet.panel.index])
    csv_rejects = from_csv.rejects[from_csv.rejects["row"] <= N_SIMULATED + 4]  # the short row exists only in CSV
    pd.testing.assert_frame_equal(
        from_parquet.rejects.drop(columns="value"), csv_rejects.drop(columns="value").reset_index(drop=True)
    )


def test_records_are_numbered_within_partitions_and_placed_in_input_order(spark):
    frame = spark.range(0, 1000, numPartitions=4)
    records = with_records(frame).orderBy("id").toPandas()
    part, index = record_positions(records[RECORD].to_numpy())
    assert sorted(set(part)) == [0, 1, 2, 3] and (np.diff(part) >= 0).all()
    order = InputOrder()
    starts = [order.place(p, int(index[part == p][0]), int(index[part == p][-1])) for p in range(4)]
    lines = np.concatenate([index[part == p] + starts[p] + 2 for p in range(4)])
    assert (lines == records["id"].to_numpy() + 2).all()  # every record's line number, no job counting partitions


def test_answers_out_of_input_order_are_a_bug():
    order = InputOrder()
    assert order.place(0, 0, 49) == 0 and order.place(0, 50, 99) == 0 and order.place(2, 0, 9) == 100
    with pytest.raises(RuntimeError, match="out of input order"):
        order.place(2, 20, 29)  # a gap within a partition
    with pytest.raises(RuntimeError, match="partitions out of input order"):
        order.place(1, 0, 9)  # a partition after a later one


def test_a_worker_unpickles_the_profiler_once_per_run(monkeypatch):
    import pickle

    import rifml.spark_engine as engine

    loads, real_loads = [], pickle.loads
    monkeypatch.setattr(engine, "_WORKER_RUNS", {})
    monkeypatch.setattr(engine.pickle, "loads", lambda data: loads.append(data) or real_loads(data))

    class Shipped:  # a Broadcast's face: .value
        value = pickle.dumps(({"fitted": 1}, frozenset({"P1"})))

    first = [worker_run("run-1", Shipped) for _ in range(5)]
    assert len(loads) == 1 and all(run is first[0] for run in first)
    assert first[0] == ({"fitted": 1}, frozenset({"P1"}))
    worker_run("run-2", Shipped)  # a later run in a reused worker: its own profiler, the first one dropped
    assert len(loads) == 2 and list(engine._WORKER_RUNS) == ["run-2"]


def test_settings_made_outside_rifml_are_not_overridden_by_its_local_ones(tmp_path, monkeypatch):
    monkeypatch.delenv("SPARK_HOME", raising=False)
    monkeypatch.setenv("SPARK_CONF_DIR", str(tmp_path))
    monkeypatch.setenv("PYSPARK_SUBMIT_ARGS", "--driver-memory 4g --conf spark.ui.enabled=true pyspark-shell")
    (tmp_path / "spark-defaults.conf").write_text(
        "# site defaults\nspark.sql.shuffle.partitions   64\nspark.log.level=WARN\n\n")
    own = user_settings()
    assert own == {"spark.ui.enabled", "spark.sql.shuffle.partitions", "spark.log.level"}
    assert "spark.driver.extraJavaOptions" not in own  # rifml's quick-compiler flag still applies
    monkeypatch.setenv("PYSPARK_SUBMIT_ARGS", '--driver-java-options "-Xss4m" pyspark-shell')
    monkeypatch.setenv("SPARK_CONF_DIR", str(tmp_path / "absent"))
    assert user_settings() == {"spark.driver.extraJavaOptions"} <= LOCAL_SETTINGS.keys()


def test_a_local_jvm_writes_its_class_archive_once_and_maps_it_once_a_jvm_has_checked_it(tmp_path, monkeypatch):
    monkeypatch.setenv(ARCHIVE_SETTING, str(tmp_path))
    archive = class_archive()
    assert archive.parent == tmp_path and archive.suffix == ".jsa"
    # first run: the JVM is told to write a part of this process's own at its exit
    written = f"{archive}.{os.getpid()}.part"
    assert local_settings(set())[JAVA_OPTIONS].endswith(f"-XX:ArchiveClassesAtExit={written}")
    assert local_settings({JAVA_OPTIONS}).get(JAVA_OPTIONS) is None  # the user's own JVM options: left alone
    java = java_binary()
    dumped = subprocess.run([str(java), f"-XX:ArchiveClassesAtExit={written}", "-version"], capture_output=True)
    assert dumped.returncode == 0 and Path(written).stat().st_size > 0
    # a part cut short (a JVM killed while writing it, or still writing it) crashes a JVM that maps it:
    # never promoted; kept while it may still be written, removed once it is old
    cut = tmp_path / f"{archive.name}.1.part"
    cut.write_bytes(Path(written).read_bytes()[:4096])
    os.utime(cut, (time.time() - 7200, time.time() - 7200))
    fresh_cut = tmp_path / f"{archive.name}.2.part"
    fresh_cut.write_bytes(Path(written).read_bytes()[:4096])
    Path(written).rename(tmp_path / f"{archive.name}.3.part")
    monkeypatch.chdir(tmp_path)
    options = archive_options(archive)
    assert options.endswith(f"-XX:SharedArchiveFile={archive}") and archive.is_file()
    assert not cut.exists() and fresh_cut.exists()
    assert not list(tmp_path.glob("hs_err*")) and not list(tmp_path.glob("core*"))  # the checks' crashes left nothing
    mapped = subprocess.run([str(java), *options.split(), "-version"], capture_output=True, text=True)
    assert mapped.returncode == 0 and "sharing" in mapped.stderr
    monkeypatch.setenv(ARCHIVE_SETTING, "off")
    assert class_archive() is None and local_settings(set())[JAVA_OPTIONS] == LOCAL_SETTINGS[JAVA_OPTIONS]


def test_install_records_the_class_archive_from_a_scoring_run_not_a_users(tmp_path, monkeypatch):
    """`make install` runs `python -m rifml.spark_archive`: a fresh JVM scores simulated panels and leaves a
    part that the next local run checks and maps; with the archive off, or already there, it does nothing."""
    from rifml.spark_archive import record_class_archive

    monkeypatch.setenv(ARCHIVE_SETTING, "off")
    assert record_class_archive() is False
    monkeypatch.setenv(ARCHIVE_SETTING, str(tmp_path))
    class_archive().write_bytes(b"")  # an archive already there: nothing to record, no session started
    assert record_class_archive() is False
    class_archive().unlink()
    done = subprocess.run([sys.executable, "-m", "rifml.spark_archive"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, ARCHIVE_SETTING: str(tmp_path)})
    assert done.returncode == 0 and "Spark class archive: recorded" in done.stdout, done.stderr[-2000:]
    deadline = time.time() + 120  # the JVM writes the part as it exits, after the Python process
    while time.time() < deadline and not list(tmp_path.glob("*.part")):
        time.sleep(1)
    parts = list(tmp_path.glob("*.part"))
    assert len(parts) == 1
    deadline = time.time() + 120
    while time.time() < deadline and not archive_options(class_archive()).endswith(f"-XX:SharedArchiveFile={class_archive()}"):
        time.sleep(2)  # a part still being written fails the check and waits for the next run
    assert class_archive().is_file()
