"""Float columns as CSV text, compiled, with the very bytes Arrow's cast gives.

Arrow writes a double as the shortest text that reads back to it (``0.25``, ``414``, ``-0``):
about 160 ns per value, a third of the writer's time on a calls file (probabilities and
contributions, rounded to ``contract.REPORTED_DECIMALS``). For values on a 10**-6 grid,
that shortest text is the grid value's own digits without trailing zeros, which a compiled
loop writes in a few nanoseconds. A column with any other value keeps Arrow's cast, so the
output never depends on which path wrote it.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from rifml.io.compiled import compiled_on_first_call

DECIMALS = 6
_UNITS = 10**DECIMALS
_SCALE = float(_UNITS)
# Below 2**33 adjacent doubles are less than 10**-6 apart, so no shorter decimal than the grid
# value's reads back to the same double: its digits are the shortest text. Arrow also writes
# every such value in fixed notation (it switches to exponents below 10**-6 and far above 10**9).
_LIMIT = 1e9
# The compiled loop is loaded on first use (rifml.io.compiled): worth it only for large columns;
# smaller ones stay with Arrow's cast (the same bytes).
COMPILED_FROM_ROWS = 20_000
# sign, 9 digits, point, 6 decimals
_MAX_BYTES = 17

def _grid_text(values, offsets, data, valid):
    """Write each value's text into ``data``; -1 as soon as a value is off the grid or too large (compiled)."""
    position = 0
    for i in range(values.shape[0]):
        x = values[i]
        if x != x:  # NaN: a null, an empty cell
            valid[i] = False
            offsets[i + 1] = position
            continue
        valid[i] = True
        if not abs(x) < _LIMIT:
            return -1
        grid = np.rint(x * _SCALE)
        if grid / _SCALE != x:
            return -1
        if x < 0 or (x == 0 and np.signbit(x)):  # Arrow writes -0.0 as "-0"
            data[position] = 45
            position += 1
        units = np.int64(abs(grid))
        whole, fraction = units // _UNITS, units % _UNITS
        width = 1
        rest = whole
        while rest >= 10:
            rest //= 10
            width += 1
        for j in range(width - 1, -1, -1):  # the whole part's digits, written from the last
            data[position + j] = 48 + whole % 10
            whole //= 10
        position += width
        if fraction:
            data[position] = 46
            position += 1
            digits = DECIMALS
            while fraction % 10 == 0:
                fraction //= 10
                digits -= 1
            for j in range(digits - 1, -1, -1):
                data[position + j] = 48 + fraction % 10
                fraction //= 10
            position += digits
        offsets[i + 1] = position
    return position


_compiled_grid_text = compiled_on_first_call(_grid_text)


def grid_float_text(values: np.ndarray) -> pa.StringArray | None:
    """``pc.cast(pa.array(values, from_pandas=True), pa.string())`` when every value is on the 10**-6 grid.

    Parameters
    ----------
    values : ndarray of float64
        NaN is missing (a null).

    Returns
    -------
    pyarrow.StringArray, or None when a value is off the grid, infinite or at least 1e9
    (the caller then casts with Arrow).
    """
    values = np.ascontiguousarray(values, dtype=np.float64)
    n = len(values)
    offsets = np.zeros(n + 1, dtype=np.int32)
    data = np.empty(n * _MAX_BYTES, dtype=np.uint8)
    valid = np.empty(n, dtype=np.bool_)
    size = _compiled_grid_text(values, offsets, data, valid)
    if size < 0:
        return None
    nulls = n - int(np.count_nonzero(valid))
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data[:size]), bitmap, nulls)
