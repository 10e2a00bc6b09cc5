"""Page geometry of the patient pages: marker axes, band rectangles, the contribution waterfall.

Numbers in pixels for the inline SVG/CSS of the templates (a matplotlib figure per patient
costs ~50 ms, minutes for a 10,000-patient batch), and values as a clinician writes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rifml.catalog import Marker
from rifml.pipeline import ImmuneProfiler

WATERFALL_BARS = 7
TRACK_PX = 260
TRACK_PAD = 8  # room left and right of a band axis for the value dot
DOT_PX = 12
WATERFALL = {"label_end": 196, "plot_start": 206, "plot_width": 300, "value_end": 580, "row": 24}


@dataclass(frozen=True)
class BandAxis:
    """A marker's fixed horizontal axis (same for every patient): [lo, hi], log or linear."""

    lo: float
    hi: float
    log: bool

    def fraction(self, values: np.ndarray) -> np.ndarray:
        """Position in [0, 1] along the axis (outside when beyond it); non-positive values sit left on a log axis."""
        v = np.asarray(values, dtype=float)
        if not self.log:
            return (v - self.lo) / (self.hi - self.lo)
        with np.errstate(divide="ignore", invalid="ignore"):
            scaled = np.log(np.where(v > 0, v, self.lo / 10))
        return (scaled - np.log(self.lo)) / (np.log(self.hi) - np.log(self.lo))


def band_axis(marker: Marker, training_range: tuple[float, float], zero_floor: float | None) -> BandAxis:
    """Axis spanning the reference band and what training saw, padded 5%; log where the catalog says so."""
    band_low, band_high = marker.reference_band
    low = float(np.nanmin([band_low, training_range[0]]))
    high = float(np.nanmax([band_high, training_range[1]]))
    if marker.transform == "log":
        floor = zero_floor if zero_floor and zero_floor > 0 else band_high / 100
        low = max(low, floor)
        if band_low > 0:
            low = min(low, band_low)
        high = max(high, low * 10)
        pad = (high / low) ** 0.05
        return BandAxis(low / pad, high * pad, True)
    span = (high - low) or 1.0
    return BandAxis(low - 0.05 * span, high + 0.05 * span, False)


def signed(value: float) -> str:
    """A contribution with its sign, two decimals; a value that rounds to zero is 0.00, never -0.00."""
    text = f"{value:+.2f}"
    return "0.00" if text in ("+0.00", "-0.00") else text


def format_value(value: float, censored: bool = False) -> str:
    """A measured value as a clinician writes it: 3 significant digits, "<x" when below detection."""
    if np.isnan(value):
        return "not measured"
    text = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return f"<{text}" if censored else text


@dataclass(frozen=True)
class MarkerBand:
    """Per-marker geometry shared by every patient page."""

    marker: Marker
    axis: BandAxis
    band_x0: float
    band_x1: float
    ticks: tuple[tuple[float, str], ...]
    reference: str


def marker_bands(profiler: ImmuneProfiler) -> list[MarkerBand]:
    """Axis, band rectangle and tick labels (in pixels) for every numeric marker."""
    features = profiler.features_
    bands = []
    for marker in profiler.catalog_.numeric_markers:
        axis = band_axis(marker, features.training_range_[marker.name], features.zero_floor_.get(marker.name))
        low, high = marker.reference_band
        x0, x1 = np.clip(axis.fraction(np.array([low, high])), 0, 1) * TRACK_PX
        ticks = tuple((round(float(x), 1), format_value(v)) for v, x in [(low, x0), (high, x1)] if not (axis.log and v <= 0))
        reference = f"{format_value(low)}–{format_value(high)} {marker.unit}" + (" · log axis" if axis.log else "")
        bands.append(MarkerBand(marker, axis, round(float(x0), 1), round(float(x1), 1), ticks, reference))
    return bands


def waterfall(values: np.ndarray, labels: list[str], bars: int = WATERFALL_BARS) -> dict:
    """SVG geometry of one patient's contributions: the largest ``bars`` markers, the rest summed, the total.

    Parameters
    ----------
    values : ndarray
        Contribution of each label toward the called profile (calibrated log-odds: margin / temperature).
    labels : list of str
    bars : int

    Returns
    -------
    dict with ``steps`` (label, value text, x, width, y, sign), ``total``, ``zero_x``, ``height``.
    """
    order = np.argsort(-np.abs(values), kind="stable")
    top, rest = order[:bars], order[bars:]
    names = [labels[j] for j in top]
    amounts = [float(values[j]) for j in top]
    if len(rest):
        names.append(f"{len(rest)} other markers")
        amounts.append(float(values[rest].sum()))
    ends = np.cumsum(amounts)
    starts = ends - np.asarray(amounts)
    total = float(ends[-1]) if len(ends) else 0.0
    low = min(0.0, float(starts.min(initial=0)), float(ends.min(initial=0)))
    high = max(0.0, float(starts.max(initial=0)), float(ends.max(initial=0)))
    span = (high - low) or 1.0
    geometry = WATERFALL

    def px(v: float) -> float:
        return round(geometry["plot_start"] + (v - low) / span * geometry["plot_width"], 1)

    steps = []
    for row, (name, amount, start, end) in enumerate(zip(names, amounts, starts, ends)):
        x0, x1 = sorted((px(start), px(end)))
        steps.append({"label": name, "value": signed(amount), "x": x0, "width": round(max(x1 - x0, 1.0), 1),
                      "y": row * geometry["row"], "sign": "pos" if amount >= 0 else "neg"})
    x0, x1 = sorted((px(0.0), px(total)))
    total_step = {"label": "total", "value": signed(total), "x": x0, "width": round(max(x1 - x0, 1.0), 1),
                  "y": len(steps) * geometry["row"], "sign": "total"}
    return {"steps": steps, "total": total_step, "zero_x": px(0.0), "height": (len(steps) + 1) * geometry["row"] + 8,
            **geometry}
