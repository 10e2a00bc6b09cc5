"""Feature pipeline: a clean panel (see ``rifml.validate``) -> float features for the model.

Every marker list comes from the catalog (configs/markers.yaml), and so do the lab column
and the interactions of categorical markers (NK/HLA-C incompatibility): no column name is
spelled here.

Nothing here opens a file except through :func:`rifml.catalog.load_catalog`.
"""

from __future__ import annotations

import copy
import os
from numbers import Integral, Real
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted, check_non_negative, validate_data

from rifml import contract
from rifml.catalog import Catalog, Marker, load_catalog
from rifml.contract import censored_column

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

    _parameter_constraints: dict = {"floor_fraction": [Interval(Real, 0, 1, closed="right")]}

    def __init__(self, floor_fraction: float = ZERO_FLOOR_FRACTION):
        self.floor_fraction = floor_fraction

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Any = None) -> "FlooredLog":
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
        return self._log(X)

    def _log(self, X: np.ndarray) -> np.ndarray:
        """``transform`` of a float64 array already laid out as at fit (PanelFeatures' own columns)."""
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


def _numeric_values(panel: pd.DataFrame, markers: list[Marker]) -> np.ndarray:
    """(rows, markers) float64: numeric values (the limit for censored cells), NaN where missing or absent.

    Column-major (each marker's values contiguous, as they are filled): a row-major fill
    writes every value a row apart.
    """
    out = np.full((len(panel), len(markers)), np.nan, order="F")
    for i, marker in enumerate(markers):
        if marker.name in panel.columns:
            column = panel[marker.name]
            if column.dtype != np.float64:  # a validated panel's columns are float64 already
                column = pd.to_numeric(column, errors="raise")
            out[:, i] = column.to_numpy(dtype=np.float64, na_value=np.nan)
    return out


def _censored_flags(panel: pd.DataFrame, markers: list[Marker]) -> np.ndarray:
    """(rows, markers) bool: True where a cell was reported as "<x"; False for non-censorable or absent flags."""
    out = np.zeros((len(panel), len(markers)), dtype=bool, order="F")
    for i, marker in enumerate(markers):
        flag = censored_column(marker.name)
        if marker.censorable and flag in panel.columns:
            column = panel[flag]
            out[:, i] = column.to_numpy(dtype=bool) if column.dtype == bool else column.astype("boolean").fillna(False).to_numpy(dtype=bool)
    return out


def _category_codes(panel: pd.DataFrame, marker: Marker) -> np.ndarray:
    """Index of each row's category in the catalog's order; -1 where missing, absent or unrecognised."""
    if marker.name not in panel.columns:
        return np.full(len(panel), -1, dtype=np.int64)
    values = panel[marker.name]
    canonical = list(marker.categories or {})
    if isinstance(values.dtype, pd.CategoricalDtype) and list(values.cat.categories) == canonical:
        return values.cat.codes.to_numpy(dtype=np.int64)  # a validated panel: codes already in catalog order
    cells = values.to_numpy(dtype=object, na_value=None)  # NA-safe comparisons below
    codes = np.full(len(cells), -1, dtype=np.int64)
    for code, category in enumerate(canonical):  # a few categories: one vectorized comparison each
        codes[cells == category] = code
    if ((codes < 0) & values.notna().to_numpy()).any():  # spellings a validated panel would have made canonical
        text = values.astype("string").str.strip().str.lower().map(marker.category_lookup)
        codes = pd.Categorical(text, categories=canonical).codes.astype(np.int64)
    return codes


def lab_ids(panel: pd.DataFrame, catalog: Catalog) -> pd.Series:
    """Lab id (the catalog's lab column) as text (so 3 and "3" are one lab), missing (NaN / NA) where missing or absent."""
    if catalog.lab_column not in panel.columns:
        return pd.Series(np.nan, index=panel.index, dtype=object)
    labs = panel[catalog.lab_column]
    if isinstance(labs.dtype, pd.StringDtype):  # a validated panel: already text
        return labs
    return labs.astype(object).where(labs.isna(), labs.astype(str))


def _require_frame(panel: Any) -> pd.DataFrame:
    if not isinstance(panel, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame (a clean panel), got {type(panel).__name__}")
    return panel


# --------------------------------------------------------------------------------------
# Pure helpers used by the transformer, rule baselines and reports
# --------------------------------------------------------------------------------------


def measured_markers(panel_df: pd.DataFrame, catalog: Catalog) -> pd.DataFrame:
    """Bool per row and catalog marker: a numeric value is present / a category is recognised."""
    panel = _require_frame(panel_df)
    measured = {}
    for marker in catalog.markers:
        if marker.name not in panel.columns:
            measured[marker.name] = np.zeros(len(panel), dtype=bool)
        elif marker.is_numeric:
            measured[marker.name] = panel[marker.name].notna().to_numpy()
        else:
            measured[marker.name] = _category_codes(panel, marker) >= 0
    return pd.DataFrame(measured, index=panel.index)


def compartments_measured(measured: pd.DataFrame, catalog: Catalog) -> dict[str, np.ndarray]:
    """Per compartment, a bool per row: at least one of its markers is measured (see :func:`measured_markers`)."""
    return {
        compartment: measured[[m.name for m in catalog.compartment_markers(compartment)]].to_numpy().any(axis=1)
        for compartment in catalog.compartments
    }


def complete_coverage(catalog: Catalog) -> str:
    """The :func:`compartment_names` value of a panel that measured every compartment ("blood+endometrium")."""
    return "+".join(catalog.compartments)


def compartment_names(measured: pd.DataFrame, catalog: Catalog) -> pd.Series:
    """Which compartments each row measured, e.g. "blood+endometrium", "blood", or "none" (categorical)."""
    masks = compartments_measured(measured, catalog)
    names = list(masks)
    # Each row's set of measured compartments as a bit code, then one name per code (vectorized).
    code = np.zeros(len(measured), dtype=np.int64)
    for bit, compartment in enumerate(names):
        code |= masks[compartment].astype(np.int64) << bit
    labels = np.array(
        ["+".join(c for bit, c in enumerate(names) if value >> bit & 1) or "none" for value in range(2 ** len(names))],
        dtype=object,
    )
    return pd.Series(pd.Categorical.from_codes(code, categories=labels), index=measured.index, name=contract.COMPARTMENTS)


def panel_compartments(panel_df: pd.DataFrame, catalog: Catalog) -> pd.Series:
    """Which compartments each row measured, e.g. "blood+endometrium", "blood", or "none"."""
    return compartment_names(measured_markers(panel_df, catalog), catalog)


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
    low, high = np.array([m.reference_band for m in markers], dtype=np.float64).reshape(-1, 2).T
    exact = np.select([values < low, values > high], [-1.0, 1.0], default=0.0)
    below_limit = np.where(values <= low, -1.0, 0.0)
    position = np.where(censored, below_limit, exact)
    return pd.DataFrame(
        np.where(np.isnan(values), np.nan, position), index=panel_df.index, columns=[m.name for m in markers]
    )


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
    * per catalog interaction (``kir_aa_x_hla_c2``, NK/HLA-C incompatibility): 1/0, NaN if a part is missing;
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

    _parameter_constraints: dict = {
        "catalog_path": [str, os.PathLike, None],
        "lab_min_count": [Interval(Integral, 1, None, closed="left")],
        # strictly below 1, so an imputed value sits below the limit of detection
        "censor_fraction": [Interval(Real, 0, 1, closed="neither")],
        "normalize_labs": ["boolean"],
    }

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

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: pd.DataFrame, y: Any = None) -> "PanelFeatures":
        """Learn zero floors, lab shifts and training ranges from a clean panel."""
        panel = _require_frame(X)
        self.catalog_ = load_catalog(self.catalog_path)
        numeric = self.catalog_.numeric_markers

        names = [m.name for m in numeric]
        values = pd.DataFrame(_numeric_values(panel, numeric), columns=names, index=panel.index)
        self.training_range_ = {name: (float(values[name].min()), float(values[name].max())) for name in names}
        imputed = self._impute_censored(values.to_numpy(), _censored_flags(panel, numeric))
        log_columns = [m.name for m in numeric if m.transform == "log"]
        self.log_ = FlooredLog(floor_fraction=ZERO_FLOOR_FRACTION).fit(
            pd.DataFrame(imputed, columns=names, index=panel.index)[log_columns]
        )
        self.zero_floor_ = dict(zip(log_columns, map(float, self.log_.floor_)))

        labs = lab_ids(panel, self.catalog_)
        self.known_labs_ = sorted(labs.dropna().unique().tolist())
        drifting = [m.name for m in numeric if m.drifts]
        self.lab_shifts_ = (
            _learn_lab_shifts(pd.DataFrame(self._scale(imputed), columns=names, index=panel.index)[drifting], labs,
                              int(self.lab_min_count))
            if self.normalize_labs and drifting
            else {}
        )
        self.feature_markers_ = self._build_feature_markers()
        return self

    def _impute_censored(self, values: np.ndarray, censored: np.ndarray) -> np.ndarray:
        # A "<x" cell is informative (below detection), so it gets a value below x rather than NaN.
        return np.where(censored, values * self.censor_fraction, values)

    def _scale(self, imputed: np.ndarray) -> np.ndarray:
        """Log (with zero floor) for ``transform: log`` markers (numeric-marker columns); others pass through."""
        scaled = imputed.copy(order="K")
        log_columns = list(self.log_.feature_names_in_)
        if log_columns:
            names = [m.name for m in self.catalog_.numeric_markers]
            positions = [names.index(name) for name in log_columns]
            if np.isinf(imputed).any():  # what FlooredLog.transform's own check refuses
                raise ValueError("Input contains infinity")
            # the columns FlooredLog was fitted on, in its order: no frame to build and check again
            scaled[:, positions] = self.log_._log(imputed[:, positions])
        return scaled

    def _build_feature_markers(self) -> dict[str, tuple[str, ...]]:
        catalog = self.catalog_
        mapping: dict[str, tuple[str, ...]] = {}
        for marker in catalog.numeric_markers:
            mapping[marker.name] = (marker.name,)
            if marker.censorable:
                mapping[censored_column(marker.name)] = (marker.name,)
        for marker in catalog.categorical_markers:
            for feature, _ in _category_features(marker):
                mapping[feature] = (marker.name,)
        for interaction in catalog.interactions:
            mapping[interaction.name] = tuple(interaction.when)
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
        scaled = self._scaled_markers(panel, _censored_flags(panel, numeric))
        return pd.DataFrame(scaled, index=panel.index, columns=[m.name for m in numeric])

    def with_lab_shifts(self, shifts: dict[str, dict[str, float]]) -> "PanelFeatures":
        """A copy that also normalizes these labs (lab -> marker -> log offset); learns nothing.

        Used to score a batch from a lab never seen in training, with offsets estimated
        from that batch (:meth:`rifml.pipeline.ImmuneProfiler.lab_adaptation`).
        """
        check_is_fitted(self)
        adapted = copy.copy(self)
        adapted.lab_shifts_ = {**self.lab_shifts_, **shifts}
        return adapted

    def _scaled_markers(self, panel: pd.DataFrame, censored: np.ndarray) -> np.ndarray:
        numeric = self.catalog_.numeric_markers
        scaled = self._scale(self._impute_censored(_numeric_values(panel, numeric), censored))
        if self.lab_shifts_:
            lab_codes, labs = pd.factorize(lab_ids(panel, self.catalog_))  # missing lab -> -1
            names = [m.name for m in numeric]
            for marker in sorted({m for shifts in self.lab_shifts_.values() for m in shifts}):
                # labs unknown at fit, or too small to trust, get no shift (`flags` reports them);
                # the extra last entry is what code -1 (no lab) reads
                per_lab = [self.lab_shifts_.get(lab, {}).get(marker, 0.0) for lab in labs] + [0.0]
                scaled[:, names.index(marker)] -= np.asarray(per_lab, dtype=np.float64)[lab_codes]
        return scaled

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        """Features for a clean panel; learns nothing."""
        check_is_fitted(self)
        panel = _require_frame(X)
        catalog = self.catalog_
        numeric = catalog.numeric_markers
        censored = _censored_flags(panel, numeric)
        markers = self._scaled_markers(panel, censored)

        out: dict[str, np.ndarray] = {}
        for i, marker in enumerate(numeric):
            out[marker.name] = markers[:, i]
            if marker.censorable:
                out[censored_column(marker.name)] = np.where(np.isnan(markers[:, i]), np.nan, censored[:, i])
        codes = {m.name: _category_codes(panel, m) for m in catalog.categorical_markers}
        for marker in catalog.categorical_markers:
            for feature, category in _category_features(marker):
                out[feature] = _indicator(codes[marker.name], marker, category)
        for interaction in catalog.interactions:
            parts = [_indicator(codes[name], catalog.by_name[name], category) for name, category in interaction.when.items()]
            # product of 1/0 indicators is 1 only when every part holds; NaN if any part is missing
            out[interaction.name] = np.prod(parts, axis=0)
        measured = measured_markers(panel, catalog)
        for compartment, present in compartments_measured(measured, catalog).items():
            out[f"{MISSING_PREFIX}{compartment}"] = (~present).astype(np.float64)
        names = list(self.feature_markers_)
        # Feature-major storage: the frame's array is then (rows, features) in Fortran order,
        # whose transpose is what the scoring kernels read, without a copy.
        by_feature = np.vstack([out[name] for name in names]).astype(np.float64, copy=False)
        return pd.DataFrame(by_feature.T, index=panel.index, columns=names, copy=False)

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
        [min, max] seen at fit) and ``out_of_range_markers`` (";"-joined marker names, categorical).
        A censored "<x" cell is outside only when x is below the training minimum.
        """
        check_is_fitted(self)
        panel = _require_frame(panel_df)
        numeric = self.catalog_.numeric_markers
        values = _numeric_values(panel, numeric)
        censored = _censored_flags(panel, numeric)
        low, high = np.array([self.training_range_[m.name] for m in numeric], dtype=np.float64).reshape(-1, 2).T
        exact_outside = (values < low) | (values > high)
        censored_outside = values < low  # "<x" is inside when training also saw values (or limits) down to x
        never_seen = np.isnan(low)  # never measured at fit: any value is outside what the model saw
        outside = ~np.isnan(values) & (never_seen | np.where(censored, censored_outside, exact_outside))
        # One ";"-joined name list per distinct pattern of outside markers, not per row.
        patterns, which = _distinct_rows(outside)
        marker_names = np.array([m.name for m in numeric], dtype=object)
        joined = np.array([";".join(marker_names[p]) for p in patterns], dtype=object)
        return pd.DataFrame(
            {
                contract.UNKNOWN_LAB: ~lab_ids(panel, self.catalog_).isin(self.known_labs_),
                contract.OUTSIDE_TRAINING_RANGE: outside.any(axis=1),
                contract.OUT_OF_RANGE_MARKERS: pd.Series(pd.Categorical.from_codes(which, categories=joined), index=panel.index),
            },
            index=panel.index,
        )


def _distinct_rows(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of a bool matrix, and each row's index into them.

    np.unique(axis=0) compares rows as opaque bytes and is ~100x slower; packing each
    row into 64-bit words and sorting those keys is not.
    """
    packed = np.packbits(mask, axis=1)
    width = -(-packed.shape[1] // 8) * 8
    keys = np.ascontiguousarray(np.pad(packed, ((0, 0), (0, width - packed.shape[1])))).view(">u8")
    order = np.lexsort(keys.T[::-1])
    ordered = keys[order]
    starts = np.r_[True, (ordered[1:] != ordered[:-1]).any(axis=1)] if len(mask) else np.zeros(0, bool)
    which = np.empty(len(mask), dtype=np.int64)
    which[order] = np.cumsum(starts) - 1
    return mask[order[starts]], which


def _indicator(codes: np.ndarray, marker: Marker, category: str) -> np.ndarray:
    """1/0 for "is this category", NaN where the marker is missing (codes of :func:`_category_codes`)."""
    return np.where(codes >= 0, codes == list(marker.categories or {}).index(category), np.nan)
