"""The ``rifml`` command line: reads arguments, calls the core, prints summaries.

Heavy libraries (mlflow, shap, lightgbm) are imported inside the commands that
need them so that ``rifml --help`` stays instant.
"""

from __future__ import annotations

import functools
import traceback
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Callable, Optional, TypeVar

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
out = Console()
err = Console(stderr=True)
_state = {"debug": False}
Command = TypeVar("Command", bound=Callable[..., None])


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    """Global options (parsed before the command)."""
    _state["debug"] = debug


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
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            if _state["debug"]:
                traceback.print_exc()
            err.print(
                f"rifml: unexpected failure: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(1) from None

    return run  # type: ignore[return-value]


CatalogOption = Annotated[
    Optional[Path], typer.Option("--catalog", help="Marker catalog YAML (default: configs/markers.yaml).")
]


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
) -> None:
    """Write a synthetic cohort of RIF immune panels (for demos and tests; not real patients)."""
    from rifml.catalog import load_catalog
    from rifml.simulate import load_simulation_config, simulate_cohort
    from rifml.writer import write_table

    cohort, truth_table = simulate_cohort(
        n, seed=seed, bad_share=bad_share, config=load_simulation_config(config), catalog=load_catalog(catalog)
    )
    write_table(cohort, output)
    if truth is not None:
        write_table(truth_table, truth)
    profiles = truth_table["immune_profile"].value_counts()
    out.print(
        f"wrote {len(cohort):,} panels to {output}"
        + (f" (truth: {truth})" if truth else "")
        + "; profiles: "
        + ", ".join(f"{name} {count:,}" for name, count in profiles.items())
        + (f"; corrupt rows: {int((truth_table['corruption'] != '').sum()):,}" if bad_share else "")
    )


@app.command()
@reports_errors
def validate(
    input: Annotated[Path, typer.Option("--input", help="Panel file (.csv or .parquet).")],
    rejects: Annotated[Path, typer.Option("--rejects", help="Where refused rows go, with reasons (CSV).")],
    output: Annotated[
        Optional[Path], typer.Option("--output", help="Where accepted rows go, unchanged (CSV).")
    ] = None,
    chunk_rows: Annotated[int, typer.Option("--chunk-rows", min=1, help="Rows per chunk.")] = 50_000,
    catalog: CatalogOption = None,
) -> None:
    """Check a batch against the marker catalog: every row is accepted or rejected with a reason."""
    from rifml.catalog import load_catalog
    from rifml.reader import PanelFile, validated_chunks
    from rifml.validate import REJECT_COLUMNS
    from rifml.writer import AtomicCsvWriter

    panel_file = PanelFile(input, load_catalog(catalog), chunk_rows=chunk_rows)
    reasons: Counter[str] = Counter()
    accepted = 0
    with ExitStack() as stack:
        reject_writer = stack.enter_context(AtomicCsvWriter(rejects, columns=REJECT_COLUMNS))
        accepted_writer = stack.enter_context(AtomicCsvWriter(output, columns=panel_file.columns)) if output else None
        for chunk in validated_chunks(panel_file):
            reject_writer.write(chunk.rejects)
            reasons.update(chunk.rejects["reason"])
            accepted += len(chunk.panel)
            if accepted_writer:
                accepted_writer.write(chunk.accepted_raw)
    print_accounting(accepted, reasons, verb="accepted")


def print_accounting(done: int, reasons: Counter[str], verb: str) -> None:
    """The closing summary every batch command prints: rows in = done + rejected."""
    rejected = sum(reasons.values())
    table = Table(show_header=True, header_style="bold", box=None)
    table.add_column("rejected because")
    table.add_column("rows", justify="right")
    for reason, count in reasons.most_common():
        table.add_row(reason, f"{count:,}")
    if reasons:
        out.print(table)
    out.print(f"rows in {done + rejected:,} = {verb} {done:,} + rejected {rejected:,}")


def main() -> None:
    """Console entry point."""
    app()
