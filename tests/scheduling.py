"""The order in which `make test` hands test files to its workers: the longest first.

Under `--dist loadfile` each worker takes whole files, and pytest-xdist queues them by their number of
tests. The files that take longest here are end-to-end runs of one to three tests (a demo, a trained
store, science bars), so they came last and one worker ran them alone while the other sat idle. Handing
out the longest files first (longest-processing-time order) lets the short ones fill the gaps at the end.

The figures are seconds of setup + call per file on a quiet 2-core machine; they only order the queue
(a file missing here counts as short), so they need refreshing only when a file's cost changes a lot:
`pytest --durations=0` and sum per file.
"""

from xdist.scheduler import LoadFileScheduling

EXPECTED_SECONDS = {  # 2026-11-30, after the in-process refusals: a loaded run's per-file sums / 2.29 (its slowdown on the unchanged files)
    "tests/test_spark.py": 117,
    "tests/test_safety_store.py": 98,
    "tests/test_cli_train_score.py": 88,
    "tests/test_robustness_bars.py": 71,
    "tests/test_demo.py": 65,
    "tests/test_safety_cli.py": 60,
    "tests/test_pipeline.py": 48,
    "tests/test_catalog_extension.py": 38,
    "tests/test_explain.py": 36,
    "tests/test_subtypes.py": 20,
    "notebooks/walkthrough.ipynb": 18,
    "tests/test_ui.py": 17,
    "tests/test_outcomes_cli.py": 17,
    "tests/test_labs.py": 15,
    "tests/test_io_cli_forms.py": 14,
    "tests/test_size_stability.py": 14,
    "tests/test_report.py": 14,
    "tests/test_robustness.py": 14,
    "tests/test_serving.py": 10,
    "tests/test_cli_validate.py": 10,
    "tests/test_startup.py": 6,
    "tests/test_outcomes_analysis.py": 6,
    "tests/test_io_reader.py": 5,
    "tests/test_io_accounting.py": 5,
}


def expected_seconds(scope: str) -> float:
    return EXPECTED_SECONDS.get(scope, 0.0)


class LongestFileFirst(LoadFileScheduling):
    """`--dist loadfile`, each free worker given the longest file still queued."""

    def _assign_work_unit(self, node) -> None:
        longest = max(self.workqueue, key=expected_seconds)  # ties keep xdist's order
        self.workqueue.move_to_end(longest, last=False)
        super()._assign_work_unit(node)
