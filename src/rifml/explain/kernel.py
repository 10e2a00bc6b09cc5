"""The compiled scoring kernel: route rows through every tree once, sum margins, add SHAP values.

Compiled once and cached on disk (numba cache=True). Rows go in blocks of BLOCK_ROWS: the
inner loops run over the rows of one column, which the compiler vectorizes. Margins need
every tree; SHAP values only the trees of the class each row explains, so a block's rows
are grouped by that class before the second pass.
"""

from __future__ import annotations

import numba
import numpy as np

from rifml.explain.leaf_kernels import far_leaf_shap, lowest_bit
from rifml.explain.shapley import MAX_PATH_FEATURES
from rifml.explain.trees import ARGMAX, LEAVES, PATTERN

BLOCK_ROWS = 256


@numba.njit(cache=True, parallel=True)
def score_kernel(Xt, classes, explain, n_classes, n_features, copy_feature, copy_value, copy_zeros,
                 tree_class, tree_kind, node_start, n_nodes, node_column, thresholds, left, right, slot,
                 pattern_start, leaf_of_pattern, ptable_start, used_start, n_used, used, ptable,
                 leaf_start, n_leaves, leaf_value, width, feature_start, leaf_features,
                 group_start, group_masks, group_weights, group_union, table_start, full_table, tables, bitset_start, bitsets,
                 for_a, for_b):
    n = Xt.shape[1]
    n_trees = tree_class.shape[0]
    margins = np.zeros((n, n_classes))
    phi = np.zeros((n, n_features if explain else 0))
    max_nodes = 1
    max_leaves = 1
    for t in range(n_trees):
        if tree_kind[t] == LEAVES:
            max_nodes = max(max_nodes, n_nodes[t])
            max_leaves = max(max_leaves, n_leaves[t])
    n_blocks = (n + BLOCK_ROWS - 1) // BLOCK_ROWS
    for b in numba.prange(n_blocks):
        start = b * BLOCK_ROWS
        m = min(start + BLOCK_ROWS, n) - start
        # Each node reads a copy of its feature in which missing values already stand where
        # LightGBM sends them (trees.stand_in): routing is one comparison per node.
        columns = np.empty((copy_feature.shape[0], BLOCK_ROWS))
        for k in range(copy_feature.shape[0]):
            source = Xt[copy_feature[k]]
            stand_in = copy_value[k]
            zeros_too = copy_zeros[k]
            for r in range(m):
                v = source[start + r]
                if v != v or (zeros_too and abs(v) < 1e-35):
                    v = stand_in
                columns[k, r] = v
        # route[t, r]: the row's pattern (PATTERN trees) or leaf (LEAVES trees)
        route = np.empty((n_trees, BLOCK_ROWS), dtype=np.int64)
        # the block's margins class-major (consecutive rows: vector loads and stores), summed in
        # the same tree order as LightGBM, then written to the (rows, classes) output once
        sums = np.zeros((n_classes, BLOCK_ROWS))
        for t in range(n_trees):
            c = tree_class[t]
            o = node_start[t]
            pattern = route[t]
            if tree_kind[t] == PATTERN:
                for r in range(m):
                    pattern[r] = 0
                for j in range(n_nodes[t]):
                    column = columns[node_column[o + j]]
                    threshold = thresholds[o + j]
                    for r in range(m):  # branch-free, so the compiler vectorizes it (2.5x vs an if)
                        pattern[r] |= np.int64(column[r] <= threshold) << j
                p0 = pattern_start[t]
                into = sums[c]
                for r in range(m):
                    into[r] += leaf_of_pattern[p0 + pattern[r]]
            else:
                l0 = leaf_start[t]
                for r in range(m):
                    node = 0
                    while node >= 0:
                        if columns[node_column[o + node], r] <= thresholds[o + node]:
                            node = left[o + node]
                        else:
                            node = right[o + node]
                    pattern[r] = ~node
                    sums[c, r] += leaf_value[l0 + ~node]
        for r in range(m):
            for c in range(n_classes):
                margins[start + r, c] = sums[c, r]
        if not explain:
            continue

        # rows of the block grouped by the class they explain
        class_start = np.zeros(n_classes + 1, dtype=np.int64)
        explained = np.empty(BLOCK_ROWS, dtype=np.int64)
        for r in range(m):
            best = classes[start + r] if classes.shape[0] else ARGMAX
            if best == ARGMAX:
                best = 0
                for c in range(1, n_classes):
                    if sums[c, r] > sums[best, r]:
                        best = c
            explained[r] = best
            class_start[best + 1] += 1
        for c in range(n_classes):
            class_start[c + 1] += class_start[c]
        order = np.empty(BLOCK_ROWS, dtype=np.int64)
        filled = class_start[:n_classes].copy()
        for r in range(m):
            order[filled[explained[r]]] = r
            filled[explained[r]] += 1

        # SHAP sums of the block, feature-major and in class order: the inner loops run over
        # consecutive rows (no scattered stores); added to phi once at the end of the block
        acc = np.zeros((n_features, BLOCK_ROWS))
        masks = np.empty((max_nodes, BLOCK_ROWS), dtype=np.int64)
        reached = np.empty((max_leaves, BLOCK_ROWS), dtype=np.int64)
        scratch = np.empty(MAX_PATH_FEATURES + 1)
        table_row = np.empty(BLOCK_ROWS, dtype=np.int64)
        for t in range(n_trees):
            c = tree_class[t]
            lo = class_start[c]
            rows = order[lo:class_start[c + 1]]
            nk = rows.shape[0]
            if nk == 0:
                continue
            if tree_kind[t] == PATTERN:
                p0 = ptable_start[t]
                u0 = used_start[t]
                width_t = n_used[t]
                routes = route[t]
                for i in range(nk):  # each row's table row, located once for all the tree's features
                    table_row[i] = p0 + routes[rows[i]] * width_t
                for u in range(width_t):
                    into = acc[used[u0 + u]]
                    for i in range(nk):
                        into[lo + i] += ptable[table_row[i] + u]
                continue
            # each row's mask for every leaf, in one pre-order pass (leaves.leaf_masks)
            o = node_start[t]
            for i in range(nk):
                masks[0, i] = -1
            for j in range(n_nodes[t]):
                column = columns[node_column[o + j]]
                threshold = thresholds[o + j]
                bit = np.int64(1) << slot[o + j]
                lc = left[o + j]
                rc = right[o + j]
                for i in range(nk):
                    mask = masks[j, i]
                    goes = np.int64(column[rows[i]] <= threshold)
                    to_left = mask & ~(bit * (1 - goes))
                    to_right = mask & ~(bit * goes)
                    if lc >= 0:
                        masks[lc, i] = to_left
                    else:
                        reached[~lc, i] = to_left
                    if rc >= 0:
                        masks[rc, i] = to_right
                    else:
                        reached[~rc, i] = to_right
            for leaf in range(n_leaves[t]):
                g = leaf_start[t] + leaf
                value = leaf_value[g]
                if value == 0.0:
                    continue
                d = width[g]
                full = (np.int64(1) << d) - 1
                outside = ~group_union[g]
                f0 = feature_start[g]
                at0 = table_start[g]
                whole = full_table[g]
                for i in range(nk):
                    mask = reached[leaf, i] & full
                    failed = full & ~mask
                    if failed & outside:  # a failed feature no reference satisfies: nothing to add
                        continue
                    if whole:
                        at = at0 + mask * d
                    elif failed == 0:
                        at = at0
                    elif failed & (failed - 1) == 0:
                        at = at0 + (1 + lowest_bit(failed)) * d
                    else:
                        if far_leaf_shap(mask, d, value, group_masks, group_weights, group_start[g], group_start[g + 1],
                                         bitsets, bitset_start[g], for_a, for_b, scratch):
                            for s in range(d):
                                acc[leaf_features[f0 + s], lo + i] += scratch[s]
                        continue
                    for s in range(d):
                        acc[leaf_features[f0 + s], lo + i] += tables[at + s]
        for i in range(m):
            row = start + order[i]
            for f in range(n_features):
                phi[row, f] = acc[f, i]
    return margins, phi


def warm_up() -> None:
    """Load numba's compiled runtime now, from the on-disk cache, by one trivial cached call.

    The first cached dispatch of a process imports and registers numba's whole CPU target
    (about a fifth of a small batch's start-up); scoring starts this in a thread while it
    checks paths, reads the catalog and unpickles the model, and the kernels then load at once.
    """
    lowest_bit(np.int64(1))
