"""Data-driven immune subtypes: consensus clustering, naming from the catalog, profile readings.

All pure (no file I/O):

* :mod:`rifml.subtypes.consensus`: how many stable groups the complete panels hold.
* :mod:`rifml.subtypes.mixture`: the named partition refined with one spread per cluster.
* :mod:`rifml.subtypes.naming`: the cohort's own reference, effect sizes against it,
  and the subtype names and profiles they give.
* :mod:`rifml.subtypes.readings`: a panel's profile read from the subtype signatures
  (label-free training's targets) or from the catalog's bands (the literature baseline).

Fitted models pickled before the split name ``rifml.subtypes.ConsensusClustering``; the
names below keep them loading.
"""

from rifml.subtypes.consensus import PAC_WINDOW, ConsensusClustering, nearest_centre, select_k
from rifml.subtypes.mixture import refine_named_partition
from rifml.subtypes.naming import SubtypeEffects, name_clusters, split_by_profile, subtype_effects
from rifml.subtypes.readings import Signature, profiles_from_signatures, rule_profile, subtype_signatures

__all__ = [
    "PAC_WINDOW",
    "ConsensusClustering",
    "nearest_centre",
    "select_k",
    "refine_named_partition",
    "SubtypeEffects",
    "name_clusters",
    "split_by_profile",
    "subtype_effects",
    "Signature",
    "profiles_from_signatures",
    "rule_profile",
    "subtype_signatures",
]
