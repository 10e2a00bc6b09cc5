"""The scoring kernel's pass in numpy, for small batches of models whose trees all have pattern tables.

Same packed arrays, same routes, the same sums in the same order as kernel.py (margins and
SHAP values bitwise equal, tested), but nothing to load: the compiled kernel needs numba,
whose import and first cached dispatch cost a daily batch of 1,000 panels more than all of
its scoring. Each step runs over a block of rows for all trees at once, so the cost per row
is higher than the kernel's; InterventionalExplainer picks this pass only up to a number of rows.

Leaf-by-leaf trees (leaves.py) have no numpy pass here: a model holding any goes to the kernel.
"""

from __future__ import annotations

import numpy as np

from rifml.explain.trees import ARGMAX

# Rows per block: bounds the (nodes x rows) decisions and (used features x rows) lookups held at once.
BLOCK_ROWS = 4096


def score_patterns(Xt, classes, explain, n_classes, n_features, copy_feature, copy_value, copy_zeros, tree_class,
                   node_start, n_nodes, node_column, thresholds, pattern_start, leaf_of_pattern, ptable_start,
                   used_start, n_used, used, ptable) -> tuple[np.ndarray, np.ndarray]:
    """(margins (n, n_classes), SHAP (n, n_features), or (n, 0) unless ``explain``) as kernel.score_kernel gives them.

    Arguments are the kernel's (the explainer's packed arrays), less the leaf-by-leaf ones.
    """
    n = Xt.shape[1]
    n_trees = tree_class.shape[0]
    # Node j of tree t decides bit j of the tree's pattern; its decisions go to row j * n_trees + t
    # of a (bits, trees, rows) array, padded with False (bits a smaller tree does not have).
    total = int(n_nodes.sum())
    bits = int(n_nodes.max(initial=0))
    tree_of_node = np.repeat(np.arange(n_trees, dtype=np.int64), n_nodes)
    slot = (np.arange(total, dtype=np.int64) - node_start[tree_of_node]) * n_trees + tree_of_node
    # nodes grouped by the column copy they read (one comparison of that column with their thresholds)
    by_column = np.argsort(node_column[:total], kind="stable")
    column_bounds = np.searchsorted(node_column[:total][by_column], np.arange(copy_feature.shape[0] + 1))
    # SHAP lookups of each class's trees: one (tree, used feature) pair after another, in tree order
    pairs = []
    for c in range(n_classes if explain else 0):
        trees = np.flatnonzero(tree_class == c)
        width = n_used[trees]
        pair_tree = np.repeat(np.arange(len(trees)), width)
        u = np.arange(int(width.sum()), dtype=np.int64) - np.repeat(np.cumsum(width) - width, width)
        pairs.append((trees, pair_tree, ptable_start[trees[pair_tree]] + u, width[pair_tree], used[used_start[trees[pair_tree]] + u]))

    margins = np.empty((n, n_classes))
    phi = np.zeros((n, n_features if explain else 0))
    for start in range(0, n, BLOCK_ROWS):
        block = slice(start, min(start + BLOCK_ROWS, n))
        m = block.stop - block.start
        # missing values stand where LightGBM sends them (trees.stand_in), one copy per (feature, rule)
        columns = Xt[copy_feature, block]
        stands_in = np.isnan(columns) | (copy_zeros[:, None] & (np.abs(columns) < 1e-35))
        columns = np.where(stands_in, copy_value[:, None], columns)
        goes = np.zeros((bits * n_trees, m), dtype=bool)
        for k in range(copy_feature.shape[0]):
            nodes = by_column[column_bounds[k]:column_bounds[k + 1]]
            goes[slot[nodes]] = columns[k][None, :] <= thresholds[nodes][:, None]
        goes = goes.view(np.uint8).reshape(bits, n_trees, m)
        pattern = np.zeros((n_trees, m), dtype=np.uint16)  # at most patterns.MAX_PATTERN_NODES (10) bits
        for j in range(bits):
            pattern |= goes[j].astype(np.uint16) << np.uint16(j)
        # margins summed tree by tree in LightGBM's order, as the kernel and LightGBM sum them
        values = leaf_of_pattern[pattern_start[:, None] + pattern]
        sums = np.zeros((n_classes, m))
        for t in range(n_trees):
            sums[tree_class[t]] += values[t]
        margins[block] = sums.T
        if not explain:
            continue

        explained = classes[block] if classes.shape[0] else np.full(m, ARGMAX, dtype=np.int64)
        explained = np.where(explained == ARGMAX, sums.argmax(axis=0), explained)
        # bincount adds its weights in the order given, from 0.0: per (row, feature), the class's
        # trees in order, as the kernel adds them (the same sums bit for bit)
        targets, weights = [], []
        for c, (trees, pair_tree, base, width, feature) in enumerate(pairs):
            rows = np.flatnonzero(explained == c)
            if not len(rows) or not len(pair_tree):
                continue
            at = base[:, None] + pattern[trees][:, rows][pair_tree].astype(np.int64) * width[:, None]
            weights.append(ptable[at].ravel())
            targets.append((rows[None, :] * n_features + feature[:, None]).ravel())
        if targets:
            phi[block] = np.bincount(np.concatenate(targets), np.concatenate(weights), minlength=m * n_features).reshape(m, n_features)
    return margins, phi
