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

from rifml.catalog import BALANCED, HYPERACTIVE, HYPOACTIVE, MIXED, Catalog

@dataclass(frozen=True)
class Signature:
    """The markers that set one named subtype apart, for one signal, and where a panel shows them.

    A panel's *score* is the mean, over the markers, of its deviation from the reference
    median in within-cluster SDs, signed toward the signal's direction. It *shows* the
    signature when the score reaches ``threshold``: half the subtype's own median score,
    the midpoint between the reference (0) and the subtype.
    """

    signal: str
    markers: tuple[str, ...]
    signs: tuple[float, ...]
    threshold: float

    def shows(self, z: pd.DataFrame) -> np.ndarray:
        score = (z[list(self.markers)].to_numpy() * np.asarray(self.signs)).mean(axis=1)
        return score >= self.threshold


def subtype_signatures(
    table: pd.DataFrame, effects: pd.DataFrame, z: pd.DataFrame, labels: np.ndarray, catalog: Catalog
) -> list[Signature]:
    """Per named subtype and per signal (hyperactive / hypoactive), its signature (see :class:`Signature`).

    A mixed subtype gives two signatures (its blood part and its endometrial part), so
    a patient who shows one subtype's hyperactive markers and another's hypoactive ones
    reads as mixed even when no mixed cluster was found (mixed patients can be too few,
    or too varied, to form one). Identical marker sets are kept once (lowest threshold).

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
    found: dict[tuple[str, tuple[str, ...]], Signature] = {}
    for cluster, signature in zip(table["cluster"], table["signature"]):
        by_signal: dict[str, list[tuple[str, float]]] = {}
        for name in filter(None, signature.split(";")):
            direction = "above" if effects.loc[cluster, name] > 0 else "below"
            signal = catalog.by_name[name].signals.get(direction)
            if signal is not None:
                by_signal.setdefault(signal, []).append((name, 1.0 if direction == "above" else -1.0))
        for signal, members in by_signal.items():
            markers, signs = zip(*members)
            own = (z.loc[labels == cluster, list(markers)].to_numpy() * np.asarray(signs)).mean(axis=1)
            candidate = Signature(signal, markers, signs, float(np.median(own)) / 2.0)
            key = (signal, markers)
            if key not in found or candidate.threshold < found[key].threshold:
                found[key] = candidate
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
