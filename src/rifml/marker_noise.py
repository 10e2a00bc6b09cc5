"""The simulator's within-patient marker noise: independent normal, or correlated, heavy-tailed, skewed.

rifml's default world draws every marker's standardized log noise independently from N(0, 1).
Real immune panels are not like that: markers of one immune axis move together (peripheral NK %
and NK cytotoxicity; the Th1/Th2 ratios and serum IFN-g/TNF-a), markers of one compartment share
a sample (the endometrial qPCR ratios come from one RNA extraction), and values have heavier
tails than a log-normal (a few patients far out), on one side more than the other. ``noise:``
in configs/simulate.yaml draws such worlds, so that rifml can be measured where independence
and normality do not hold. Which markers share an axis or a compartment comes from the
catalog, never from marker names.

Every knob keeps each marker's band right: correlated noise keeps unit variance, and
heavy-tailed or skewed noise is placed so that the catalog band still holds ``band_coverage``
of the fertile controls (see :func:`standard_noise`). Off (the default), the noise is drawn
exactly as before, so the default world and every scenario without a ``noise:`` block draw
the same cohorts as ever.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from scipy.special import ndtr
from scipy.stats import t as student_t

from rifml.catalog import Marker

# A marker whose catalog axis is the default reads no immune axis: it shares no axis factor.
NO_AXIS = Marker.model_fields["axis"].default
_STANDARD_NORMAL = NormalDist()
# Heavy-tailed noise is capped at this many SDs: an analyser reports a value 10 log-SDs out
# (a ratio ~1,000x its median) as out of range, not as a number, and a t draw far beyond
# it would overflow to an infinite value.
MAX_TAIL_SD = 10.0


class CorrelationSpec(BaseModel):
    """Shares of each marker's noise variance that come from factors shared within a patient.

    A marker's standardized noise is ``sqrt(1 - axis - compartment) * own + sqrt(axis) * f_axis
    + sqrt(compartment) * f_compartment``, every term standard normal: one factor per catalog
    axis and one per compartment, per patient. So two markers of one axis (always in one
    compartment in the catalog) correlate ``axis + compartment``, two markers of one compartment
    on different axes ``compartment``, markers of different compartments 0, and each marker keeps
    unit variance. A marker on no axis takes no axis share (its own share is larger instead).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    axis: float = Field(default=0.0, ge=0, lt=1)
    compartment: float = Field(default=0.0, ge=0, lt=1)

    @field_validator("axis", "compartment", mode="before")
    @classmethod
    def _not_negative(cls, value):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise ValueError(f"must not be negative (got {value}): it is a share of each marker's noise variance")
        return value

    @model_validator(mode="after")
    def _room_for_own_noise(self) -> "CorrelationSpec":
        if self.axis + self.compartment >= 1:
            raise ValueError(
                f"axis + compartment must be below 1 (got {self.axis} + {self.compartment}): "
                "they are shares of each marker's noise variance, and every marker keeps some of its own"
            )
        return self


class NoiseSpec(BaseModel):
    """Within-patient noise of the numeric markers (configs/simulate.yaml ``noise:``); default off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    correlation: CorrelationSpec = CorrelationSpec()
    # Student-t degrees of freedom of the noise; None = normal (the default world)
    tail_df: float | None = Field(default=None, allow_inf_nan=False)
    # sinh-arcsinh skew of the noise, sinh(asinh(x) + skew): > 0 a longer upper tail; 0 = symmetric
    skew: float = Field(default=0.0, allow_inf_nan=False)

    @field_validator("tail_df")
    @classmethod
    def _finite_variance(cls, value: float | None) -> float | None:
        if value is not None and not value > 2:
            raise ValueError(
                f"must be above 2 (got {value}): Student-t noise has no finite variance at 2 or fewer degrees of freedom"
            )
        return value

    @property
    def is_independent_normal(self) -> bool:
        """True for the default world's noise: no shared factor, normal tails."""
        return self.correlation.axis == 0 and self.correlation.compartment == 0 and not self.reshaped

    @property
    def reshaped(self) -> bool:
        """True when the noise is not normal: heavy tails or skew."""
        return self.tail_df is not None or self.skew != 0


def band_quantiles(marker: Marker, coverage: float) -> tuple[float, float]:
    """Where a marker's band sits in its fertile controls' distribution: two probabilities.

    A band with a positive lower edge is the central ``coverage`` interval in log space: its
    edges are the ``(1 - coverage) / 2`` and ``(1 + coverage) / 2`` quantiles. A band starting
    at 0 has no lower edge there: its top is the ``coverage`` quantile, and the median (0.5)
    is the other fixed point (``zero_band_median_fraction`` of the top).
    """
    low, _ = marker.reference_band  # type: ignore[misc]
    return (0.5 - coverage / 2, 0.5 + coverage / 2) if low > 0 else (0.5, coverage)


def standard_noise(
    rng: np.random.Generator,
    noise: NoiseSpec,
    markers: list[Marker],
    n: int,
    coverage: float,
) -> np.ndarray:
    """Standardized log noise of n patients' numeric markers (n x markers).

    The independent normal part is the same draw from ``rng`` as the default world's, and
    nothing else is drawn from ``rng``: shared factors come from a generator spawned from it,
    so a world with other noise keeps the same patients, subtypes, labs, panels and context
    for a seed, and only the marker values differ.

    Heavy tails (``tail_df``) and skew (``skew``) reshape each marker's noise by a monotone
    map of the (possibly correlated) normal value x: the Student-t quantile of x's normal
    probability, then ``sinh(asinh(.) + skew)`` (a Gaussian copula: ranks, hence rank
    correlations, are those of the normal noise; Pearson correlations shrink a little, 0.65 ->
    0.63 at df 4). An affine map per marker then puts the reshaped noise's quantiles at the
    band's edges where the normal ones were (:func:`band_quantiles`; a band from 0 keeps its
    median and its top): the band still holds ``coverage`` of the fertile controls and stays
    where the catalog puts it, and only the values beyond it change. (Unit variance would instead pull
    the bulk inwards, and the band would hold more than ``coverage``.) Values are capped at
    ``MAX_TAIL_SD``.
    """
    m = len(markers)
    z = rng.standard_normal((n, m))
    if noise.is_independent_normal:
        return z
    a, c = noise.correlation.axis, noise.correlation.compartment
    if a > 0 or c > 0:
        extra = rng.spawn(1)[0]
        axes = [mk.axis for mk in markers]
        axis_names = sorted({x for x in axes if x != NO_AXIS})
        compartment_names = sorted({mk.compartment for mk in markers})
        axis_weight = np.array([np.sqrt(a) if x != NO_AXIS else 0.0 for x in axes])
        compartment_weight = np.full(m, np.sqrt(c))
        own_weight = np.sqrt(1.0 - axis_weight**2 - compartment_weight**2)
        axis_factors = extra.standard_normal((n, len(axis_names) + 1))  # last column: unused by NO_AXIS markers
        compartment_factors = extra.standard_normal((n, len(compartment_names)))
        axis_col = np.array([axis_names.index(x) if x != NO_AXIS else len(axis_names) for x in axes])
        compartment_col = np.array([compartment_names.index(mk.compartment) for mk in markers])
        z = own_weight * z + axis_weight * axis_factors[:, axis_col] + compartment_weight * compartment_factors[:, compartment_col]
    if noise.reshaped:
        lower, upper = np.array([band_quantiles(mk, coverage) for mk in markers]).T
        to_normal = np.vectorize(_STANDARD_NORMAL.inv_cdf)
        shaped_lower, shaped_upper = _reshape(to_normal(lower), noise), _reshape(to_normal(upper), noise)
        scale = (to_normal(upper) - to_normal(lower)) / (shaped_upper - shaped_lower)
        z = np.clip(to_normal(lower) + scale * (_reshape(z, noise) - shaped_lower), -MAX_TAIL_SD, MAX_TAIL_SD)
    return z


def _reshape(x: np.ndarray, noise: NoiseSpec) -> np.ndarray:
    """The monotone map from normal noise to the configured shape (before placing it on the band)."""
    if noise.tail_df is not None:
        # t quantile of the normal's tail probability, from the near side: exact far into both tails
        x = np.sign(x) * student_t.isf(ndtr(-np.abs(x)), noise.tail_df)
    if noise.skew != 0:
        x = np.sinh(np.arcsinh(x) + noise.skew)
    return x
