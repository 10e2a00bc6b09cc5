"""The fitted whole: features -> subtypes -> calibrated profile call -> per-marker explanation.

``ImmuneProfiler`` is what training fits and what MLflow stores as one model;
scoring, serving and Spark all run its ``call`` method on validated panels.
Pure core: no file, network or MLflow access here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from threadpoolctl import threadpool_limits
from sklearn.utils.validation import check_is_fitted

from rifml.catalog import Catalog
from rifml.errors import RifmlInputError
from rifml.explain import InterventionalExplainer, check_tree_settings, marker_contributions, top_drivers
from rifml.features import PanelFeatures, band_position, compartment_names, measured_markers
from rifml.model import CalibratedBoostedClassifier
from rifml.subtypes import ConsensusClustering, name_clusters

N_DRIVERS = 3
# Probabilities and contributions are reported to 6 decimals: calibration and SHAP carry no
# meaning beyond that, and shorter numbers make large calls files faster to write and read.
# Rounding here, once, keeps the CLI, REST and Spark answers identical.
REPORTED_DECIMALS = 6
BOTH = "blood+endometrium"


def mask_compartment(panel: pd.DataFrame, catalog: Catalog, compartment: str) -> pd.DataFrame:
    """A copy of the panel as if one compartment had not been measured (for partial-panel training)."""
    masked = panel.copy()
    for marker in catalog.compartment_markers(compartment):
        if marker.name in masked:  # all missing, same dtype (a categorical stays categorical)
            masked[marker.name] = masked[marker.name].where(np.zeros(len(masked), dtype=bool))
        flag = f"{marker.name}__censored"
        if flag in masked:
            masked[flag] = False
    return masked


def profile_columns(catalog: Catalog) -> list[str]:
    return [f"prob_{p}" for p in catalog.profiles]


def calls_columns(catalog: Catalog) -> list[str]:
    """The calls-file contract (design.md), then rifml's extra columns."""
    drivers = [c for k in range(1, N_DRIVERS + 1) for c in (f"driver_{k}", f"driver_{k}_contribution")]
    return [
        catalog.id_column,
        "immune_profile",
        *profile_columns(catalog),
        "subtype",
        *drivers,
        "compartments",
        "subtype_profile",
        "unknown_lab",
        "outside_training_range",
        "out_of_range_markers",
        *[m.flag_at_or_above.flag for m in catalog.markers if m.flag_at_or_above],
    ]


class ImmuneProfiler(BaseEstimator):
    """Learn immune subtypes and profile calls from clean panels; call and explain new ones.

    Parameters
    ----------
    catalog_path : str, optional
        Marker catalog (default configs/markers.yaml); the fitted model carries it.
    n_estimators, num_leaves, learning_rate, min_child_samples :
        Settings of both boosted classifiers.
    subtype_trees : int
        Trees per class of the subtype-assignment model (it only picks the nearest named
        subtype, and scoring routes every row through all of its trees).
    k_min, k_max, n_resamples, subsample :
        Consensus clustering settings for subtype discovery.
    background_size : int
        Reference rows for explanations (balanced, within-band panels).
    random_state : int
    n_jobs : int

    Attributes
    ----------
    features_ : PanelFeatures
    clustering_ : ConsensusClustering
    subtype_table_ : DataFrame
        Per cluster: subtype name, profile, abnormal markers, size.
    subtype_model_ : CalibratedBoostedClassifier
        Assigns a subtype to any panel, partial ones included.
    profile_model_ : CalibratedBoostedClassifier
        The profile call (four classes).
    explainer_ : InterventionalExplainer
    subtype_router_ : InterventionalExplainer
        The subtype model's trees, compiled for fast routing.
    supervised_ : bool
        True when trained on a label column, False when profiles came from named clusters.
    training_labels_ : ndarray
        Labels the profile model was trained on (aligned with ``training_rows_``).
    """

    def __init__(
        self,
        catalog_path: str | None = None,
        n_estimators: int = 100,
        num_leaves: int = 8,
        learning_rate: float = 0.08,
        min_child_samples: int = 20,
        subtype_trees: int = 40,
        k_min: int = 2,
        k_max: int = 8,
        n_resamples: int = 30,
        subsample: float = 0.8,
        background_size: int = 200,
        random_state: int = 0,
        n_jobs: int = 1,
    ):
        self.catalog_path = catalog_path
        self.n_estimators = n_estimators
        self.num_leaves = num_leaves
        self.learning_rate = learning_rate
        self.min_child_samples = min_child_samples
        self.subtype_trees = subtype_trees
        self.k_min = k_min
        self.k_max = k_max
        self.n_resamples = n_resamples
        self.subsample = subsample
        self.background_size = background_size
        self.random_state = random_state
        self.n_jobs = n_jobs

    # -- fit -----------------------------------------------------------------------
    def _classifier(self, classes: list[str] | None = None, n_estimators: int | None = None) -> CalibratedBoostedClassifier:
        n_estimators = n_estimators or self.n_estimators
        return CalibratedBoostedClassifier(
            n_estimators=n_estimators,
            num_leaves=self.num_leaves,
            # fewer trees learn at a proportionally higher rate
            learning_rate=min(self.learning_rate * self.n_estimators / n_estimators, 0.5),
            min_child_samples=self.min_child_samples,
            classes=classes,
            random_state=self.random_state,
            n_jobs=self.n_jobs,
        )

    def fit(self, panel: pd.DataFrame, y: pd.Series | None = None) -> "ImmuneProfiler":
        """Fit on a clean panel; ``y`` (profile labels, NaN for unlabeled rows) is optional."""
        self.features_ = PanelFeatures(catalog_path=self.catalog_path).fit(panel)
        check_tree_settings(self.num_leaves, len(self.features_.get_feature_names_out()))  # before any booster fit
        catalog = self.catalog_
        coverage = self.features_.compartments(panel)
        complete = panel.loc[(coverage == BOTH).to_numpy()]
        if len(complete) < 30:
            raise RifmlInputError(f"subtype discovery needs at least 30 complete panels (blood and biopsy), got {len(complete)}")

        self._discover_subtypes(complete)
        subtypes = self.subtype_table_.set_index("cluster")
        cluster_subtype = subtypes["subtype"].to_numpy(dtype=object)[self.clustering_.labels_]
        cluster_profile = subtypes["profile"].to_numpy(dtype=object)[self.clustering_.labels_]

        augmented, groups = self._with_partial_copies(complete)
        X_aug = self.features_.transform(augmented)
        repeat = len(augmented) // len(complete)
        self.subtype_model_ = self._classifier(list(subtypes["subtype"]), self.subtype_trees).fit(
            X_aug, np.tile(cluster_subtype, repeat), groups=groups
        )

        self.supervised_ = y is not None and pd.Series(y).notna().any()
        if self.supervised_:
            labels = pd.Series(np.asarray(y, dtype=object), index=panel.index)
            labeled = labels.notna().to_numpy()
            X_train = self.features_.transform(panel.loc[labeled])
            self.training_labels_ = labels[labeled].to_numpy(dtype=object)
            self.training_coverage_ = coverage[labeled].to_numpy(dtype=object)
            self.profile_model_ = self._classifier(list(catalog.profiles)).fit(X_train, self.training_labels_)
            background_pool = panel.loc[labeled & (labels == "balanced").to_numpy() & (coverage == BOTH).to_numpy()]
        else:
            X_train = X_aug
            self.training_labels_ = np.tile(cluster_profile, repeat)
            self.training_coverage_ = self.features_.compartments(augmented).to_numpy(dtype=object)
            self.profile_model_ = self._classifier(list(catalog.profiles)).fit(X_train, self.training_labels_, groups=groups)
            background_pool = complete.loc[cluster_profile == "balanced"]

        self.background_ = self._background(background_pool, complete)
        self.explainer_ = InterventionalExplainer(self.profile_model_.booster_, self.background_)
        # Only its compiled routing is used (subtype margins at scoring); far faster than LightGBM's predict.
        self.subtype_router_ = InterventionalExplainer(self.subtype_model_.booster_, self.background_)
        self.feature_names_ = list(self.features_.get_feature_names_out())
        return self

    @property
    def catalog_(self) -> Catalog:
        return self.features_.catalog_

    def _clustering_markers(self) -> list[str]:
        """Markers whose out-of-band values signal a profile: what subtypes are made of."""
        return [m.name for m in self.catalog_.numeric_markers if m.signals]

    def _discover_subtypes(self, complete: pd.DataFrame) -> None:
        markers = self._clustering_markers()
        matrix = self.features_.marker_matrix(complete)[markers]
        matrix = matrix.fillna(matrix.median())
        clustering = ConsensusClustering(
            k_min=self.k_min,
            k_max=self.k_max,
            n_resamples=self.n_resamples,
            subsample=self.subsample,
            random_state=self.random_state,
        )
        # Hundreds of small KMeans fits: OpenMP threads on 2 shared cores make each ~30x slower.
        with threadpool_limits(limits=1):
            self.clustering_ = clustering.fit(matrix.to_numpy())
        numeric = [m.name for m in self.catalog_.numeric_markers]
        medians = complete.reindex(columns=numeric).groupby(self.clustering_.labels_).median()
        table = name_clusters(medians, self.catalog_)
        sizes = pd.Series(self.clustering_.labels_).value_counts()
        self.subtype_table_ = table.assign(size=table["cluster"].map(sizes).astype(int))

    def _with_partial_copies(self, complete: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
        """Complete panels plus a copy with each compartment hidden, so partial panels get called too."""
        copies = [complete] + [mask_compartment(complete, self.catalog_, c) for c in self.catalog_.compartments]
        groups = np.tile(np.arange(len(complete)), len(copies))
        return pd.concat(copies, ignore_index=True), groups

    def _background(self, pool: pd.DataFrame, complete: pd.DataFrame) -> np.ndarray:
        """Balanced panels whose signalling markers all sit inside their reference bands."""
        signalling = self._clustering_markers()
        in_band = (band_position(pool, self.catalog_)[signalling].fillna(0) == 0).all(axis=1)
        chosen = pool.loc[in_band.to_numpy()]
        if len(chosen) < 20:  # too few textbook-balanced panels: fall back to the balanced pool, then everyone
            chosen = pool if len(pool) >= 20 else complete
        if len(chosen) > self.background_size:
            chosen = chosen.sample(self.background_size, random_state=self.random_state)
        return self.features_.transform(chosen).to_numpy(dtype=float)

    # -- call ----------------------------------------------------------------------
    def call(self, panel: pd.DataFrame, compact: bool = False) -> pd.DataFrame:
        """Calls-file rows (design.md) for clean panel rows, in input order.

        Parameters
        ----------
        panel : DataFrame
            Clean panel rows (see :mod:`rifml.validate`).
        compact : bool, default False
            Keep text columns as categoricals and Arrow-backed strings (no Python string per
            row), as batch scoring writes them; the default gives plain object columns.
        """
        check_is_fitted(self, "explainer_")
        catalog = self.catalog_
        X = self.features_.transform(panel).to_numpy(dtype=float)  # once: margins, SHAP and subtypes all read it
        # One pass of the explainer's routing (bitwise-equal to LightGBM's margins, and faster than its
        # predict) gives the margins and the SHAP values of the highest-margin class: the call.
        raw, phi = self.explainer_.margins_and_shap(X)
        margins = self.profile_model_.expand_margins(raw)
        proba = self.profile_model_.proba_from_margins(margins)
        called = margins.argmax(axis=1)  # = argmax of proba (temperature scaling keeps the order)
        contributions = self._per_marker(self._signed(phi, called))
        measured = measured_markers(panel, catalog)
        drivers = top_drivers(contributions, measured, k=N_DRIVERS)
        subtype_margins = self.subtype_model_.expand_margins(self.subtype_router_.margins(X))
        subtype_index = subtype_margins.argmax(axis=1)
        subtype_profiles = self.subtype_table_.set_index("subtype")["profile"].reindex(self.subtype_model_.classes_)
        profile_names = list(dict.fromkeys(subtype_profiles))
        flags = self.features_.flags(panel)

        # Built as one dict in contract order, then one frame: no per-column inserts or reorder copy.
        # Names are categoricals (codes into a few labels): no Python string per row.
        columns: dict[str, object] = {
            catalog.id_column: panel[catalog.id_column].array,
            "immune_profile": pd.Categorical.from_codes(called, categories=list(catalog.profiles)),
            **{column: np.round(proba[:, j], REPORTED_DECIMALS) for j, column in enumerate(profile_columns(catalog))},
            "subtype": pd.Categorical.from_codes(subtype_index, categories=list(self.subtype_model_.classes_)),
        }
        for column in drivers.columns:
            if column.endswith("_contribution"):
                columns[column] = np.round(drivers[column].to_numpy(), REPORTED_DECIMALS)
            else:
                columns[column] = drivers[column].array
        columns["compartments"] = compartment_names(measured, catalog).array
        profile_code = np.array([profile_names.index(p) for p in subtype_profiles], dtype=np.int64)
        columns["subtype_profile"] = pd.Categorical.from_codes(profile_code[subtype_index], categories=profile_names)
        columns.update({column: flags[column].array for column in flags.columns})
        for marker in catalog.markers:
            if marker.flag_at_or_above and marker.name in panel:
                columns[marker.flag_at_or_above.flag] = (panel[marker.name] >= marker.flag_at_or_above.value).to_numpy()
        missing = np.full(len(panel), np.nan)
        calls = pd.DataFrame({c: columns.get(c, missing) for c in calls_columns(catalog)}, index=panel.index)
        if not compact:
            text = [c for c in calls.columns if isinstance(calls[c].dtype, (pd.CategoricalDtype, pd.StringDtype))]
            calls = calls.astype({c: object for c in text})
        extra = [c for c in panel.columns if c not in set(catalog.known_columns) and not c.endswith("__censored")]
        return pd.concat([calls, panel[extra]], axis=1) if extra else calls

    def contributions(self, X: pd.DataFrame | np.ndarray, called: np.ndarray) -> pd.DataFrame:
        """Per-marker SHAP (raw margin) of each row's called class, against the balanced background."""
        X = np.asarray(X, dtype=float)
        column = np.searchsorted(self.profile_model_.booster_classes_, called)
        phi = self.explainer_.shap_values(X, 0 if self.explainer_.n_classes_ == 1 else column)
        return self._per_marker(self._signed(phi, called))

    def _signed(self, phi: np.ndarray, called: np.ndarray) -> np.ndarray:
        """A binary booster explains the second class's margin (the first's is 0): flip it for the first."""
        if self.explainer_.n_classes_ != 1:
            return phi
        column = np.searchsorted(self.profile_model_.booster_classes_, called)
        return np.where((column == 1)[:, None], phi, -phi)

    def _per_marker(self, phi: np.ndarray) -> pd.DataFrame:
        return marker_contributions(phi, self.feature_names_, self.features_.feature_markers_, self.catalog_.marker_names)
