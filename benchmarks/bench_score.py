"""Benchmark: `rifml score` end to end against a naive shap.TreeExplainer scorer, same trees, same file.

    make bench-reference                    # REFERENCE_N=100000
    make bench-reference REFERENCE_N=1000000 # the large run

Simulates N panels, trains once (2,000 panels) into a SQLite MLflow store, then
times both scorers as separate processes (process start included), REPEATS times
each, interleaved, on the same file (by default as labs write it: CRLF, the issue's
bar); rifml runs before and after each reference run, and each reference run is set
against the mean of the two (the load can change in the minutes the reference takes).
Prints panels per second, wall and CPU-time ratios, the machine's load, and peak
resident memory, and appends a dated line to benchmarks/RESULTS.md. With ``--workdir`` an existing batch and model there are reused.

The same rows are also written as lab exports write them (CRLF line ends; ';' separated
with decimal commas and CRLF, as European Excel does), and `rifml validate` and
`rifml score` are timed on each beside the plain comma/LF file (the naive reference
only on the plain one): dialects must not leave the fast reading path.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
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
    return run_timed(command, cwd)[:2]


def _machine_ticks() -> tuple[int, int]:
    """The machine's iowait and steal ticks so far (/proc/stat; zeros where there is none)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return int(fields[5]), int(fields[8])
    except (OSError, IndexError, ValueError):
        return 0, 0


def _dirty_kib() -> int:
    """Page cache waiting to be written back, machine-wide (/proc/meminfo Dirty + Writeback)."""
    try:
        lines = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        return sum(int(lines[k].split()[0]) for k in ("Dirty", "Writeback"))
    except (OSError, KeyError, ValueError):
        return 0


def warm_page_cache(path: Path) -> None:
    """Read a file once, so that the next process finds it in the page cache."""
    with path.open("rb") as handle:
        while handle.read(1 << 24):
            pass


def run_timed(command: list[str], cwd: Path, notes: dict | None = None) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (MiB, the process and its children) and CPU seconds (user + system) of one command.

    CPU seconds move far less than wall seconds with other work on the machine: on a shared
    machine they are the steadier yardstick of the two. ``notes``, when given, receives what
    else could make a run slower at the same CPU: the command's major page faults and blocks
    read (its input or libraries no longer in the page cache), and the machine's iowait and
    steal seconds (a hypervisor taking the cores) and dirty page cache at the start.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    iowait_before, steal_before = _machine_ticks()
    dirty_before = _dirty_kib()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
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
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr.decode()[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if notes is not None:
        iowait_after, steal_after = _machine_ticks()
        notes.update(major_faults=after.ru_majflt - before.ru_majflt, blocks_in=after.ru_inblock - before.ru_inblock,
                     iowait_s=(iowait_after - iowait_before) / ticks, steal_s=(steal_after - steal_before) / ticks,
                     dirty_mib_at_start=dirty_before / 1024, load=os.getloadavg()[0])
    return seconds, peak / 2**20, cpu


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


DIALECTS = {"plain": "batch.csv", "CRLF": "batch_crlf.csv", "semicolon": "batch_semicolon.csv"}


def write_dialects(work: Path) -> None:
    """The plain batch as CRLF and as ';' + decimal comma + CRLF, byte for byte the same cells.

    rifml's own CSVs hold no quotes, and '.' occurs only in numbers (dates are ISO), so a
    byte translation is exactly what a European Excel export of these rows looks like.
    """
    plain = (work / DIALECTS["plain"]).read_bytes()
    crlf = plain.replace(b"\n", b"\r\n")
    (work / DIALECTS["CRLF"]).write_bytes(crlf)
    (work / DIALECTS["semicolon"]).write_bytes(crlf.translate(bytes.maketrans(b",.", b";,")))


def time_dialects(rifml: str, uri: str, work: Path, repeats: int, n: int) -> str:
    """Median validate and score seconds per dialect, printed side by side; returns a RESULTS.md row."""
    timings: dict[tuple[str, str], list[float]] = {}
    for _ in range(repeats):
        for name, batch in DIALECTS.items():  # interleaved, so load on the machine hits all alike
            commands = {
                "validate": [rifml, "validate", "--input", batch, "--rejects", "d_rejects.csv"],
                "score": [rifml, "score", "--input", batch, "--output", "d_calls.csv", "--rejects", "d_rejects.csv",
                          "--tracking-uri", uri, "--quiet"],
            }
            for step, command in commands.items():
                timings.setdefault((step, name), []).append(run_measured(command, work)[0])
    row = f"| {dt.date.today()} | {n:,} |"
    for step in ("validate", "score"):
        plain = statistics.median(timings[(step, "plain")])
        cells = []
        for name in DIALECTS:
            seconds = statistics.median(timings[(step, name)])
            cells.append(f"{name} {seconds:.2f} s ({seconds / plain:.2f}x)")
            row += f" {seconds:.2f} | {seconds / plain:.2f} |" if name != "plain" else f" {seconds:.2f} |"
        print(f"{step} by dialect, median of {repeats}: " + ", ".join(cells))
    return row + f" {repeats} |"


def append_dialect_row(results: Path, row: str) -> None:
    heading = "## Dialects (`make bench`: same rows as plain comma/LF, CRLF, ';' + decimal comma + CRLF)"
    text = results.read_text() if results.exists() else ""
    with results.open("a") as handle:
        if heading not in text:
            handle.write(
                f"\n{heading}\n\n"
                "| date | panels | validate plain s | validate CRLF s | ratio | validate ; s | ratio "
                "| score plain s | score CRLF s | ratio | score ; s | ratio | repeats |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
            )
        handle.write(row + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="panels to score")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each scorer (median reported)")
    parser.add_argument("--skip-reference", action="store_true", help="time rifml only")
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here (default: a temp folder)")
    parser.add_argument("--dialect", choices=list(DIALECTS), default="CRLF",
                        help="the file both scorers read (default CRLF, as labs export)")
    parser.add_argument("--skip-dialects", action="store_true", help="no validate/score timing per dialect")
    parser.add_argument("--skip-explain", action="store_true", help="no explanation step vs shap (minutes at 100k)")
    parser.add_argument("--no-save", action="store_true", help="print only; RESULTS.md unchanged")
    args = parser.parse_args()

    os.environ.update({"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"})
    work = args.workdir or Path(tempfile.mkdtemp(prefix="rifml-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    rifml = str(BIN / "rifml")
    print(f"workdir {work}")
    batch = work / DIALECTS["plain"]
    if not (batch.exists() and sum(1 for _ in batch.open("rb")) == args.n + 1):  # reused only at the same size
        subprocess.run([rifml, "simulate", "--n", str(args.n), "--seed", "2", "--output", batch.name], cwd=work, check=True, capture_output=True)
        write_dialects(work)
    elif not all((work / name).exists() for name in DIALECTS.values()):
        write_dialects(work)
    if not (work / "mlflow.db").exists():
        subprocess.run([rifml, "simulate", "--n", "2000", "--seed", "1", "--output", "train.csv"], cwd=work, check=True, capture_output=True)
        subprocess.run([rifml, "train", "--data", "train.csv", "--tracking-uri", uri, "--experiment", "bench"], cwd=work, check=True, capture_output=True)
    model = "models:/rifml-immune-profile@champion"

    scored = DIALECTS[args.dialect]
    ours = [rifml, "score", "--input", scored, "--output", "calls.csv", "--rejects", "rejects.csv", "--tracking-uri", uri, "--quiet"]
    reference = [sys.executable, str(HERE / "reference_scorer.py"), model, uri, scored, "reference_calls.csv"]
    runs: dict[str, list[tuple[float, float, float]]] = {"rifml": [], "reference": []}
    loads = [os.getloadavg()[0]]
    print(f"both scorers read {scored} ({args.dialect}); load {loads[0]:.1f}")
    pair_ratios, cpu_ratios = [], []
    notes: list[tuple[str, dict]] = []  # why a rifml run after the reference may be slower (see run_timed)

    def timed(label: str, command: list[str]) -> tuple[float, float, float]:
        # This machine pages out file cache idle for about a minute (DAMON proactive reclaim): after the
        # reference's minutes, rifml would read its input from disk again, before it from memory. Both
        # scorers start with the input in the page cache, so neither run pays for the other's duration.
        warm_page_cache(work / scored)
        noted: dict = {}
        result = run_timed(command, work, noted)
        notes.append((label, {"wall_s": result[0], "cpu_s": result[2], **noted}))
        return result

    for repeat in range(args.repeats):
        if repeat == 0 or args.skip_reference:
            runs["rifml"].append(timed("rifml", ours))
        if args.skip_reference:
            loads.append(os.getloadavg()[0])
            print(f"repeat {repeat + 1}: rifml {runs['rifml'][-1][0]:.1f} s, {runs['rifml'][-1][2]:.1f} s CPU (load {loads[-1]:.1f})")
            continue
        runs["reference"].append(timed("reference", reference))
        # rifml again after each reference run: the reference takes minutes, in which the machine's
        # load can change, so each reference run is set against the rifml runs on both sides of it
        runs["rifml"].append(timed("rifml", ours))
        loads.append(os.getloadavg()[0])
        around = runs["rifml"][-2:]
        ref = runs["reference"][-1]
        pair_ratios.append(statistics.mean(r[0] for r in around) / ref[0])
        cpu_ratios.append(statistics.mean(r[2] for r in around) / ref[2])
        print(f"repeat {repeat + 1}: rifml {around[0][0]:.1f} s / reference {ref[0]:.1f} s / rifml {around[1][0]:.1f} s:"
              f" ratio {pair_ratios[-1]:.3f}; CPU {around[0][2]:.1f} / {ref[2]:.1f} / {around[1][2]:.1f} s: ratio"
              f" {cpu_ratios[-1]:.3f} (load {loads[-1]:.1f})")

    for label, noted in notes:
        print(f"  {label}: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in noted.items()))
    ours_s = statistics.median(s for s, _, _ in runs["rifml"])
    ours_mb = max(m for _, m, _ in runs["rifml"])
    line = f"| {dt.date.today()} | {args.n:,} | {ours_s:.2f} | {args.n / ours_s:,.0f} | {ours_mb:,.0f} |"
    print(f"rifml score: {ours_s:.2f} s median of {len(runs['rifml'])} ({args.n / ours_s:,.0f} panels/s), peak RSS {ours_mb:,.0f} MiB")
    if runs["reference"]:
        ref_s = statistics.median(s for s, _, _ in runs["reference"])
        ref_mb = max(m for _, m, _ in runs["reference"])
        ratio = statistics.median(pair_ratios)
        print(f"reference (shap.TreeExplainer): {ref_s:.2f} s ({args.n / ref_s:,.0f} panels/s), peak RSS {ref_mb:,.0f} MiB")
        print(f"time ratio rifml/reference: {ratio:.3f} (median over repeats of rifml's mean around each reference run),"
              f" CPU-time ratio {statistics.median(cpu_ratios):.3f}; speed-up {1 / ratio:.1f}x"
              f" ({args.dialect} file, load {min(loads):.1f}-{max(loads):.1f})")
        line += f" {ref_s:.2f} | {ratio:.3f} | {1 / ratio:.1f}x | {ref_mb:,.0f} |"
    else:
        line += " - | - | - | - |"
    line += f" {args.repeats} | {platform.machine()}, {os.cpu_count()} cores, {args.dialect}, load {min(loads):.1f}-{max(loads):.1f} |"
    if args.skip_explain:
        line += " - |"
    else:
        explain_rows = min(args.n, 100_000)
        ours_x, shap_x = explain_only(uri, model, batch, explain_rows)
        print(f"explanation step alone, {explain_rows:,} rows: rifml {ours_x:.3f} s, shap.TreeExplainer {shap_x:.2f} s ({shap_x / ours_x:.0f}x)")
        line += f" {shap_x / ours_x:.0f}x |"
    dialect_row = None if args.skip_dialects else time_dialects(rifml, uri, work, args.repeats, args.n)
    results = HERE / "RESULTS.md"
    if args.no_save:
        return
    if not results.exists():
        results.write_text(
            "# Benchmark results (`make bench`)\n\n`make bench` appends one line per run.\n\n"
            "| date | panels | rifml s (median) | rifml panels/s | rifml peak MiB | reference s | ratio | speed-up | reference peak MiB | repeats | machine | explain step vs shap |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
        )
    text = results.read_text()
    if "\n## Dialects" in text:  # the main table's rows go above the dialect section
        head, tail = text.split("\n## Dialects", 1)
        results.write_text(head.rstrip("\n") + "\n" + line + "\n\n## Dialects" + tail)
    else:
        with results.open("a") as handle:
            handle.write(line + "\n")
    if dialect_row is not None:
        append_dialect_row(results, dialect_row)
    print(f"appended to {results}")


if __name__ == "__main__":
    main()
