"""Benchmark: `rifml score` end to end against a naive shap.TreeExplainer scorer, same trees, same file.

    make bench              # N=100000
    make bench N=1000000    # the large run

Simulates N panels, trains once (2,000 panels) into a SQLite MLflow store, then
times both scorers as separate processes (process start included), REPEATS times
each, interleaved. Prints panels per second, the time ratio and peak resident
memory, and appends a dated line to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def run_measured(command: list[str], cwd: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB, the process and its children) of one command."""
    started = time.perf_counter()
    process = psutil.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            try:
                rss = process.memory_info().rss + sum(c.memory_info().rss for c in process.children(recursive=True))
                peak = max(peak, rss)
            except psutil.Error:
                pass
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = process.communicate()
    done.set()
    sampler.join()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr.decode()[-2000:]}")
    return seconds, peak / 2**20


def explain_only(uri: str, model: str, batch: Path, rows: int) -> tuple[float, float]:
    """The explanation step alone on the same features and trees: (rifml s, median of 5; shap.TreeExplainer s).

    Exactness is not measured here: tests/test_explain.py checks rifml against shap's
    interventional TreeExplainer to 1e-6 on random models and data.
    """
    import shap

    from rifml.io.reader import PanelFile, validated_chunks
    from rifml.tracking import connect, load_profiler

    connect(uri)
    profiler, _ = load_profiler(model)
    panel = next(iter(validated_chunks(PanelFile(batch, profiler.catalog_, chunk_rows=rows)))).panel
    X = profiler.features_.transform(panel).to_numpy(dtype=float)
    profiler.explainer_.margins_and_shap(X[:10])  # load the compiled kernel once
    timings = []
    for _ in range(5):  # a fraction of a second each: the median of a few steadies the figure
        started = time.perf_counter()
        profiler.explainer_.margins_and_shap(X)  # what scoring runs: margins and the called class's SHAP
        timings.append(time.perf_counter() - started)
    ours_s = statistics.median(timings)
    explainer = shap.TreeExplainer(profiler.profile_model_.booster_)  # the naive scorer's default
    started = time.perf_counter()
    explainer.shap_values(X)
    shap_s = time.perf_counter() - started
    return ours_s, shap_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="panels to score")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each scorer (median reported)")
    parser.add_argument("--skip-reference", action="store_true", help="time rifml only")
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here (default: a temp folder)")
    args = parser.parse_args()

    os.environ.update({"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"})
    work = args.workdir or Path(tempfile.mkdtemp(prefix="rifml-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    rifml = str(BIN / "rifml")
    print(f"workdir {work}")
    subprocess.run([rifml, "simulate", "--n", "2000", "--seed", "1", "--output", "train.csv"], cwd=work, check=True, capture_output=True)
    subprocess.run([rifml, "simulate", "--n", str(args.n), "--seed", "2", "--output", "batch.csv"], cwd=work, check=True, capture_output=True)
    subprocess.run([rifml, "train", "--data", "train.csv", "--tracking-uri", uri, "--experiment", "bench"], cwd=work, check=True, capture_output=True)
    model = "models:/rifml-immune-profile@champion"

    ours = [rifml, "score", "--input", "batch.csv", "--output", "calls.csv", "--rejects", "rejects.csv", "--tracking-uri", uri, "--quiet"]
    reference = [sys.executable, str(HERE / "reference_scorer.py"), model, uri, "batch.csv", "reference_calls.csv"]
    runs: dict[str, list[tuple[float, float]]] = {"rifml": [], "reference": []}
    for repeat in range(args.repeats):
        runs["rifml"].append(run_measured(ours, work))
        if not args.skip_reference:
            runs["reference"].append(run_measured(reference, work))
        print(f"repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1][0]:.1f} s" for k, v in runs.items() if v))

    ours_s = statistics.median(s for s, _ in runs["rifml"])
    ours_mb = max(m for _, m in runs["rifml"])
    line = f"| {dt.date.today()} | {args.n:,} | {ours_s:.2f} | {args.n / ours_s:,.0f} | {ours_mb:,.0f} |"
    print(f"rifml score: {ours_s:.2f} s median of {args.repeats} ({args.n / ours_s:,.0f} panels/s), peak RSS {ours_mb:,.0f} MiB")
    if runs["reference"]:
        ref_s = statistics.median(s for s, _ in runs["reference"])
        ref_mb = max(m for _, m in runs["reference"])
        first_ratio = runs["rifml"][0][0] / runs["reference"][0][0]
        print(f"reference (shap.TreeExplainer): {ref_s:.2f} s ({args.n / ref_s:,.0f} panels/s), peak RSS {ref_mb:,.0f} MiB")
        print(f"time ratio rifml/reference: {ours_s / ref_s:.3f} (median), {first_ratio:.3f} (first repeat); speed-up {ref_s / ours_s:.1f}x")
        line += f" {ref_s:.2f} | {ours_s / ref_s:.3f} | {ref_s / ours_s:.1f}x | {ref_mb:,.0f} |"
    else:
        line += " - | - | - | - |"
    line += f" {args.repeats} | {platform.machine()}, {os.cpu_count()} cores |"
    explain_rows = min(args.n, 100_000)
    ours_x, shap_x = explain_only(uri, model, work / "batch.csv", explain_rows)
    print(f"explanation step alone, {explain_rows:,} rows: rifml {ours_x:.3f} s, shap.TreeExplainer {shap_x:.2f} s ({shap_x / ours_x:.0f}x)")
    line += f" {shap_x / ours_x:.0f}x |"
    results = HERE / "RESULTS.md"
    if not results.exists():
        results.write_text(
            "# Benchmark results (`make bench`)\n\n`make bench` appends one line per run.\n\n"
            "| date | panels | rifml s (median) | rifml panels/s | rifml peak MiB | reference s | ratio | speed-up | reference peak MiB | repeats | machine | explain step vs shap |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
        )
    with results.open("a") as handle:
        handle.write(line + "\n")
    print(f"appended to {results}")


if __name__ == "__main__":
    main()
