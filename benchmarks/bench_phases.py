"""Where a batch score's time goes, phase by phase, in one process (issue 13 item 1).

    .venv/bin/python benchmarks/bench_phases.py --input batch.csv --tracking-uri sqlite:////abs/mlflow.db

Runs what ``rifml score`` runs, on the same model and file, but in one thread and one
phase after another, timing the CPU of each step where it is done (process CPU, numba's
kernel threads included; wrapped functions, summed over chunks): the line survey, the id
pass (duplicate rule), the parse, validation, features, the explainer (margins + called-class
SHAP), the subtype router, the rest of the call, and the writer. The CLI runs these stages
in threads of their own (reading, features, kernel, calls, writing); its wall time
(``--with-cli``) beside the sum of the phases shows what that overlap gains.
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `rifml score` sets them
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

BIN = Path(sys.executable).parent
spent: dict[str, float] = defaultdict(float)
# CPU seconds of the whole process (numba's kernel threads included): on a shared machine the wall
# time of a phase says more about the other jobs than about the phase
clock = time.process_time


def timed(owner, name: str, phase: str) -> None:
    """Wrap ``owner.name`` so its time adds to ``phase`` (outermost wrapper only, no double counting)."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        started = clock()
        try:
            return original(*args, **kwargs)
        finally:
            spent[phase] += clock() - started

    setattr(owner, name, wrapper)


def timed_iteration(iterator, phase: str):
    iterator = iter(iterator)
    while True:
        started = clock()
        try:
            item = next(iterator)
        except StopIteration:
            spent[phase] += clock() - started
            return
        spent[phase] += clock() - started
        yield item


def phases(input_path: Path, uri: str, model: str, chunk_rows: int, output: Path) -> tuple[list[tuple[str, float]], float]:
    from rifml.catalog import load_catalog
    from rifml.explain.explainer import InterventionalExplainer
    from rifml.features import PanelFeatures
    from rifml.io import reader, units
    from rifml.io.reader import PanelFile
    from rifml.io.writer import AtomicCsvWriter
    from rifml.scoring import scored_chunks
    from rifml.tracking import load_profiler

    started = clock()
    profiler, _ = load_profiler(model, uri)
    spent["model load"] = clock() - started
    kernel_phase = {id(profiler.explainer_): "explainer (margins + SHAP)", id(profiler.subtype_router_): "subtype router"}
    run = InterventionalExplainer._run

    def run_timed(self, *args, **kwargs):
        started = clock()
        try:
            return run(self, *args, **kwargs)
        finally:
            spent[kernel_phase.get(id(self), "other kernel")] += clock() - started

    InterventionalExplainer._run = run_timed
    profiler.explainer_.warm_up()
    profiler.subtype_router_.warm_up()
    timed(PanelFeatures, "transform", "features")
    timed(reader, "validate_chunk", "validate")
    timed(units, "convert_columns", "validate")
    timed(PanelFile, "duplicate_ids", "id pass (duplicate rule)")
    if hasattr(AtomicCsvWriter, "_write_now"):  # here the writer works in the calling thread: one phase at a time
        AtomicCsvWriter.write = lambda self, frame: self._write_now(
            frame if self.columns is None else frame.reindex(columns=self.columns))
    timed(AtomicCsvWriter, "write", "write")
    call = type(profiler).call
    timed(type(profiler), "call", "call (all)")

    panel_file = PanelFile(input_path, load_catalog(), chunk_rows=chunk_rows)
    started = clock()
    panel_file.survey
    spent["survey (line count)"] += clock() - started
    chunks_method = PanelFile.chunks
    PanelFile.chunks = lambda self: timed_iteration(chunks_method(self), "parse")
    begun = clock()
    chunks = reader.validated_chunks(panel_file)
    with AtomicCsvWriter(output.with_name("phase_rejects.csv")) as rejects, AtomicCsvWriter(output) as calls_writer:
        for chunk, calls in scored_chunks(profiler, chunks, lambda: reader.validated_chunks(panel_file)):
            rejects.write(chunk.rejects)
            if calls is not None:
                calls_writer.write(calls)
    total = clock() - begun + spent["survey (line count)"]
    type(profiler).call = call
    inner = spent["features"] + spent["explainer (margins + SHAP)"] + spent["subtype router"]
    rest_of_call = spent.pop("call (all)") - inner
    order = ["survey (line count)", "id pass (duplicate rule)", "parse", "validate", "features",
             "explainer (margins + SHAP)", "subtype router"]
    rows = [(name, spent[name]) for name in order] + [("rest of call (drivers, subtypes, frame)", rest_of_call),
                                                      ("write", spent["write"])]
    return rows, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--model", default="models:/rifml-immune-profile@champion")
    parser.add_argument("--chunk-rows", type=int, default=50_000)
    parser.add_argument("--with-cli", action="store_true", help="also time `rifml score` on the same file")
    args = parser.parse_args()
    output = Path(tempfile.mkdtemp(prefix="rifml-phases-")) / "phase_calls.csv"
    rows, total = phases(args.input.resolve(), args.tracking_uri, args.model, args.chunk_rows, output)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"phases of a score of {args.input.name}, one thread, one phase after another (load {os.getloadavg()[0]:.1f}):")
    print("| phase | CPU s | share |\n|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} | {seconds / total:.0%} |")
    print(f"| total (file to calls, model load excluded) | {total:.2f} | 100% |")
    # `rifml score` runs these groups in threads of their own, a chunk apart (scoring.score_file): on two
    # cores the largest group, or half the total, bounds its wall time after start-up
    phase = dict(rows)
    groups = {"reading thread (survey, id pass, parse, validate)": ["survey (line count)", "id pass (duplicate rule)", "parse", "validate"],
              "features thread": ["features"], "main thread (kernel, 2 numba threads)": ["explainer (margins + SHAP)", "subtype router"],
              "calls thread (rest of call)": ["rest of call (drivers, subtypes, frame)"], "writer threads": ["write"]}
    print("per thread of `rifml score`: " + "; ".join(f"{g} {sum(phase[p] for p in ps):.2f}" for g, ps in groups.items()))
    print(f"model load {spent['model load']:.2f} s; peak RSS {peak:,.0f} MiB")
    if args.with_cli:
        command = [str(BIN / "rifml"), "score", "--input", str(args.input), "--output", str(output), "--rejects",
                   str(output.with_name("cli_rejects.csv")), "--tracking-uri", args.tracking_uri, "--model", args.model,
                   "--quiet", "--chunk-rows", str(args.chunk_rows)]
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        print(f"rifml score (its threads, process start and model load included): {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main()
