"""The fitted whole: features -> subtypes -> calibrated profile call -> per-marker explanation.

``ImmuneProfiler`` is what training fits and what MLflow stores as one model;
scoring, serving and Spark all run its ``call`` method on validated panels.
Pure core: no file, network or MLflow access here.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, _fit_context, clone
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from rifml import contract
from rifml.catalog import BALANCED, HYPERACTIVE, HYPOACTIVE, MIXED, Catalog
from rifml.contract import N_DRIVERS, REPORTED_DECIMALS, calls_columns, censored_column, profile_columns
from rifml.errors import RifmlInputError
from rifml.explain import InterventionalExplainer, check_tree_settings, marker_contributions, top_drivers
from rifml.features import PanelFeatures, compartment_names, complete_coverage, lab_ids, measured_markers
from rifml.labs import LabAdaptation, shrunk_median_offsets
from rifml.model import CalibratedBoostedClassifier
from rifml.subtypes import (
    ConsensusClustering,
    name_clusters,
    nearest_centre,
    profiles_from_signatures,
    refine_named_partition,
    split_by_profile,
    subtype_effects,
    subtype_signatures,
)

# Rounds of "assign panels to subtypes, then re-estimate the lab's offsets from the
# residuals": the offsets settle after two or three.
LAB_OFFSET_ROUNDS = 3
# A balanced panel is "typical" (a reference row for explanations) when every signalling
# marker lies within this many SDs of the balanced group's median: about the central 95%.
TYPICAL_SD = 2.0


# A rare profile (mixed: 2% of a Ledee-2016-like cohort) is an interaction of many markers
# that 8-leaf trees barely learn from a few dozen panels: out of fold, the label-free model
# gave complete panels that read mixed P(mixed) ~0.01, and the signature rule alone called
# them better than the model trained on it. Complete training panels are therefore weighted
# by their profile's frequency to this power (inverse square root: rare profiles are learned,
# common ones still dominate); partial panels (and the masked copies of label-free training)
# keep weight 1, so partial calls keep the cohort's proportions; the temperature is fitted on
# the weighted model's out-of-fold margins. Measured (train 2,000 / score 2,500, complete
# panels): label-free, Ledee-2016 prevalences 0.731 -> 0.777, patchy large shifts 0.739 ->
# 0.756, default 0.856 -> 0.862; with labels, Ledee-2016 0.782 -> 0.810 (ECE 0.031 -> 0.027),
# a drawn world with 2% mixed 0.614 -> 0.677, default 0.870 -> 0.869.
RARE_PROFILE_POWER = 0.5


def _rare_profile_weights(profiles: np.ndarray) -> np.ndarray:
    """Per row, its profile's frequency to the power -RARE_PROFILE_POWER, mean 1."""
    counts = pd.Series(profiles).map(pd.Series(profiles).value_counts()).to_numpy(dtype=float)
    weights = (len(profiles) / counts) ** RARE_PROFILE_POWER
    return weights / weights.mean()


def mask_compartment(panel: pd.DataFrame, catalog: Catalog, compartment: str) -> pd.DataFrame:
    """A copy of the panel as if one compartment had not been measured (for partial-panel training)."""
    masked = panel.copy()
    for marker in catalog.compartment_markers(compartment):
        if marker.name in masked:  # all missing, same dtype (a categorical stays categorical)
            masked[marker.name] = masked[marker.name].where(np.zeros(len(masked), dtype=bool))
        flag = censored_column(marker.name)
        if flag in masked:
            masked[flag] = False
    return masked


# SHAP values plus the expected value must give the margin (shap checks this on every call
# too): float64 sums over a few hundred trees agree far below this.
ADDITIVITY_TOLERANCE = 1e-6


def _check_additivity(raw: np.ndarray, phi: np.ndarray, expected: np.ndarray) -> None:
    """Fail loudly when explanations do not add up to the margins they explain (a bug, never bad input)."""
    raw = raw.reshape(len(raw), -1)
    column = raw.argmax(axis=1)  # the explained output: the highest margin (the only one, for a binary booster)
    gap = np.abs(phi.sum(axis=1) + expected[column] - raw[np.arange(len(raw)), column])
    if len(gap) and gap.max() > ADDITIVITY_TOLERANCE:
        raise RuntimeError(
            f"SHAP additivity failed: contributions miss the margin by up to {gap.max():.2e} "
            f"(row {int(gap.argmax())} of the chunk); the explainer does not match the model"
        )


@dataclass
class CallScores:
    """What the compiled kernel gives for a chunk's features (:meth:`ImmuneProfiler.call_scores`).

    Attributes
    ----------
    raw : ndarray (n, booster outputs)
        The profile booster's raw margins.
    phi : ndarray (n, features)
        SHAP values of each row's highest-margin class.
    subtype_margins : ndarray (n, subtype booster outputs)
        The subtype booster's raw margins.
    """

    raw: np.ndarray
    phi: np.ndarray
    subtype_margins: np.ndarray


def _sized_classifier(template: CalibratedBoostedClassifier, classes: list[str],
                      n_estimators: int | None = None) -> CalibratedBoostedClassifier:
    """A clone of the classifier template for ``classes``; with fewer trees, a proportionally higher rate."""
    trees = template.n_estimators if n_estimators is None else n_estimators
    return clone(template).set_params(
        classes=classes,
        n_estimators=trees,
        learning_rate=min(template.learning_rate * template.n_estimators / trees, 0.5),
    )


class ImmuneProfiler(BaseEstimator):
    """Learn immune subtypes and profile calls from clean panels; call and explain new ones.

    Its parts are estimators given as parameters, as in scikit-learn's ``Pipeline``: ``fit``
    clones them, so every setting is one parameter (``get_params(deep=True)`` lists them all,
    e.g. ``classifier__num_leaves``) and the templates stay unfitted.

    Parameters
    ----------
    features : PanelFeatures, optional
        Turns panels into model features; its ``catalog_path`` names the marker catalog the
        fitted model carries. Default ``PanelFeatures(lab_min_count=lab_min_panels)``.
    clustering : ConsensusClustering, optional
        Subtype discovery on complete panels. Default ``ConsensusClustering(n_resamples=30,
        random_state=random_state)``.
    classifier : CalibratedBoostedClassifier, optional
        Template of both boosted classifiers: the profile call as given, the subtype model
        with ``subtype_trees`` trees. Its ``classes`` are set here (profiles, subtypes).
        Default ``CalibratedBoostedClassifier(random_state=random_state)``.
    subtype_trees : int
        Trees per class of the subtype-assignment model (it only picks the nearest named
        subtype, and scoring routes every row through all of its trees); it learns at the
        classifier's rate scaled by ``classifier.n_estimators / subtype_trees`` (at most 0.5).
    refine : {"gaussian", "none"}
        Whether the partition (consensus KMeans, then the cuts of
        :func:`rifml.subtypes.split_by_profile`) is refined before its final naming:
        clusters of the same name merged, then a diagonal Gaussian mixture with one spread
        per cluster and marker (:func:`rifml.subtypes.refine_named_partition`), or KMeans'
        round clusters kept as they are.
    min_variance : float
        Floor of every cluster's variance per marker in that mixture, in squared
        within-group SDs of the clustering's scaled space.
    min_effect : float
        Effect (within-cluster SDs against the cohort's reference level; the norm of an
        axis's markers' effects) from which an axis names a subtype (see
        :func:`rifml.subtypes.name_clusters`).
    signature_reading : {"mean", "patchy"}
        How label-free training reads a panel against each subtype's signature
        (:func:`rifml.subtypes.subtype_signatures`): the mean of its signed deviations, or
        marker by marker as a mix of shifted and unshifted panels learned in the cluster.
    lab_min_panels : int
        Complete panels a lab needs, in training or in a scored batch, before its assay
        offsets are estimated from the data (fewer: flagged, not normalized).
    background_size : int
        Reference rows for explanations (typical panels of the balanced group).
    random_state : int
        Draws the explanation background, and seeds the default parts.

    Attributes
    ----------
    features_ : PanelFeatures
    clustering_ : ConsensusClustering
    subtype_table_ : DataFrame
        Per cluster: subtype name, profile, abnormal markers, the effect sizes behind
        the name (``evidence``), whether it is the cluster nearest the reference level, size.
    reference_ : SubtypeEffects
        The cohort's own reference level per marker and the within-cluster scale that
        effect sizes and signatures are measured in.
    subtype_effects_ : DataFrame
        Effect size of every cluster on every clustering marker against the reference level.
    cluster_medians_ : DataFrame
        Per cluster, the median of every numeric marker (log, lab-normalized): what lab
        offsets are measured against.
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

    _parameter_constraints: dict = {
        "features": [PanelFeatures, None],
        "clustering": [ConsensusClustering, None],
        "classifier": [CalibratedBoostedClassifier, None],
        "subtype_trees": [Interval(Integral, 1, None, closed="left")],
        "refine": [StrOptions({"gaussian", "none"})],
        "min_variance": [Interval(Real, 0, None, closed="neither")],
        "min_effect": [Interval(Real, 0, None, closed="neither")],
        "signature_reading": [StrOptions({"mean", "patchy"})],
        "lab_min_panels": [Interval(Integral, 1, None, closed="left")],
        "background_size": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        features: PanelFeatures | None = None,
        clustering: ConsensusClustering | None = None,
        classifier: CalibratedBoostedClassifier | None = None,
        subtype_trees: int = 40,
        refine: str = "gaussian",
        min_variance: float = 1.0,
        min_effect: float = 1.5,
        signature_reading: str = "mean",
        lab_min_panels: int = 30,
        background_size: int = 200,
        random_state: int = 0,
    ):
        self.features = features
        self.clustering = clustering
        self.classifier = classifier
        self.subtype_trees = subtype_trees
        self.refine = refine
        self.min_variance = min_variance
        self.min_effect = min_effect
        self.signature_reading = signature_reading
        self.lab_min_panels = lab_min_panels
        self.background_size = background_size
        self.random_state = random_state

    # -- fit -----------------------------------------------------------------------
    def _parts(self) -> tuple[PanelFeatures, ConsensusClustering, CalibratedBoostedClassifier]:
        """Unfitted clones of the parts (defaults where a part is None)."""
        return (
            clone(self.features) if self.features is not None else PanelFeatures(lab_min_count=self.lab_min_panels),
            clone(self.clustering) if self.clustering is not None else ConsensusClustering(
                n_resamples=30, random_state=self.random_state),
            clone(self.classifier) if self.classifier is not None else CalibratedBoostedClassifier(
                random_state=self.random_state),
        )

    @_fit_context(prefer_skip_nested_validation=False)  # the parts validate their own parameters as they fit
    def fit(self, panel: pd.DataFrame, y: pd.Series | None = None) -> "ImmuneProfiler":
        """Fit on a clean panel; ``y`` (profile labels, NaN for unlabeled rows) is optional."""
        features, clustering, classifier = self._parts()
        self.features_ = features.fit(panel)
        # before any booster fit: a tree setting the explainer cannot take fails in a second, not after training
        check_tree_settings(classifier.num_leaves, len(self.features_.get_feature_names_out()))
        for part in (clustering, classifier):  # their fits validate too, but only after minutes of work
            part._validate_params()
        catalog = self.catalog_
        coverage = self.features_.compartments(panel)
        complete = panel.loc[(coverage == complete_coverage(catalog)).to_numpy()]
        if len(complete) < 30:
            raise RifmlInputError(f"subtype discovery needs at least 30 complete panels (blood and biopsy), got {len(complete)}")

        self._discover_subtypes(complete, clustering)
        subtypes = self.subtype_table_.set_index("cluster")
        cluster_subtype = subtypes["subtype"].to_numpy(dtype=object)[self.subtype_labels_]

        augmented, groups = self._with_partial_copies(complete)
        X_aug = self.features_.transform(augmented)
        repeat = len(augmented) // len(complete)
        self.subtype_model_ = _sized_classifier(classifier, list(subtypes["subtype"]), self.subtype_trees).fit(
            X_aug, np.tile(cluster_subtype, repeat), groups=groups
        )

        self.supervised_ = y is not None and pd.Series(y).notna().any()
        if self.supervised_:
            labels = pd.Series(np.asarray(y, dtype=object), index=panel.index)
            labeled = labels.notna().to_numpy()
            X_train = self.features_.transform(panel.loc[labeled])
            self.training_labels_ = labels[labeled].to_numpy(dtype=object)
            self.training_coverage_ = coverage[labeled].to_numpy(dtype=object)
            self.profile_model_ = _sized_classifier(classifier, list(catalog.profiles)).fit(
                X_train, self.training_labels_, sample_weight=self._profile_weights()
            )
            background_pool = panel.loc[labeled & (labels == BALANCED).to_numpy() & (coverage == complete_coverage(catalog)).to_numpy()]
        else:
            found = sorted(set(self.signature_profiles_))
            if len(found) < 2:
                raise RifmlInputError(
                    f"without labels, every panel reads as {found[0]} (subtypes found: "
                    f"{', '.join(self.subtype_table_['subtype'])}): there is no profile call to learn; "
                    "train with a label column, or on a larger or more varied cohort"
                )
            X_train = X_aug
            self.training_labels_ = np.tile(self.signature_profiles_, repeat)
            self.training_coverage_ = self.features_.compartments(augmented).to_numpy(dtype=object)
            self.profile_model_ = _sized_classifier(classifier, list(catalog.profiles)).fit(
                X_train, self.training_labels_, sample_weight=self._profile_weights(), groups=groups
            )
            background_pool = complete.loc[self.signature_profiles_ == BALANCED]

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

    def _discover_subtypes(self, complete: pd.DataFrame, clustering: ConsensusClustering) -> None:
        """Cluster complete panels, align the training labs on the clusters, name the clusters."""
        markers = self._clustering_markers()
        matrix = self.features_.marker_matrix(complete)
        self.cluster_fill_ = matrix[markers].median()
        # Hundreds of small KMeans fits: OpenMP threads on 2 shared cores make each ~30x slower.
        with threadpool_limits(limits=1):
            self.clustering_ = clustering.fit(matrix[markers].fillna(self.cluster_fill_).to_numpy())
        labels = self.clustering_.labels_

        # Lab offsets measured within subtypes (robust to each lab's case mix), on top of the
        # catalog-hinted ones PanelFeatures learned; then everything below uses aligned values.
        labs = lab_ids(complete, self.catalog_)
        offsets = self._lab_offsets(
            matrix, labs, measured_markers(complete, self.catalog_)[list(matrix.columns)], lambda aligned: labels,
            lambda aligned: aligned.groupby(labels).median(),
        )
        shifts = {lab: dict(per) for lab, per in self.features_.lab_shifts_.items()}
        for lab, per_marker in offsets.items():
            for marker, offset in per_marker.items():
                shifts.setdefault(lab, {})[marker] = shifts.get(lab, {}).get(marker, 0.0) + offset
        self.features_.lab_shifts_ = shifts
        matrix = self.features_.marker_matrix(complete)
        self.cluster_fill_ = matrix[markers].median()
        filled = matrix[markers].fillna(self.cluster_fill_)
        scaled = self._scaled(filled)

        # Cuts are judged, and the refined clusters named, against the consensus partition's reference.
        consensus_reference = subtype_effects(filled, labels)

        def profiles_of(candidate: np.ndarray) -> np.ndarray:
            effects = consensus_reference.against(filled, candidate).effects
            return name_clusters(effects, self.catalog_, min_effect=self.min_effect)["profile"].to_numpy()

        with threadpool_limits(limits=1):
            labels = split_by_profile(scaled, labels, profiles_of, self.clustering_.k_max, self.random_state)
        if self.refine == "gaussian":
            # After the cuts, not before: a cut piece rejoins the cluster of its name, and the mixture's
            # wide clusters are not cut again into weak one-marker subtypes (benchmarks/RESULTS.md).
            named = name_clusters(consensus_reference.against(filled, labels).effects, self.catalog_,
                                  min_effect=self.min_effect)
            labels = refine_named_partition(scaled, labels, named["parts"].to_numpy(), self.min_variance)
        self.subtype_labels_ = labels
        self.subtype_centers_ = np.vstack([scaled[labels == c].mean(axis=0) for c in range(labels.max() + 1)])
        self.cluster_medians_ = matrix.groupby(labels).median()

        self.reference_ = consensus_reference.against(filled, labels)
        self.subtype_effects_ = self.reference_.effects
        table = name_clusters(self.subtype_effects_, self.catalog_, min_effect=self.min_effect)
        deviations = self.reference_.deviations(filled)
        self.signatures_ = subtype_signatures(table, self.subtype_effects_, deviations, labels, self.catalog_,
                                              reading=self.signature_reading)
        # Label-free training reads each panel's profile from the signatures it shows.
        self.signature_profiles_ = profiles_from_signatures(deviations, self.signatures_)
        sizes = pd.Series(labels).value_counts()
        self.subtype_table_ = table.assign(
            reference=table["cluster"] == self.reference_.nearest,
            size=table["cluster"].map(sizes).astype(int),
        )

    def _profile_weights(self) -> np.ndarray:
        """Training weights of the profile model: complete panels by :func:`_rare_profile_weights`, the rest 1."""
        weights = np.ones(len(self.training_labels_))
        complete = self.training_coverage_ == complete_coverage(self.catalog_)
        if complete.any():
            weights[complete] = _rare_profile_weights(self.training_labels_[complete])
        return weights

    def _scaled(self, filled: pd.DataFrame) -> np.ndarray:
        """Clustering markers in the space the consensus clustering measured distances in."""
        return (filled.to_numpy(dtype=float) - self.clustering_.center_) / self.clustering_.scale_

    def _nearest_subtype(self, filled: pd.DataFrame) -> np.ndarray:
        """The training cluster whose centre is nearest (what KMeans would assign)."""
        return nearest_centre(self._scaled(filled), self.subtype_centers_)

    def _lab_offsets(self, matrix, labs, usable, assign, medians) -> dict[str, dict[str, float]]:
        """Offsets per lab and marker: median residual of its panels against their subtype's median.

        ``matrix`` holds the panels' log values with no offset for these labs yet; each
        round subtracts the current offsets, lets ``assign`` place the aligned panels in
        subtypes and ``medians`` give the subtypes' medians, and re-estimates.
        """
        offsets: dict[str, dict[str, float]] = {}
        columns = list(matrix.columns)
        codes, names = pd.factorize(labs)
        for _ in range(LAB_OFFSET_ROUNDS):
            table = np.array([[offsets.get(str(lab), {}).get(c, 0.0) for c in columns] for lab in names] + [[0.0] * len(columns)])
            aligned = matrix - table[codes]  # code -1 (no lab) reads the last, all-zero row
            which = np.asarray(assign(aligned))
            residuals = matrix - medians(aligned).loc[which].to_numpy()
            offsets = shrunk_median_offsets(residuals, labs, usable, self.lab_min_panels)
        return offsets

    def lab_adaptation(self, panel: pd.DataFrame) -> LabAdaptation:
        """Offsets for labs never seen in training, estimated from their complete panels in ``panel``.

        Only labs with at least ``lab_min_panels`` complete panels in ``panel`` are adapted; the
        rest are flagged ``unknown_lab`` and called on raw values. Row order does not matter.
        Pass the whole batch (the CLI reads the file once for this), so the calls of a
        file do not depend on how it is chunked.
        """
        check_is_fitted(self, "cluster_medians_")
        labs = lab_ids(panel, self.catalog_)
        unknown = labs.notna().to_numpy() & ~labs.isin(self.features_.known_labs_).to_numpy()
        if not unknown.any():
            return LabAdaptation()
        complete = unknown & (self.features_.compartments(panel) == complete_coverage(self.catalog_)).to_numpy()
        counts = labs[complete].value_counts()
        chosen = counts[counts >= self.lab_min_panels]
        if chosen.empty:
            return LabAdaptation()
        rows = panel.loc[complete & labs.isin(chosen.index).to_numpy()]
        markers = self._clustering_markers()
        shifts = self._lab_offsets(
            self.features_.marker_matrix(rows), lab_ids(rows, self.catalog_), measured_markers(rows, self.catalog_)[list(self.cluster_medians_.columns)],
            lambda aligned: self._nearest_subtype(aligned[markers].fillna(self.cluster_fill_)),
            lambda aligned: self.cluster_medians_,
        )
        return LabAdaptation({lab: shifts.get(str(lab), {}) for lab in chosen.index},
                             {str(lab): int(n) for lab, n in chosen.items()})

    def _with_partial_copies(self, complete: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
        """Complete panels plus a copy with each compartment hidden, so partial panels get called too."""
        copies = [complete] + [mask_compartment(complete, self.catalog_, c) for c in self.catalog_.compartments]
        groups = np.tile(np.arange(len(complete)), len(copies))
        return pd.concat(copies, ignore_index=True), groups

    def _background(self, pool: pd.DataFrame, complete: pd.DataFrame) -> np.ndarray:
        """Typical balanced panels: every signalling marker within ``TYPICAL_SD`` SDs of the pool's median.

        Judged against the balanced group itself, not the literature bands, so an assay
        that reads a marker high for everybody does not empty the reference.
        """
        if len(pool) >= 20:
            markers = self._clustering_markers()
            values = self.features_.marker_matrix(pool)[markers]
            scale = values.quantile(0.75) - values.quantile(0.25)
            spread = (values - values.median()).abs() / (scale / 1.349).where(scale > 0, 1.0)
            typical = pool.loc[(spread.fillna(0) <= TYPICAL_SD).all(axis=1).to_numpy()]
            chosen = typical if len(typical) >= 20 else pool
        else:  # too few balanced panels to learn from: everyone complete
            chosen = complete
        if len(chosen) > self.background_size:
            chosen = chosen.sample(self.background_size, random_state=self.random_state)
        return self.features_.transform(chosen).to_numpy(dtype=float)

    # -- call ----------------------------------------------------------------------
    def call(self, panel: pd.DataFrame, compact: bool = False, labs: LabAdaptation | None = None) -> pd.DataFrame:
        """Calls-file rows (design.md) for clean panel rows, in input order.

        The composition of three stages that batch scoring runs in three threads, a chunk
        apart: :meth:`call_features` (lab offsets, features), :meth:`call_scores` (the
        compiled kernel: margins, SHAP, subtype margins) and :meth:`calls_frame` (probabilities,
        drivers, subtypes, flags, the frame).

        Parameters
        ----------
        panel : DataFrame
            Clean panel rows (see :mod:`rifml.validate`).
        compact : bool, default False
            Keep text columns as categoricals and Arrow-backed strings (no Python string per
            row), as batch scoring writes them; the default gives plain object columns.
        labs : LabAdaptation, optional
            Offsets for labs unseen in training, from :meth:`lab_adaptation` on the whole
            batch; by default estimated from ``panel`` itself (``panel`` is the batch).
        """
        check_is_fitted(self, "explainer_")
        labs = self.lab_adaptation(panel) if labs is None else labs
        return self.calls_frame(panel, self.call_scores(self.call_features(panel, labs)), labs, compact)

    def call_features(self, panel: pd.DataFrame, labs: LabAdaptation) -> np.ndarray:
        """The features (rows, features) every model of the call reads, ``labs``' offsets applied (first stage)."""
        check_is_fitted(self, "explainer_")
        features = self.features_.with_lab_shifts(labs.shifts) if labs.shifts else self.features_
        return features.transform(panel).to_numpy(dtype=float)

    def call_scores(self, X: np.ndarray) -> CallScores:
        """The compiled kernel's outputs for the features of :meth:`call_features` (second stage).

        One pass of the explainer's routing (bitwise-equal to LightGBM's margins, and faster than
        its predict) gives the margins and the SHAP values of the highest-margin class: the call;
        the subtype router's pass gives the subtype margins. No pandas here: the kernel releases
        the GIL, so the stages before and after it run beside it.
        """
        check_is_fitted(self, "explainer_")
        raw, phi = self.explainer_.margins_and_shap(X)
        return CallScores(raw, phi, self.subtype_router_.margins(X))

    def calls_frame(self, panel: pd.DataFrame, scores: CallScores, labs: LabAdaptation,
                    compact: bool = False) -> pd.DataFrame:
        """Calls-file rows from the kernel's outputs for ``panel`` (third stage; see :meth:`call`).

        ``scores.phi`` is divided in place (it is not used again).
        """
        check_is_fitted(self, "explainer_")
        catalog = self.catalog_
        raw, phi = scores.raw, scores.phi
        _check_additivity(raw, phi, self.explainer_.expected_value_)
        margins = self.profile_model_.expand_margins(raw)
        proba = self.profile_model_.proba_from_margins(margins)
        called = margins.argmax(axis=1)  # = argmax of proba (temperature scaling keeps the order)
        contributions = self._per_marker(self._toward_called(phi, called))
        measured = measured_markers(panel, catalog)
        drivers = top_drivers(contributions, measured, k=N_DRIVERS)
        subtype_index, matches = self._subtypes_within(called, self.subtype_model_.expand_margins(scores.subtype_margins))
        subtype_names, subtype_profile_codes = self.subtype_names()
        flags = self.features_.flags(panel)  # lab offsets change no flag: known labs are training's
        # float, not int: batch engines carry rejected rows as missing values in the same column
        adapted_panels = lab_ids(panel, self.catalog_).map(labs.panels).fillna(0).to_numpy(dtype=np.float64) if labs.panels else np.zeros(len(panel))

        # Built as one dict in contract order, then one frame: no per-column inserts or reorder copy.
        # Names are categoricals (codes into a few labels): no Python string per row.
        profiles = list(catalog.profiles)
        columns: dict[str, object] = {
            catalog.id_column: panel[catalog.id_column].array,
            catalog.label_column: pd.Categorical.from_codes(called, categories=profiles),
            **{column: np.round(proba[:, j], REPORTED_DECIMALS) for j, column in enumerate(profile_columns(catalog))},
            contract.SUBTYPE: pd.Categorical.from_codes(subtype_index, categories=subtype_names),
        }
        for column in drivers.columns:
            if column.endswith(contract.CONTRIBUTION_SUFFIX):
                columns[column] = np.round(drivers[column].to_numpy(), REPORTED_DECIMALS)
            else:
                columns[column] = drivers[column].array
        columns[contract.COMPARTMENTS] = compartment_names(measured, catalog).array
        columns[contract.SUBTYPE_PROFILE] = pd.Categorical.from_codes(subtype_profile_codes[subtype_index], categories=profiles)
        columns[contract.SUBTYPE_MATCHES_PROFILE] = matches
        columns.update({column: flags[column].array for column in flags.columns})
        columns[contract.LAB_ADAPTED] = adapted_panels > 0
        columns[contract.LAB_ADAPTATION_PANELS] = adapted_panels
        for marker in catalog.markers:
            if marker.flag_at_or_above and marker.name in panel:
                columns[marker.flag_at_or_above.flag] = (panel[marker.name] >= marker.flag_at_or_above.value).to_numpy()
        # copy=False also leaves the float columns as they are (pandas would copy them into one block),
        # so no array may back two columns: each missing column gets its own
        calls = pd.DataFrame({name: columns[name] if name in columns else np.full(len(panel), np.nan)
                              for name in calls_columns(catalog)}, index=panel.index, copy=False)
        if not compact:
            text = [name for name in calls.columns if isinstance(calls[name].dtype, (pd.CategoricalDtype, pd.StringDtype))]
            calls = calls.astype({name: object for name in text})
        extra = [name for name in panel.columns if name not in set(catalog.known_columns) and not name.endswith(contract.CENSORED_SUFFIX)]
        return pd.concat([calls, panel[extra]], axis=1) if extra else calls

    def _subtype_profile_codes(self) -> np.ndarray:
        """For each subtype class, the index of its profile in the catalog's profile order."""
        # a plain dict: this runs a few times per scored chunk, where a pandas index costs a millisecond each
        profile_of = dict(zip(self.subtype_table_["subtype"], self.subtype_table_["profile"]))
        return np.array([list(self.catalog_.profiles).index(profile_of[s]) for s in self.subtype_model_.classes_])

    def _composite_pairs(self) -> list[tuple[int, int]]:
        """(hyperactive class, hypoactive class) pairs that name a mixed call when no mixed subtype was found."""
        codes = self._subtype_profile_codes()
        profiles = list(self.catalog_.profiles)
        if (codes == profiles.index(MIXED)).any():
            return []
        hyper = np.flatnonzero(codes == profiles.index(HYPERACTIVE))
        hypo = np.flatnonzero(codes == profiles.index(HYPOACTIVE))
        return [(h, o) for h in hyper for o in hypo]

    def _reference_stand_in(self) -> bool:
        """Whether balanced calls need the reference as their subtype: training found no balanced subtype."""
        return not (self._subtype_profile_codes() == list(self.catalog_.profiles).index(BALANCED)).any()

    def subtype_names(self) -> tuple[list[str], np.ndarray]:
        """Every subtype a call can carry and its profile's index: the learned subtypes, then stand-ins.

        A composite ("nk-high+endometrial-under") names a mixed call by its most likely
        hyperactive and hypoactive subtypes when training found no mixed subtype. When
        every cluster departs from the reference level (mild shifts spread the balanced
        panels over the subtype clusters), a balanced call's subtype is ``balanced``: the
        reference itself, from which no axis departs.
        """
        classes = list(self.subtype_model_.classes_)
        codes = self._subtype_profile_codes()
        pairs = self._composite_pairs()
        profiles = list(self.catalog_.profiles)
        names = classes + [f"{classes[h]}+{classes[o]}" for h, o in pairs]
        extra = [profiles.index(MIXED)] * len(pairs)
        if self._reference_stand_in():
            names.append(BALANCED)
            extra.append(profiles.index(BALANCED))
        return names, np.concatenate([codes, np.asarray(extra, dtype=codes.dtype)])

    def _subtypes_within(self, called: np.ndarray, subtype_margins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The most likely subtype among those of the called profile (coherent by construction).

        Returns an index into :meth:`subtype_names` per row and whether it belongs to the
        called profile: it does unless training found no subtype of that profile and no
        stand-in (see :meth:`subtype_names`) applies, when the most likely subtype overall
        is given (and the call says so in ``subtype_matches_profile``).
        """
        codes = self._subtype_profile_codes()
        profiles = list(self.catalog_.profiles)
        allowed = codes[None, :] == called[:, None]
        within = np.where(allowed, subtype_margins, -np.inf).argmax(axis=1)
        index = np.where(allowed.any(axis=1), within, subtype_margins.argmax(axis=1))
        matches = allowed.any(axis=1)
        pairs = self._composite_pairs()
        if pairs:
            hyper, hypo = (np.array(sorted({pair[i] for pair in pairs})) for i in (0, 1))
            best_hyper = hyper[subtype_margins[:, hyper].argmax(axis=1)]
            best_hypo = hypo[subtype_margins[:, hypo].argmax(axis=1)]
            composite = np.array([pairs.index((h, o)) for h, o in zip(best_hyper, best_hypo)], dtype=np.int64)
            mixed = called == profiles.index(MIXED)
            index = np.where(mixed, len(codes) + composite, index)
            matches |= mixed
        if self._reference_stand_in():
            balanced = called == profiles.index(BALANCED)
            index = np.where(balanced, len(codes) + len(pairs), index)
            matches |= balanced
        return index, matches

    def contributions(self, X: pd.DataFrame | np.ndarray, called: np.ndarray) -> pd.DataFrame:
        """Per-marker SHAP of each row's called class on the calibrated scale (margin / temperature)."""
        X = np.asarray(X, dtype=float)
        column = np.searchsorted(self.profile_model_.booster_classes_, called)
        phi = self.explainer_.shap_values(X, 0 if self.explainer_.n_classes_ == 1 else column)
        return self._per_marker(self._toward_called(phi, called))

    def _toward_called(self, phi: np.ndarray, called: np.ndarray) -> np.ndarray:
        """SHAP of the booster's margin -> SHAP of the called class's calibrated margin.

        The softmax turns margin / temperature into probabilities, so contributions are
        divided by the temperature: they then sum to the called class's calibrated margin
        minus its expected value over the reference. A binary booster explains the second
        class's margin (the first's is 0): flipped for the first. ``phi`` is divided in place.
        """
        phi /= self.profile_model_.temperature_  # in place: a chunk's SHAP array is large, and not used again
        if self.explainer_.n_classes_ != 1:
            return phi
        column = np.searchsorted(self.profile_model_.booster_classes_, called)
        return np.where((column == 1)[:, None], phi, -phi)

    def _per_marker(self, phi: np.ndarray) -> pd.DataFrame:
        return marker_contributions(phi, self.feature_names_, self.features_.feature_markers_, self.catalog_.marker_names)
