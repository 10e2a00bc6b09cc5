"""Batch scoring of a stream of validated chunks, with labs unseen in training adapted on the whole batch.

A lab the model never saw is normalized with offsets estimated from its panels in the
batch (:meth:`rifml.pipeline.ImmuneProfiler.lab_adaptation`). For the calls not to
depend on how a file is chunked, those offsets must come from the whole file before
any of that lab's rows is called. Chunks are therefore called as they arrive until
the first row from an unknown lab; from there on they are held (or, past a size,
read again) until the file's end has been seen and the offsets are known.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import islice

import pandas as pd

from rifml.features import lab_ids
from rifml.labs import LabAdaptation
from rifml.validate import ValidatedChunk

# Chunks held in memory after the first unknown-lab row, at most this many rows in all;
# beyond, the rest of the file is read again for the second pass (flat memory).
HELD_ROWS = 200_000


def _unknown_lab_rows(panel: pd.DataFrame, known: set[str], catalog) -> pd.Series:
    labs = lab_ids(panel, catalog)
    return labs.notna() & ~labs.isin(known)


def scored_chunks(
    profiler,
    chunks: Iterable[ValidatedChunk],
    reread: Callable[[], Iterable[ValidatedChunk]],
    held_rows: int = HELD_ROWS,
) -> Iterator[tuple[ValidatedChunk, pd.DataFrame | None]]:
    """(chunk, its calls) in input order; calls are None for a chunk whose rows were all rejected.

    Parameters
    ----------
    profiler : fitted ImmuneProfiler
    chunks : iterable of ValidatedChunk
        The file's chunks, in order.
    reread : callable
        Returns the file's chunks again from the start (used only when the chunks held
        after the first unknown-lab row would exceed ``held_rows``).
    held_rows : int
    """
    known = set(profiler.features_.known_labs_)
    none = LabAdaptation()
    yielded = 0
    held: list[ValidatedChunk] | None = []
    held_count = 0
    unknown_rows: list[pd.DataFrame] = []
    for chunk in chunks:
        unknown = _unknown_lab_rows(chunk.panel, known, profiler.catalog_)
        if not unknown_rows and not unknown.any():
            yield chunk, (profiler.call(chunk.panel, compact=True, labs=none) if len(chunk.panel) else None)
            yielded += 1
            continue
        unknown_rows.append(chunk.panel.loc[unknown.to_numpy()])
        if held is not None:
            held.append(chunk)
            held_count += len(chunk.panel)
            if held_count > held_rows:
                held = None
    if not unknown_rows:
        return
    labs = profiler.lab_adaptation(pd.concat(unknown_rows))
    rest = held if held is not None else islice(reread(), yielded, None)
    for chunk in rest:
        yield chunk, (profiler.call(chunk.panel, compact=True, labs=labs) if len(chunk.panel) else None)
