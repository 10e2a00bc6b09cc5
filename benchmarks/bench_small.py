"""Benchmark: a small batch (a lab's daily 1,000 panels) end to end, against the bare import of its libraries.

    .venv/bin/python benchmarks/bench_small.py                      # 1,000 panels, 5 repeats
    .venv/bin/python benchmarks/bench_small.py --workdir /tmp/small # keep (and reuse) the trained store

Start-up is most of a small batch's time, so the yardstick is what no scorer built on
these libraries can avoid: a process that only imports numpy + pandas + pyarrow +
scikit-learn + LightGBM. Both processes are timed interleaved, REPEATS times, in the
same run (medians; the machine's load hits both alike), by wall time and by CPU time
(user + system). On a shared machine the wall ratio moves with the load; the CPU ratio
moves far less. A process that overlaps work in threads (`rifml score` reads while the model
loads) spends more CPU than wall time when it has idle cores, so its CPU ratio is an upper
bound of its wall ratio on an idle machine. Then, in one process, step by step: the imports,
the model's resolution and unpickling, reading and validation, the call, the write; and which
imports beyond the bare ones the score command makes (``python -X importtime``, self times
summed per package).

The store is trained once (2,000 simulated panels, configs/train.yaml) unless --workdir
already holds one; the batch is simulated with 2% corrupt rows, as real files have some.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_curves import commit  # noqa: E402
from bench_score import BIN, run_measured, run_timed  # noqa: E402

BARE = "import numpy, pandas, pyarrow, sklearn, lightgbm"
MODEL = "models:/rifml-immune-profile@champion"

# One process, step by step (no overlap, unlike the CLI, whose reading thread runs beside the model load);
# the garbage collector paused until the model is loaded, as `rifml score` does.
PHASES = r"""
import gc, json, sys, time
gc.disable()
marks = [("start", time.perf_counter())]
def mark(name):
    marks.append((name, time.perf_counter()))
import numpy, pandas, pyarrow, sklearn, lightgbm; mark("bare imports")
import rifml.cli; mark("CLI (typer, rich)")
from rifml.catalog import load_catalog
from rifml.io.reader import PanelFile, validated_chunks
from rifml.io.writer import AtomicCsvWriter
from rifml.scoring import scored_chunks; mark("rifml modules (pydantic, pyarrow.compute)")
from rifml.tracking import _read_model_folder, local_model_folder
import rifml.pipeline; mark("model classes (sklearn estimators, explainer)")
folder = local_model_folder(sys.argv[1], sys.argv[2]); mark("resolve the alias (one registry query)")
profiler, _ = _read_model_folder(folder); gc.freeze(); gc.enable(); mark("unpickle (boosters, trees packed)")
installed = load_catalog(); mark("installed catalog")
chunks = list(validated_chunks(PanelFile(sys.argv[3], installed))); mark("read + validate")
called = list(scored_chunks(profiler, chunks, None)); mark("call + explain")
with AtomicCsvWriter(sys.argv[4]) as writer:
    for _, calls in called:
        writer.write(calls)
mark("write")
print(json.dumps([(b, y - x) for (_, x), (b, y) in zip(marks, marks[1:])]))
print("numba loaded:", "numba" in sys.modules)
"""


def rifml(*args: str, cwd: Path) -> None:
    subprocess.run([str(BIN / "rifml"), *args], cwd=cwd, check=True, capture_output=True)


def prepare(work: Path, n: int) -> str:
    """A trained champion in work/mlflow.db (trained unless there) and work/batch.csv; returns the tracking URI."""
    uri = f"sqlite:///{work / 'mlflow.db'}"
    if not (work / "mlflow.db").exists():
        print("training the champion (2,000 simulated panels) ...", flush=True)
        rifml("simulate", "--n", "2000", "--seed", "1", "--output", "train.csv", cwd=work)
        rifml("train", "--data", "train.csv", "--tracking-uri", uri, "--experiment", "bench", cwd=work)
    rifml("simulate", "--n", str(n), "--seed", "2", "--bad-share", "0.02", "--output", "batch.csv", cwd=work)
    return uri


def import_self_times(command: list[str], cwd: Path) -> dict[str, int]:
    """Module -> self import time (us) of one process run with -X importtime."""
    done = subprocess.run([sys.executable, "-X", "importtime", *command], cwd=cwd, capture_output=True, text=True, check=True)
    times = {}
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "self [us]" not in line:
            self_us, _, name = line[len("import time:"):].split("|")
            times[name.strip()] = int(self_us)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="panels in the batch")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each process (median reported)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here, reuse a store trained there")
    args = parser.parse_args()

    os.environ.update({"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"})
    work = args.workdir or Path(tempfile.mkdtemp(prefix="rifml-small-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"workdir {work}")
    uri = prepare(work, args.n)
    score = [str(BIN / "rifml"), "score", "--input", "batch.csv", "--output", "calls.csv", "--rejects", "rejects.csv",
             "--tracking-uri", uri, "--quiet"]
    bare = [sys.executable, "-c", BARE]
    run_measured(score, work)  # files in the page cache (and numba's on-disk cache, where used): every timed run alike

    loads = [os.getloadavg()[0]]
    bare_s, score_s, bare_cpu, score_cpu = [], [], [], []
    for _ in range(args.repeats):  # interleaved
        wall, _, cpu = run_timed(bare, work)
        bare_s.append(wall)
        bare_cpu.append(cpu)
        wall, _, cpu = run_timed(score, work)
        score_s.append(wall)
        score_cpu.append(cpu)
        loads.append(os.getloadavg()[0])
    bare_m, score_m = statistics.median(bare_s), statistics.median(score_s)
    bare_cm, score_cm = statistics.median(bare_cpu), statistics.median(score_cpu)
    ratios = [s / b for s, b in zip(score_s, bare_s)]
    cpu_ratios = [s / b for s, b in zip(score_cpu, bare_cpu)]
    print(f"bare import ({BARE[7:]}): median {bare_m:.2f} s  [{', '.join(f'{s:.2f}' for s in bare_s)}]"
          f"; CPU median {bare_cm:.2f} s  [{', '.join(f'{s:.2f}' for s in bare_cpu)}]")
    print(f"rifml score, {args.n:,} panels: median {score_m:.2f} s  [{', '.join(f'{s:.2f}' for s in score_s)}]"
          f"; CPU median {score_cm:.2f} s  [{', '.join(f'{s:.2f}' for s in score_cpu)}]")
    print(f"ratio score / bare import: wall {score_m / bare_m:.2f} (medians; per pair {min(ratios):.2f}-{max(ratios):.2f}), "
          f"CPU {score_cm / bare_cm:.2f} (medians; per pair {min(cpu_ratios):.2f}-{max(cpu_ratios):.2f}; "
          "an upper bound of the idle wall ratio when score overlaps work in threads)")

    # OMP_WAIT_POLICY as `rifml score` sets it: with spinning OpenMP threads, every kernel call on a busy
    # machine waits ~40 ms for the second thread.
    done = subprocess.run([sys.executable, "-c", PHASES, MODEL, uri, "batch.csv", "phase_calls.csv"], cwd=work,
                          capture_output=True, text=True, check=True, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    phases = json.loads(done.stdout.strip().splitlines()[-2])
    total = sum(seconds for _, seconds in phases)
    print(f"phases, one process, step by step ({total:.2f} s in all):")
    for name, seconds in phases:
        print(f"  {name:45s} {seconds:6.3f} s  {seconds / phases[0][1]:5.2f}x bare")
    print(f"  ({done.stdout.strip().splitlines()[-1]})")

    bare_times = import_self_times(["-c", BARE], work)
    score_times = import_self_times(["-c", "from rifml.cli import main; main()", *score[1:]], work)
    extra = Counter()
    for module, us in score_times.items():
        if module not in bare_times:
            extra[module.split(".")[0]] += us
    print(f"imports beyond the bare ones: {sum(extra.values()) / 1e6:.2f} s of self time; "
          + ", ".join(f"{name} {us / 1e6:.2f}" for name, us in extra.most_common(8)))
    print("| date | commit | panels | bare s | score s | wall ratio | bare CPU s | score CPU s | CPU ratio | repeats | load |")
    print(f"| {dt.date.today()} | {commit()} | {args.n:,} | {bare_m:.2f} | {score_m:.2f} | {score_m / bare_m:.2f} "
          f"| {bare_cm:.2f} | {score_cm:.2f} | {score_cm / bare_cm:.2f} | {args.repeats} "
          f"| {min(loads):.1f}-{max(loads):.1f} |")


if __name__ == "__main__":
    main()
