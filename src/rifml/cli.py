"""The ``rifml`` command line: reads arguments, calls the core, prints summaries.

Heavy libraries (mlflow, shap, lightgbm) are imported inside the commands that
need them so that ``rifml --help`` stays instant.
"""

from __future__ import annotations

import functools
import gc
import inspect
import os
import signal
import sys
import traceback
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Callable, Literal, Optional, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from rifml.errors import RifmlInputError

app = typer.Typer(
    name="rifml",
    help="Immune-profile calls for recurrent implantation failure, with calibrated probabilities and "
    "per-marker explanations. Research use only: not a diagnostic device.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# soft_wrap: long lines stay whole (paths, ids), so logs and tests can read them.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
_state = {"debug": False, "command": None, "skip_teardown": False, "signal": signal.SIGINT}
Command = TypeVar("Command", bound=Callable[..., None])


@app.callback()
def _options(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    """Global options (parsed before the command)."""
    _state["debug"] = debug
    _state["command"] = ctx.invoked_subcommand


def reports_errors(command: Command) -> Command:
    """Bad input: one line, exit 2. Anything else is a bug: one line, exit 1, traceback with --debug."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except RifmlInputError as exc:
            if _state["debug"]:
                traceback.print_exc()
            err.print(f"rifml: error: {exc}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            _report_interrupt()
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            if _interrupted(exc):
                _report_interrupt()
            if _state["debug"]:
                traceback.print_exc()
            err.print(
                f"rifml: unexpected failure: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(1) from None
        finally:
            gc.enable()  # `score` pauses the collector while it starts; an error there must not leave it off

    return run  # type: ignore[return-value]


def _interrupted(exc: BaseException | None) -> bool:
    """An interrupt that lands inside compiled code (the numba kernels) surfaces as another
    exception (SystemError) whose context is the KeyboardInterrupt."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _report_interrupt() -> None:
    # Ctrl-C or SIGTERM: the writers' context managers have already removed their .part files.
    err.print(f"rifml: interrupted ({signal.Signals(_state['signal']).name}); no output was written",
              markup=False, highlight=False)
    raise typer.Exit(128 + int(_state["signal"])) from None


CatalogOption = Annotated[
    Optional[Path], typer.Option("--catalog", help="Marker catalog YAML (default: configs/markers.yaml).")
]
# How a panel file is written; every reading command takes these (None: detected from the file).
SepOption = Annotated[Optional[str], typer.Option("--sep", help="Field separator: ',', ';' or tab (default: detected).")]
DecimalOption = Annotated[Optional[str], typer.Option("--decimal", help="Decimal mark: '.' or ',' (default: detected).")]
EncodingOption = Annotated[
    Optional[str], typer.Option("--encoding", help="Text encoding, e.g. utf-8, cp1252, latin-1, utf-16 (default: detected).")
]
SheetOption = Annotated[Optional[str], typer.Option("--sheet", help="Excel sheet to read (default: the first).")]
ColumnsOption = Annotated[
    Optional[Path],
    typer.Option("--columns", help="YAML map 'input column name: catalog column', applied before the catalog's aliases."),
]
LayoutOption = Annotated[
    Optional[Literal["wide", "long"]],
    typer.Option("--layout", help="wide: a row per patient; long: a line per patient and analyte "
                 "(patient_id, analyte, value[, unit]). Default: detected from the header."),
]


# Keyed by the rifml.io.dialects.ReadOptions field each option sets (--columns sets column_map once its file
# is read): ReadOptions is where the reading options live; here typer only parses them.
_READING_OPTIONS = {"sep": SepOption, "decimal": DecimalOption, "encoding": EncodingOption, "sheet": SheetOption,
                    "column_map": ColumnsOption, "layout": LayoutOption}


@dataclass(frozen=True)
class Reading:
    """The reading options as given on the command line, by ReadOptions field (None or absent: detected).

    Turned into a ReadOptions only by :meth:`options`, which reads the --columns file and checks the
    values: a command checks its paths first, and the --columns file is one of its inputs.
    """

    given: dict = field(default_factory=dict)

    @property
    def columns(self) -> Path | None:
        """The --columns file, for the command's path checks."""
        return self.given.get("column_map")

    def options(self):
        """The reading options as one value for :class:`rifml.io.reader.PanelFile` (reads the --columns map)."""
        from rifml.io.columns import load_column_map
        from rifml.io.dialects import ReadOptions

        return ReadOptions(**{**self.given, "column_map": load_column_map(self.columns) if self.columns else None})


def reads_panels(command: Command) -> Command:
    """Give a command the reading options (--sep, --decimal, --encoding, --sheet, --columns, --layout).

    They are declared once, here: the command takes one ``reading`` argument (a :class:`Reading`)
    in their place, and typer sees the six options through the wrapper's signature.
    """
    signature = inspect.signature(command, eval_str=True)
    kept = [parameter for name, parameter in signature.parameters.items() if name != "reading"]
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
             for name, annotation in _READING_OPTIONS.items()]

    @functools.wraps(command)
    def with_reading(*args, **kwargs):
        reading = Reading({name: kwargs.pop(name, None) for name in _READING_OPTIONS})
        return command(*args, reading=reading, **kwargs)

    with_reading.__signature__ = signature.replace(parameters=kept + added)
    return with_reading


def print_reading(panel_file) -> None:
    """Which input column fed which catalog column (renamed ones only), unit conversions, the layout."""
    from rifml.io.units import describe

    renamed = panel_file.header.renamed
    if renamed:
        parts = []
        for match in renamed:
            factor = panel_file.conversions.get(match.column) if panel_file.layout == "wide" else None
            note = "" if factor is None else f" {describe(factor)}" if not isinstance(factor, str) else f" ({factor})"
            parts.append(match.describe() + note)
        out.print("columns: " + "; ".join(parts), markup=False, highlight=False)
    if panel_file.layout == "long":
        out.print("layout: long (one line per patient and analyte; rows below count lines)", markup=False)


@app.command()
@reports_errors
def simulate(
    n: Annotated[int, typer.Option("--n", min=1, help="Number of panels (rows) to simulate.")],
    output: Annotated[Path, typer.Option("--output", help="Cohort file to write (.csv or .parquet).")],
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same cohort).")] = 0,
    bad_share: Annotated[
        float, typer.Option("--bad-share", min=0.0, max=1.0, help="Share of rows made corrupt (one defect each).")
    ] = 0.0,
    truth: Annotated[
        Optional[Path], typer.Option("--truth", help="Also write the latent truth per row (subtype, shifted markers, ...).")
    ] = None,
    config: Annotated[
        Optional[Path], typer.Option("--config", help="Simulation parameters (default: configs/simulate.yaml).")
    ] = None,
    catalog: CatalogOption = None,
    scenario: Annotated[
        Optional[str],
        typer.Option("--scenario", help="Overlay merged over the config: a name in configs/scenarios/, a YAML file, or random-<seed> (a world drawn at random)."),
    ] = None,
    batch: Annotated[
        str, typer.Option("--batch", help="train: no scoring-only labs; score: every lab, scoring-only ones included.")
    ] = "train",
    outcomes: Annotated[
        Optional[Path],
        typer.Option("--outcomes", help="Also write an outcomes registry: treatment, embryo_quality, live_birth per patient."),
    ] = None,
) -> None:
    """Write a synthetic cohort of RIF immune panels (for demos and tests; not real patients)."""
    from rifml.catalog import load_catalog
    from rifml.io.paths import prepare_outputs
    from rifml.simulate import load_simulation_config, simulate_cohort
    from rifml.io.writer import write_table

    prepare_outputs([("--config", config), ("--catalog", catalog)],
                    [("--output", output), ("--truth", truth), ("--outcomes", outcomes)])
    settings = load_simulation_config(config, scenario)
    cohort, truth_table = simulate_cohort(
        n, seed=seed, bad_share=bad_share, config=settings, catalog=load_catalog(catalog), batch=batch
    )
    write_table(cohort, output, safe_cells=False)  # panels for later commands: written exactly
    if truth is not None:
        write_table(truth_table, truth, safe_cells=False)
    if outcomes is not None:
        _simulate_outcomes(cohort, truth_table, settings, load_catalog(catalog), seed, outcomes)
    profiles = truth_table[load_catalog(catalog).label_column].value_counts()
    out.print(
        f"wrote {len(cohort):,} panels to {output}"
        + (f" (truth: {truth})" if truth else "")
        + "; profiles: "
        + ", ".join(f"{name} {count:,}" for name, count in profiles.items())
        + (f"; corrupt rows: {int((truth_table['corruption'] != '').sum()):,}" if bad_share else "")
    )


@app.command()
@reports_errors
@reads_panels
def validate(
    input: Annotated[Path, typer.Option("--input", help="Panel file (.csv or .parquet).")],
    rejects: Annotated[Path, typer.Option("--rejects", help="Where refused rows go, with reasons (CSV).")],
    output: Annotated[
        Optional[Path], typer.Option("--output", help="Where accepted rows go, unchanged (CSV).")
    ] = None,
    chunk_rows: Annotated[int, typer.Option("--chunk-rows", min=1, help="Rows per chunk.")] = 50_000,
    catalog: CatalogOption = None,
    reading: Reading = Reading(),
) -> None:
    """Check a batch against the marker catalog: every row is accepted or rejected with a reason."""
    from rifml.catalog import load_catalog
    from rifml.io.paths import prepare_outputs
    from rifml.io.reader import PanelFile, validated_chunks
    from rifml.contract import REJECT_COLUMNS, REJECTS_REASON
    from rifml.io.writer import AtomicCsvWriter

    prepare_outputs([("--input", input), ("--catalog", catalog), ("--columns", reading.columns)], [("--rejects", rejects), ("--output", output)])
    panel_file = PanelFile(input, load_catalog(catalog), chunk_rows=chunk_rows, options=reading.options())
    reasons: Counter[str] = Counter()
    accepted = 0
    with ExitStack() as stack:
        reject_writer = stack.enter_context(AtomicCsvWriter(rejects, columns=REJECT_COLUMNS))
        accepted_writer = stack.enter_context(AtomicCsvWriter(output, columns=panel_file.columns, safe_cells=False)) if output else None
        for chunk in validated_chunks(panel_file):
            reject_writer.write(chunk.rejects)
            reasons.update(chunk.rejects[REJECTS_REASON])
            accepted += chunk.accepted_lines
            if accepted_writer:
                accepted_writer.write(chunk.accepted_raw)
    print_reading(panel_file)
    print_accounting(accepted, reasons, verb="accepted", rows_in=panel_file.row_count, source=panel_file.describe())


TrackingOption = Annotated[
    Optional[str],
    typer.Option("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)."),
]


ModelOption = Annotated[
    Optional[str],
    typer.Option("--model", help="MLflow model URI (default: models:/<registered_model of configs/train.yaml>@champion)."),
]


def read_clean_panel(path: Path, catalog, chunk_rows: int = 50_000, options=None):
    """Validate a whole file into one clean panel (training data); returns (panel, reject reasons)."""
    import pandas as pd

    from rifml.contract import REJECTS_REASON
    from rifml.io.reader import PanelFile, validated_chunks

    panels, reasons = [], Counter()
    panel_file = PanelFile(path, catalog, chunk_rows=chunk_rows, options=options)
    print_reading(panel_file)
    for chunk in validated_chunks(panel_file):
        panels.append(chunk.panel)
        reasons.update(chunk.rejects[REJECTS_REASON])
    err.print(panel_file.describe(), markup=False, highlight=False)
    return pd.concat(panels), reasons


@app.command()
@reports_errors
@reads_panels
def train(
    data: Annotated[Path, typer.Option("--data", help="Training panels (.csv or .parquet).")],
    label_column: Annotated[
        Optional[str], typer.Option("--label-column", help="Column with known profiles (default: the catalog's"
                                    " label_column); absent or empty = learn from clusters.")
    ] = None,
    no_labels: Annotated[
        bool, typer.Option("--no-labels", help="Ignore any label column: name profiles from discovered subtypes.")
    ] = False,
    experiment: Annotated[Optional[str], typer.Option("--experiment", help="MLflow experiment name.")] = None,
    tracking_uri: TrackingOption = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="Training settings (default: configs/train.yaml).")] = None,
    champion: Annotated[
        bool, typer.Option("--champion/--no-champion", help="Point the champion alias here when the floors are met.")
    ] = True,
    catalog: CatalogOption = None,
    reading: Reading = Reading(),
) -> None:
    """Learn subtypes and the calibrated profile call; log everything to MLflow and register the model."""
    from rifml.config import load_train_config

    settings = load_train_config(config)  # first: a bad setting is one line before any data or model stack loads

    import hashlib

    from rifml.catalog import load_catalog
    from rifml.tracking import (check_experiment_name, connect, log_training, registered_model_name, require_store,
                                resolve_tracking_uri)
    from rifml.training import train as fit

    experiment_name = check_experiment_name(experiment or settings.get("experiment", "rifml"))
    require_store(resolve_tracking_uri(tracking_uri), create=True)  # a bad store location fails before training
    cat = load_catalog(catalog)
    label_column = label_column or cat.label_column
    err.print(f"reading {data} ...")
    panel, reasons = read_clean_panel(data, cat, options=reading.options())
    if len(panel) == 0:
        raise RifmlInputError(
            f"{data}: no rows left to train on: all {sum(reasons.values()):,} were rejected"
            f" ({', '.join(f'{r} {c:,}' for r, c in reasons.most_common(3))}); `rifml validate` lists why"
        )
    labels = None
    if not no_labels and label_column in panel:
        labels = _profile_labels(panel[label_column], cat, label_column)
        if labels.notna().sum() == 0:
            labels = None
        elif labels.nunique() < 2:
            raise RifmlInputError(
                f"{data}: column {label_column} holds one profile only ({labels.dropna().iloc[0]}): a classifier"
                " needs at least two; add panels of other profiles, or train with --no-labels"
            )
    err.print(
        f"training on {len(panel):,} panels ({'labels from ' + label_column if labels is not None else 'no labels: profiles from named subtypes'}) ..."
    )
    result = fit(panel, labels, settings, catalog_path=catalog)
    uri = connect(tracking_uri)
    digest = hashlib.sha256(Path(data).read_bytes()).hexdigest()[:16]
    logged = log_training(
        result.profiler,
        experiment=experiment_name,
        uri=uri,
        params={**result.params, "label_column": label_column if labels is not None else "", "data_sha256_16": digest,
                "rows_rejected": sum(reasons.values())},
        metrics=result.metrics,
        figures=result.figures,
        tables=result.tables,
        floors_met=result.floors_met and champion,
        tags={"rifml.mode": "supervised" if labels is not None else "unsupervised"},
        registered_model=registered_model_name(settings),
    )
    _print_training(result, logged, reasons, uri, champion, registered_model_name(settings))
    return logged


def _profile_labels(column, cat, name):
    import pandas as pd

    text = column.astype("string").str.strip().str.lower()
    text = text.where(text != "", None)
    bad = sorted(set(text.dropna()) - set(cat.profiles))
    if bad:
        raise RifmlInputError(f"label column {name!r} has values that are not profiles: {', '.join(bad[:5])}")
    return pd.Series(text.to_numpy(dtype=object), index=column.index).where(text.notna().to_numpy(), None)


def _print_training(result, logged, reasons, uri, champion: bool, registered_model: str) -> None:
    m = result.metrics
    table = Table(box=None, show_header=True, header_style="bold")
    table.add_column("cross-validated")
    table.add_column("value", justify="right")
    for key in ["cv_macro_f1", "cv_complete_macro_f1", "cv_balanced_accuracy", "cv_ece", "rule_macro_f1", "subtype_stability"]:
        if key in m:
            table.add_row(key, f"{m[key]:.3f}")
    table.add_row("subtypes", ", ".join(result.profiler.subtype_table_["subtype"]))
    table.add_row("train_seconds", f"{m['train_seconds']:.1f}")
    out.print(table)
    if reasons:
        out.print(f"rows rejected before training: {sum(reasons.values()):,} ({', '.join(f'{r} {c}' for r, c in reasons.most_common())})")
    if logged.champion:
        status = "alias champion now points here"
    else:
        reasons_not = [] if champion else ["champion alias left where it was (--no-champion)"]
        if result.floor_failures:
            reasons_not.append("below the floors of configs/train.yaml: " + "; ".join(result.floor_failures))
        status = "not champion: " + "; ".join(reasons_not)
    out.print(f"registered {registered_model} version {logged.version} ({status})")
    out.print(f"run {logged.run_id} in {uri}")


@app.command()
@reports_errors
@reads_panels
def score(
    input: Annotated[Path, typer.Option("--input", help="Panels to call (.csv or .parquet).")],
    output: Annotated[Path, typer.Option("--output", help="Calls file to write (CSV).")],
    rejects: Annotated[Path, typer.Option("--rejects", help="Refused rows with reasons (CSV).")],
    model: ModelOption = None,
    tracking_uri: TrackingOption = None,
    chunk_rows: Annotated[int, typer.Option("--chunk-rows", min=1, help="Rows per chunk.")] = 50_000,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    catalog: CatalogOption = None,
    engine: Annotated[
        Literal["local", "spark"],
        typer.Option("--engine", help="local: this process, in chunks; spark: Arrow batches on a Spark cluster (see README, Spark and REST)."),
    ] = "local",
    reading: Reading = Reading(),
) -> None:
    """Call immune profiles for a batch, with probabilities, subtype and the markers that drove each call."""
    # OpenMP threads (the compiled kernels) otherwise spin between chunks, taking the core the
    # reading thread needs; read by the OpenMP runtime when it loads, so set before any import.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # BLAS (numpy's one matrix product per chunk, drivers) threads likewise compete with the reading
    # and writing threads: one BLAS thread took 7% less CPU on a 1M batch, same calls.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    # Start-up allocates millions of long-lived objects (imports, the unpickled model) that the cyclic
    # garbage collector would otherwise scan again and again; it pauses until the model is loaded, and
    # what is alive then is frozen out of its later scans (1,000 panels: ~0.2 s less CPU, under load).
    gc.disable()
    if engine == "local":
        _warm_kernels_in_background(input, chunk_rows)
    # Both engines read the model's files without MLflow (tracking.load_profiler); Spark ships the profiler itself.
    uri, model_uri = _open_store(tracking_uri, model, [("--input", input), ("--catalog", catalog), ("--columns", reading.columns)],
                                 [("--output", output), ("--rejects", rejects)], connect_store=False)
    from rifml.catalog import load_catalog
    from rifml.io.reader import PanelFile, Prefetcher, validated_chunks
    from rifml.scoring import score_file
    from rifml.tracking import load_profiler

    installed = load_catalog(catalog)
    panel_file = PanelFile(input, installed, chunk_rows=chunk_rows, options=reading.options())  # a bad file fails before the slow load
    if engine == "spark" and (panel_file.layout == "long" or any(f != 1 for f in panel_file.conversions.values())):
        raise RifmlInputError(f"{input}: long layout and units in headers are read by --engine local only")
    with ExitStack() as stack:
        # Local scoring starts reading and validating while the model loads (seconds of imports).
        chunks = stack.enter_context(Prefetcher(validated_chunks(panel_file))) if engine == "local" else None
        if engine == "spark":  # the JVM starts while the model loads and the file is surveyed
            from rifml.spark_engine import session_in_background

            session = stack.enter_context(session_in_background())
        profiler, metadata = load_profiler(model_uri, uri)
        gc.freeze()
        gc.enable()
        model_catalog = profiler.catalog_
        if model_catalog.catalog_version != installed.catalog_version:
            raise RifmlInputError(
                f"model {model_uri} was trained with marker catalog {model_catalog.catalog_version}, "
                f"this installation has {installed.catalog_version}: retrain, or score with a matching model"
            )
        _refuse_edited_catalog(model_catalog, installed, catalog, model_uri)
        if panel_file.layout == "wide" and not set(panel_file.columns) & set(model_catalog.marker_names):
            raise RifmlInputError(
                f"{input}: none of the model's marker columns are present (expected some of: "
                f"{', '.join(model_catalog.marker_names[:5])}, ...)"
            )
        if engine == "spark":
            from rifml.spark_engine import score_with_spark

            tally = score_with_spark(panel_file, profiler, output, rejects, session)
        else:
            progress = stack.enter_context(RowProgress("scoring", quiet))
            tally = score_file(profiler, chunks, lambda: validated_chunks(panel_file), output, rejects,
                               advance=lambda lines: progress.advance(lines, panel_file.row_count))
    # Run as the command itself (not inside `demo`), local scoring leaves nothing to tear down.
    _state["skip_teardown"] = engine == "local" and _state["command"] == "score"
    print_reading(panel_file)
    if tally.profiles:
        out.print("calls: " + ", ".join(f"{p} {tally.profiles[p]:,}" for p in model_catalog.profiles if tally.profiles[p]))
    print_accounting(tally.scored, tally.reasons, verb="scored", rows_in=panel_file.row_count, source=panel_file.describe())


def _warm_kernels_in_background(input: Path, chunk_rows: int) -> None:
    """numba's runtime loads in a thread from the start of `score`, beside the main thread's work,
    when the chunks will be too large for the explainer's numpy pass (explainer.VECTORIZED_ROWS),
    which needs no numba (measured when every batch loaded it: 1,000 panels took 1.31x instead of
    1.47x the bare import time with this head start, medians of 8). The rows are guessed from the file's size and its first lines: a wrong guess
    costs time (a kernel loaded for nothing, or without a head start), never changes a call."""
    import threading

    from rifml.explain.explainer import VECTORIZED_ROWS

    try:
        size = input.stat().st_size
        with input.open("rb") as handle:
            head = handle.read(1 << 16)
    except OSError:
        return  # the reader reports it
    lines = size * head.count(b"\n") / max(len(head), 1)
    if min(chunk_rows, lines) <= VECTORIZED_ROWS:
        return

    def warm() -> None:
        try:
            from rifml.explain.kernel import warm_up

            warm_up()
        except Exception:  # noqa: BLE001 - only a head start: scoring loads the kernels itself and reports any failure
            pass

    threading.Thread(target=warm, name="rifml-warm-up", daemon=True).start()


def _refuse_edited_catalog(model_catalog, used, catalog_path: Optional[Path], model_uri: str) -> None:
    """Same version, other content: validation would differ from `rifml validate` with that catalog
    (and from training), so scoring stops and says where the catalogs differ."""
    from rifml.catalog import catalog_differences

    if model_catalog == used:
        return
    where = catalog_differences(model_catalog, used) or ["marker order"]
    shown = "; ".join(where[:3]) + (f"; and {len(where) - 3} more" if len(where) > 3 else "")
    raise RifmlInputError(
        f"marker catalog {catalog_path or 'configs/markers.yaml'} (version {used.catalog_version}) differs from the one"
        f" {model_uri} was trained with (model vs this): {shown}; score with the model's catalog, or retrain"
    )


def _open_store(tracking_uri: Optional[str], model: Optional[str], inputs: list, outputs: list,
                folders: tuple[str, ...] = (), connect_store: bool = True) -> tuple[str, str]:
    """Check a reading command's paths (its store's file counts as an input) and connect to an existing
    store (unless ``connect_store`` is False: MLflow is not imported); returns (tracking URI, model URI)."""
    from rifml.io.paths import prepare_outputs
    from rifml.tracking import champion_uri, connect, require_store, resolve_tracking_uri, sqlite_path

    uri = resolve_tracking_uri(tracking_uri)  # checked before MLflow is imported: a mistake costs no wait
    model_uri = model or champion_uri()
    prepare_outputs([*inputs, ("--tracking-uri", sqlite_path(uri))], outputs, folders)
    if model_uri.startswith(("models:/", "runs:/")):  # a model given as a path needs no store
        require_store(uri)
    return (connect(uri) if connect_store else uri), model_uri


@app.command()
@reports_errors
def demo(
    workdir: Annotated[Path, typer.Option("--workdir", help="Folder for every file the demo makes.")] = Path("rifml-demo"),
    n: Annotated[int, typer.Option("--n", min=200, help="Panels in the training cohort.")] = 2000,
) -> None:
    """simulate -> validate -> train (with and without labels) -> score, end to end, in one folder."""
    import os

    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    uri = f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    trained = {}
    steps = [
        ("simulate a training cohort (2% corrupt rows)", lambda: simulate(n=n, output=Path("cohort.csv"), seed=1, bad_share=0.02, truth=Path("cohort_truth.csv"), config=None, catalog=None)),
        ("validate it", lambda: validate(input=Path("cohort.csv"), rejects=Path("cohort_rejects.csv"), output=None, chunk_rows=50_000, catalog=None)),
        ("train with labels (registered, champion if it meets the floors)", lambda: trained.update(labels=train(data=Path("cohort.csv"), label_column=None, no_labels=False, experiment="rifml-demo", tracking_uri=uri, config=None, champion=True, catalog=None))),
        ("train without labels: subtypes named into profiles (second run)", lambda: train(data=Path("cohort.csv"), label_column=None, no_labels=True, experiment="rifml-demo", tracking_uri=uri, config=None, champion=False, catalog=None)),
        ("simulate a fresh batch to score (with an outcomes registry)", lambda: simulate(n=max(n // 2, 200), output=Path("batch.csv"), seed=2, bad_share=0.02, truth=Path("batch_truth.csv"), config=None, catalog=None, outcomes=Path("batch_outcomes.csv"))),
        ("score it with the model trained on labels", lambda: score(input=Path("batch.csv"), output=Path("calls.csv"), rejects=Path("rejects.csv"), model=_version_uri(trained["labels"]), tracking_uri=uri, chunk_rows=50_000, catalog=None)),
        ("write the HTML report", lambda: report(input=Path("batch.csv"), calls=Path("calls.csv"), output=Path("report"), model=_version_uri(trained["labels"]), tracking_uri=uri, rejects=Path("rejects.csv"))),
        ("analyse outcomes by profile and subtype (observational: see the caveats)", lambda: outcomes(panels=Path("batch.csv"), calls=Path("calls.csv"), outcomes_file=Path("batch_outcomes.csv"), output=Path("outcomes"), adjust=_demo_covariates(), outcome="live_birth", min_treated=30, model=_version_uri(trained["labels"]), tracking_uri=uri, catalog=None)),
    ]
    for number, (title, step) in enumerate(steps, 1):
        out.rule(f"[bold]{number}/{len(steps)} {title}")
        step()
    out.rule("[bold]done")
    here = Path.cwd()
    out.print(f"everything is in {here}: cohort.csv, calls.csv, rejects.csv, mlflow.db (runs, plots, registered model)")
    out.print(f"cohort report: {here / 'report' / 'index.html'}")
    out.print(f"outcomes page: {here / 'outcomes' / 'index.html'}")
    out.print(f"open the MLflow UI on this store:  rifml ui --tracking-uri {uri}")


class RowProgress:
    """A rich progress bar over rows, on stderr; silent under --quiet or when stderr is not a terminal."""

    def __init__(self, label: str, quiet: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.enabled = not quiet and err.is_terminal
        self._progress = Progress(
            TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err, transient=True
        )
        self._task = None

    def __enter__(self) -> "RowProgress":
        if self.enabled:
            self._progress.start()
        return self

    def advance(self, rows: int, total: int | None) -> None:
        if not self.enabled:
            return
        if self._task is None:
            self._task = self._progress.add_task("rows", total=total)
        self._progress.update(self._task, advance=rows)

    def __exit__(self, *exc_info) -> None:
        if self.enabled:
            self._progress.stop()


@app.command()
@reports_errors
def ui(
    tracking_uri: TrackingOption = None,
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")] = 5000,
    host: Annotated[str, typer.Option("--host", help="Interface to bind (127.0.0.1: this machine only).")] = "127.0.0.1",
) -> None:
    """Open the MLflow UI (runs, plots, registered model) on the store train and score use; Ctrl-C stops it."""
    from rifml.tracking import resolve_tracking_uri
    from rifml.ui import running_ui, ui_links, wait_for_interrupt

    uri = resolve_tracking_uri(tracking_uri)
    err.print(f"starting the MLflow UI on {uri} ...")
    with running_ui(uri, host, port) as server:
        out.print(f"MLflow UI at {server.url} (Ctrl-C stops it; server log {server.log_path})")
        for label, link in ui_links(server).items():
            out.print(f"  {label}: {link}")
        wait_for_interrupt(server)
    err.print("MLflow UI stopped")


@app.command()
@reports_errors
@reads_panels
def report(
    input: Annotated[Path, typer.Option("--input", help="The panel file that was scored (.csv or .parquet).")],
    calls: Annotated[Path, typer.Option("--calls", help="Calls file written by `rifml score` for that panel file.")],
    output: Annotated[Path, typer.Option("--output", help="Report folder to write (index.html and patients/).")],
    model: ModelOption = None,
    tracking_uri: TrackingOption = None,
    rejects: Annotated[Optional[Path], typer.Option("--rejects", help="Rejects file of that run, summarized by reason.")] = None,
    reading: Reading = Reading(),
) -> None:
    """Write a self-contained HTML report: the cohort page and one page per patient (a local folder; ids stay out of MLflow)."""
    from rifml.report import generate_report
    from rifml.tracking import load_profiler

    _, model_uri = _open_store(tracking_uri, model, [("--input", input), ("--calls", calls), ("--rejects", rejects),
                                                     ("--columns", reading.columns)],
                               [("--output", output)], folders=("--output",))
    profiler, metadata = load_profiler(model_uri)
    summary = generate_report(
        profiler, model_uri, metadata, panels=input, calls=calls, output=output, rejects=rejects,
        read_options=reading.options(),
    )
    if summary.changed_calls:
        err.print(f"warning: {summary.changed_calls:,} calls are not reproduced by {model_uri}: were they scored with another model?")
    out.print(f"wrote {summary.output / 'index.html'} and {summary.patients:,} patient pages in {summary.seconds:.1f} s")


def _simulate_outcomes(cohort, truth_table, settings, cat, seed: int, path: Path) -> None:
    from rifml.io.writer import write_table
    from rifml.outcomes.contract import NO_TREATMENT, TREATMENT
    from rifml.outcomes.simulate import simulate_outcomes

    if settings.outcomes is None:
        raise RifmlInputError("--outcomes needs an `outcomes:` section in the simulation config")
    registry = simulate_outcomes(cohort, truth_table, settings.outcomes, cat.id_column, seed=seed, label_column=cat.label_column)
    write_table(registry, path)
    treated = int((registry[TREATMENT] != NO_TREATMENT).sum())
    out.print(f"wrote outcomes of {len(registry):,} patients to {path} ({treated:,} with an add-on)")


def _demo_covariates() -> str:
    from rifml.outcomes.simulate import EMBRYO_QUALITY
    from rifml.simulate import load_simulation_config

    return f"{load_simulation_config().outcomes.age_column},{EMBRYO_QUALITY}"


OutcomesFileOption = Annotated[
    Path, typer.Option("--outcomes", help="Outcomes registry: patient_id, treatment (none = no add-on), a 0/1 outcome, covariates.")
]


@app.command()
@reports_errors
@reads_panels
def outcomes(
    panels: Annotated[Path, typer.Option("--panels", help="The panel file that was scored (covariates such as age_years).")],
    calls: Annotated[Path, typer.Option("--calls", help="Calls file written by `rifml score` for those panels.")],
    outcomes_file: OutcomesFileOption,
    output: Annotated[Path, typer.Option("--output", help="Folder for effects.csv, rates.csv, rejects.csv, index.html.")],
    adjust: Annotated[
        Optional[str], typer.Option("--adjust", help="Covariates to adjust for, comma-separated (outcomes or panels columns).")
    ] = None,
    outcome: Annotated[str, typer.Option("--outcome", help="The 0/1 outcome column.")] = "live_birth",
    min_treated: Annotated[
        int, typer.Option("--min-treated", min=1, help="Analyse a treatment in a group only when at least this many got it.")
    ] = 30,
    model: Annotated[Optional[str], typer.Option("--model", help="URI of the model that made the calls (recorded in the run).")] = None,
    tracking_uri: TrackingOption = None,
    catalog: CatalogOption = None,
    reading: Reading = Reading(),
) -> None:
    """Outcome rates and treatment effects by immune profile and subtype (observational; adjusted odds ratios)."""
    from rifml.catalog import load_catalog
    from rifml.outcomes import contract
    from rifml.outcomes.analysis import analyse
    from rifml.outcomes.files import prepare_folder, read_panel_columns, read_table, write_analysis
    from rifml.outcomes.matching import match_registry
    from rifml.outcomes.render import figures, png_bytes, render_page
    from rifml.tracking import connect, log_outcomes

    cat = load_catalog(catalog)
    covariates = [name.strip() for name in (adjust or "").split(",") if name.strip()]
    from rifml.io.paths import prepare_outputs
    from rifml.outcomes.files import OUTPUT_FILES

    inputs = [("--panels", panels), ("--calls", calls), ("--outcomes", outcomes_file), ("--catalog", catalog),
              ("--columns", reading.columns)]
    if Path(output).is_dir():  # files are written into it one by one: only their names may not clash
        prepare_outputs(inputs, [("--output", Path(output) / name) for name in OUTPUT_FILES])
    else:  # a new folder (or a file in the way, refused as a folder given where a folder is expected)
        prepare_outputs(inputs, [("--output", output)], folders=("--output",))
    folder = prepare_folder(output)
    registry_rows, line_numbers = read_table(outcomes_file, "outcomes")
    calls_table, _ = read_table(calls, "calls")
    from_panels = [name for name in covariates if name not in registry_rows]
    panel_table, panel_reasons = read_panel_columns(
        panels, cat, from_panels, options=reading.options()
    )
    levels = {"profile": cat.label_column, "subtype": contract.SUBTYPE_COLUMN}
    matched = match_registry(
        registry_rows, line_numbers, calls_table, id_column=cat.id_column, level_columns=levels,
        outcome=outcome, adjust=covariates, panel_covariates=panel_table,
    )
    reasons = Counter(matched.rejects["reason"])
    if matched.registry.data.empty:
        raise RifmlInputError(
            f"{outcomes_file}: no row could be analysed ({', '.join(f'{r} {n:,}' for r, n in reasons.most_common())})"
        )
    analysis = analyse(matched.registry, min_treated=min_treated)
    pngs = {stem: png_bytes(figure) for stem, figure in figures(analysis, list(levels), outcome).items()}
    data = matched.registry.data
    summary = {
        "rows_in": matched.rows_in, "analysed": len(data), "rejected": len(matched.rejects),
        "reasons": ", ".join(f"{r} {n:,}" for r, n in reasons.most_common()),
        "calls_without_outcome": matched.calls_without_outcome, "overall_rate": float(data[outcome].mean()),
        "treatments": ", ".join(f"{t} {n:,}" for t, n in data[contract.TREATMENT].value_counts().items()),
    }
    page = render_page(analysis, levels=list(levels), outcome=outcome, adjust=covariates, pngs=pngs, summary=summary,
                       model_label=model)
    written = write_analysis(folder, analysis, matched.rejects, page, pngs)
    uri = connect(tracking_uri)
    run_id = log_outcomes(
        experiment="rifml-outcomes", uri=uri,
        params={"outcome": outcome, "adjusted_for": ",".join(covariates), "min_treated": min_treated,
                "min_events": analysis.min_events, "calls_model": model or "", "rows_in": matched.rows_in},
        metrics={"patients_analysed": len(data), "rows_rejected": len(matched.rejects),
                 "outcome_rate": summary["overall_rate"], "effect_tests": analysis.tests_run,
                 "effects_ci_above_1": int((analysis.effects["ci_low"] > 1).sum()),
                 "effects_ci_below_1": int((analysis.effects["ci_high"] < 1).sum())},
        tables={"effects": analysis.effects, "rates": analysis.rates, "interactions": analysis.interactions},
        plots=[written.files[stem] for stem in pngs], page=page,
    )
    _print_effects(analysis, outcome, covariates)
    out.print(f"wrote {written.files['index']} (effects.csv, rates.csv, interactions.csv, rejects.csv); run {run_id} in {uri}")
    if panel_reasons:
        out.print(f"{sum(panel_reasons.values()):,} panels failed validation: their covariates were not read")
    print_accounting(len(data), reasons, verb="analysed")


def _print_wide(table) -> None:
    """A table at least 130 columns wide: whole group and treatment names, also when piped to a log."""
    Console(width=max(out.width, 130), soft_wrap=True, file=out.file).print(table)


def _print_effects(analysis, outcome: str, covariates: list[str]) -> None:
    effects = analysis.effects
    shown = effects[effects["estimable"].astype(bool)]
    table = Table(box=None, header_style="bold", title=f"{outcome}: treated vs no add-on, adjusted for "
                  + (", ".join(covariates) or "nothing"), title_justify="left")
    for name, justify in [("level", "left"), ("group", "left"), ("treatment", "left"), ("n treated", "right"),
                          ("adjusted OR (95% CI)", "right"), ("p (Holm)", "right"), ("crude OR", "right")]:
        table.add_column(name, justify=justify)
    for row in shown.itertuples():
        table.add_row(row.level, row.group, row.treatment, f"{row.n_treated:,}",
                      f"{row.odds_ratio:.2f} ({row.ci_low:.2f}-{row.ci_high:.2f})", f"{row.p_holm:.3g}", f"{row.crude_odds_ratio:.2f}")
    if len(shown):
        _print_wide(table)
    out.print(f"{len(shown):,} effects estimated ({analysis.tests_run} tests, Holm-adjusted); "
              f"{len(effects) - len(shown):,} not estimable (see effects.csv, note). Observational data: associations, not proof.")


@app.command("plan-trial")
@reports_errors
def plan_trial(
    calls: Annotated[Path, typer.Option("--calls", help="Calls file: each profile's and subtype's prevalence.")],
    effect: Annotated[float, typer.Option("--effect", help="Absolute improvement of the outcome rate to detect (0.10 = 10 points).")],
    outcomes_file: Annotated[
        Optional[Path], typer.Option("--outcomes", help="Outcomes registry: control rates from its untreated patients.")
    ] = None,
    power: Annotated[float, typer.Option("--power", help="Power of the trial.")] = 0.8,
    alpha: Annotated[float, typer.Option("--alpha", help="Two-sided significance level.")] = 0.05,
    baseline: Annotated[float, typer.Option("--baseline", help="Control-arm rate where the registry gives none.")] = 0.3,
    outcome: Annotated[str, typer.Option("--outcome", help="The 0/1 outcome column of the registry.")] = "live_birth",
    output: Annotated[Path, typer.Option("--output", help="Plan CSV to write.")] = Path("plan.csv"),
    catalog: CatalogOption = None,
) -> None:
    """Patients per arm and patients to screen for a trial within each profile and subtype."""
    from rifml.catalog import load_catalog
    from rifml.io.writer import write_table
    from rifml.outcomes import contract
    from rifml.outcomes.files import read_table
    from rifml.io.paths import prepare_outputs
    from rifml.outcomes.planning import check_design, plan_trial as plan

    prepare_outputs([("--calls", calls), ("--outcomes", outcomes_file), ("--catalog", catalog)], [("--output", output)])

    check_design(effect, alpha, power)
    cat = load_catalog(catalog)
    levels = {"profile": cat.label_column, "subtype": contract.SUBTYPE_COLUMN}
    calls_table, _ = read_table(calls, "calls")
    missing = [column for column in levels.values() if column not in calls_table]
    if missing:
        raise RifmlInputError(f"{calls}: no {', '.join(missing)} column: is it a calls file written by `rifml score`?")
    control_rates, reasons, used = {}, Counter(), None
    if outcomes_file is not None:
        control_rates, reasons, used = _control_rates(outcomes_file, calls_table, cat, levels, outcome)
    table = plan({level: calls_table[column] for level, column in levels.items()}, control_rates, baseline, effect, alpha, power)
    write_table(table, output)
    _print_plan(table, effect, alpha, power)
    out.print(f"wrote {output}")
    if used is not None:
        print_accounting(used, reasons, verb="used")


def _control_rates(path: Path, calls_table, cat, levels: dict[str, str], outcome: str):
    """(level, group) -> untreated outcome rate, where at least 5 events and 5 non-events were seen."""
    from rifml.outcomes import contract
    from rifml.outcomes.files import read_table
    from rifml.outcomes.matching import match_registry

    rows, numbers = read_table(path, "outcomes")
    matched = match_registry(rows, numbers, calls_table, id_column=cat.id_column, level_columns=levels, outcome=outcome, adjust=[])
    data = matched.registry.data
    untreated = data[data[contract.TREATMENT] == contract.NO_TREATMENT]
    rates = {}
    for level in levels:
        for group, outcomes_of_group in untreated.groupby(level)[outcome]:
            events, n = int(outcomes_of_group.sum()), len(outcomes_of_group)
            if min(events, n - events) >= 5:
                rates[(level, str(group))] = (events / n, f"untreated (n={n})")
    return rates, Counter(matched.rejects["reason"]), len(data)


def _print_plan(table, effect: float, alpha: float, power: float) -> None:
    import pandas as pd

    def number(value) -> str:
        return "" if pd.isna(value) else f"{int(value):,}"

    shown = Table(box=None, header_style="bold", title_justify="left",
                  title=f"two-arm trial per group: +{effect:.0%} absolute, power {power:.0%}, two-sided alpha {alpha:g}")
    for name, justify in [("level", "left"), ("group", "left"), ("prevalence", "right"), ("control rate", "right"),
                          ("per arm", "right"), ("total", "right"), ("to screen", "right"), ("control rate from", "left")]:
        shown.add_column(name, justify=justify)
    for row in table.itertuples():
        shown.add_row(row.level, row.group, f"{row.prevalence:.1%}", f"{row.control_rate:.1%}", number(row.patients_per_arm),
                      number(row.patients_total), number(row.patients_to_screen), row.control_rate_source or row.note)
    _print_wide(shown)


def _version_uri(logged) -> str:
    from rifml.tracking import version_uri

    return version_uri(logged.version)


def print_accounting(
    done: int, reasons: Counter[str], verb: str, rows_in: int | None = None, source: str | None = None
) -> None:
    """The closing summary every batch command prints: rows in = done + rejected.

    ``rows_in`` is the record count of the file, from the reader's own line count; a sum
    that does not reach it is a bug in rifml, raised (exit 1) rather than printed.
    ``source`` (what was read, in which dialect) goes on the line just before.
    """
    from rifml.io.accounting import AccountingError

    rejected = sum(reasons.values())
    if rows_in is not None and rows_in != done + rejected:
        raise AccountingError(f"the file holds {rows_in:,} records but {done + rejected:,} were accounted for")
    table = Table(show_header=True, header_style="bold", box=None)
    table.add_column("rejected because")
    table.add_column("rows", justify="right")
    for reason, count in reasons.most_common():
        table.add_row(reason, f"{count:,}")
    if reasons:
        out.print(table)
    if source:
        out.print(source, markup=False, highlight=False)
    out.print(f"rows in {done + rejected:,} = {verb} {done:,} + rejected {rejected:,}")


def _interrupt(signum, frame) -> None:
    """SIGTERM (a job scheduler, `kill`) ends a run the way Ctrl-C does: files closed, no .part left."""
    _state["signal"] = signum
    raise KeyboardInterrupt


def main() -> None:
    """Console entry point."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        app()
    except SystemExit as done:
        if not _state["skip_teardown"]:
            raise
        # The command's files are closed and renamed into place; unloading sklearn, LightGBM,
        # numba and MLflow at interpreter exit would add ~1.3 s to every batch for nothing.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(done.code if isinstance(done.code, int) else 0 if done.code is None else 1)
