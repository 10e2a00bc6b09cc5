"""Larger trees: exact SHAP leaf by leaf, at a scoring cost that does not grow with the background.

By the game of shapley.py, what leaf l adds to a row x's SHAP values depends on x only
through x's *mask*: which of the leaf's d distinct path features x satisfies (all the
path's conditions on that feature). The background enters only through its own masks
for the leaf, so at training time each leaf keeps its background masks grouped, with
their weights (at most min(background rows, 2**d) groups). Scoring computes each row's
masks for all leaves of a tree in one pre-order pass (a child's mask is its parent's with
the parent's feature bit cleared when the row goes the other way) and then, per leaf:

* small d: looks the values up in a table over all 2**d masks;
* otherwise, when x fails at most one of the path's features (the leaf x reaches and its
  near neighbours, where most of the background counts): looks them up in a table of
  those 1 + d masks;
* otherwise sums over the groups that satisfy every feature x fails (only those pairs
  add anything), found by AND-ing one bit set over the groups per failed feature; far
  from x these are few or none, so a distant leaf costs a few word operations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rifml.explain.shapley import FOR_A, FOR_B, MAX_PATH_FEATURES
from rifml.explain.trees import Branches, ParsedTree

# A leaf gets a table over all its 2**d masks when that is small: at most this many values
# (2**6 masks x 6 features = 384) or no more than its groups hold; otherwise the 1 + d masks
# failing at most one feature ((1 + d) x d values).
MAX_TABLE_VALUES = 384


@dataclass
class LeafTable(Branches):
    """One larger tree: routing arrays, and per leaf what scoring needs to explain a row.

    Attributes
    ----------
    features, thresholds, default_left, missing, left, right : per internal node, pre-order
        As in :class:`rifml.explain.trees.Branches`.
    slot : ndarray of int (n_nodes,)
        Bit of the node's feature in the masks of every leaf below it (order of first
        appearance on the path from the root).
    leaf_values : ndarray (n_leaves,)
    leaf_features : ndarray of int, flat
        Model feature of each mask bit of each leaf, leaf after leaf (``width`` of each).
    width : ndarray of int (n_leaves,)
        Distinct features on each leaf's path (d).
    group_masks, group_weights : flat, ``n_groups`` per leaf
        The background's distinct masks for each leaf and their weights (sum 1 per leaf).
    n_groups : ndarray of int (n_leaves,)
    table : ndarray, flat
        Per leaf, SHAP values by mask bit, row after row: 2**d rows (indexed by the mask)
        when ``full_table``, else 1 + d rows (all features satisfied; feature s failed).
    full_table : ndarray of bool (n_leaves,)
    """

    slot: np.ndarray
    leaf_values: np.ndarray
    leaf_features: np.ndarray
    width: np.ndarray
    group_masks: np.ndarray
    group_weights: np.ndarray
    n_groups: np.ndarray
    table: np.ndarray
    full_table: np.ndarray


def table_rows(width: np.ndarray, full_table: np.ndarray) -> np.ndarray:
    return np.where(full_table, np.int64(1) << width, 1 + width)


def starts(counts: np.ndarray) -> np.ndarray:
    """Offsets of consecutive runs of the given lengths (one more entry than runs)."""
    return np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)


def _slots(tree: ParsedTree) -> tuple[np.ndarray, list[list[int]]]:
    """Each node's bit, and each leaf's features in bit order."""
    slot = np.zeros(tree.n_nodes, dtype=np.int64)
    leaf_features: list[list[int]] = [[] for _ in tree.leaf_values]

    def walk(child: int, seen: list[int]) -> None:
        if child < 0:
            leaf_features[~child] = seen
            return
        feature = int(tree.features[child])
        if feature not in seen:
            seen = seen + [feature]
        slot[child] = seen.index(feature)
        walk(int(tree.left[child]), seen)
        walk(int(tree.right[child]), seen)

    walk(0 if tree.n_nodes else ~0, [])
    return slot, leaf_features


def leaf_masks(tree: ParsedTree, slot: np.ndarray, decisions: np.ndarray) -> np.ndarray:
    """(n_leaves, rows) int64: each row's mask for each leaf (bit s set = satisfies the leaf's feature s)."""
    rows = len(decisions)
    out = np.zeros((len(tree.leaf_values), rows), dtype=np.int64)
    masks = np.zeros((tree.n_nodes, rows), dtype=np.int64)
    if tree.n_nodes:
        masks[0] = -1
    for j in range(tree.n_nodes):  # pre-order: a parent before its children
        bit = np.int64(1) << np.int64(slot[j])
        goes = decisions[:, j]
        for child, ok in ((tree.left[j], goes), (tree.right[j], ~goes)):
            mask = np.where(ok, masks[j], masks[j] & ~bit)
            if child < 0:
                out[~child] = mask
            else:
                masks[child] = mask
    return out


def leaf_table(tree: ParsedTree, background: np.ndarray) -> LeafTable:
    from rifml.explain.leaf_kernels import fill_tables  # numba: only where a model has larger trees

    slot, features_of_leaf = _slots(tree)
    width = np.array([len(f) for f in features_of_leaf], dtype=np.int64)
    if width.max(initial=0) > MAX_PATH_FEATURES:
        raise ValueError(f"a leaf's path tests {width.max()} distinct features; the explainer takes at most {MAX_PATH_FEATURES}")
    full = (np.int64(1) << width) - 1
    masks = leaf_masks(tree, slot, tree.decisions(background)) & full[:, None]
    # groups: distinct (leaf, mask) pairs, leaf-major, with their share of the background
    keys = np.repeat(np.arange(len(width), dtype=np.int64), len(background)), masks.ravel()
    pairs, counts = np.unique(np.stack(keys), axis=1, return_counts=True)
    n_groups = np.bincount(pairs[0], minlength=len(width)).astype(np.int64)
    group_masks = pairs[1].astype(np.int64)
    group_weights = counts / len(background)
    table_size = (np.int64(1) << width) * width
    full_table = (table_size <= MAX_TABLE_VALUES) | (table_size <= 2 * n_groups)
    tables = np.zeros(int((table_rows(width, full_table) * width).sum()))
    fill_tables(
        width, tree.leaf_values, full_table, starts(table_rows(width, full_table) * width), group_masks, group_weights,
        starts(n_groups), FOR_A, FOR_B, tables,
    )
    return LeafTable(
        tree.features, tree.thresholds, tree.default_left, tree.missing, tree.left, tree.right, slot,
        tree.leaf_values, np.array([f for fs in features_of_leaf for f in fs], dtype=np.int64), width,
        group_masks, group_weights, n_groups, tables, full_table,
    )


def bitset_sizes(width: np.ndarray, n_groups: np.ndarray) -> np.ndarray:
    """Words of group_bitsets per leaf."""
    return width * ((n_groups + 63) // 64)
