"""Per-lab assay offsets learned from the data, robust to each lab's case mix.

Assays drift between labs (tens of percent, domain.md), on any marker. A lab's offset
on a marker is not its median minus everybody's median: a lab that sees more
NK-high patients has a higher NK median without any assay drift. Instead each panel is
compared with the median of its own subtype (cluster), and the lab's offset is the
median of those residuals: what is left after the case mix is accounted for.

Pure functions over frames; the fitted pipeline decides which rows and clusters to use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

# Fewer usable (measured, uncensored) values than this on a marker: no offset for it.
MIN_VALUES_PER_MARKER = 10
# Normal-consistency factors: MAD -> SD, and SD of a sample median = 1.2533 SD / sqrt(n).
_MAD_TO_SD = 1.4826
_MEDIAN_SE_FACTOR = 1.2533


@dataclass(frozen=True)
class LabAdaptation:
    """Offsets estimated for labs the model never saw, from the batch being scored.

    Attributes
    ----------
    shifts : dict of str to dict of str to float
        Lab -> marker -> offset subtracted from the marker's log value.
    panels : dict of str to int
        Lab -> complete panels the offsets were estimated from.
    """

    shifts: dict[str, dict[str, float]] = field(default_factory=dict)
    panels: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        """Text form, for engines that hand it to the model as a parameter (Spark); "" when empty."""
        if not self.panels:
            return ""
        return json.dumps({"shifts": self.shifts, "panels": self.panels}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> "LabAdaptation | None":
        """The adaptation :meth:`to_json` wrote; None for no text (the batch adapts itself)."""
        if not text:
            return None
        data = json.loads(text)
        return cls({lab: {m: float(v) for m, v in per.items()} for lab, per in data["shifts"].items()},
                   {lab: int(n) for lab, n in data["panels"].items()})


def shrunk_median_offsets(
    residuals: pd.DataFrame, labs: pd.Series, usable: pd.DataFrame, min_panels: int
) -> dict[str, dict[str, float]]:
    """Per lab and marker, the median residual, shrunk toward 0 by its standard error.

    A lab gets offsets only with at least ``min_panels`` rows. The median residual d of
    a marker is shrunk as d * max(0, 1 - se^2 / d^2) (positive-part James-Stein), where
    se is the median's standard error from the residuals' MAD: an offset that noise
    alone could explain is not applied, a clear one is applied almost whole. So any
    marker may drift, and markers that do not are left alone.

    Parameters
    ----------
    residuals : DataFrame
        One row per panel, one column per marker: log value minus its cluster's median.
    labs : Series
        Lab id per row (same index).
    usable : DataFrame of bool
        Same shape: the residual is from a measured, uncensored value.
    min_panels : int

    Returns
    -------
    dict
        Lab -> marker -> offset (markers without a usable estimate are left out).
    """
    offsets: dict[str, dict[str, float]] = {}
    values = residuals.to_numpy(dtype=float)
    ok = usable.to_numpy(dtype=bool) & np.isfinite(values)
    codes, names = pd.factorize(labs)
    for code, lab in enumerate(names):
        rows = codes == code
        if rows.sum() < min_panels:
            continue
        per_marker: dict[str, float] = {}
        for j, marker in enumerate(residuals.columns):
            r = values[rows & ok[:, j], j]
            if len(r) < MIN_VALUES_PER_MARKER:
                continue
            d = float(np.median(r))
            se = _MEDIAN_SE_FACTOR * _MAD_TO_SD * float(np.median(np.abs(r - d))) / np.sqrt(len(r))
            if d != 0.0 and abs(d) > se:
                per_marker[marker] = d * (1.0 - (se / d) ** 2)
        offsets[str(lab)] = per_marker
    return offsets
