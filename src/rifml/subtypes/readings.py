"""Reading a panel's profile without a classifier.

* :func:`subtype_signatures` / :func:`profiles_from_signatures`: the markers that set each
  named subtype apart, and which of them a panel shows (label-free training's targets).
* :func:`rule_profile`: the transparent literature baseline logged beside the model: a
  patient is hyper-/hypo-signalled when any marker sits outside its band in a direction
  the catalog says signals that profile.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import expit
from scipy.stats import norm

from rifml.catalog import BALANCED, HYPERACTIVE, HYPOACTIVE, MIXED, Catalog

@dataclass(frozen=True)
class Signature:
    """The markers that set one named subtype apart, for one signal, and where a panel shows them.

    With per-marker ``shifts`` (the patchy-shift reading, :func:`patchy_shift`), a panel's
    *score* is the log likelihood ratio of its signed deviations under "a member of the
    subtype" (each marker shifted by ``shifts[j]`` SDs, spread ``spreads[j]``, in a share
    ``shares[j]`` of the subtype's panels, unshifted N(0, 1) otherwise, markers independent)
    against "not a member" (every marker N(0, 1)). Without them (models fitted before the
    patchy reading) the score is the mean signed deviation in within-cluster SDs. The
    panel *shows* the signature when the score reaches ``threshold``.
    """

    signal: str
    markers: tuple[str, ...]
    signs: tuple[float, ...]
    threshold: float
    shifts: tuple[float, ...] = ()
    spreads: tuple[float, ...] = ()
    shares: tuple[float, ...] = ()
    null_centres: tuple[float, ...] = ()
    null_scales: tuple[float, ...] = ()

    def score(self, z: pd.DataFrame) -> np.ndarray:
        signed = z[list(self.markers)].to_numpy(dtype=float) * np.asarray(self.signs)
        if not self.shifts:
            return signed.mean(axis=1)
        null = (np.asarray(self.null_centres), np.asarray(self.null_scales)) if self.null_centres else (0.0, 1.0)
        return _patchy_log_ratio(
            signed, np.asarray(self.shifts), np.asarray(self.spreads), np.asarray(self.shares), *null
        ).sum(axis=1)

    def shows(self, z: pd.DataFrame) -> np.ndarray:
        return self.score(z) >= self.threshold


def _patchy_log_ratio(signed, shift, spread, share, null_centre=0.0, null_scale=1.0) -> np.ndarray:
    """Per value, log of [(1 - share) N(s; null) + share N(s; shift, spread)] / N(s; null)."""
    shifted = np.log(share) + norm.logpdf(signed, shift, spread) - norm.logpdf(signed, null_centre, null_scale)
    return np.logaddexp(np.log1p(-share), shifted)


def unshifted_spread(signed: np.ndarray) -> tuple[float, float]:
    """Centre and scale of a marker where no subtype shifts it: median and MAD-based SD (the SD
    where most values are tied, e.g. at a detection limit, and the MAD is degenerate), at least 1."""
    signed = np.asarray(signed, dtype=float)
    centre = float(np.median(signed))
    mad = 1.4826 * float(np.median(np.abs(signed - centre)))
    sd = float(np.std(signed))
    scale = sd if mad < _TIED_MAD_RATIO * sd else mad
    # Never narrower than the within-cluster SD the deviations are measured in: that unit is
    # pooled over patchy subtype clusters too, so unshifted panels alone read a little
    # narrower, and a narrower null would call their ordinary tails shifts.
    return centre, max(scale, 1.0)


# Bounds of the patchy-shift fit: a share of exactly 0 or 1 would make one marker veto or
# decide alone; a shifted marker is at least as variable as the measurement itself (N(0, 1)).
_SHARE_BOUNDS = (0.02, 0.98)
_SPREAD_BOUNDS = (1.0, 3.0)
# As in naming: a MAD under this share of the SD is degenerate (values tied at a limit).
_TIED_MAD_RATIO = 0.25


def patchy_shift(
    signed: np.ndarray, start: float, n_iter: int = 200, null: tuple[float, float] = (0.0, 1.0)
) -> tuple[float, float, float]:
    """Fit (shift, spread, share) of one marker in one subtype by EM: (1 - q) N(null) + q N(mu, sd).

    A subtype shifts each of its markers in only part of its patients (the simulator's shift
    probability, real heterogeneity), so a member who shifts one of three markers has a mean
    deviation a third of the subtype's and reads as balanced under a mean rule; the mixture
    says how often, and how far, the marker moves. The unshifted component is the reference
    itself: N(0, 1) in within-cluster SDs from the reference level, or ``null`` (centre,
    scale) measured where no subtype shifts the marker (:func:`unshifted_spread`; a marker
    tied at a detection limit has a wide, skewed spread that N(0, 1) would call shifts).

    Parameters
    ----------
    signed : ndarray
        The subtype's panels' deviations on the marker, signed toward the signal.
    start : float
        Starting shift (the cluster's effect on the marker).
    """
    signed = np.asarray(signed, dtype=float)
    centre, scale = null
    low, high = max(_SPREAD_BOUNDS[0], scale), max(_SPREAD_BOUNDS[1], scale)
    mu, sd, q = max(float(start), centre + 1.0), low, 0.5
    for _ in range(n_iter):
        member = expit(np.log(q) - np.log1p(-q) + norm.logpdf(signed, mu, sd) - norm.logpdf(signed, centre, scale))
        weight = member.sum()
        if weight <= 1e-9:
            break
        new_q = float(np.clip(weight / len(signed), *_SHARE_BOUNDS))
        new_mu = max(float((member * signed).sum() / weight), centre)
        new_sd = float(np.clip(np.sqrt((member * (signed - new_mu) ** 2).sum() / weight), low, high))
        done = abs(new_q - q) < 1e-6 and abs(new_mu - mu) < 1e-6 and abs(new_sd - sd) < 1e-6
        mu, sd, q = new_mu, new_sd, new_q
        if done:
            break
    return mu, sd, q


def _signature_parts(table: pd.DataFrame, effects: pd.DataFrame, catalog: Catalog):
    """(cluster, signal, markers, signs) of every named subtype's signature, per signal."""
    for cluster, signature in zip(table["cluster"], table["signature"]):
        by_signal: dict[str, list[tuple[str, float]]] = {}
        for name in filter(None, signature.split(";")):
            direction = "above" if effects.loc[cluster, name] > 0 else "below"
            signal = catalog.by_name[name].signals.get(direction)
            if signal is not None:
                by_signal.setdefault(signal, []).append((name, 1.0 if direction == "above" else -1.0))
        for signal, members in by_signal.items():
            markers, signs = zip(*members)
            yield cluster, signal, tuple(markers), tuple(signs)


def subtype_signatures(
    table: pd.DataFrame, effects: pd.DataFrame, z: pd.DataFrame, labels: np.ndarray, catalog: Catalog,
    reading: str = "mean",
) -> list[Signature]:
    """Per named subtype and per signal (hyperactive / hypoactive), its signature (see :class:`Signature`).

    A mixed subtype gives two signatures (its blood part and its endometrial part), so
    a patient who shows one subtype's hyperactive markers and another's hypoactive ones
    reads as mixed even when no mixed cluster was found (mixed patients can be too few,
    or too varied, to form one).

    ``reading="mean"`` (default): the mean signed deviation against half the subtype's own
    median (identical marker sets kept once, lowest threshold). ``reading="patchy"``: each
    marker's shift, spread and share of shifted panels are fitted on the subtype's own
    cluster (:func:`patchy_shift`), against the marker's spread where no named subtype moves
    it (:func:`unshifted_spread`); a panel shows the signature when the likelihood ratio
    reaches 1. Markers are read one by one, so a member who moves one marker of three far
    shows it, where its mean deviation sits a third of the way to the subtype. Not the
    default yet: on 25 simulated worlds (benchmarks/RESULTS.md) it raised label-free F1
    0.786 -> 0.802 and subtype ARI 0.634 -> 0.662, but the label-free ECE rose 0.040 -> 0.044
    and passed 0.10 in two harsh worlds (the model learns the sharper readings with more
    confidence than the truth allows).

    Parameters
    ----------
    table : DataFrame
        :func:`name_clusters` output (``cluster``, ``signature``).
    effects : DataFrame
        :func:`subtype_effects` effects (cluster x marker).
    z : DataFrame
        Panels' deviations from the reference median in within-cluster SDs (rows as ``labels``).
    labels : ndarray
        Cluster of each row of ``z``.
    catalog : Catalog
    """
    if reading not in ("patchy", "mean"):
        raise ValueError(f"reading must be 'patchy' or 'mean', got {reading!r}")
    labels = np.asarray(labels)
    found: dict[tuple, Signature] = {}
    # where no named subtype moves a marker: its unshifted spread
    naming = {m: set(table.loc[table["signature"].str.split(";").map(lambda ms, m=m: m in ms), "cluster"]) for m in z.columns}
    for cluster, signal, markers, signs in _signature_parts(table, effects, catalog):
        own = z.loc[labels == cluster, list(markers)].to_numpy(dtype=float) * np.asarray(signs)
        if reading == "mean":
            candidate = Signature(signal, markers, signs, float(np.median(own.mean(axis=1))) / 2.0)
            key = (signal, markers)
            if key not in found or candidate.threshold < found[key].threshold:
                found[key] = candidate
            continue
        nulls = []
        for marker, sign in zip(markers, signs):
            outside = ~np.isin(labels, list(naming[marker]))
            nulls.append(unshifted_spread(z.loc[outside, marker].to_numpy(dtype=float) * sign) if outside.sum() >= 10 else (0.0, 1.0))
        fitted = [patchy_shift(own[:, j], effects.loc[cluster, m] * s, null=nulls[j]) for j, (m, s) in enumerate(zip(markers, signs))]
        shifts, spreads, shares = (tuple(float(v) for v in column) for column in zip(*fitted))
        centres, scales = (tuple(float(v) for v in column) for column in zip(*nulls))
        # One per subtype and signal: the same markers in two subtypes (endometrial-under and a
        # mixed subtype's endometrial part) may shift in different shares; a panel showing either counts.
        found[(cluster, signal)] = Signature(signal, markers, signs, 0.0, shifts, spreads, shares, centres, scales)
    return list(found.values())


def profiles_from_signatures(z: pd.DataFrame, signatures: list[Signature]) -> np.ndarray:
    """Profile per panel: the signals of every signature it shows (both signals: mixed; none: balanced)."""
    hyper = np.zeros(len(z), dtype=bool)
    hypo = np.zeros(len(z), dtype=bool)
    for signature in signatures:
        shown = signature.shows(z)
        if signature.signal == "hyperactive":
            hyper |= shown
        else:
            hypo |= shown
    return np.select([hyper & hypo, hyper, hypo], [MIXED, HYPERACTIVE, HYPOACTIVE], BALANCED).astype(object)


# --------------------------------------------------------------------------------------
# Literature rule baseline
# --------------------------------------------------------------------------------------


def rule_profile(band_positions: pd.DataFrame, catalog: Catalog) -> pd.Series:
    """Profile each patient by the catalog's band rules alone (the transparent baseline).

    A patient is hyper-signalled when any marker is outside its band in a
    direction whose catalog signal is ``hyperactive``, hypo-signalled likewise;
    both gives ``mixed``, neither ``balanced``. Unmeasured markers (NaN) say
    nothing, so a patient with no measured signalled marker is ``balanced``.

    Parameters
    ----------
    band_positions : DataFrame
        One row per patient, columns = numeric catalog markers, values -1 (below
        band), 0 (within), +1 (above) or NaN. Other columns are ignored.
    catalog : Catalog

    Returns
    -------
    Series
        Profile per patient, same index as ``band_positions``, named ``rule_profile``.
    """
    hyper = pd.Series(False, index=band_positions.index)
    hypo = pd.Series(False, index=band_positions.index)
    for marker in catalog.numeric_markers:
        if marker.name not in band_positions.columns or not marker.signals:
            continue
        position = pd.to_numeric(band_positions[marker.name], errors="coerce")
        bad = position.notna() & ~position.isin([-1, 0, 1])
        if bad.any() or (band_positions[marker.name].notna() & position.isna()).any():
            raise ValueError(f"band positions of {marker.name} must be -1, 0, +1 or NaN")
        for direction, signal in marker.signals.items():
            outside = position == (1 if direction == "above" else -1)
            if signal == "hyperactive":
                hyper |= outside
            else:
                hypo |= outside
    profile = np.select([hyper & hypo, hyper, hypo], [MIXED, HYPERACTIVE, HYPOACTIVE], BALANCED)
    return pd.Series(profile, index=band_positions.index, name="rule_profile", dtype=object)
