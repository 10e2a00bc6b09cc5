"""InterventionalExplainer: exact interventional SHAP of a LightGBM booster against a fixed background.

Every tree is explained exactly (shapley.py's game, averaged over the background); how
depends on its size. A small tree gets a table over all its routing patterns
(patterns.py: one lookup per row); a larger one is explained leaf by leaf from the
background's grouped masks (leaves.py: a cost that grows with the tree, not with the
background). Both run in one compiled pass (kernel.py) that also sums the margins,
bitwise equal to LightGBM's raw scores. A small batch of a model whose trees all have
pattern tables runs the same pass in numpy instead (vectorized.py): the compiled kernel
needs numba, whose loading costs more than such a batch's whole scoring.
"""

from __future__ import annotations

import sys

import numpy as np

from rifml.explain.leaves import LeafTable, bitset_sizes, leaf_table, starts, table_rows
from rifml.explain import patterns
from rifml.explain.patterns import TreeTable, pattern_table
from rifml.config import MAX_NUM_LEAVES
from rifml.errors import RifmlInputError
from rifml.explain.shapley import FOR_A, FOR_B, MAX_PATH_FEATURES
from rifml.explain.trees import ARGMAX, LEAVES, PATTERN, parse_tree, stand_in
from rifml.explain.vectorized import score_patterns

# Up to this many rows, a model whose trees all have pattern tables is scored in numpy
# (vectorized.py) rather than by the compiled kernel, unless this process has loaded the kernel
# already: bitwise the same answer either way. Loading numba costs ~0.7 s of CPU (import and
# first dispatch); numpy costs ~0.3 s more than the kernel at 20,000 rows (400 + 240 trees,
# CPU times measured under load); at 1,000 rows both took ~40 ms.
VECTORIZED_ROWS = 20_000
KERNEL_MODULE = "rifml.explain.kernel"


def explain_tree(structure: dict, background: np.ndarray) -> TreeTable | LeafTable:
    tree = parse_tree(structure)
    if tree.n_nodes <= patterns.MAX_PATTERN_NODES:
        return pattern_table(tree, background)
    return leaf_table(tree, background)


class InterventionalExplainer:
    """Exact interventional SHAP of a LightGBM booster's raw margins against a fixed background.

    Parameters
    ----------
    booster : lightgbm.Booster
        A fitted booster (binary or multiclass), numerical splits only, any tree size.
    background : ndarray (m, n_features)
        Reference rows the explanation is measured against.

    Attributes
    ----------
    n_classes_ : int
    n_features_ : int
    expected_value_ : ndarray (n_classes,)
        Mean raw margin of each class over the background.
    trees_ : list of list of (TreeTable | LeafTable)
        Per class, its trees in LightGBM order.
    """

    def __init__(self, booster, background: np.ndarray):
        dump = booster.dump_model()
        self.n_features_ = int(dump["max_feature_idx"]) + 1
        self.n_classes_ = int(dump.get("num_tree_per_iteration", 1))
        background = np.asarray(background, dtype=float)
        if background.ndim != 2 or background.shape[1] != self.n_features_ or len(background) == 0:
            raise ValueError("background must be a non-empty (rows, n_features) array")
        self.trees_: list[list[TreeTable | LeafTable]] = [[] for _ in range(self.n_classes_)]
        for i, tree in enumerate(dump["tree_info"]):
            self.trees_[i % self.n_classes_].append(explain_tree(tree["tree_structure"], background))
        self._pack()
        self.expected_value_ = self.margins(background).mean(axis=0)

    def table_bytes(self) -> dict[str, int]:
        """Memory the precomputed explanation holds, by kind (pattern tables, leaf tables, leaf groups)."""
        trees = [t for per_class in self.trees_ for t in per_class]
        patterns = [t for t in trees if isinstance(t, TreeTable)]
        leaves = [t for t in trees if isinstance(t, LeafTable)]
        return {
            "pattern_tables": sum(t.table.nbytes + t.leaf_of_pattern.nbytes for t in patterns),
            "leaf_tables": sum(t.table.nbytes for t in leaves),  # full and near-leaf tables
            "leaf_groups": sum(t.group_masks.nbytes + t.group_weights.nbytes for t in leaves),
        }

    def _pack(self) -> None:
        """All trees in flat arrays (one run per tree, located by *_start offsets) for the kernel.

        Each array holds the runs of the trees that have that field (a small tree has no
        leaf groups, a larger one no pattern table); the others add an empty run.
        """
        # LightGBM's order is tree i of class i % n_classes; keep it so margins sum in the same order.
        n_trees = sum(len(per_class) for per_class in self.trees_)
        order = [(i % self.n_classes_, i // self.n_classes_) for i in range(n_trees)]
        trees = [self.trees_[c][k] for c, k in order]

        def field(name: str, dtype, default=()) -> list[np.ndarray]:
            return [np.asarray(getattr(t, name, default(t) if callable(default) else default), dtype=dtype).ravel() for t in trees]

        def flat(runs: list[np.ndarray]) -> np.ndarray:
            joined = np.concatenate(runs)
            return joined if len(joined) else np.zeros(1, dtype=joined.dtype)  # numba wants no empty arrays here

        def run_starts(runs: list[np.ndarray]) -> np.ndarray:
            return starts(np.array([len(r) for r in runs], dtype=np.int64))

        self._tree_class = np.array([c for c, _ in order], dtype=np.int64)
        self._tree_kind = np.array([LEAVES if isinstance(t, LeafTable) else PATTERN for t in trees], dtype=np.int64)
        self._n_nodes = np.array([len(t.features) for t in trees], dtype=np.int64)
        self._node_start = starts(self._n_nodes)[:-1]
        copies: dict[tuple[int, float, bool], int] = {}
        node_column = [
            copies.setdefault((int(t.features[j]), *stand_in(int(t.missing[j]), bool(t.default_left[j]))), len(copies))
            for t in trees for j in range(len(t.features))
        ]
        self._node_column = flat([np.array(node_column, dtype=np.int64)])
        self._copy_feature = np.array([f for f, _, _ in copies] or [0], dtype=np.int64)
        self._copy_value = np.array([v for _, v, _ in copies] or [0.0], dtype=np.float64)
        self._copy_zeros = np.array([z for _, _, z in copies] or [False], dtype=np.bool_)
        self._thresholds = flat(field("thresholds", np.float64))
        no_children = lambda t: np.zeros(len(t.features))  # noqa: E731  (pattern trees are routed by bits)
        self._left = flat(field("left", np.int64, no_children))
        self._right = flat(field("right", np.int64, no_children))
        self._slot = flat(field("slot", np.int64, no_children))

        # small trees: per pattern, its leaf value and SHAP row over the tree's used features
        leaf_of_pattern = field("leaf_of_pattern", np.float64)
        self._pattern_start = run_starts(leaf_of_pattern)[:-1]
        self._leaf_of_pattern = flat(leaf_of_pattern)
        # (a LeafTable's "table" is per leaf, below)
        ptable = [np.asarray(t.table if isinstance(t, TreeTable) else (), dtype=np.float64).ravel() for t in trees]
        self._ptable_start = run_starts(ptable)[:-1]
        self._ptable = flat(ptable)
        used = field("used", np.int64)
        self._n_used = np.array([len(u) for u in used], dtype=np.int64)
        self._used_start = run_starts(used)[:-1]
        self._used = flat(used)

        # larger trees: per leaf, its value, path features, background groups, and table if any
        leafy = [t for t in trees if isinstance(t, LeafTable)]
        self._n_leaves = np.array([len(getattr(t, "leaf_values", ())) for t in trees], dtype=np.int64)
        self._leaf_start = starts(self._n_leaves)[:-1]
        per_leaf = lambda name, dtype: [np.asarray(getattr(t, name), dtype=dtype) for t in leafy] or [np.zeros(0, dtype)]  # noqa: E731
        self._leaf_value = flat(per_leaf("leaf_values", np.float64))
        width = np.concatenate(per_leaf("width", np.int64))
        self._width = flat([width])
        self._feature_start = starts(width)
        self._leaf_features = flat(per_leaf("leaf_features", np.int64))
        self._group_start = starts(np.concatenate(per_leaf("n_groups", np.int64)))
        self._group_masks = flat(per_leaf("group_masks", np.int64))
        self._group_weights = flat(per_leaf("group_weights", np.float64))
        # every leaf has at least one group (the background is not empty)
        self._group_union = np.bitwise_or.reduceat(self._group_masks, self._group_start[:-1]) if leafy else np.zeros(1, np.int64)
        full_table = np.concatenate(per_leaf("full_table", np.bool_))
        self._full_table = flat([full_table])
        self._table_start = flat([starts(table_rows(width, full_table) * width)[:-1]])
        self._tables = flat(per_leaf("table", np.float64))
        n_groups = np.diff(self._group_start)
        self._bitset_start = starts(bitset_sizes(width, n_groups))
        self._bitsets = np.zeros(max(int(self._bitset_start[-1]), 1), dtype=np.int64)
        if leafy:  # compiled (numba): a model of pattern trees only loads no numba here
            from rifml.explain.leaf_kernels import group_bitsets

            group_bitsets(width, self._group_start, self._group_masks, self._bitset_start, self._bitsets)

    # The packed arrays are derived from trees_: leave them out of pickles and rebuild on load,
    # so a saved model never depends on the kernel's current layout.
    _PACKED = ("_tree_class", "_tree_kind", "_n_nodes", "_node_start", "_node_column", "_thresholds", "_left", "_right",
               "_slot", "_copy_feature", "_copy_value", "_copy_zeros", "_pattern_start", "_leaf_of_pattern",
               "_ptable_start", "_ptable", "_n_used", "_used_start", "_used", "_n_leaves", "_leaf_start", "_leaf_value",
               "_width", "_feature_start", "_leaf_features", "_group_start", "_group_masks", "_group_weights",
               "_group_union", "_table_start", "_full_table", "_tables", "_bitset_start", "_bitsets")

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in self._PACKED}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pack()

    def _run(self, X: np.ndarray, classes: np.ndarray, explain: bool, execution: str = "auto") -> tuple[np.ndarray, np.ndarray]:
        """Margins and SHAP values by the compiled kernel or the numpy pass (``execution`` "compiled",
        "vectorized" (pattern trees only), or "auto": see VECTORIZED_ROWS)."""
        Xt = np.ascontiguousarray(np.asarray(X, dtype=np.float64).T)  # feature-major for the kernel
        leafy = bool((self._tree_kind == LEAVES).any())
        if execution == "auto":
            small = Xt.shape[1] <= VECTORIZED_ROWS and KERNEL_MODULE not in sys.modules
            execution = "vectorized" if small and not leafy else "compiled"
        if execution == "vectorized":
            if leafy:
                raise ValueError("the numpy pass explains pattern trees only; this model has larger trees")
            return score_patterns(
                Xt, classes, explain, self.n_classes_, self.n_features_, self._copy_feature, self._copy_value,
                self._copy_zeros, self._tree_class, self._node_start, self._n_nodes, self._node_column,
                self._thresholds, self._pattern_start, self._leaf_of_pattern, self._ptable_start, self._used_start,
                self._n_used, self._used, self._ptable,
            )
        import numba

        from rifml.explain.kernel import BLOCK_ROWS

        # A block of rows is the unit of parallel work: threads beyond the blocks only wait, and waking
        # them costs a small request (one panel over REST) more than its scoring.
        threads = numba.get_num_threads()
        blocks = -(-Xt.shape[1] // BLOCK_ROWS)
        if blocks >= threads:
            return self._kernel(Xt, classes, explain)
        numba.set_num_threads(max(blocks, 1))
        try:
            return self._kernel(Xt, classes, explain)
        finally:
            numba.set_num_threads(threads)

    def _kernel(self, Xt: np.ndarray, classes: np.ndarray, explain: bool) -> tuple[np.ndarray, np.ndarray]:
        from rifml.explain.kernel import score_kernel

        return score_kernel(
            Xt, classes, explain, self.n_classes_, self.n_features_, self._copy_feature, self._copy_value,
            self._copy_zeros, self._tree_class, self._tree_kind, self._node_start, self._n_nodes, self._node_column,
            self._thresholds, self._left, self._right, self._slot, self._pattern_start, self._leaf_of_pattern,
            self._ptable_start, self._used_start, self._n_used, self._used, self._ptable, self._leaf_start,
            self._n_leaves, self._leaf_value, self._width, self._feature_start, self._leaf_features, self._group_start,
            self._group_masks, self._group_weights, self._group_union, self._table_start, self._full_table, self._tables,
            self._bitset_start, self._bitsets, FOR_A, FOR_B,
        )

    def warm_up(self) -> None:
        """Load the compiled kernel (numba's on-disk cache) now, with one row, rather than on the first large request."""
        self._run(np.zeros((1, self.n_features_)), np.empty(0, dtype=np.int64), False, execution="compiled")

    def margins(self, X: np.ndarray) -> np.ndarray:
        """Raw margins (n, n_classes), summed tree by tree in LightGBM's order (bitwise equal)."""
        return self._run(X, np.empty(0, dtype=np.int64), False)[0]

    def shap_values(self, X: np.ndarray, classes: np.ndarray | int) -> np.ndarray:
        """SHAP values (n, n_features) of each row for one class per row (e.g. the called class)."""
        classes = np.broadcast_to(np.asarray(classes, dtype=np.int64), (len(X),))
        return self._run(X, np.ascontiguousarray(classes), True)[1]

    def margins_and_shap(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw margins, and the SHAP values of each row's highest-margin class, in one pass.

        Rows are routed through the trees once; the routes that sum the margins also
        locate the SHAP values. A binary booster's one output is explained as is.
        """
        return self._run(X, np.full(len(X), ARGMAX, dtype=np.int64), True)


def check_tree_settings(num_leaves: object, n_features: int) -> None:
    """Refuse, before any fit, tree settings the explainer cannot explain exactly.

    Any LightGBM tree size is explained (pattern tables or leaf by leaf); what remains is
    LightGBM's own range for num_leaves and the leaf masks' width: a path can test at most
    MAX_PATH_FEATURES distinct features, which only many leaves over many features could exceed.
    """
    if isinstance(num_leaves, bool) or not isinstance(num_leaves, (int, np.integer)) or not 2 <= num_leaves <= MAX_NUM_LEAVES:
        raise RifmlInputError(f"model.num_leaves must be a whole number from 2 to {MAX_NUM_LEAVES}, got {num_leaves!r}")
    if num_leaves - 1 > MAX_PATH_FEATURES and n_features > MAX_PATH_FEATURES:
        raise RifmlInputError(
            f"model.num_leaves {num_leaves} with {n_features} model features could grow paths testing more than "
            f"{MAX_PATH_FEATURES} distinct features, which the explainer cannot take: use num_leaves <= {MAX_PATH_FEATURES + 1}"
        )
