"""Record Spark's class archive at install, so that no scoring run pays for recording it.

A local JVM maps a class-data-sharing archive of the classes Spark loads
(:mod:`rifml.spark_session`). The JVM that records it runs slower all along: on 1M panels
(2 cores, idle) the first `rifml score --engine spark` of a fresh install took 40.7 s
against 30.2 s without an archive and 24-27 s with one. ``make install`` therefore runs
``python -m rifml.spark_archive``: a small model fitted on simulated panels scores a few
thousand simulated panels on Spark, through the same code as a scoring run, so the archive
holds the classes such a run loads (a job on the same JVM path without a model gave an
archive worth almost nothing: 28-29 s). The JVM writes the archive (a part) as it exits, and
this waits for it; the next local run checks the part and maps it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

# Enough rows for every stage of a scoring run (several Arrow batches over two partitions), few
# enough to take seconds.
WARM_PANELS = 3000


def record_class_archive() -> bool:
    """Score simulated panels on a fresh local Spark session; False when there is no archive to record."""
    from rifml.spark_session import class_archive, existing_session

    archive = class_archive()
    if archive is None or archive.is_file() or existing_session() is not None:
        return False
    from rifml.catalog import load_catalog
    from rifml.explain.explainer import VECTORIZED_ROWS
    from rifml.io.reader import PanelFile
    from rifml.model import CalibratedBoostedClassifier
    from rifml.pipeline import ImmuneProfiler
    from rifml.robustness import clean_batch
    from rifml.simulate import load_simulation_config, simulate_cohort
    from rifml.spark_engine import score_with_spark
    from rifml.subtypes import ConsensusClustering

    catalog, config = load_catalog(), load_simulation_config()
    panel, _, _, _ = clean_batch(catalog, config, 300, 1, "train", 0.0)
    profiler = ImmuneProfiler(
        clustering=ConsensusClustering(k_max=3, n_resamples=2, max_items=200),
        classifier=CalibratedBoostedClassifier(n_estimators=5, calibration_folds=2),
        subtype_trees=2, background_size=20,
    ).fit(panel.drop(columns=catalog.label_column))
    # numba's on-disk cache of the scoring kernels too (batches above explainer.VECTORIZED_ROWS use them): the first
    # run of a fresh install, on either engine, would otherwise compile them (Spark: in each worker).
    large, _, _, _ = clean_batch(catalog, config, VECTORIZED_ROWS + 1000, 3, "score", 0.0)
    profiler.call(large.drop(columns=catalog.label_column))
    with tempfile.TemporaryDirectory(prefix="rifml-spark-archive-") as folder:
        cohort, _ = simulate_cohort(WARM_PANELS, seed=2, bad_share=0.0, config=config, catalog=catalog, batch="score")
        batch = Path(folder, "batch.csv")
        cohort.to_csv(batch, index=False, lineterminator="\r\n")  # as labs export: the CRLF reader path
        tally = score_with_spark(PanelFile(batch, profiler.catalog_), profiler, Path(folder, "calls.csv"),
                                 Path(folder, "rejects.csv"))
    _wait_for_the_jvm()
    return tally.scored == WARM_PANELS


def _wait_for_the_jvm() -> None:
    """End the JVM now and wait while it writes the archive (15-20 s), so that a run started right after
    the install finds a whole part to map, not one still being written (which it would have to skip)."""
    from pyspark import SparkContext

    process = getattr(SparkContext._gateway, "proc", None)
    if process is not None:
        process.stdin.close()  # PySpark's JVM exits when its stdin closes
        process.wait(timeout=300)


if __name__ == "__main__":
    from rifml.spark_session import class_archive

    recorded = record_class_archive()
    print(f"Spark class archive: {'recorded' if recorded else 'nothing to record'} ({class_archive() or 'off'})")
