"""Exact interventional SHAP for a LightGBM model, precomputed per tree, and per-marker drivers.

Why our own explainer: the drivers must be measured against a deliberate
reference (balanced patients whose markers sit inside their reference bands), so
that a normal marker that merely rules out another profile is not named as a
driver. That is interventional SHAP with that background. For one tree, a row's
SHAP values depend on the row only through which way it goes at each split
(its *pattern*), and a small tree has few patterns, so the values can be
precomputed once per tree at training time and looked up at scoring time.

For a single reference row z, a leaf reached with coalition S (features taken
from x, the rest from z) contributes the Shapley value of the game
"v if A is inside S and B is outside S", where A are the path's features on
which only x goes the leaf's way and B those on which only z does:
+v (|A|-1)! |B|! / (|A|+|B|)! to each feature of A, -v |A|! (|B|-1)! / (|A|+|B|)!
to each of B. Averaging over the background gives interventional SHAP, equal
to shap.TreeExplainer(feature_perturbation="interventional") (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import factorial

import numba
import numpy as np
import pandas as pd

MAX_PATTERN_NODES = 12  # 2**12 patterns per tree; larger trees are refused rather than made slow


@dataclass
class TreeTable:
    """One tree, flattened for routing, with its precomputed SHAP table.

    Attributes
    ----------
    features : ndarray of int (n_nodes,)
        Model feature index tested at each internal node.
    thresholds : ndarray of float (n_nodes,)
    default_left : ndarray of bool (n_nodes,)
    missing : ndarray of int (n_nodes,)
        0 = "None" (NaN is read as 0.0), 1 = "Zero", 2 = "NaN".
    used : ndarray of int (n_used,)
        Distinct model features this tree tests; columns of ``table``.
    table : ndarray of float (2**n_nodes, n_used)
        SHAP value of each used feature for each routing pattern.
    """

    features: np.ndarray
    thresholds: np.ndarray
    default_left: np.ndarray
    missing: np.ndarray
    used: np.ndarray
    table: np.ndarray
    leaf_of_pattern: np.ndarray  # leaf value reached by each pattern (for margins)


_MISSING_CODES = {"None": 0, "Zero": 1, "NaN": 2}


def _stand_in(missing: int, default_left: bool) -> tuple[float, bool]:
    """LightGBM's missing-value rule for one node as (value that missing cells read as, zeros count as missing).

    "NaN" missing type: NaN follows default_left, so it reads as -inf (left) or +inf (right);
    "Zero": NaN and |x| < 1e-35 do the same; "None": NaN reads as 0.0. A node's decision is
    then one comparison, ``value <= threshold``, in numpy here and in the scoring kernel.
    """
    if missing == 0:
        return 0.0, False
    return (-np.inf if default_left else np.inf), missing == 1


def _go_left(values: np.ndarray, threshold: float, default_left: bool, missing: int) -> np.ndarray:
    """LightGBM's numerical decision for one node, on a column of values."""
    value, zeros_too = _stand_in(missing, default_left)
    stands_in = np.isnan(values) | (zeros_too & (np.abs(values) < 1e-35))
    return np.where(stands_in, value, values) <= threshold


def _flatten(structure: dict) -> tuple[list[dict], list[tuple[float, list[tuple[int, bool]]]]]:
    """Internal nodes in a fixed order, and each leaf's value with its path [(node, goes_left)]."""
    nodes: list[dict] = []
    leaves: list[tuple[float, list[tuple[int, bool]]]] = []

    def walk(node: dict, path: list[tuple[int, bool]]) -> None:
        if "leaf_value" in node:
            leaves.append((float(node["leaf_value"]), path))
            return
        if node.get("decision_type", "<=") != "<=":
            raise NotImplementedError("categorical splits are not supported by the fast explainer")
        position = len(nodes)
        nodes.append(node)
        walk(node["left_child"], path + [(position, True)])
        walk(node["right_child"], path + [(position, False)])

    walk(structure, [])
    return nodes, leaves


def _pattern_bits(n_nodes: int) -> np.ndarray:
    """(2**n_nodes, n_nodes) bool: bit j of pattern p = goes left at node j."""
    patterns = np.arange(2**n_nodes)[:, None]
    return ((patterns >> np.arange(n_nodes)[None, :]) & 1).astype(bool)


def _shapley_weights(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weights for features of A and of B given |A| = a and |B| = b (zero where not applicable)."""
    top = int(max(a.max(initial=0) + b.max(initial=0), 1))
    fact = np.array([factorial(i) for i in range(top + 1)], dtype=float)
    total = fact[np.minimum(a + b, top)]
    w_a = np.where(a > 0, fact[np.maximum(a - 1, 0)] * fact[b] / total, 0.0)
    w_b = np.where(b > 0, fact[a] * fact[np.maximum(b - 1, 0)] / total, 0.0)
    return w_a, w_b


def _tree_table(structure: dict, background: np.ndarray) -> TreeTable:
    nodes, leaves = _flatten(structure)
    n_nodes = len(nodes)
    if n_nodes > MAX_PATTERN_NODES:
        raise ValueError(f"tree has {n_nodes} splits; the fast explainer supports at most {MAX_PATTERN_NODES}")
    features = np.array([n["split_feature"] for n in nodes], dtype=np.int64)
    thresholds = np.array([n["threshold"] for n in nodes], dtype=float)
    default_left = np.array([bool(n["default_left"]) for n in nodes], dtype=bool)
    missing = np.array([_MISSING_CODES[n.get("missing_type", "None")] for n in nodes], dtype=np.int64)
    used = np.unique(features)
    local = {f: i for i, f in enumerate(used)}

    x_bits = _pattern_bits(n_nodes)  # every pattern a scored row could have
    z_patterns, z_counts = np.unique(_route(background, features, thresholds, default_left, missing), return_counts=True)
    z_bits = x_bits[z_patterns]
    z_weight = z_counts / z_counts.sum()

    table = np.zeros((len(x_bits), len(used)))
    leaf_of_pattern = np.zeros(len(x_bits))
    for value, path in leaves:
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
        w_a, w_b = _shapley_weights(a, b)
        for (f, mask_a), (_, mask_b) in zip(in_a, in_b):
            phi = np.where(reachable & mask_a, value * w_a, 0.0) - np.where(reachable & mask_b, value * w_b, 0.0)
            table[:, local[f]] += phi @ z_weight
    return TreeTable(features, thresholds, default_left, missing, used, table, leaf_of_pattern)


def _route(
    X: np.ndarray, features: np.ndarray, thresholds: np.ndarray, default_left: np.ndarray, missing: np.ndarray
) -> np.ndarray:
    """Pattern index of every row of X for one tree."""
    pattern = np.zeros(len(X), dtype=np.int64)
    for j in range(len(features)):
        left = _go_left(X[:, features[j]], thresholds[j], bool(default_left[j]), int(missing[j]))
        pattern |= left.astype(np.int64) << j
    return pattern


class InterventionalExplainer:
    """Exact interventional SHAP of a LightGBM booster's raw margins against a fixed background.

    Parameters
    ----------
    booster : lightgbm.Booster
        A fitted booster (binary or multiclass), numerical splits only.
    background : ndarray (m, n_features)
        Reference rows the explanation is measured against.

    Attributes
    ----------
    n_classes_ : int
    expected_value_ : ndarray (n_classes,)
        Mean raw margin of each class over the background.
    trees_ : list of list of TreeTable
        Per class, its trees in LightGBM order.
    """

    def __init__(self, booster, background: np.ndarray):
        dump = booster.dump_model()
        self.n_features_ = int(dump["max_feature_idx"]) + 1
        self.n_classes_ = int(dump.get("num_tree_per_iteration", 1))
        background = np.asarray(background, dtype=float)
        if background.ndim != 2 or background.shape[1] != self.n_features_ or len(background) == 0:
            raise ValueError("background must be a non-empty (rows, n_features) array")
        self.trees_: list[list[TreeTable]] = [[] for _ in range(self.n_classes_)]
        for i, tree in enumerate(dump["tree_info"]):
            self.trees_[i % self.n_classes_].append(_tree_table(tree["tree_structure"], background))
        self._pack()
        self.expected_value_ = self.margins(background).mean(axis=0)

    def _pack(self) -> None:
        """All trees in flat, padded arrays for the compiled scoring kernel."""
        trees = [tree for per_class in self.trees_ for tree in per_class]
        # LightGBM's order is tree i of class i % n_classes; keep it so margins sum in the same order.
        order = [(i // self.n_classes_, i % self.n_classes_) for i in range(len(trees))]
        trees = [self.trees_[c][k] for k, c in order]
        n_nodes = max([len(t.features) for t in trees] + [0])
        n_used = max([len(t.used) for t in trees] + [1])
        size = len(trees)
        self._tree_class = np.array([c for _, c in order], dtype=np.int64)
        self._n_nodes = np.array([len(t.features) for t in trees], dtype=np.int64)
        self._thresholds = np.zeros((size, max(n_nodes, 1)))
        self._leaf = np.zeros((size, 2**n_nodes))
        self._used = np.zeros((size, n_used), dtype=np.int64)
        self._n_used = np.array([len(t.used) for t in trees], dtype=np.int64)
        self._table = np.zeros((size, 2**n_nodes, n_used))
        # Each node reads a copy of its feature in which missing values already stand where
        # LightGBM sends them (_stand_in), so routing is one branch-free comparison per node.
        copies: dict[tuple[int, float, bool], int] = {}
        self._node_column = np.zeros((size, max(n_nodes, 1)), dtype=np.int64)
        for i, tree in enumerate(trees):
            k = len(tree.features)
            for j in range(k):
                rule = _stand_in(int(tree.missing[j]), bool(tree.default_left[j]))
                self._node_column[i, j] = copies.setdefault((int(tree.features[j]), *rule), len(copies))
            self._thresholds[i, :k] = tree.thresholds
            # patterns only use the tree's own k bits; padding bits are always 0
            self._leaf[i, : 2**k] = tree.leaf_of_pattern
            self._used[i, : len(tree.used)] = tree.used
            self._table[i, : 2**k, : len(tree.used)] = tree.table
        self._copy_feature = np.array([f for f, _, _ in copies] or [0], dtype=np.int64)
        self._copy_value = np.array([v for _, v, _ in copies] or [0.0], dtype=np.float64)
        self._copy_zeros = np.array([z for _, _, z in copies] or [False], dtype=np.bool_)

    # The packed arrays are derived from trees_: leave them out of pickles and rebuild on load,
    # so a saved model never depends on the kernel's current layout.
    _PACKED = ("_tree_class", "_n_nodes", "_thresholds", "_leaf", "_used", "_n_used", "_table",
               "_node_column", "_copy_feature", "_copy_value", "_copy_zeros")

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in self._PACKED}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pack()

    def _run(self, X: np.ndarray, classes: np.ndarray, explain: bool) -> tuple[np.ndarray, np.ndarray]:
        Xt = np.ascontiguousarray(np.asarray(X, dtype=np.float64).T)  # feature-major for the kernel
        return _score_kernel(
            Xt, classes, explain, self._copy_feature, self._copy_value, self._copy_zeros, self._tree_class, self._n_nodes,
            self._node_column, self._thresholds, self._leaf, self._table, self._used, self._n_used,
            self.n_classes_, self.n_features_,
        )

    def margins(self, X: np.ndarray) -> np.ndarray:
        """Raw margins (n, n_classes), summed tree by tree in LightGBM's order (bitwise equal)."""
        return self._run(X, np.empty(0, dtype=np.int64), False)[0]

    def shap_values(self, X: np.ndarray, classes: np.ndarray | int) -> np.ndarray:
        """SHAP values (n, n_features) of each row for one class per row (e.g. the called class)."""
        classes = np.broadcast_to(np.asarray(classes, dtype=np.int64), (len(X),))
        return self._run(X, np.ascontiguousarray(classes), True)[1]

    def margins_and_shap(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw margins, and the SHAP values of each row's highest-margin class, in one pass.

        Rows are routed through the trees once; the routing patterns that sum the margins
        also look up the SHAP values. A binary booster's one output is explained as is.
        """
        return self._run(X, np.full(len(X), ARGMAX, dtype=np.int64), True)


ARGMAX = -1  # class code asking the kernel to explain the row's highest-margin class

# Compiled once and cached on disk (numba cache=True). Rows go in blocks of BLOCK_ROWS: the
# inner loops run over the rows of one column, which the compiler vectorizes; routing every
# tree once per block and keeping the patterns serves both margins and SHAP lookups.
BLOCK_ROWS = 256


@numba.njit(cache=True, parallel=True)
def _score_kernel(Xt, classes, explain, copy_feature, copy_value, copy_zeros, tree_class, n_nodes, node_column, thresholds,
                  leaf, table, used, n_used, n_classes, n_features):
    n = Xt.shape[1]
    n_trees = tree_class.shape[0]
    margins = np.zeros((n, n_classes))
    phi = np.zeros((n, n_features if explain else 0))
    n_blocks = (n + BLOCK_ROWS - 1) // BLOCK_ROWS
    for b in numba.prange(n_blocks):
        start = b * BLOCK_ROWS
        m = min(start + BLOCK_ROWS, n) - start
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
        patterns = np.empty((n_trees, BLOCK_ROWS), dtype=np.int64)
        for t in range(n_trees):
            pattern = patterns[t]
            for r in range(m):
                pattern[r] = 0
            for j in range(n_nodes[t]):
                column = columns[node_column[t, j]]
                threshold = thresholds[t, j]
                bit = np.int64(1) << j
                for r in range(m):
                    if column[r] <= threshold:
                        pattern[r] |= bit
            c = tree_class[t]
            for r in range(m):
                margins[start + r, c] += leaf[t, pattern[r]]
        if not explain:
            continue
        explained = np.empty(BLOCK_ROWS, dtype=np.int64)
        for r in range(m):
            best = classes[start + r] if classes.shape[0] else ARGMAX
            if best == ARGMAX:
                best = 0
                for c in range(1, n_classes):
                    if margins[start + r, c] > margins[start + r, best]:
                        best = c
            explained[r] = best
        for t in range(n_trees):
            c = tree_class[t]
            for r in range(m):
                if explained[r] == c:
                    row = start + r
                    for u in range(n_used[t]):
                        phi[row, used[t, u]] += table[t, patterns[t, r], u]
    return margins, phi


def marker_contributions(
    phi: np.ndarray, feature_names: list[str], feature_markers: dict[str, tuple[str, ...]], markers: list[str]
) -> pd.DataFrame:
    """Sum feature SHAP values back to measured markers.

    A feature derived from several markers is split equally between them; a feature
    derived from none (a missing-compartment indicator) goes to the column
    ``(panel coverage)``. Rows still sum to the model output minus the expected value.
    """
    columns = list(markers) + [COVERAGE]
    mapping = np.zeros((len(feature_names), len(columns)))
    index = {m: i for i, m in enumerate(columns)}
    for j, name in enumerate(feature_names):
        sources = feature_markers.get(name, ())
        if sources:
            for marker in sources:
                mapping[j, index[marker]] += 1.0 / len(sources)
        else:
            mapping[j, index[COVERAGE]] = 1.0
    return pd.DataFrame(phi @ mapping, columns=columns)


COVERAGE = "(panel coverage)"


def top_drivers(contributions: pd.DataFrame, measured: pd.DataFrame, k: int = 3) -> pd.DataFrame:
    """The k measured markers pushing hardest toward the explained class.

    Contributions of markers that were not measured (and of panel coverage) are not
    drivers: a clinician reads a driver as "this value is abnormal here".
    Returns columns driver_1, driver_1_contribution, ... (empty / NaN past the
    last marker with a positive push).
    """
    markers = list(measured.columns)
    values = contributions[markers].to_numpy(dtype=np.float64, copy=True)
    values[~measured.to_numpy(dtype=bool)] = -np.inf
    out: dict[str, object] = {}
    # names as categorical codes (the last category is "no driver"): no Python string per row
    names = markers + [""]
    rows = np.arange(len(values))
    for rank in range(k):
        # k passes of argmax (first index on ties) instead of sorting every row
        chosen = values.argmax(axis=1)
        push = values[rows, chosen]
        keep = push > 0
        out[f"driver_{rank + 1}"] = pd.Categorical.from_codes(np.where(keep, chosen, len(markers)), categories=names)
        out[f"driver_{rank + 1}_contribution"] = np.where(keep, push, np.nan)
        values[rows, chosen] = -np.inf
    return pd.DataFrame(out, index=contributions.index)
