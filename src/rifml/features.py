"""Feature pipeline: a clean panel (see ``rifml.validate``) -> float features for the model.

Every marker list comes from the catalog (configs/markers.yaml). The only marker names
spelled here are the two in :data:`NK_HLA_C_INCOMPATIBILITY`, because that rule is
biology about two specific catalog entries, not something a catalog field can express.

Nothing here opens a file except through :func:`rifml.catalog.load_catalog`.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, check_non_negative, validate_data

from rifml.catalog import Catalog, Marker, load_catalog
from rifml.errors import RifmlInputError

# NK/HLA-C incompatibility (domain.md; Mukherjee 2023): a mother with KIR haplotype AA
# and a partner (embryo) carrying HLA-C2. Marker -> the category that takes part in the
# rule. This mapping and the feature name below are the only marker names in this module.
NK_HLA_C_INCOMPATIBILITY: dict[str, str] = {"kir_haplotype": "AA", "partner_hla_c2": "yes"}
INCOMPATIBILITY_FEATURE = "kir_aa_x_hla_c2"

# lab_id is a catalog context column, not a marker; it keys per-lab normalization.
LAB_COLUMN = "lab_id"

CENSORED_SUFFIX = "__censored"
MISSING_PREFIX = "missing__"

# Exact zeros (a count of 0 cells) have no logarithm. They are replaced by this fraction
# of the smallest positive training value, i.e. "smaller than anything we saw measured".
ZERO_FLOOR_FRACTION = 0.5

# A column with no positive training value has nothing to scale a floor against; any
# constant keeps log finite, and 1.0 maps those zeros to log(1) = 0.
_FLOOR_WITHOUT_POSITIVES = 1.0


# --------------------------------------------------------------------------------------
# Generic array piece: log with a learned floor for zeros
# --------------------------------------------------------------------------------------


class FlooredLog(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Natural log of non-negative columns, with exact zeros lifted to a learned floor.

    Lab markers are right-skewed and roughly log-normal, so they are modelled on a log
    scale; counts can be exactly zero, which would give ``-inf``.

    Parameters
    ----------
    floor_fraction : float, default=0.5
        A column's floor is ``floor_fraction`` times its smallest positive training value.

    Attributes
    ----------
    floor_ : ndarray of shape (n_features,)
        Value that replaces zeros in each column before the log.
    n_features_in_ : int
        Number of columns seen in ``fit``.

    Examples
    --------
    >>> import numpy as np
    >>> FlooredLog().fit_transform(np.array([[0.0], [2.0], [4.0]])).round(3).ravel()
    array([0.   , 0.693, 1.386])
    """

    def __init__(self, floor_fraction: float = ZERO_FLOOR_FRACTION):
        self.floor_fraction = floor_fraction

    def fit(self, X: Any, y: Any = None) -> "FlooredLog":
        if not (isinstance(self.floor_fraction, Real) and 0 < self.floor_fraction <= 1):
            raise ValueError(f"floor_fraction must be in (0, 1], got {self.floor_fraction!r}")
        X = validate_data(self, X, dtype=np.float64, ensure_all_finite="allow-nan")
        check_non_negative(X, "FlooredLog.fit")
        positive = np.where(X > 0, X, np.nan)
        with np.errstate(invalid="ignore"):
            # all-NaN columns give a RuntimeWarning from nanmin; they are handled below
            smallest = np.array([np.nanmin(col) if np.any(col > 0) else np.nan for col in positive.T])
        self.floor_ = np.where(np.isnan(smallest), _FLOOR_WITHOUT_POSITIVES, smallest * self.floor_fraction)
        return self

    def transform(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, ensure_all_finite="allow-nan", reset=False)
        check_non_negative(X, "FlooredLog.transform")
        lifted = np.where(X > 0, X, self.floor_)
        return np.where(np.isnan(X), np.nan, np.log(lifted))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.input_tags.positive_only = True
        return tags


# --------------------------------------------------------------------------------------
# Reading a clean panel (absent columns read as all-missing)
# --------------------------------------------------------------------------------------


def _numeric_values(panel: pd.DataFrame, markers: list[Marker]) -> pd.DataFrame:
    """Numeric marker values (the limit for censored cells), NaN where missing or absent."""
    columns = {}
    for marker in markers:
        if marker.name in panel.columns:
            columns[marker.name] = pd.to_numeric(panel[marker.name], errors="raise").astype(np.float64)
        else:
            columns[marker.name] = pd.Series(np.nan, index=panel.index, dtype=np.float64)
    return pd.DataFrame(columns, index=panel.index)


def _censored_flags(panel: pd.DataFrame, markers: list[Marker]) -> pd.DataFrame:
    """True where a cell was reported as "<x"; False for non-censorable or absent flags."""
    columns = {}
    for marker in markers:
        flag = f"{marker.name}{CENSORED_SUFFIX}"
        if marker.censorable and flag in panel.columns:
            columns[marker.name] = panel[flag].astype("boolean").fillna(False).astype(bool)
        else:
            columns[marker.name] = pd.Series(False, index=panel.index)
    return pd.DataFrame(columns, index=panel.index)


def _categories(panel: pd.DataFrame, marker: Marker) -> pd.Series:
    """Canonical category per row, NaN where missing, absent or unrecognised."""
    if marker.name not in panel.columns:
        return pd.Series(np.nan, index=panel.index, dtype=object)
    values = panel[marker.name]
    canonical = list(marker.categories or {})
    if values.isin(canonical).sum() == values.notna().sum():  # a validated panel: already canonical
        return values.astype(object).where(values.notna(), np.nan)
    text = values.astype("string").str.strip().str.lower()
    return text.map(marker.category_lookup).astype(object).where(text.notna(), np.nan)


def _lab_ids(panel: pd.DataFrame) -> pd.Series:
    """Lab id as text (so 3 and "3" are one lab), NaN where missing or absent."""
    if LAB_COLUMN not in panel.columns:
        return pd.Series(np.nan, index=panel.index, dtype=object)
    labs = panel[LAB_COLUMN]
    return labs.astype(object).where(labs.isna(), labs.astype(str))


def _measured(panel: pd.DataFrame, marker: Marker) -> pd.Series:
    if marker.name not in panel.columns:
        return pd.Series(False, index=panel.index)
    if marker.is_numeric:
        return panel[marker.name].notna()
    return _categories(panel, marker).notna()


def _require_frame(panel: Any) -> pd.DataFrame:
    if not isinstance(panel, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame (a clean panel), got {type(panel).__name__}")
    return panel


# --------------------------------------------------------------------------------------
# Pure helpers used by the transformer, rule baselines and reports
# --------------------------------------------------------------------------------------


def compartments_measured(panel_df: pd.DataFrame, catalog: Catalog) -> dict[str, np.ndarray]:
    """Per compartment, a bool per row: at least one of its markers (numeric or categorical) is present."""
    return {
        compartment: np.column_stack(
            [_measured(panel_df, m).to_numpy() for m in catalog.compartment_markers(compartment)]
        ).any(axis=1)
        for compartment in catalog.compartments
    }


def panel_compartments(panel_df: pd.DataFrame, catalog: Catalog) -> pd.Series:
    """Which compartments each row measured, e.g. "blood+endometrium", "blood", or "none"."""
    measured = compartments_measured(panel_df, catalog)
    names = list(measured)
    # Each row's set of measured compartments as a bit code, then one name per code (vectorized).
    code = np.zeros(len(panel_df), dtype=np.int64)
    for bit, compartment in enumerate(names):
        code |= measured[compartment].astype(np.int64) << bit
    labels = np.array(
        ["+".join(c for bit, c in enumerate(names) if value >> bit & 1) or "none" for value in range(2 ** len(names))],
        dtype=object,
    )
    return pd.Series(labels[code], index=panel_df.index, dtype=object, name="compartments")


def band_position(panel_df: pd.DataFrame, catalog: Catalog | None = None) -> pd.DataFrame:
    """Each numeric marker's position against its reference band: -1 below, 0 within, +1 above.

    NaN where the value is missing. A censored "<x" cell means "at or below x": it is
    -1 when x is at or below the band's lower edge, otherwise 0 (never +1, because the
    true value is below x and may well sit inside the band).

    Parameters
    ----------
    panel_df : DataFrame
        A clean panel.
    catalog : Catalog, optional
        Defaults to ``load_catalog()``.
    """
    catalog = catalog if catalog is not None else load_catalog()
    markers = catalog.numeric_markers
    values = _numeric_values(panel_df, markers)
    censored = _censored_flags(panel_df, markers)
    out = {}
    for marker in markers:
        low, high = marker.reference_band
        v, cens = values[marker.name], censored[marker.name]
        exact = np.select([v < low, v > high], [-1.0, 1.0], default=0.0)
        below_limit = np.where(v <= low, -1.0, 0.0)
        position = np.where(cens, below_limit, exact)
        out[marker.name] = np.where(v.isna(), np.nan, position)
    return pd.DataFrame(out, index=panel_df.index, dtype=np.float64)


def _learn_lab_shifts(values: pd.DataFrame, labs: pd.Series, min_count: int) -> dict[str, dict[str, float]]:
    """Per lab and marker: lab median minus the median of the qualifying labs' medians.

    Centering on the median of lab medians (not the pooled median) keeps one big lab
    from defining "normal" for everyone.
    """
    shifts: dict[str, dict[str, float]] = {}
    for marker in values.columns:
        grouped = values[marker].groupby(labs, dropna=True)
        counts, medians = grouped.count(), grouped.median()
        medians = medians[counts >= min_count]
        if medians.empty:
            continue
        center = float(medians.median())
        for lab, median in medians.items():
            shifts.setdefault(str(lab), {})[marker] = float(median) - center
    return shifts


def _incompatibility_markers(catalog: Catalog) -> tuple[str, ...] | None:
    """The NK/HLA-C rule's markers, or None when the catalog does not carry them all."""
    names = tuple(NK_HLA_C_INCOMPATIBILITY)
    if not all(name in catalog.by_name and not catalog.by_name[name].is_numeric for name in names):
        return None
    for name, category in NK_HLA_C_INCOMPATIBILITY.items():
        if category not in (catalog.by_name[name].categories or {}):
            raise RifmlInputError(
                f"marker catalog: {name} has no category {category!r}, needed for the NK/HLA-C rule"
            )
    return names


def _category_features(marker: Marker) -> list[tuple[str, str]]:
    """(feature name, category) pairs: one indicator for a two-category marker, else one per category."""
    categories = list(marker.categories or {})
    chosen = categories[:1] if len(categories) == 2 else categories
    return [(f"{marker.name}__{category}", category) for category in chosen]


# --------------------------------------------------------------------------------------
# The panel transformer
# --------------------------------------------------------------------------------------


class PanelFeatures(TransformerMixin, BaseEstimator):
    """Turn a clean panel into float64 model features; NaN stays NaN (LightGBM handles it).

    Output columns, in order:

    * per numeric marker ``m``: ``m`` (log value for ``transform: log`` markers, censored
      cells imputed at ``censor_fraction`` times their limit, zeros at a learned floor,
      then shifted by the lab's learned offset for ``drifts: true`` markers), and for
      censorable markers ``m__censored`` (1/0, NaN when the value is missing);
    * per categorical marker: ``m__<category>`` indicators (1/0/NaN), one for a
      two-category marker (its first catalog category);
    * ``kir_aa_x_hla_c2``: NK/HLA-C incompatibility (1/0, NaN if either part is missing);
    * ``missing__<compartment>``: 1 when every marker of that compartment is missing.

    Parameters
    ----------
    catalog_path : str or Path, optional
        Marker catalog; defaults to configs/markers.yaml. Read once, in ``fit``.
    lab_min_count : int, default=20
        A lab gets a shift for a marker only with at least this many training values.
    censor_fraction : float, default=0.5
        A "<x" cell is imputed as ``x * censor_fraction`` (strictly below the limit).
    normalize_labs : bool, default=True
        Learn and apply per-lab shifts for drifting markers.

    Attributes
    ----------
    catalog_ : Catalog
        The catalog read at fit; the fitted object carries it, so scoring needs no config.
    zero_floor_ : dict of str to float
        Per log marker, the value that replaces exact zeros before the log.
    lab_shifts_ : dict of str to dict of str to float
        Lab -> marker -> shift subtracted from the log feature.
    known_labs_ : list of str
        Every lab id seen at fit (shifted or not).
    training_range_ : dict of str to tuple of float
        Per numeric marker, (min, max) of the values seen at fit; (nan, nan) if none.
    feature_markers_ : dict of str to tuple of str
        Output feature -> catalog markers it derives from; SHAP values are summed back to
        measured markers through this (a two-marker feature splits equally).

    Examples
    --------
    >>> import pandas as pd
    >>> panel = pd.DataFrame({"patient_id": ["a", "b"], "pb_nk_pct": [10.0, 20.0]})
    >>> features = PanelFeatures().fit(panel)
    >>> round(float(features.transform(panel).loc[0, "pb_nk_pct"]), 3)
    2.303
    """

    def __init__(
        self,
        catalog_path: str | None = None,
        lab_min_count: int = 20,
        censor_fraction: float = 0.5,
        normalize_labs: bool = True,
    ):
        self.catalog_path = catalog_path
        self.lab_min_count = lab_min_count
        self.censor_fraction = censor_fraction
        self.normalize_labs = normalize_labs

    # -- fit ---------------------------------------------------------------------------

    def _check_params(self) -> None:
        """The one place parameters are validated."""
        if not (isinstance(self.lab_min_count, Integral) and self.lab_min_count >= 1):
            raise ValueError(f"lab_min_count must be an integer >= 1, got {self.lab_min_count!r}")
        if not (isinstance(self.censor_fraction, Real) and 0 < self.censor_fraction < 1):
            raise ValueError(f"censor_fraction must be in (0, 1) so imputed values sit below the limit, "
                             f"got {self.censor_fraction!r}")
        if not isinstance(self.normalize_labs, (bool, np.bool_)):
            raise ValueError(f"normalize_labs must be a bool, got {self.normalize_labs!r}")

    def fit(self, X: pd.DataFrame, y: Any = None) -> "PanelFeatures":
        """Learn zero floors, lab shifts and training ranges from a clean panel."""
        self._check_params()
        panel = _require_frame(X)
        self.catalog_ = load_catalog(self.catalog_path)
        numeric = self.catalog_.numeric_markers

        values = _numeric_values(panel, numeric)
        self.training_range_ = {
            m.name: (float(values[m.name].min()), float(values[m.name].max())) for m in numeric
        }
        imputed = self._impute_censored(values, _censored_flags(panel, numeric))
        log_columns = [m.name for m in numeric if m.transform == "log"]
        self.log_ = FlooredLog(floor_fraction=ZERO_FLOOR_FRACTION).fit(imputed[log_columns])
        self.zero_floor_ = dict(zip(log_columns, map(float, self.log_.floor_)))

        labs = _lab_ids(panel)
        self.known_labs_ = sorted(labs.dropna().unique().tolist())
        drifting = [m.name for m in numeric if m.drifts]
        self.lab_shifts_ = (
            _learn_lab_shifts(self._scale(imputed)[drifting], labs, int(self.lab_min_count))
            if self.normalize_labs and drifting
            else {}
        )
        self.incompatibility_markers_ = _incompatibility_markers(self.catalog_)
        self.feature_markers_ = self._build_feature_markers()
        return self

    def _impute_censored(self, values: pd.DataFrame, censored: pd.DataFrame) -> pd.DataFrame:
        # A "<x" cell is informative (below detection), so it gets a value below x rather than NaN.
        return values.where(~censored, values * self.censor_fraction)

    def _scale(self, imputed: pd.DataFrame) -> pd.DataFrame:
        """Log (with zero floor) for ``transform: log`` markers; others pass through."""
        scaled = imputed.copy()
        log_columns = list(self.log_.feature_names_in_)
        if log_columns:
            scaled[log_columns] = self.log_.transform(imputed[log_columns])
        return scaled

    def _build_feature_markers(self) -> dict[str, tuple[str, ...]]:
        catalog = self.catalog_
        mapping: dict[str, tuple[str, ...]] = {}
        for marker in catalog.numeric_markers:
            mapping[marker.name] = (marker.name,)
            if marker.censorable:
                mapping[f"{marker.name}{CENSORED_SUFFIX}"] = (marker.name,)
        for marker in catalog.categorical_markers:
            for feature, _ in _category_features(marker):
                mapping[feature] = (marker.name,)
        if self.incompatibility_markers_ is not None:
            mapping[INCOMPATIBILITY_FEATURE] = self.incompatibility_markers_
        for compartment in catalog.compartments:
            # says which compartment was not measured, not what any marker read: no marker to credit
            mapping[f"{MISSING_PREFIX}{compartment}"] = ()
        return mapping

    # -- transform ---------------------------------------------------------------------

    def marker_matrix(self, panel_df: pd.DataFrame) -> pd.DataFrame:
        """Log, lab-normalized numeric marker values only (no indicators), one column per marker.

        For subtype clustering on complete panels; rows with missing markers keep NaN.
        """
        check_is_fitted(self)
        panel = _require_frame(panel_df)
        numeric = self.catalog_.numeric_markers
        values = _numeric_values(panel, numeric)
        scaled = self._scale(self._impute_censored(values, _censored_flags(panel, numeric)))
        if self.lab_shifts_:
            labs = _lab_ids(panel)
            for marker in sorted({m for shifts in self.lab_shifts_.values() for m in shifts}):
                scaled[marker] = scaled[marker] - self._shift_for(labs, marker)
        return scaled

    def _shift_for(self, labs: pd.Series, marker: str) -> pd.Series:
        # labs unknown at fit, or too small to trust, get no shift (`flags` reports them)
        per_lab = {lab: shifts[marker] for lab, shifts in self.lab_shifts_.items() if marker in shifts}
        return labs.map(per_lab).astype(np.float64).fillna(0.0)

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        """Features for a clean panel; learns nothing."""
        check_is_fitted(self)
        panel = _require_frame(X)
        catalog = self.catalog_
        numeric = catalog.numeric_markers
        markers = self.marker_matrix(panel)
        censored = _censored_flags(panel, numeric)

        out: dict[str, pd.Series] = {}
        for marker in numeric:
            out[marker.name] = markers[marker.name]
            if marker.censorable:
                flag = censored[marker.name].astype(np.float64)
                out[f"{marker.name}{CENSORED_SUFFIX}"] = flag.where(markers[marker.name].notna())
        categories = {m.name: _categories(panel, m) for m in catalog.categorical_markers}
        for marker in catalog.categorical_markers:
            for feature, category in _category_features(marker):
                out[feature] = _indicator(categories[marker.name], category)
        if self.incompatibility_markers_ is not None:
            parts = [
                _indicator(categories[name], NK_HLA_C_INCOMPATIBILITY[name]) for name in self.incompatibility_markers_
            ]
            # product of 1/0 indicators is 1 only when every part holds; NaN if any part is missing
            out[INCOMPATIBILITY_FEATURE] = pd.concat(parts, axis=1).prod(axis=1, skipna=False)
        for compartment, measured in compartments_measured(panel, catalog).items():
            out[f"{MISSING_PREFIX}{compartment}"] = pd.Series((~measured).astype(np.float64), index=panel.index)
        return pd.DataFrame(out, index=panel.index)[list(self.feature_markers_)].astype(np.float64)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self)
        return np.asarray(list(self.feature_markers_), dtype=object)

    # -- reporting helpers (no learning) -----------------------------------------------

    def compartments(self, panel_df: pd.DataFrame) -> pd.Series:
        """Measured compartments per row: "blood+endometrium", "blood", "endometrium" or "none"."""
        check_is_fitted(self)
        return panel_compartments(_require_frame(panel_df), self.catalog_)

    def flags(self, panel_df: pd.DataFrame) -> pd.DataFrame:
        """Where a row leaves what the model was trained on.

        Returns a DataFrame with ``unknown_lab`` (lab id missing or not seen at fit, so no
        shift was applied), ``outside_training_range`` (some numeric marker outside the
        [min, max] seen at fit) and ``out_of_range_markers`` (";"-joined marker names).
        A censored "<x" cell is outside only when x is below the training minimum.
        """
        check_is_fitted(self)
        panel = _require_frame(panel_df)
        numeric = self.catalog_.numeric_markers
        values = _numeric_values(panel, numeric)
        censored = _censored_flags(panel, numeric)
        outside = pd.DataFrame(
            {m.name: _outside(values[m.name], censored[m.name], self.training_range_[m.name]) for m in numeric},
            index=panel.index,
        )
        mask = outside.to_numpy(bool)
        names = np.full(len(mask), "", dtype=object)
        for i in np.flatnonzero(mask.any(axis=1)):  # usually few rows: join only those
            names[i] = ";".join(outside.columns[mask[i]])
        return pd.DataFrame(
            {
                "unknown_lab": ~_lab_ids(panel).isin(self.known_labs_),
                "outside_training_range": outside.any(axis=1),
                "out_of_range_markers": pd.Series(names, index=panel.index, dtype=object),
            },
            index=panel.index,
        )


def _indicator(categories: pd.Series, category: str) -> pd.Series:
    return (categories == category).astype(np.float64).where(categories.notna())


def _outside(values: pd.Series, censored: pd.Series, bounds: tuple[float, float]) -> pd.Series:
    low, high = bounds
    present = values.notna()
    if np.isnan(low):
        return present  # never measured at fit: any value is outside what the model saw
    exact_outside = (values < low) | (values > high)
    # "<x" is inside when training also saw values (or limits) down to x
    censored_outside = values < low
    return present & np.where(censored, censored_outside, exact_outside)
