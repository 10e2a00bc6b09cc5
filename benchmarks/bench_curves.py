"""Cost curves (`make bench`): what scoring, explaining and training cost as batches grow.

    make bench                       # 1k, 100k, 1M panels; explanation step; training 2k/20k/100k; Spark 1M
    make bench N=10000000            # the same plus a 10M-panel row
    make bench BENCH_ARGS=--quick    # only the local-engine rows and the 2k training (a few minutes)

One table, printed and kept in benchmarks/RESULTS.md with the date, the commit and the
machine's load: per row the wall time of a whole process (start-up and model load
included), panels per second and peak resident memory (the process and its children, so
Spark's JVM counts). Batches are written as labs write them (CRLF line ends). The
explanation step is timed in one process against shap.TreeExplainer on the same features
and trees (``bench_score.explain_only``). The model scored with is trained once on 2,000
panels; the training rows train into a store of their own, so the champion never changes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_score import BIN, HERE, explain_only, run_measured

MODEL = "models:/rifml-immune-profile@champion"
BASE_ROWS = 1_000_000  # larger batches are copies of the 1M batch with other patient ids
HEADER = "| date | commit | load | step | panels | wall s | panels/s | peak MiB | note |"
TITLE = "## Cost curves (`make bench`)"


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("+edits" if git("status", "--porcelain", "--", "src") else "")


def rifml(*args: str, cwd: Path) -> None:
    subprocess.run([str(BIN / "rifml"), *args], cwd=cwd, check=True, capture_output=True)


def lab_batch(work: Path, n: int) -> Path:
    """``n`` simulated panels as a CRLF file (made once per size and kept in ``work``)."""
    path = work / f"batch_{n}.csv"
    if path.exists():
        return path
    if n > BASE_ROWS:
        base = lab_batch(work, BASE_ROWS).read_bytes()
        header, rows = base.split(b"\r\n", 1)
        with path.open("wb") as handle:
            handle.write(header + b"\r\n")
            for copy in range(-(-n // BASE_ROWS)):  # simulator ids start with P: K<copy>P... keeps them unique
                part = (b"\r\n" + rows).replace(b"\r\nP", b"\r\nK%dP" % copy)[2:]
                lines = min(BASE_ROWS, n - copy * BASE_ROWS)
                if lines < BASE_ROWS:
                    part = b"\r\n".join(part.split(b"\r\n", lines)[:lines]) + b"\r\n"
                handle.write(part)
        return path
    plain = work / f"plain_{n}.csv"
    rifml("simulate", "--n", str(n), "--seed", "2", "--output", plain.name, cwd=work)
    path.write_bytes(plain.read_bytes().replace(b"\n", b"\r\n"))
    plain.unlink()
    return path


class Table:
    def __init__(self) -> None:
        self.rows: list[str] = []

    def add(self, step: str, panels: int, seconds: float | None, peak: float | None = None, note: str = "") -> None:
        load = os.getloadavg()[0]
        cells = [f"{load:.1f}", step, f"{panels:,}"]
        if seconds is None:
            cells += ["-", "-", "-"]
        else:
            cells += [f"{seconds:.2f}", f"{panels / seconds:,.0f}", "-" if peak is None else f"{peak:,.0f}"]
        row = f"| {dt.date.today()} | {commit()} | {' | '.join(cells)} | {note} |"  # the code the row ran
        self.rows.append(row)
        print(row, flush=True)

    def save(self, results: Path) -> None:
        text = results.read_text() if results.exists() else "# Benchmark results\n"
        if TITLE not in text:
            note = ("Whole processes (start-up and model load included), batches written as labs write them (CRLF); "
                    "load = the machine's 1-minute load average when the row finished (2 cores, shared).")
            separator = "|" + "---|" * (HEADER.count("|") - 1)
            text = text.rstrip("\n") + f"\n\n{TITLE}\n\n{note}\n\n{HEADER}\n{separator}\n"
        lines = text.rstrip("\n").split("\n")
        at = lines.index(HEADER) + 2
        while at < len(lines) and lines[at].startswith("|"):
            at += 1
        lines[at:at] = self.rows
        results.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,100000,1000000", help="panels per scored batch, comma-separated")
    parser.add_argument("--n", type=int, default=None, help="one more batch size (make bench N=10000000)")
    parser.add_argument("--train-sizes", default="2000,20000,100000", help="training cohort sizes")
    parser.add_argument("--spark-n", type=int, default=1_000_000, help="panels scored with --engine spark")
    parser.add_argument("--quick", action="store_true", help="skip the slow rows: training beyond 2,000, Spark")
    parser.add_argument("--workdir", type=Path, default=None, help="keep (and reuse) batches and stores here")
    parser.add_argument("--no-save", action="store_true", help="print only; RESULTS.md unchanged")
    args = parser.parse_args()

    os.environ.update({"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"})
    work = args.workdir or Path(tempfile.mkdtemp(prefix="rifml-curves-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"workdir {work}")
    sizes = sorted({int(s) for s in args.sizes.split(",")} | ({args.n} if args.n else set()))
    train_sizes = [int(s) for s in args.train_sizes.split(",") if s]
    if args.quick:
        train_sizes = train_sizes[:1]
    table = Table()
    print(HEADER)

    # the scoring model: the first training size, in its own store
    uri = f"sqlite:///{work / 'mlflow.db'}"
    train_stores = work / "training"
    train_stores.mkdir(exist_ok=True)
    for n in train_sizes:
        data = work / f"train_{n}.csv"
        if not data.exists():
            rifml("simulate", "--n", str(n), "--seed", "1", "--output", data.name, cwd=work)
        store = uri if n == train_sizes[0] and not (work / "mlflow.db").exists() else f"sqlite:///{train_stores / f'{n}.db'}"
        seconds, peak = run_measured([str(BIN / "rifml"), "train", "--data", data.name, "--tracking-uri", store,
                                      "--experiment", "bench"], work)
        table.add("train", n, seconds, peak, "configs/train.yaml")

    for n in sizes:
        batch = lab_batch(work, n)
        command = [str(BIN / "rifml"), "score", "--input", batch.name, "--output", f"calls_{n}.csv", "--rejects",
                   f"rejects_{n}.csv", "--tracking-uri", uri, "--quiet"]
        seconds, peak = run_measured(command, work)
        table.add("score, local", n, seconds, peak, "CRLF")
        (work / f"calls_{n}.csv").unlink()

    explain_rows = min(max(sizes), 100_000)
    ours_s, shap_s = explain_only(uri, MODEL, lab_batch(work, explain_rows), explain_rows)
    table.add("explanation step", explain_rows, ours_s, None,
              f"shap.TreeExplainer {shap_s:.2f} s on the same rows: {shap_s / ours_s:.0f}x")

    if not args.quick:
        batch = lab_batch(work, args.spark_n)
        command = [str(BIN / "rifml"), "score", "--engine", "spark", "--input", batch.name, "--output", "spark_calls.csv",
                   "--rejects", "spark_rejects.csv", "--tracking-uri", uri, "--quiet"]
        try:
            seconds, peak = run_measured(command, work)
        except SystemExit as failed:  # no Java or no pyspark here: the row says so
            table.add("score, spark local[*]", args.spark_n, None, None, f"failed: {str(failed).splitlines()[-1][:80]}")
        else:
            table.add("score, spark local[*]", args.spark_n, seconds, peak, "JVM start included, CRLF")
    if not args.no_save:
        table.save(HERE / "RESULTS.md")
        print(f"rows kept in {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
