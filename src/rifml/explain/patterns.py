"""Small trees: the SHAP values of every routing pattern, precomputed.

For one tree, a row's SHAP values depend on the row only through which way it goes
at each split (its *pattern*); a tree with k splits has 2**k patterns, so for small
trees all of them are precomputed at training time and scoring looks them up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rifml.explain.shapley import FOR_A, FOR_B
from rifml.explain.trees import ParsedTree, SplitNodes

# 2**10 patterns x at most 10 features = 80 KiB per tree; larger trees go leaf by leaf (leaves.py).
MAX_PATTERN_NODES = 10


@dataclass
class TreeTable(SplitNodes):
    """One small tree, flattened for routing, with its precomputed SHAP table.

    Attributes
    ----------
    features, thresholds, default_left, missing : per internal node, pre-order
        As in :class:`rifml.explain.trees.SplitNodes` (a pattern's bits stand for the branches).
    used : ndarray of int (n_used,)
        Distinct model features this tree tests; columns of ``table``.
    table : ndarray of float (2**n_nodes, n_used)
        SHAP value of each used feature for each routing pattern.
    leaf_of_pattern : ndarray of float (2**n_nodes,)
        Leaf value each pattern reaches (for margins).
    """

    used: np.ndarray
    table: np.ndarray
    leaf_of_pattern: np.ndarray


def _pattern_bits(n_nodes: int) -> np.ndarray:
    """(2**n_nodes, n_nodes) bool: bit j of pattern p = goes left at node j."""
    patterns = np.arange(2**n_nodes)[:, None]
    return ((patterns >> np.arange(n_nodes)[None, :]) & 1).astype(bool)


def pattern_table(tree: ParsedTree, background: np.ndarray) -> TreeTable:
    """The tree's SHAP table over all patterns, against the background (shapley.py's game)."""
    n_nodes = tree.n_nodes
    if n_nodes > MAX_PATTERN_NODES:
        raise ValueError(f"tree has {n_nodes} splits; pattern tables take at most {MAX_PATTERN_NODES}")
    features = tree.features
    used = np.unique(features)
    local = {f: i for i, f in enumerate(used)}

    x_bits = _pattern_bits(n_nodes)  # every pattern a scored row could have
    z_patterns, z_counts = np.unique(_patterns(tree.decisions(background)), return_counts=True)
    z_bits = x_bits[z_patterns]
    z_weight = z_counts / z_counts.sum()

    table = np.zeros((len(x_bits), len(used)))
    leaf_of_pattern = np.zeros(len(x_bits))
    for value, path in zip(tree.leaf_values, tree.leaf_paths):
        path_nodes = np.array([p for p, _ in path], dtype=np.int64)
        goes = np.array([g for _, g in path], dtype=bool)
        x_ok = x_bits[:, path_nodes] == goes  # (P, d)
        z_ok = z_bits[:, path_nodes] == goes  # (Q, d)
        leaf_of_pattern[x_ok.all(axis=1)] = value
        path_features = features[path_nodes]
        reachable = np.ones((len(x_bits), len(z_bits)), dtype=bool)
        in_a, in_b = [], []
        for f in np.unique(path_features):
            on_f = path_features == f
            x_all = x_ok[:, on_f].all(axis=1)[:, None]
            z_all = z_ok[:, on_f].all(axis=1)[None, :]
            reachable &= x_all | z_all
            in_a.append((f, x_all & ~z_all))
            in_b.append((f, z_all & ~x_all))
        a = np.zeros(reachable.shape, dtype=np.int64)
        b = np.zeros(reachable.shape, dtype=np.int64)
        for (_, mask_a), (_, mask_b) in zip(in_a, in_b):
            a += mask_a
            b += mask_b
        w_a, w_b = FOR_A[a, b], FOR_B[a, b]
        for (f, mask_a), (_, mask_b) in zip(in_a, in_b):
            phi = np.where(reachable & mask_a, value * w_a, 0.0) - np.where(reachable & mask_b, value * w_b, 0.0)
            table[:, local[f]] += phi @ z_weight
    return TreeTable(tree.features, tree.thresholds, tree.default_left, tree.missing, used, table, leaf_of_pattern)


def _patterns(decisions: np.ndarray) -> np.ndarray:
    """Pattern index of every row from its (rows, nodes) decisions."""
    return (decisions.astype(np.int64) << np.arange(decisions.shape[1], dtype=np.int64)).sum(axis=1)
