"""Per-cluster spreads: the named partition refined by a diagonal Gaussian mixture.

KMeans (the consensus clustering's final step) gives every group the same round spread.
Immune subtypes are not like that: a subtype whose patients shift only some of its markers
(a patchy shift) is wide on those markers, the balanced group is tight, so KMeans hands the
partly shifted members of a wide subtype to the tight group beside it.
:func:`refine_named_partition` lets each cluster keep its own spread per marker. Clusters
that carry the same name are first merged into one component: KMeans cuts a large round
group (typically the balanced one) into pieces that name the same thing, and in a mixture
such a spare piece widens into a catch-all that takes the tails of the others and is named
as a weak subtype of its own.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rifml.subtypes.consensus import relabel_by_size

# EM started from a partition settles in a few dozen iterations; it stops when the mean
# log-likelihood per row gains less than REFINE_TOL.
REFINE_MAX_ITER = 200
REFINE_TOL = 1e-4


def refine_named_partition(
    scaled: np.ndarray, labels: np.ndarray, names: np.ndarray, min_variance: float = 1.0
) -> np.ndarray:
    """Clusters of the same name merged, then refined by :func:`gaussian_refinement`.

    Parameters
    ----------
    scaled : ndarray of shape (n_rows, n_markers)
        Panels in the clustering's scaled space (1 = a within-group SD).
    labels : ndarray of shape (n_rows,)
        Clusters 0..k-1.
    names : ndarray of shape (k,)
        Each cluster's name before "-2" suffixes (the ``parts`` of
        :func:`rifml.subtypes.name_clusters`); equal names are one component.
    min_variance : float, default=1.0
        Floor of every cluster's variance on every marker (scaled units).

    Returns
    -------
    ndarray of shape (n_rows,)
        Labels 0..k'-1 (k' <= k, numbered by decreasing size); ``labels`` merged but not
        refined when the mixture empties a component.
    """
    merged = pd.factorize(np.asarray(names))[0][np.asarray(labels)]
    refined = gaussian_refinement(scaled, merged, min_variance)
    return relabel_by_size(merged if refined is None else refined)


def gaussian_refinement(Z: np.ndarray, labels: np.ndarray, min_variance: float) -> np.ndarray | None:
    """Most likely component of a diagonal Gaussian mixture started at the partition ``labels``.

    EM in which no cluster's variance on any marker falls below ``min_variance``: the
    constrained M-step (per cluster and marker, the larger of the weighted variance and the
    floor) keeps EM monotone. A marker censored at its detection limit ties many values;
    without the floor a cluster collapses onto the tie instead of a subtype.
    scikit-learn's GaussianMixture only adds a constant to every variance, which either lets
    a cluster collapse onto tied values or, large enough to prevent that, blurs the
    difference between wide and tight clusters that the refinement is for. Returns None
    when the mixture leaves a cluster without rows (the caller keeps ``labels``).
    """
    from scipy.special import logsumexp

    k = int(labels.max()) + 1
    if np.bincount(labels, minlength=k).min() == 0:
        return None
    responsibilities = np.eye(k)[labels]
    previous = -np.inf
    for _ in range(REFINE_MAX_ITER):
        log_joint = log_joint_density(Z, *mixture_parameters(Z, responsibilities, min_variance))
        log_total = logsumexp(log_joint, axis=1)
        responsibilities = np.exp(log_joint - log_total[:, None])
        if responsibilities.sum(axis=0).min() < 1e-9:  # a cluster lost every row: its parameters are undefined
            return None
        if log_total.mean() - previous < REFINE_TOL:
            break
        previous = log_total.mean()
    refined = log_joint.argmax(axis=1)
    return refined if np.unique(refined).size == k else None


def mixture_parameters(
    Z: np.ndarray, responsibilities: np.ndarray, min_variance: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights, means and floored diagonal variances of each cluster (rows weighted by ``responsibilities``)."""
    totals = responsibilities.sum(axis=0)
    means = responsibilities.T @ Z / totals[:, None]
    variances = responsibilities.T @ (Z * Z) / totals[:, None] - means * means
    return totals / totals.sum(), means, np.maximum(variances, min_variance)


def log_joint_density(Z: np.ndarray, weights: np.ndarray, means: np.ndarray, variances: np.ndarray) -> np.ndarray:
    """log(weight) + log Gaussian density (up to a constant) of every row under every cluster, (n, k)."""
    squared = ((Z[:, None, :] - means[None, :, :]) ** 2 / variances[None, :, :]).sum(axis=2)
    return np.log(weights) - 0.5 * (squared + np.log(variances).sum(axis=1))
