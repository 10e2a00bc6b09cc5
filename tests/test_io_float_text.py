"""Compiled float text (rifml.io.float_text): Arrow's bytes for values on the 10**-6 grid, Arrow's cast otherwise."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from rifml.io.float_text import COMPILED_FROM_ROWS, grid_float_text
from rifml.io.writer import AtomicCsvWriter


def arrow_text(values):
    return pc.cast(pa.array(values, from_pandas=True), pa.string())


def test_grid_values_get_arrows_text_byte_for_byte():
    rng = np.random.default_rng(3)
    parts = [np.round(rng.standard_normal(5_000) * scale, decimals)
             for scale in (1e-6, 1e-4, 0.3, 1.0, 40.0, 1e4, 1e8) for decimals in (0, 2, 6)]
    edges = [0.0, -0.0, 1.0, -1.0, 1e-6, -1e-6, 5e-6, 0.1, 0.5, 414.0, 999_999_999.999999, -999_999_999.999999]
    values = np.concatenate(parts + [np.round(-rng.random(2_000) * 1e-6, 6)])  # these round to -0.0 or -0.000001
    values[rng.random(len(values)) < 0.02] = np.nan
    values = np.concatenate([values, edges])
    text = grid_float_text(values)
    assert text is not None and text.null_count == np.isnan(values).sum()
    assert text.equals(arrow_text(values))
    assert text[-12:].to_pylist() == ["0", "-0", "1", "-1", "0.000001", "-0.000001", "0.000005", "0.1", "0.5", "414",
                                      "999999999.999999", "-999999999.999999"]


def test_values_off_the_grid_or_too_large_are_left_to_arrow():
    for odd in (1 / 3, 0.1234567, 1e9, -2e12, np.inf, -np.inf, 1.5e-7):
        assert grid_float_text(np.array([0.5, odd, 0.25])) is None, odd
    assert grid_float_text(np.array([np.nan, np.nan])).equals(arrow_text(np.array([np.nan, np.nan])))


def test_the_writer_gives_the_same_bytes_on_either_path(tmp_path):
    rows = COMPILED_FROM_ROWS + 7
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"id": [f"P{i}" for i in range(rows)],
                          "prob": np.round(rng.random(rows), 6),  # on the grid: compiled when the chunk is large
                          "raw": rng.random(rows) * 3,  # off the grid: Arrow's cast either way
                          "count": np.where(rng.random(rows) < 0.1, np.nan, rng.integers(0, 500, rows).astype(float))})
    with AtomicCsvWriter(tmp_path / "large.csv") as writer:
        writer.write(frame)
    with AtomicCsvWriter(tmp_path / "small.csv") as writer:
        for first in range(0, rows, COMPILED_FROM_ROWS // 3):
            writer.write(frame.iloc[first:first + COMPILED_FROM_ROWS // 3])
    assert (tmp_path / "large.csv").read_bytes() == (tmp_path / "small.csv").read_bytes()
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "large.csv"), frame)  # every value reads back exactly
