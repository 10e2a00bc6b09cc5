"""Benchmark: scoring and explaining with larger trees (issue 13 item 3).

    .venv/bin/python benchmarks/bench_explain.py --num-leaves 8,63 --n 100000

For each tree size: trains rifml (2,000 simulated panels, configs/train.yaml with
model.num_leaves replaced), then in the same run times `rifml score` on N panels against
the naive scorer (benchmarks/reference_scorer.py: LightGBM + shap.TreeExplainer on the same
trees), the explanation step alone against shap, and reports what the precomputed
explanation holds in memory. Rows go to the "Tree size" table of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from bench_score import BIN, HERE, explain_only, run_measured

HEADER = ("| date | num_leaves | panels | rifml s | reference s | ratio | explain step s | shap step s | explain vs shap "
          "| explainer MiB (pattern / leaf tables / leaf groups) | machine |")
TITLE = "## Tree size (`benchmarks/bench_explain.py`)"


def record(line: str) -> None:
    """Add a row under the tree-size table (made on first use, above the main table)."""
    results = HERE / "RESULTS.md"
    text = results.read_text() if results.exists() else "# Benchmark results\n\n"
    if TITLE not in text:
        note = ("Whole processes, 1 repeat each, same run; ratio = rifml / reference (naive LightGBM + shap scorer on "
                "the same trees). Explanation step alone: rifml's margins and called-class SHAP vs shap.TreeExplainer.")
        separator = "|" + "---|" * (HEADER.count("|") - 1)
        table = f"{TITLE}\n\n{note}\n\n{HEADER}\n{separator}\n"
        cut = text.index("\n| date |") if "\n| date |" in text else len(text)
        head, tail = text[:cut], text[cut:]
        text = head.rstrip("\n") + "\n\n" + table + "\n## Batch scoring (`make bench`)\n" + tail
    lines = text.split("\n")
    at = lines.index(HEADER) + 2
    while at < len(lines) and lines[at].startswith("|"):
        at += 1
    lines.insert(at, line)
    results.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-leaves", default="8,63", help="comma-separated tree sizes")
    parser.add_argument("--n", type=int, default=100_000, help="panels to score")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    os.environ.update({"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"})
    work = args.workdir or Path(tempfile.mkdtemp(prefix="rifml-bench-explain-"))
    work.mkdir(parents=True, exist_ok=True)
    rifml = str(BIN / "rifml")
    print(f"workdir {work}")
    subprocess.run([rifml, "simulate", "--n", "2000", "--seed", "1", "--output", "train.csv"], cwd=work, check=True, capture_output=True)
    subprocess.run([rifml, "simulate", "--n", str(args.n), "--seed", "2", "--output", "batch.csv"], cwd=work, check=True, capture_output=True)
    config = yaml.safe_load((HERE.parent / "configs" / "train.yaml").read_text())
    for leaves in [int(v) for v in args.num_leaves.split(",")]:
        store = work / f"leaves{leaves}"
        store.mkdir(exist_ok=True)
        uri = f"sqlite:///{store / 'mlflow.db'}"
        config["model"]["num_leaves"] = leaves
        (store / "train.yaml").write_text(yaml.safe_dump(config))
        train = [rifml, "train", "--data", "train.csv", "--tracking-uri", uri, "--experiment", "bench", "--config", str(store / "train.yaml")]
        train_s, _ = run_measured(train, work)
        model = "models:/rifml-immune-profile/1"  # each size has its own store; the floors do not matter here
        ours = [rifml, "score", "--input", "batch.csv", "--output", f"calls{leaves}.csv", "--rejects", "rejects.csv",
                "--tracking-uri", uri, "--model", model, "--quiet"]
        reference = [sys.executable, str(HERE / "reference_scorer.py"), model, uri, "batch.csv", f"reference{leaves}.csv"]
        ours_s, _ = run_measured(ours, work)
        ref_s, _ = run_measured(reference, work)
        explain_s, shap_s = explain_only(uri, model, work / "batch.csv", min(args.n, 100_000))
        sizes = table_sizes(uri, model)
        print(f"num_leaves {leaves}: train {train_s:.1f} s; score {args.n:,}: rifml {ours_s:.2f} s, reference {ref_s:.2f} s, "
              f"ratio {ours_s / ref_s:.3f}; explanation step {explain_s:.3f} s vs shap {shap_s:.2f} s ({shap_s / explain_s:.0f}x); "
              f"explainer MiB {sizes}")
        record(f"| {dt.date.today()} | {leaves} | {args.n:,} | {ours_s:.2f} | {ref_s:.2f} | {ours_s / ref_s:.3f} | {explain_s:.3f} "
               f"| {shap_s:.2f} | {shap_s / explain_s:.0f}x | {sizes} | {os.cpu_count()} cores, shared |")


def table_sizes(uri: str, model: str) -> str:
    from rifml.tracking import connect, load_profiler

    connect(uri)
    profiler, _ = load_profiler(model)
    sizes = [profiler.explainer_.table_bytes(), profiler.subtype_router_.table_bytes()]
    return " / ".join(f"{sum(s[k] for s in sizes) / 2**20:.1f}" for k in ("pattern_tables", "leaf_tables", "leaf_groups"))


if __name__ == "__main__":
    main()
