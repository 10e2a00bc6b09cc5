"""Batch scoring: the one path from validated chunks to calls, for the CLI, the pyfunc (REST) and Spark.

:func:`scored_chunks` calls a stream of validated chunks; every engine goes through it
(the CLI over a file's chunks, the pyfunc over one request, each Spark batch with the
whole file's lab offsets). :func:`score_file` is the local engine's edge around it:
it writes the calls and rejects files and keeps the :class:`Tally` the CLI prints.

A lab the model never saw is normalized with offsets estimated from its panels in the
batch (:meth:`rifml.pipeline.ImmuneProfiler.lab_adaptation`). For the calls not to
depend on how a file is chunked, those offsets must come from the whole file before
any of that lab's rows is called. Chunks are therefore called as they arrive until
the first row from an unknown lab; from there on they are held (or, past a size,
read again) until the file's end has been seen and the offsets are known. An engine
that estimated the offsets on the whole file itself (Spark) passes them in instead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
import pandas as pd

from rifml.contract import REJECTS_REASON
from rifml.features import lab_ids
from rifml.in_order import InOrder
from rifml.labs import LabAdaptation
from rifml.validate import ValidatedChunk

# Chunks held in memory after the first unknown-lab row, at most this many rows in all;
# beyond, the rest of the file is read again for the second pass (flat memory).
HELD_ROWS = 200_000


def _unknown_lab_rows(panel: pd.DataFrame, known: set[str], catalog) -> pd.Series:
    labs = lab_ids(panel, catalog)
    return labs.notna() & ~labs.isin(known)


def _call(profiler, chunk: ValidatedChunk, labs: LabAdaptation, compact: bool) -> pd.DataFrame | None:
    return profiler.call(chunk.panel, compact=compact, labs=labs) if len(chunk.panel) else None


def scored_chunks(
    profiler,
    chunks: Iterable[ValidatedChunk],
    reread: Callable[[], Iterable[ValidatedChunk]] | None = None,
    held_rows: int = HELD_ROWS,
    labs: LabAdaptation | None = None,
    compact: bool = True,
) -> Iterator[tuple[ValidatedChunk, pd.DataFrame | None]]:
    """(chunk, its calls) in input order; calls are None for a chunk whose rows were all rejected.

    Parameters
    ----------
    profiler : fitted ImmuneProfiler
    chunks : iterable of ValidatedChunk
        The batch's chunks, in order.
    reread : callable, optional
        Returns the batch's chunks again from the start (used only when the chunks held
        after the first unknown-lab row would exceed ``held_rows``). None: the chunks are
        in memory already (a request), all are held.
    held_rows : int
    labs : LabAdaptation, optional
        Offsets of unseen labs already estimated on the whole file (a Spark batch is part
        of a file); every chunk is then called with them as it comes. By default they are
        estimated here, on all of ``chunks``.
    compact : bool, default True
        Text columns of the calls as categoricals and Arrow strings (for writing files);
        False gives plain object columns (for JSON answers). See ``ImmuneProfiler.call``.
    """
    for chunk, adaptation in planned_chunks(profiler, chunks, reread, held_rows, labs):
        yield chunk, _call(profiler, chunk, adaptation, compact)


def planned_chunks(
    profiler,
    chunks: Iterable[ValidatedChunk],
    reread: Callable[[], Iterable[ValidatedChunk]] | None = None,
    held_rows: int = HELD_ROWS,
    labs: LabAdaptation | None = None,
) -> Iterator[tuple[ValidatedChunk, LabAdaptation]]:
    """Each chunk with the lab offsets it is called with, in input order (see the module's docstring).

    Parameters as for :func:`scored_chunks`.
    """
    if labs is not None:
        for chunk in chunks:
            yield chunk, labs
        return
    known = set(profiler.features_.known_labs_)
    none = LabAdaptation()
    yielded = 0
    held: list[ValidatedChunk] | None = []
    held_count = 0
    unknown_rows: list[pd.DataFrame] = []
    for chunk in chunks:
        unknown = _unknown_lab_rows(chunk.panel, known, profiler.catalog_)
        if not unknown_rows and not unknown.any():
            yield chunk, none
            yielded += 1
            continue
        unknown_rows.append(chunk.panel.loc[unknown.to_numpy()])
        if held is not None:
            held.append(chunk)
            held_count += len(chunk.panel)
            if held_count > held_rows and reread is not None:
                held = None
    if not unknown_rows:
        return
    adapted = profiler.lab_adaptation(pd.concat(unknown_rows))
    rest = held if held is not None else islice(reread(), yielded, None)
    for chunk in rest:
        yield chunk, adapted


@dataclass
class Tally:
    """What a scoring run wrote: input lines scored, reject reasons and called profiles (counts)."""

    scored: int = 0
    reasons: Counter = field(default_factory=Counter)
    profiles: Counter = field(default_factory=Counter)

    def add(self, rejects: pd.DataFrame, calls: pd.DataFrame | None, accepted_lines: int, profile_column: str) -> None:
        """Count one chunk: its rejects (``reason`` column), its calls (called profile in ``profile_column``)
        and the input lines behind them."""
        self.reasons.update(rejects[REJECTS_REASON].value_counts().to_dict())
        if calls is not None and len(calls):
            self.profiles.update(calls[profile_column].value_counts().to_dict())
            self.scored += accepted_lines


def score_file(
    profiler,
    chunks: Iterable[ValidatedChunk],
    reread: Callable[[], Iterable[ValidatedChunk]],
    calls_path: Path,
    rejects_path: Path,
    advance: Callable[[int], None] | None = None,
) -> Tally:
    """Score a file's validated chunks into the calls and rejects CSVs (the local engine's edge).

    The three stages of :meth:`ImmuneProfiler.call` run in three threads, a chunk apart, so
    that both cores stay busy: features (and the lab plan) in one, the compiled kernel (which
    releases the GIL) in the calling thread, the calls frame and its writing in a third. The
    files are the same as calling each chunk in turn.

    Parameters
    ----------
    profiler : fitted ImmuneProfiler
    chunks, reread :
        As for :func:`scored_chunks` (``reread`` reads the file again from the start).
    calls_path, rejects_path : Path
        Output CSVs, written atomically (they appear only when complete).
    advance : callable, optional
        Called with the input lines of each chunk as it is written (a progress bar).

    Returns
    -------
    Tally
    """
    from rifml.contract import REJECT_COLUMNS, calls_columns
    from rifml.io.reader import Prefetcher
    from rifml.io.writer import AtomicCsvWriter

    tally = Tally()

    def featured() -> Iterator[tuple[ValidatedChunk, LabAdaptation, np.ndarray | None]]:
        for chunk, labs in planned_chunks(profiler, chunks, reread):
            yield chunk, labs, profiler.call_features(chunk.panel, labs) if len(chunk.panel) else None

    def finish(chunk: ValidatedChunk, labs: LabAdaptation, scores) -> None:
        reject_writer.write(chunk.rejects)
        calls = None if scores is None else profiler.calls_frame(chunk.panel, scores, labs, compact=True)
        if calls is not None:
            calls_writer.write(calls)
        tally.add(chunk.rejects, calls, chunk.accepted_lines, profiler.catalog_.label_column)
        if advance is not None:
            advance(chunk.accepted_lines + len(chunk.rejects))

    with AtomicCsvWriter(rejects_path, columns=REJECT_COLUMNS) as reject_writer, AtomicCsvWriter(calls_path) as calls_writer:
        with Prefetcher(featured(), depth=STAGE_DEPTH, name="rifml-features") as inputs, InOrder("rifml-calls", depth=STAGE_DEPTH) as finishing:
            for chunk, labs, X in inputs:
                finishing.submit(finish, chunk, labs, None if X is None else profiler.call_scores(X))
        if tally.scored == 0:  # still give the calls file its header
            calls_writer.columns = calls_columns(profiler.catalog_)
    return tally


# Chunks waiting between two stages of score_file: one lets each stage start the next chunk as soon
# as it hands one over; more only hold memory.
STAGE_DEPTH = 1
