"""Naming subtypes from the cohort's own reference and the catalog's signals and axes.

:func:`subtype_effects` finds the cohort's own reference (per marker, the level most
clusters share: the balanced state the subtypes depart from) and each cluster's effect
sizes against it; :func:`name_clusters` turns those into readable subtype names
("th1-high", "endometrial-under+nk-high", "balanced") and one immune profile per subtype,
using the signals and axes of ``configs/markers.yaml`` for direction and meaning, never
its absolute reference bands (labs and assays differ); :func:`split_by_profile` cuts a
cluster that holds balanced and dysregulated panels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.utils import check_random_state

from rifml.catalog import BALANCED, ENDOMETRIUM, HYPERACTIVE, HYPOACTIVE, MIXED, Catalog, Marker

def _profile(signals: Iterable[str]) -> str:
    """Immune profile implied by a set of signals (hyperactive / hypoactive)."""
    found = set(signals)
    hyper, hypo = HYPERACTIVE in found, HYPOACTIVE in found
    if hyper and hypo:
        return MIXED
    if hyper:
        return HYPERACTIVE
    if hypo:
        return HYPOACTIVE
    return BALANCED


# A cluster location further than this from another, in within-cluster SDs, counts as
# this far in the medoid cost: one extreme cluster must not pull the choice toward itself.
REFERENCE_COST_CAP = 3.0
# Cluster locations of one marker within this width (within-cluster SDs) read as one level.
# Halves of one homogeneous group cut by KMeans sit at most 2 x 0.674 = 1.35 SD apart (their
# medians; their densest halves are closer), so a split of the balanced group stays one
# level, while subtype shifts (several SDs) do not.
LEVEL_WIDTH = 1.5
# Ratio under which a pooled MAD is degenerate (most values tied, e.g. at a detection
# limit) and the pooled SD of the within-cluster deviations is used instead.
_TIED_MAD_RATIO = 0.25
# A cluster's location averages the values within this many within-cluster SDs of its
# densest half (the 97.5% normal quantile, Rousseeuw and Leroy's reweighting cut-off).
REWEIGHT_CUTOFF = 2.24


@dataclass(frozen=True)
class SubtypeEffects:
    """Clusters measured against the cohort's own reference (see :func:`subtype_effects`).

    Attributes
    ----------
    effects : DataFrame
        (cluster median - reference level) / within-cluster SD, one row per cluster.
    level : Series
        The reference level of every marker (log scale, like the values).
    scale : Series
        Pooled within-cluster SD per marker (robust: MAD based, the pooled SD where ties
        make the MAD degenerate).
    nearest : int
        The cluster closest to the reference level (the report marks it).
    """

    effects: pd.DataFrame
    level: pd.Series
    scale: pd.Series
    nearest: int

    def deviations(self, values: pd.DataFrame) -> pd.DataFrame:
        """Panels' deviations from the reference level, in within-cluster SDs."""
        return (values - self.level) / self.scale

    def against(self, values: pd.DataFrame, labels: np.ndarray) -> "SubtypeEffects":
        """Another partition of the same panels measured against this reference (level and scale kept)."""
        effects = self.deviations(values).groupby(np.asarray(labels)).median()
        return SubtypeEffects(effects, self.level, self.scale, _nearest(effects))


def _densest_half_mean(x: np.ndarray) -> float:
    """Mean of the half of ``x`` (n // 2 + 1 values) with the smallest variance: the LTS location.

    Rousseeuw's least trimmed squares location, exact in one dimension: the best half is
    contiguous once sorted, so every window's variance comes from running sums.
    """
    x = np.sort(x)
    h = len(x) // 2 + 1
    sums = np.concatenate([[0.0], np.cumsum(x)])
    squares = np.concatenate([[0.0], np.cumsum(x * x)])
    window_sum = sums[h:] - sums[:-h]
    spread = (squares[h:] - squares[:-h]) - window_sum**2 / h
    return float(window_sum[int(np.argmin(spread))] / h)


def densest_half_means(values: pd.DataFrame, labels: np.ndarray) -> pd.DataFrame:
    """Each cluster's densest-half mean on each marker (see :func:`_densest_half_mean`)."""
    return values.groupby(np.asarray(labels)).agg(lambda column: _densest_half_mean(column.to_numpy(dtype=float)))


def bulk_location(
    values: pd.DataFrame, labels: np.ndarray, scale: pd.Series | float, start: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Each cluster's location on each marker: the one-step reweighted LTS location.

    Start from the mean of the cluster's densest half (:func:`densest_half_means`), then
    average the values within ``REWEIGHT_CUTOFF`` x ``scale`` of it (Rousseeuw and Leroy's
    reweighting: the densest half alone is robust but noisy, ~7% efficient on normal data).
    Not the median: a cluster formed around one arm of a subtype holds panels shifted on
    other markers (mixed patients' blood arm puts them in the Th1 or NK cluster, their
    endometrium far below). With 40% of a cluster 3 SD off, its median moves ~1 SD (the
    1/6 quantile of the rest), which drags the shared reference level and hides the
    endometrial subtype's shift; this location stays with the majority. ``start``: the
    densest-half means when the caller has them already.
    """
    labels = np.asarray(labels)
    start = densest_half_means(values, labels) if start is None else start
    matrix = values.to_numpy(dtype=float)
    near = np.abs(matrix - start.loc[labels].to_numpy()) <= REWEIGHT_CUTOFF * np.asarray(scale, dtype=float)
    kept = pd.DataFrame(np.where(near, matrix, np.nan), columns=values.columns)
    # the start itself where no value lies that close (a degenerate scale)
    return kept.groupby(labels).mean().fillna(start)


def _capped_l1(difference: np.ndarray) -> np.ndarray:
    """L1 norm over the last axis with each term capped at ``REFERENCE_COST_CAP``."""
    return np.minimum(np.abs(difference), REFERENCE_COST_CAP).sum(axis=-1)


def _medoid(standardized: np.ndarray) -> int:
    """Row whose capped L1 distance to all other rows is smallest (ties: lowest row)."""
    cost = _capped_l1(standardized[:, None, :] - standardized[None, :, :]).sum(axis=1)
    return int(np.flatnonzero(np.isclose(cost, cost.min()))[0])


def _shared_level(column: np.ndarray, sizes: np.ndarray, medoid: int) -> float:
    """The level most clusters share on one marker: median of the fullest ``LEVEL_WIDTH`` window.

    Windows are ranked by how many clusters they hold, then by whether they hold the
    medoid cluster (two clusters far apart: the medoid's side), then by panels.
    """
    best_key, best_members = None, None
    for low in column:
        members = (column >= low) & (column <= low + LEVEL_WIDTH)
        key = (int(members.sum()), bool(members[medoid]), int(sizes[members].sum()))
        if best_key is None or key > best_key:
            best_key, best_members = key, members
    return float(np.median(column[best_members]))


def subtype_effects(values: pd.DataFrame, labels: np.ndarray) -> SubtypeEffects:
    """Each cluster's effect size on each marker against the cohort's own reference level.

    Immune subtypes depart from the balanced state in different directions (Th1 up, NK
    up, endometrium up or down), each on a few markers: on any one marker, most
    clusters sit at the balanced level and a few depart from it. The reference level
    of a marker is therefore the level *most clusters share*: the median of the cluster
    locations inside the fullest window of width ``LEVEL_WIDTH`` within-cluster SDs, where
    a cluster's location is the level of its majority (:func:`bulk_location`), so that
    mixed patients who cluster with their blood arm do not drag the endometrial level. A
    cluster's effect is then its median (its typical panel) against that level. It
    needs no balanced cluster: when shifts are mild and balanced panels are spread over
    the subtype clusters, the markers each cluster does not shift still agree. With two
    clusters far apart on a marker, the side of the medoid cluster (the L1 medoid of
    the cluster locations, distances capped at ``REFERENCE_COST_CAP``; ties to the lower
    id, the larger cluster) is the reference. Nothing here is absolute: a marker an
    assay reads high for everybody moves every cluster and the level alike, so it names
    nothing; a consistent group shift inside a wide reference band is still a shift.

    Parameters
    ----------
    values : DataFrame
        One row per panel (complete panels), one column per marker, log scale where the
        catalog says so, lab-normalized, no NaN.
    labels : ndarray of shape (n_rows,)
        Cluster of each row, 0..k-1.

    Returns
    -------
    SubtypeEffects
    """
    labels = np.asarray(labels)
    medians = values.groupby(labels).median()
    start = densest_half_means(values, labels)
    deviations = values.to_numpy() - start.loc[labels].to_numpy()
    mad = 1.4826 * np.median(np.abs(deviations), axis=0)
    sd = np.sqrt(np.mean(deviations**2, axis=0))
    scale = np.where(mad < _TIED_MAD_RATIO * sd, sd, mad)
    scale = pd.Series(np.where(scale > 0, scale, 1.0), index=values.columns)
    located = bulk_location(values, labels, scale, start).to_numpy() / scale.to_numpy()
    medoid = _medoid(located)
    sizes = pd.Series(labels).value_counts().reindex(medians.index).to_numpy()
    level = np.array([_shared_level(located[:, j], sizes, medoid) for j in range(located.shape[1])])
    effects = pd.DataFrame(medians.to_numpy() / scale.to_numpy() - level, index=medians.index, columns=values.columns)
    return SubtypeEffects(effects, pd.Series(level, index=values.columns) * scale, scale, _nearest(effects))


def _nearest(effects: pd.DataFrame) -> int:
    return int(effects.index[np.argmin(_capped_l1(effects.to_numpy()))])


def _axis_part(marker: Marker, direction: str, signal: str) -> tuple[str, str, str]:
    """Group key for one abnormal marker: (axis, compartment, suffix).

    Blood axes are named by direction ("-high"/"-low"), endometrial axes by the
    signal they point to ("-over" for hyperactive, "-under" for hypoactive),
    because in the endometrium a low value can mean over-activation (few Tregs).
    """
    if marker.compartment == ENDOMETRIUM:
        suffix = "over" if signal == "hyperactive" else "under"
    else:
        suffix = "high" if direction == "above" else "low"
    return marker.axis, marker.compartment, suffix


# A marker below this effect (within-cluster SDs) adds nothing to its axis part: the
# noise of many unshifted markers must not add up to a subtype.
PART_FLOOR = 0.5


def name_clusters(effects: pd.DataFrame, catalog: Catalog, min_effect: float = 1.5) -> pd.DataFrame:
    """Name each cluster by the immune axes on which it departs from the reference.

    An *axis part* is an axis in a compartment in one direction (NK high in blood, the
    endometrium under-activated, ...). Its effect in a cluster is the Euclidean norm of
    the effects (see :func:`subtype_effects`) of its markers toward the direction the
    catalog signals, counting markers at least ``PART_FLOOR`` SDs that way: the
    cluster's distance from the reference in that part's markers, in within-cluster
    SDs. A part is *abnormal* when its effect reaches ``min_effect``. So one marker
    must move ``min_effect`` SDs on its own, while an axis whose markers move together
    (three Th1 markers 1.0 SD each: 1.7) is named from milder, consistent shifts: immune
    subtypes shift the markers of an axis together, and KMeans cutting one homogeneous
    group in two moves one direction, not an axis (the halves' medians sit
    2 x 0.674 = 1.35 SD apart on the cut marker, under the default 1.5). A Ledee-style
    endometrium with uNK over-activated and IL-18/TWEAK low names both of its parts.
    Markers with NaN effects (not measured) name nothing.

    Parts are named ``f"{axis}-high"`` / ``f"{axis}-low"`` in blood and
    ``f"{axis}-over"`` (signal hyperactive) / ``f"{axis}-under"`` (signal hypoactive) in
    the endometrium, joined with "+" by decreasing effect. No abnormal part gives
    "balanced". The profile comes from the signals of the abnormal parts only, so a
    subtype maps to exactly one profile and "balanced" always means profile balanced.
    Repeated names get "-2", "-3", ... in row order.

    Parameters
    ----------
    effects : DataFrame
        One row per cluster (index = cluster id), columns = catalog numeric markers,
        values = effect sizes in within-cluster SDs (NaN allowed). Other columns are ignored.
    catalog : Catalog
    min_effect : float, default=1.5

    Returns
    -------
    DataFrame
        Columns ``cluster``, ``subtype``, ``parts`` (the name before "-2" suffixes: equal
        for clusters that name the same thing), ``profile``, ``abnormal_markers`` (";"-joined,
        the markers of the abnormal parts, strongest first), ``evidence`` (per abnormal
        part its effect and its markers', e.g. ``nk-high 1.7 SD (pb_nk_pct +1.1,
        pb_nk_cytotox_pct +1.3)``, ";"-joined, strongest part first) and ``signature``
        (the markers of the named parts, ";"-joined, sorted: what
        :func:`subtype_signatures` reads).
    """
    if not min_effect > 0:
        raise ValueError(f"min_effect must be positive, got {min_effect!r}")
    markers = [m for m in catalog.numeric_markers if m.name in effects.columns and m.signals]
    rows = []
    for cluster, row in effects.iterrows():
        hits: dict[tuple[str, str, str], list[tuple[float, str, str, float]]] = {}
        for marker in markers:
            effect = row[marker.name]
            if pd.isna(effect):
                continue
            effect = float(effect)
            for direction, signal in marker.signals.items():
                toward = effect if direction == "above" else -effect
                if toward >= PART_FLOOR:
                    hits.setdefault(_axis_part(marker, direction, signal), []).append((toward, marker.name, signal, effect))
        parts = []
        for part, found in hits.items():
            strength = float(np.sqrt(sum(toward**2 for toward, *_ in found)))
            if strength >= min_effect:
                parts.append((strength, part, sorted(found, key=lambda hit: (-hit[0], hit[1]))))
        parts.sort(key=lambda item: (-item[0], item[1]))
        names = [f"{axis}-{suffix}" for _, (axis, _, suffix), _ in parts]
        rows.append(
            {
                "cluster": cluster,
                "subtype": "+".join(names) or BALANCED,
                "parts": "+".join(names) or BALANCED,
                "profile": _profile(signal for *_, found in parts for _, _, signal, _ in found),
                "abnormal_markers": ";".join(name for *_, found in parts for _, name, _, _ in found),
                "evidence": ";".join(
                    f"{label} {strength:.1f} SD ({', '.join(f'{name} {effect:+.1f}' for _, name, _, effect in found)})"
                    for label, (strength, _, found) in zip(names, parts)
                ),
                "signature": ";".join(sorted(name for *_, found in parts for _, name, _, _ in found)),
            }
        )
    out = pd.DataFrame(rows, columns=["cluster", "subtype", "parts", "profile", "abnormal_markers", "evidence", "signature"])
    out["subtype"] = _disambiguate(out["subtype"].tolist())
    return out


# A cluster is split off only into halves of at least this share of the panels (and
# MIN_SPLIT_PANELS): a subtype too small for this stays inside its neighbours.
MIN_SPLIT_SHARE = 0.02
MIN_SPLIT_PANELS = 20


def split_by_profile(
    scaled: np.ndarray,
    labels: np.ndarray,
    profiles_of: Callable[[np.ndarray], np.ndarray],
    max_clusters: int,
    random_state: int | np.random.RandomState | None = 0,
) -> np.ndarray:
    """Cut clusters that hold balanced and dysregulated panels in two.

    Consensus stability picks k by whether the partition is reproducible, which can merge
    a subtype that shifts few markers into the balanced cluster (an NK-high group moving
    only NK cytotoxicity: the cluster's medians stayed balanced, so no subtype, no
    signature and no panel read NK-high), or, with mild shifts, leave many balanced panels
    inside a subtype's cluster (blurring its signature). The partition is therefore
    refined by what the clusters *mean*: each cluster, largest first, is cut in two by
    KMeans, and the cut is kept when, named against the same reference as the rest, a
    half of a balanced cluster reads as dysregulated, or a half of a dysregulated one
    reads as balanced; each half must hold at least ``MIN_SPLIT_SHARE`` of the panels
    (and ``MIN_SPLIT_PANELS``). ``profiles_of`` must keep the reference fixed:
    re-deriving it from the cut partition could rename every other cluster. A cut of one
    homogeneous group names nothing (its halves sit 1.35 SD apart on one direction, under
    the naming rule's floor), so it is not kept. Cuts between two dysregulated readings
    (a Th1-high cluster holding mixed patients) are not made: such patients are read
    from the signatures they show (:func:`profiles_from_signatures`), and a half-shifted
    half would lower that signature's threshold for everybody. Repeats until no cut is
    kept or there are ``max_clusters``.

    Parameters
    ----------
    scaled : ndarray of shape (n_rows, n_markers)
        Panels in the clustering's scaled space.
    labels : ndarray of shape (n_rows,)
        Clusters 0..k-1.
    profiles_of : callable
        Labels 0..k-1 -> the profile each cluster is named into (array of k).
    max_clusters : int
    random_state : int, RandomState or None

    Returns
    -------
    ndarray
        Labels 0..k'-1, k' >= k; clusters not split keep their ids, new ones come after.
    """
    from sklearn.cluster import KMeans

    rng = check_random_state(random_state)
    labels = np.asarray(labels).copy()
    min_size = max(MIN_SPLIT_PANELS, int(np.ceil(MIN_SPLIT_SHARE * len(labels))))
    while labels.max() + 1 < max_clusters:
        current = profiles_of(labels)
        new_id = labels.max() + 1
        for cluster in np.argsort(-np.bincount(labels), kind="stable"):
            rows = np.flatnonzero(labels == cluster)
            if len(rows) < 2 * min_size:
                continue
            halves = KMeans(n_clusters=2, n_init=10, random_state=rng.randint(np.iinfo(np.int32).max)).fit(scaled[rows]).labels_
            if np.bincount(halves, minlength=2).min() < min_size:
                continue
            candidate = labels.copy()
            candidate[rows[halves == 1]] = new_id
            named = profiles_of(candidate)
            whole_balanced = current[cluster] == BALANCED
            if (named[cluster] == BALANCED) != whole_balanced or (named[new_id] == BALANCED) != whole_balanced:
                labels = candidate
                break
        else:
            break
    return labels


def _disambiguate(names: list[str]) -> list[str]:
    """Keep the first occurrence of a name; later ones become name-2, name-3, ..."""
    taken = set(names)
    seen: dict[str, int] = {}
    result = []
    for name in names:
        count = seen.get(name, 0) + 1
        seen[name] = count
        if count == 1:
            result.append(name)
            continue
        candidate, suffix = f"{name}-{count}", count
        while candidate in taken:  # never collide with a name that exists already
            suffix += 1
            candidate = f"{name}-{suffix}"
        taken.add(candidate)
        result.append(candidate)
    return result
