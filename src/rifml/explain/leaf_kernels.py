"""The compiled parts of leaf-by-leaf SHAP (leaves.py): bit counts, one leaf's SHAP values for one
mask, the leaves' tables and their groups' bit sets.

Apart from leaves.py so that importing the explainer (and unpickling a fitted model) does not
import numba: leaf_table uses these at training, the scoring kernel (kernel.py) at scoring.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def popcount(x):
    """Set bits of an int64 (all 64: group bit sets use the sign bit too)."""
    u = np.uint64(x)
    u = u - ((u >> np.uint64(1)) & np.uint64(0x5555555555555555))
    u = (u & np.uint64(0x3333333333333333)) + ((u >> np.uint64(2)) & np.uint64(0x3333333333333333))
    u = (u + (u >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((u * np.uint64(0x0101010101010101)) >> np.uint64(56))


@numba.njit(cache=True)
def lowest_bit(x):
    """Index of the lowest set bit of x (> 0)."""
    return popcount((x & -x) - 1)


@numba.njit(cache=True)
def add_group(mask, b, z, w, for_a, for_b, out):
    """Add one background group's share (before the leaf value) to out[:d]; return its B-side weight."""
    only_x = mask & ~z
    a = popcount(only_x)
    if a:
        share = w * for_a[a, b]
        while only_x:
            out[lowest_bit(only_x)] += share
            only_x &= only_x - 1
    return w * for_b[a, b]


@numba.njit(cache=True)
def begin(mask, width, out):
    """Clear out[:width]; return the features the row fails and their number (|B| for every pair)."""
    failed = ((np.int64(1) << width) - 1) & ~mask
    for s in range(width):
        out[s] = 0.0
    return failed, popcount(failed)


@numba.njit(cache=True)
def finish(mask, width, value, total_b, out):
    """Scale the A-side sums by the leaf value and spread the B side over the failed features."""
    for s in range(width):
        out[s] = value * out[s] if (mask >> s) & 1 else -value * total_b


@numba.njit(cache=True)
def leaf_shap(mask, width, value, group_masks, group_weights, first, last, for_a, for_b, out):
    """out[:width] = what one leaf adds to the SHAP values of a row with this mask (by mask bit)."""
    failed, b = begin(mask, width, out)
    total_b = 0.0
    for g in range(first, last):
        z = group_masks[g]
        if failed & ~z:  # some feature neither row satisfies: the pair adds nothing
            continue
        total_b += add_group(mask, b, z, group_weights[g], for_a, for_b, out)
    finish(mask, width, value, total_b, out)


@numba.njit(cache=True)
def fill_tables(width, values, full_table, table_start, group_masks, group_weights, group_start, for_a, for_b, tables):
    for leaf in range(width.shape[0]):
        d = width[leaf]
        full = (np.int64(1) << d) - 1
        first, last = group_start[leaf], group_start[leaf + 1]
        if full_table[leaf]:
            for mask in range(1 << d):
                at = table_start[leaf] + mask * d
                leaf_shap(np.int64(mask), d, values[leaf], group_masks, group_weights, first, last, for_a, for_b,
                          tables[at:at + d])
        else:
            at = table_start[leaf]
            leaf_shap(full, d, values[leaf], group_masks, group_weights, first, last, for_a, for_b, tables[at:at + d])
            for s in range(d):
                at = table_start[leaf] + (1 + s) * d
                leaf_shap(full & ~(np.int64(1) << s), d, values[leaf], group_masks, group_weights, first, last,
                          for_a, for_b, tables[at:at + d])


@numba.njit(cache=True)
def group_bitsets(width, group_start, group_masks, bitset_start, bitsets):
    """Per leaf and mask bit s, a bit set over the leaf's groups: which satisfy feature s (64 groups a word)."""
    for leaf in range(width.shape[0]):
        d = width[leaf]
        first = group_start[leaf]
        words = (group_start[leaf + 1] - first + 63) // 64
        for s in range(d):
            for k in range(words):
                bitsets[bitset_start[leaf] + s * words + k] = 0
        for g in range(first, group_start[leaf + 1]):
            z = group_masks[g]
            word = (g - first) // 64
            bit = np.int64(1) << ((g - first) % 64)
            for s in range(d):
                if (z >> s) & 1:
                    bitsets[bitset_start[leaf] + s * words + word] |= bit


@numba.njit(cache=True)
def far_leaf_shap(mask, width, value, group_masks, group_weights, first, last, bitsets, bits_at, for_a, for_b, out):
    """As leaf_shap, visiting only the groups that satisfy every feature the row fails (group_bitsets)."""
    failed, b = begin(mask, width, out)
    total_b = 0.0
    words = (last - first + 63) // 64
    any_group = False
    for k in range(words):
        valid = np.int64(-1)
        rest = failed
        while rest:
            valid &= bitsets[bits_at + lowest_bit(rest) * words + k]
            rest &= rest - 1
        while valid:
            g = first + k * 64 + lowest_bit(valid)
            valid &= valid - 1
            if g < last:
                any_group = True
                total_b += add_group(mask, b, group_masks[g], group_weights[g], for_a, for_b, out)
    if any_group:
        finish(mask, width, value, total_b, out)
    return any_group
