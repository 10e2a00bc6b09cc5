"""Per-marker contributions and drivers: SHAP values of model features, read as measured markers."""

from __future__ import annotations

import numpy as np
import pandas as pd

from rifml.contract import driver_columns


def marker_contributions(
    phi: np.ndarray, feature_names: list[str], feature_markers: dict[str, tuple[str, ...]], markers: list[str]
) -> pd.DataFrame:
    """Sum feature SHAP values back to measured markers.

    A feature derived from several markers is split equally between them; a feature
    derived from none (a missing-compartment indicator) goes to the column
    ``(panel coverage)``. Rows still sum to the model output minus the expected value.
    """
    columns = list(markers) + [COVERAGE]
    mapping = np.zeros((len(feature_names), len(columns)))
    index = {m: i for i, m in enumerate(columns)}
    for j, name in enumerate(feature_names):
        sources = feature_markers.get(name, ())
        if sources:
            for marker in sources:
                mapping[j, index[marker]] += 1.0 / len(sources)
        else:
            mapping[j, index[COVERAGE]] = 1.0
    return pd.DataFrame(phi @ mapping, columns=columns)


COVERAGE = "(panel coverage)"


def top_drivers(contributions: pd.DataFrame, measured: pd.DataFrame, k: int = 3) -> pd.DataFrame:
    """The k measured markers pushing hardest toward the explained class.

    Contributions of markers that were not measured (and of panel coverage) are not
    drivers: a clinician reads a driver as "this value is abnormal here".
    Returns columns driver_1, driver_1_contribution, ... (empty / NaN past the
    last marker with a positive push).
    """
    markers = list(measured.columns)
    # positions into the frame's own array: a list of columns would copy the frame, then to_numpy again
    values = np.where(measured.to_numpy(dtype=bool), _columns(contributions, markers), -np.inf)
    out: dict[str, object] = {}
    # names as categorical codes (the last category is "no driver"): no Python string per row
    names = markers + [""]
    rows = np.arange(len(values))
    for rank in range(k):
        # k passes of argmax (first index on ties) instead of sorting every row
        chosen = values.argmax(axis=1)
        push = values[rows, chosen]
        keep = push > 0
        name, contribution = driver_columns(rank + 1)
        out[name] = pd.Categorical.from_codes(np.where(keep, chosen, len(markers)), categories=names)
        out[contribution] = np.where(keep, push, np.nan)
        values[rows, chosen] = -np.inf
    return pd.DataFrame(out, index=contributions.index)


def _columns(frame: pd.DataFrame, names: list[str]) -> np.ndarray:
    """``frame[names]`` as a float64 array, a view when they are its leading columns (as marker_contributions makes them)."""
    positions = frame.columns.get_indexer(names)
    if (positions < 0).any():
        raise KeyError(f"not among the contributions: {[n for n, p in zip(names, positions) if p < 0]}")
    array = frame.to_numpy(dtype=np.float64)
    if np.array_equal(positions, np.arange(len(names))):
        return array[:, : len(names)]
    return array[:, positions]
