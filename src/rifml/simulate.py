"""Synthetic RIF cohorts with known immune profiles, for training, tests and demos.

Each simulated patient belongs to a latent subtype (configs/simulate.yaml) that
maps to one immune profile. Numeric markers are log-normal around the catalog's
fertile-control reference bands; a subtype moves some markers away from that
distribution by a few log-SDs. Labs add assay drift, panels may hold only one
compartment, serum cytokines are censored at a limit of detection, and an
optional share of rows is corrupted with exactly one known defect.

Scenarios (configs/scenarios/*.yaml) are overlays merged over simulate.yaml:
other assay calibrations, shift sizes, prevalences, labs (some present only in
scoring batches), censoring and subtype tables, so that rifml is measured on
many plausible worlds rather than one.

The function returns the cohort exactly as it would be written to CSV (every
cell a ``str``) plus a ground-truth table saying, row by row, what was simulated.
Marker names always come from the catalog; the config names markers only as
keys of its shift and category tables.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rifml.catalog import BLOOD, ENDOMETRIUM, Catalog, Kind, Marker, Profile, load_catalog
from rifml.config import load_validated, load_yaml, validate_mapping
from rifml.contract import DUPLICATE_ID, MISSING_ID, NEGATIVE, NO_MARKERS, NOT_A_NUMBER, PERCENT_ABOVE_100
from rifml.scenarios import merge_patch, random_seed, scenario_overlay, scenario_path
from rifml.errors import RifmlInputError
from rifml.marker_noise import NoiseSpec, band_quantiles, standard_noise
from rifml.outcomes.simulate import OutcomesSpec

Panel = Literal["complete", "blood_only", "biopsy_only"]
Batch = Literal["train", "score"]
BATCHES: tuple[str, ...] = ("train", "score")

# Which catalog compartments each panel kind measures.
PANEL_COMPARTMENTS: dict[str, tuple[str, ...]] = {
    "complete": (BLOOD, ENDOMETRIUM),
    "blood_only": (BLOOD,),
    "biopsy_only": (ENDOMETRIUM,),
}

# Corruption kinds, in the order they are cycled through: each is named by the reject reason
# validation must give it.
CORRUPTION_KINDS: tuple[str, ...] = (NEGATIVE, PERCENT_ABOVE_100, NOT_A_NUMBER, NO_MARKERS, MISSING_ID, DUPLICATE_ID)

_SUM_TOLERANCE = 1e-3  # shares in the YAML are hand-written decimals
_MAX_DECIMALS = 6  # smaller values are written as 0; markers never get that low
_PERCENT_CEILING = 0.999  # percentages are clipped just below their valid maximum
_STANDARD_NORMAL = NormalDist()


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_shares(shares: dict[str, float], what: str) -> None:
    if not shares:
        raise ValueError(f"{what} must not be empty")
    if any(v < 0 for v in shares.values()):
        raise ValueError(f"{what} must not be negative")
    total = sum(shares.values())
    if abs(total - 1.0) > _SUM_TOLERANCE:
        raise ValueError(f"{what} must sum to 1 (they sum to {total:.4f})")


def _check_positive(factors: dict[str, float], what: str) -> None:
    if any(v <= 0 for v in factors.values()):
        raise ValueError(f"{what} must be positive")


class SubtypeSpec(_Strict):
    profile: Profile
    prevalence: float = Field(ge=0, le=1)
    shifts: dict[str, float] = {}
    shift_variants: list[dict[str, float]] = []
    categorical: dict[str, dict[str, float]] = {}

    @model_validator(mode="after")
    def _frequencies_sum(self) -> "SubtypeSpec":
        for marker, freqs in self.categorical.items():
            _check_shares(freqs, f"categorical frequencies of {marker}")
        return self


class LabSpec(_Strict):
    """A laboratory: its share of patients and its assay drift.

    ``drift`` multiplies the markers the catalog flags ``drifts: true``; ``marker_drift``
    sets the factor of any marker by name (a lab's own assay may drift where the catalog
    expects none) and wins over ``drift`` for that marker. A ``scoring_only`` lab sends
    panels only after training: it appears in scoring batches, never in training ones.
    """

    share: float = Field(ge=0, le=1)
    drift: float = Field(gt=0)
    marker_drift: dict[str, float] = {}
    scoring_only: bool = False

    @model_validator(mode="after")
    def _positive_factors(self) -> "LabSpec":
        _check_positive(self.marker_drift, "marker_drift factors")
        return self


class MarkerBaseline(_Strict):
    median: float | None = Field(default=None, gt=0)
    log_sd: float | None = Field(default=None, gt=0)


class BaselineSpec(_Strict):
    """Fertile-control distributions; ``assay_factors`` and ``assay_offsets`` move a marker's
    median for everybody (an assay calibrated high or low): a multiplicative factor, and an
    offset in units of the marker's log-SD. Both compose with ``overrides``."""

    band_coverage: float = Field(gt=0, lt=1)
    zero_band_median_fraction: float = Field(gt=0, lt=1)
    overrides: dict[str, MarkerBaseline] = {}
    assay_factors: dict[str, float] = {}
    assay_offsets: dict[str, float] = {}

    @model_validator(mode="after")
    def _positive_factors(self) -> "BaselineSpec":
        _check_positive(self.assay_factors, "assay_factors")
        return self


class ShiftSpec(_Strict):
    probability: float = Field(ge=0, le=1)
    jitter: float = Field(ge=0, lt=1)
    scale: float = Field(default=1.0, gt=0)  # multiplies every subtype's shift table


class MissingSpec(_Strict):
    rate: float = Field(ge=0, lt=1)
    kinds: list[Kind] = []


class IntRange(_Strict):
    low: int
    high: int

    @model_validator(mode="after")
    def _ordered(self) -> "IntRange":
        if self.high < self.low:
            raise ValueError("high must not be below low")
        return self


class IntChoice(_Strict):
    values: list[int] = Field(min_length=1)
    weights: list[float]

    @model_validator(mode="after")
    def _matching(self) -> "IntChoice":
        if len(self.weights) != len(self.values):
            raise ValueError("values and weights must have the same length")
        if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError("weights must be non-negative with a positive sum")
        return self

    @property
    def probabilities(self) -> np.ndarray:
        w = np.asarray(self.weights, dtype=float)
        return w / w.sum()


class ContextSpec(_Strict):
    age_years: IntRange
    failed_transfers: IntChoice
    cycle_day_lh: IntChoice
    sample_year: int = Field(ge=1900, le=2200)
    id_prefix: str
    id_digits: int = Field(ge=1, le=12)


class CorruptionSpec(_Strict):
    not_a_number_tokens: list[str] = Field(min_length=1)
    negative_range: tuple[float, float]
    above_100_range: tuple[float, float]

    @model_validator(mode="after")
    def _ranges(self) -> "CorruptionSpec":
        low, high = self.negative_range
        if not low <= high < 0:
            raise ValueError("negative_range must be [low, high] with high < 0")
        low, high = self.above_100_range
        if not 100 < low <= high:
            raise ValueError("above_100_range must be [low, high] with low > 100")
        for token in self.not_a_number_tokens:
            try:
                float(token)
            except ValueError:
                continue
            raise ValueError(f"not_a_number token {token!r} is a number")
        return self


class SimulationConfig(_Strict):
    """All simulator parameters (configs/simulate.yaml), validated."""

    config_version: str
    subtypes: dict[str, SubtypeSpec]
    baseline: BaselineSpec
    shift: ShiftSpec
    labs: dict[str, LabSpec]
    panels: dict[Panel, float]
    categorical: dict[str, dict[str, float]]
    # keys: marker kinds, or marker names (a marker's own limit wins over its kind's)
    limit_of_detection: dict[str, float] = {}
    missing_cells: MissingSpec
    context: ContextSpec
    corruption: CorruptionSpec
    significant_digits: int = Field(default=3, ge=1, le=6)
    noise: NoiseSpec = NoiseSpec()  # correlated / heavy-tailed / skewed marker noise (rifml.marker_noise); default off
    outcomes: OutcomesSpec | None = None  # the registry of `simulate --outcomes` (rifml.outcomes.simulate)

    @model_validator(mode="after")
    def _shares_sum(self) -> "SimulationConfig":
        _check_shares({k: v.prevalence for k, v in self.subtypes.items()}, "subtype prevalences")
        _check_shares({k: v.share for k, v in self.labs.items()}, "lab shares")
        if sum(v.share for v in self.labs.values() if not v.scoring_only) <= 0:
            raise ValueError("at least one lab with a positive share must not be scoring_only")
        _check_shares(dict(self.panels), "panel shares")
        for marker, freqs in self.categorical.items():
            _check_shares(freqs, f"categorical frequencies of {marker}")
        if any(v <= 0 for v in self.limit_of_detection.values()):
            raise ValueError("limits of detection must be positive")
        return self


def load_simulation_config(path=None, scenario=None) -> SimulationConfig:
    """Load and validate the simulator parameters, optionally with a scenario overlaid.

    Parameters
    ----------
    path : str or pathlib.Path, optional
        YAML file to read; default ``configs/simulate.yaml``.
    scenario : str or pathlib.Path, optional
        A scenario overlay: a name under ``configs/scenarios/`` (without ``.yaml``) or a
        YAML file. It is merged over the base config as a JSON Merge Patch (RFC 7386):
        mappings merge key by key, ``null`` deletes a key (e.g. a subtype), anything else
        replaces. Its ``description`` key documents the scenario and is not a parameter.

    Returns
    -------
    SimulationConfig
        The validated parameters.

    Raises
    ------
    RifmlInputError
        If a file cannot be read, is not YAML, names an unknown scenario, or the result
        does not describe a valid configuration (unknown keys, wrong types, shares not
        summing to 1, ...).
    """
    if scenario is None:
        return load_validated(SimulationConfig, path, "simulate.yaml", "simulation config")
    base = load_yaml(path, "simulate.yaml")
    merged = merge_patch(base, scenario_overlay(scenario, base))
    drawn = random_seed(scenario) is not None
    source = f"{path or 'configs/simulate.yaml'} + {scenario if drawn else scenario_path(scenario)}"
    return validate_mapping(SimulationConfig, merged, source, "simulation config")


def _check_against_catalog(config: SimulationConfig, catalog: Catalog) -> None:
    """The config may only name markers and categories the catalog defines."""
    numeric = {m.name for m in catalog.numeric_markers}
    categorical = {m.name: m for m in catalog.categorical_markers}

    def check_numeric(names, where):
        unknown = sorted(set(names) - numeric)
        if unknown:
            raise RifmlInputError(f"simulation config {where} names unknown numeric markers: {', '.join(unknown)}")

    def check_categories(table, where):
        for name, freqs in table.items():
            if name not in categorical:
                raise RifmlInputError(f"simulation config {where} names unknown categorical marker {name!r}")
            unknown = sorted(set(freqs) - set(categorical[name].categories or {}))
            if unknown:
                raise RifmlInputError(
                    f"simulation config {where}: {name} has unknown categories {', '.join(unknown)}"
                )

    for sub_name, sub in config.subtypes.items():
        check_numeric(sub.shifts, f"subtypes.{sub_name}.shifts")
        for variant in sub.shift_variants:
            check_numeric(variant, f"subtypes.{sub_name}.shift_variants")
        check_categories(sub.categorical, f"subtypes.{sub_name}.categorical")
    check_numeric(config.baseline.overrides, "baseline.overrides")
    check_numeric(config.baseline.assay_factors, "baseline.assay_factors")
    check_numeric(config.baseline.assay_offsets, "baseline.assay_offsets")
    for lab_name, lab in config.labs.items():
        check_numeric(lab.marker_drift, f"labs.{lab_name}.marker_drift")
    kinds = {m.kind for m in catalog.numeric_markers}
    check_numeric(set(config.limit_of_detection) - kinds, "limit_of_detection (keys are marker kinds or names)")
    check_categories(config.categorical, "categorical")
    missing = sorted(set(categorical) - set(config.categorical))
    if missing:
        raise RifmlInputError(f"simulation config categorical lacks frequencies for {', '.join(missing)}")


# ---------------------------------------------------------------------------
# Fertile-control distributions
# ---------------------------------------------------------------------------


def baseline_distribution(marker: Marker, config: SimulationConfig) -> tuple[float, float]:
    """Median and log-SD of a numeric marker's fertile-control (unshifted) values.

    Parameters
    ----------
    marker : Marker
        A numeric catalog marker (with a reference band).
    config : SimulationConfig
        Supplies band coverage, the zero-band rule, per-marker overrides and the
        assay calibration (``assay_factors``, ``assay_offsets``).

    Returns
    -------
    tuple of float
        ``(median, log_sd)`` of the log-normal distribution.
    """
    low, high = marker.reference_band  # type: ignore[misc]
    _, level = band_quantiles(marker, config.baseline.band_coverage)
    if low > 0:
        # Symmetric in log space: the band is the central `coverage` interval.
        median = float(np.sqrt(low * high))
        log_sd = float(np.log(high / low) / (2 * _STANDARD_NORMAL.inv_cdf(level)))
    else:
        # A band from 0 has no lower edge in log space: `coverage` lies below its top.
        median = config.baseline.zero_band_median_fraction * high
        log_sd = float(np.log(high / median) / _STANDARD_NORMAL.inv_cdf(level))
    override = config.baseline.overrides.get(marker.name)
    if override is not None:
        median = override.median if override.median is not None else median
        log_sd = override.log_sd if override.log_sd is not None else log_sd
    # An assay calibrated high or low moves everybody, the fertile controls included.
    median *= config.baseline.assay_factors.get(marker.name, 1.0)
    median *= float(np.exp(log_sd * config.baseline.assay_offsets.get(marker.name, 0.0)))
    return median, log_sd


# ---------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------


def _format_numbers(values: np.ndarray, digits: int) -> np.ndarray:
    """Non-negative floats -> plain decimal strings with `digits` significant digits.

    Vectorized (numpy string ufuncs) because a cohort holds millions of cells.
    Unlike ``%g`` this never switches to exponent notation. NaN -> "".
    """
    values = np.asarray(values, dtype=float)
    out = np.full(values.shape, "", dtype=object)
    finite = np.isfinite(values)
    x = values[finite]
    magnitude = np.floor(np.log10(np.where(x > 0, x, 1.0)))
    decimals = np.clip(digits - 1 - magnitude, 0, _MAX_DECIMALS).astype(np.int64)
    pow10 = 10 ** decimals
    scaled = np.rint(x * pow10).astype(np.int64)
    whole = (scaled // pow10).astype(str)
    fraction = np.strings.zfill((scaled % pow10).astype(str), decimals)
    text = np.strings.add(np.strings.add(whole, "."), fraction)
    # Drop trailing zeros as %g does ("1.50" -> "1.5", "2.00" -> "2").
    text = np.strings.rstrip(np.strings.rstrip(text, "0"), ".")
    text = np.where(decimals > 0, text, whole)
    out[finite] = text.astype(object)
    return out


def _censor_label(lod: float) -> str:
    return f"<{float(lod)}"


# ---------------------------------------------------------------------------
# Simulation steps
# ---------------------------------------------------------------------------


def _draw(rng: np.random.Generator, shares: dict, n: int) -> np.ndarray:
    """Index into ``list(shares)`` for each of n patients."""
    p = np.asarray(list(shares.values()), dtype=float)
    return rng.choice(len(p), size=n, p=p / p.sum())


def _shift_matrix(
    rng: np.random.Generator,
    config: SimulationConfig,
    subtype_idx: np.ndarray,
    names: list[str],
) -> np.ndarray:
    """Per-patient shift of each numeric marker, in log-SDs (0 = unshifted)."""
    n, m = len(subtype_idx), len(names)
    col = {name: j for j, name in enumerate(names)}
    planned = np.zeros((n, m))
    for s, sub in enumerate(config.subtypes.values()):
        rows = np.flatnonzero(subtype_idx == s)
        base = np.zeros(m)
        for name, size in sub.shifts.items():
            base[col[name]] = size
        planned[rows] = base
        if sub.shift_variants:
            # e.g. mixed: the blood arm is Th1 for some patients, NK for others.
            variants = np.zeros((len(sub.shift_variants), m))
            for v, table in enumerate(sub.shift_variants):
                for name, size in table.items():
                    variants[v, col[name]] = size
            pick = rng.integers(len(sub.shift_variants), size=len(rows))
            planned[rows] += variants[pick]
    # Heterogeneity: not every patient of a subtype shows every marker, nor by the same amount.
    happens = rng.random((n, m)) < config.shift.probability
    jitter = rng.uniform(1 - config.shift.jitter, 1 + config.shift.jitter, size=(n, m))
    return np.where(happens & (planned != 0), planned * (config.shift.scale * jitter), 0.0)


def _marker_values(
    rng: np.random.Generator,
    config: SimulationConfig,
    markers: list[Marker],
    shifts: np.ndarray,
    lab_idx: np.ndarray,
) -> np.ndarray:
    """Log-normal marker values with subtype shifts and lab drift (n x numeric markers).

    Log-normal in the default world; ``config.noise`` may correlate the noise within a patient
    or give it heavier or skewed tails (rifml.marker_noise).
    """
    n = len(lab_idx)
    params = np.array([baseline_distribution(m, config) for m in markers])
    log_median, log_sd = np.log(params[:, 0]), params[:, 1]
    z = standard_noise(rng, config.noise, markers, n, config.baseline.band_coverage)
    log_values = log_median + log_sd * (z + shifts)
    log_values += np.log(lab_drift_factors(config, markers))[lab_idx]
    values = np.exp(log_values)
    # Percentages (and anything else with a finite maximum) stay below that maximum.
    ceilings = np.array(
        [m.valid_range[1] * _PERCENT_CEILING if m.valid_range[1] is not None else np.inf for m in markers]
    )
    return np.minimum(values, ceilings)


def lab_drift_factors(config: SimulationConfig, markers: list[Marker]) -> np.ndarray:
    """Assay factor of each lab (rows, config order) on each marker (columns).

    A lab's ``marker_drift`` table names its factor per marker; markers it does not name
    drift by the lab's ``drift`` where the catalog flags them ``drifts: true``, else not at all.
    """
    return np.array(
        [[lab.marker_drift.get(m.name, lab.drift if m.drifts else 1.0) for m in markers] for lab in config.labs.values()]
    )


def _numeric_cells(
    values: np.ndarray,
    measured: np.ndarray,
    markers: list[Marker],
    config: SimulationConfig,
) -> dict[str, np.ndarray]:
    """Marker name -> column of CSV cells: a number, a ``<LOD`` censor, or ""."""
    columns = {}
    for j, marker in enumerate(markers):
        cells = _format_numbers(np.where(measured[:, j], values[:, j], np.nan), config.significant_digits)
        lod = config.limit_of_detection.get(marker.name, config.limit_of_detection.get(marker.kind))
        if lod is not None and marker.censorable:
            below = measured[:, j] & (values[:, j] < lod)
            cells[below] = _censor_label(lod)
        columns[marker.name] = cells
    return columns


def _categorical_cells(
    rng: np.random.Generator,
    config: SimulationConfig,
    markers: list[Marker],
    subtype_idx: np.ndarray,
    measured_compartments: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Categorical marker name -> column of canonical categories ("" when not measured)."""
    columns = {}
    subtypes = list(config.subtypes.values())
    for marker in markers:
        categories = list(marker.categories or {})
        cohort_wide = config.categorical[marker.name]
        # Row s: category probabilities for subtype s (its own table, or the cohort-wide one).
        table = np.array(
            [[sub.categorical.get(marker.name, cohort_wide).get(c, 0.0) for c in categories] for sub in subtypes]
        )
        cumulative = np.cumsum(table / table.sum(axis=1, keepdims=True), axis=1)[subtype_idx]
        u = rng.random(len(subtype_idx))
        picked = np.minimum((u[:, None] >= cumulative).sum(axis=1), len(categories) - 1)
        cells = np.array(categories, dtype=object)[picked]
        cells[~measured_compartments[marker.compartment]] = ""
        columns[marker.name] = cells
    return columns


def _context_cells(rng: np.random.Generator, config: SimulationConfig, lab_idx: np.ndarray,
                   lab_column: str) -> dict[str, np.ndarray]:
    """Context column name -> column of cells (the lab's column is the catalog's ``lab_column``)."""
    ctx = config.context
    n = len(lab_idx)
    ages = rng.integers(ctx.age_years.low, ctx.age_years.high + 1, size=n)
    transfers = rng.choice(ctx.failed_transfers.values, size=n, p=ctx.failed_transfers.probabilities)
    cycle_day = rng.choice(ctx.cycle_day_lh.values, size=n, p=ctx.cycle_day_lh.probabilities)
    first_day = np.datetime64(f"{ctx.sample_year:04d}-01-01")
    days_in_year = int((np.datetime64(f"{ctx.sample_year + 1:04d}-01-01") - first_day).astype(np.int64))
    dates = first_day + rng.integers(0, days_in_year, size=n)
    return {
        lab_column: np.array(list(config.labs), dtype=object)[lab_idx],
        "sample_date": dates.astype(str).astype(object),
        "age_years": ages.astype(str).astype(object),
        "failed_transfers": transfers.astype(str).astype(object),
        "cycle_day_lh": cycle_day.astype(str).astype(object),
    }


def _patient_ids(n: int, config: SimulationConfig) -> np.ndarray:
    """Sequential, non-identifying ids such as P000123."""
    numbers = np.arange(1, n + 1).astype(str)
    return np.strings.add(config.context.id_prefix, np.strings.zfill(numbers, config.context.id_digits)).astype(object)


def _corrupt(
    rng: np.random.Generator,
    config: SimulationConfig,
    n_bad: int,
    ids: np.ndarray,
    cells: dict[str, np.ndarray],
    numeric: list[Marker],
    all_markers: list[Marker],
    panel_idx: np.ndarray,
    spoiled: np.ndarray,
) -> np.ndarray:
    """Give n_bad random rows one defect each, cycling through CORRUPTION_KINDS.

    Edits ``ids``, ``cells`` and ``spoiled`` (numeric cells no longer holding the
    simulated value) in place; returns the truth's corruption column. A
    duplicate copies the id of a clean row, and both rows are marked.
    """
    n = len(ids)
    corruption = np.full(n, "", dtype=object)
    if n_bad == 0:
        return corruption
    victims = rng.choice(n, size=n_bad, replace=False)
    kinds = np.array(CORRUPTION_KINDS, dtype=object)[np.arange(n_bad) % len(CORRUPTION_KINDS)]
    panels = list(config.panels)
    kind_of_marker = np.array([m.kind for m in numeric])
    compartment_of_marker = np.array([m.compartment for m in numeric])

    def pick_cells(rows: np.ndarray, wanted_kinds: set[str] | None) -> np.ndarray:
        """One numeric marker column per row, measured in that row's panel."""
        chosen = np.empty(len(rows), dtype=np.int64)
        for p, panel in enumerate(panels):
            here = panel_idx[rows] == p
            ok = np.isin(compartment_of_marker, PANEL_COMPARTMENTS[panel])
            if wanted_kinds is not None:
                ok &= np.isin(kind_of_marker, list(wanted_kinds))
            candidates = np.flatnonzero(ok)
            if here.any() and candidates.size == 0:
                raise RifmlInputError(f"no marker in a {panel} panel can carry this corruption")
            if here.any():
                chosen[here] = rng.choice(candidates, size=int(here.sum()))
        return chosen

    def overwrite(rows: np.ndarray, cols: np.ndarray, texts: np.ndarray) -> None:
        for j in np.unique(cols):
            sel = cols == j
            cells[numeric[j].name][rows[sel]] = texts[sel]
            spoiled[rows[sel], j] = True

    digits = config.significant_digits
    rows = victims[kinds == NEGATIVE]
    values = rng.uniform(*config.corruption.negative_range, size=len(rows))
    texts = np.array(["-" + t for t in _format_numbers(-values, digits)], dtype=object)
    overwrite(rows, pick_cells(rows, None), texts)

    rows = victims[kinds == PERCENT_ABOVE_100]
    values = rng.uniform(*config.corruption.above_100_range, size=len(rows))
    overwrite(rows, pick_cells(rows, {"percent"}), _format_numbers(values, digits))

    rows = victims[kinds == NOT_A_NUMBER]
    tokens = np.array(config.corruption.not_a_number_tokens, dtype=object)
    overwrite(rows, pick_cells(rows, None), tokens[rng.integers(len(tokens), size=len(rows))])

    rows = victims[kinds == NO_MARKERS]
    for marker in all_markers:
        cells[marker.name][rows] = ""
    spoiled[rows] = True

    ids[victims[kinds == MISSING_ID]] = ""

    rows = victims[kinds == DUPLICATE_ID]
    clean = np.setdiff1d(np.arange(n), victims)
    if len(clean) < len(rows):
        raise RifmlInputError("bad_share is too high: not enough clean rows left to duplicate patient ids from")
    originals = rng.choice(clean, size=len(rows), replace=False)
    ids[rows] = ids[originals]
    corruption[victims] = kinds
    corruption[originals] = DUPLICATE_ID
    return corruption


def _joined_names(mask: np.ndarray, names: list[str]) -> np.ndarray:
    """Per row, the ';'-joined names whose column in mask is True (vectorized)."""
    joined = np.full(mask.shape[0], "", dtype=np.dtypes.StringDType())
    for j, name in enumerate(names):
        joined = np.strings.add(joined, np.where(mask[:, j], name + ";", ""))
    return np.strings.rstrip(joined, ";").astype(object)


# ---------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------


def simulate_cohort(
    n: int,
    seed: int = 0,
    bad_share: float = 0.0,
    config: SimulationConfig | None = None,
    catalog: Catalog | None = None,
    batch: Batch = "train",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Simulate a cohort of RIF marker panels with known immune profiles.

    Parameters
    ----------
    n : int
        Number of rows (corrupted rows are among them).
    seed : int, default 0
        Seed of the numpy Generator; equal seeds give equal output. Clean rows do
        not depend on ``bad_share`` for a given seed.
    bad_share : float, default 0.0
        Share of rows (rounded) given one defect each, cycling through
        ``CORRUPTION_KINDS``. A duplicate also marks the clean row whose id it
        copies, so slightly more rows than ``round(bad_share * n)`` are flagged.
    config : SimulationConfig, optional
        Simulator parameters; default ``configs/simulate.yaml``.
    catalog : Catalog, optional
        Marker catalog; default ``configs/markers.yaml``.
    batch : {"train", "score"}, default "train"
        A training batch draws patients only from labs that are not ``scoring_only``
        (their shares renormalized); a scoring batch draws from every lab at its share.
        Without scoring-only labs both are the same cohort for a seed.

    Returns
    -------
    cohort : pandas.DataFrame
        The CSV table: id column, context columns, catalog markers in catalog
        order, label column. Every cell is a ``str``; "" means missing.
    truth : pandas.DataFrame
        One row per cohort row, same order: ``row`` (CSV line, header = 1),
        the catalog's id and label columns, ``subtype``, ``shifted_markers``
        (";"-joined, only markers whose simulated value is in the file),
        ``panel``, the catalog's lab column, ``corruption`` ("" for clean rows).

    Raises
    ------
    RifmlInputError
        If n, bad_share or batch is out of range, or the config does not fit the catalog.
    """
    if batch not in BATCHES:
        raise RifmlInputError(f"batch must be one of {', '.join(BATCHES)}, got {batch!r}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise RifmlInputError(f"n must be a positive integer, got {n!r}")
    if not 0.0 <= bad_share <= 1.0:
        raise RifmlInputError(f"bad_share must lie in [0, 1], got {bad_share!r}")
    config = config if config is not None else load_simulation_config()
    catalog = catalog if catalog is not None else load_catalog()
    _check_against_catalog(config, catalog)
    n = int(n)
    rng = np.random.default_rng(seed)

    # Who each patient is: latent subtype, lab, panel.
    subtype_idx = _draw(rng, {k: v.prevalence for k, v in config.subtypes.items()}, n)
    eligible = [i for i, lab in enumerate(config.labs.values()) if batch == "score" or not lab.scoring_only]
    lab_shares = list(config.labs.values())
    lab_idx = np.asarray(eligible)[_draw(rng, {i: lab_shares[i].share for i in eligible}, n)]
    panel_idx = _draw(rng, dict(config.panels), n)
    panel_names = np.array(list(config.panels), dtype=object)[panel_idx]
    measured_compartments = {
        compartment: np.isin(panel_names, [p for p, cs in PANEL_COMPARTMENTS.items() if compartment in cs])
        for compartment in catalog.compartments
    }

    # Numeric markers: values, then which cells the panel holds.
    numeric = catalog.numeric_markers
    names = [m.name for m in numeric]
    shifts = _shift_matrix(rng, config, subtype_idx, names)
    values = _marker_values(rng, config, numeric, shifts, lab_idx)
    measured = np.column_stack([measured_compartments[m.compartment] for m in numeric])
    sporadic_kinds = np.array([m.kind in config.missing_cells.kinds for m in numeric])
    measured &= ~((rng.random(measured.shape) < config.missing_cells.rate) & sporadic_kinds)

    cells = _numeric_cells(values, measured, numeric, config)
    cells.update(_categorical_cells(rng, config, catalog.categorical_markers, subtype_idx, measured_compartments))
    if catalog.lab_column is None:
        raise RifmlInputError("the simulator writes each panel's lab: the marker catalog needs a lab_column")
    context = _context_cells(rng, config, lab_idx, catalog.lab_column)
    ids = _patient_ids(n, config)
    profiles = np.array([s.profile for s in config.subtypes.values()], dtype=object)[subtype_idx]

    # Corruption draws come last so that clean rows do not depend on bad_share.
    spoiled = np.zeros_like(measured)
    corruption = _corrupt(
        rng, config, int(round(bad_share * n)), ids, cells, numeric, list(catalog.markers), panel_idx, spoiled
    )

    cohort = pd.DataFrame(
        {
            catalog.id_column: ids,
            **{c.name: context.get(c.name, np.full(n, "", dtype=object)) for c in catalog.context},
            **{m.name: cells[m.name] for m in catalog.markers},
            catalog.label_column: profiles,
        },
        dtype=object,
    )
    truth = pd.DataFrame(
        {
            "row": np.arange(n) + 2,
            catalog.id_column: ids.copy(),
            catalog.label_column: profiles,
            "subtype": np.array(list(config.subtypes), dtype=object)[subtype_idx],
            "shifted_markers": _joined_names((shifts != 0) & measured & ~spoiled, names),
            "panel": panel_names,
            catalog.lab_column: context[catalog.lab_column],
            "corruption": corruption,
        }
    )
    return cohort, truth
